// Register/workgroup tiling shared by the three attention passes. A workgroup owns `rows` rows of
// the score tile (query rows in the forward and dQ passes, keys in the dK/dV pass) and walks the
// other side in tiles of `cols`; thread (tr, tc) owns a rowsPerThread × colsPerThread block of the
// scores, at rows tr + r·TR and columns tc + c·TC (strided, to spread workgroup-memory banks). The
// TC threads that share rows are consecutive invocations, so in the subgroup path their row maxima
// and sums combine with subgroupShuffleXor.
import type { AttentionConfig } from '../../src/config';

export interface Tiles {
  rows: number;
  cols: number;
  rowsPerThread: number;
  colsPerThread: number;
  /**
   * Read the workgroup's own rows (Q and dO in the forward and dQ passes, K and V in the dK/dV pass)
   * from global memory (L1-cached) in the dot-product loops instead of staging them in workgroup
   * memory, which frees workgroup memory for larger tiles.
   */
  rowsFromGlobal?: boolean;
  /**
   * Forward only: keep the probability tile with rows padded to whole vec4s (+16 bytes) and read it
   * four keys at a time in the P·V loop, a quarter of the workgroup-memory loads of P.
   */
  probsVec4?: boolean;
}

export function threadsOf(t: Tiles): { TR: number; TC: number; WG: number } {
  const TR = t.rows / t.rowsPerThread, TC = t.cols / t.colsPerThread;
  return { TR, TC, WG: TR * TC };
}

/** Fallbacks that fit ever smaller workgroup memory (large head sizes, small devices). */
const FALLBACK_TILES: readonly Tiles[] = [
  { rows: 32, cols: 16, rowsPerThread: 2, colsPerThread: 2, rowsFromGlobal: true },
  { rows: 16, cols: 16, rowsPerThread: 1, colsPerThread: 2, rowsFromGlobal: true },
  { rows: 16, cols: 8, rowsPerThread: 2, colsPerThread: 2, rowsFromGlobal: true },
  { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2, rowsFromGlobal: true },
  { rows: 4, cols: 4, rowsPerThread: 1, colsPerThread: 1, rowsFromGlobal: true },
];

const G = (rows: number, cols: number, rowsPerThread: number, colsPerThread: number): Tiles =>
  ({ rows, cols, rowsPerThread, colsPerThread, rowsFromGlobal: true });

/**
 * Forward tiles, fastest first where they fit: measured on the H100 at N = 4096, B = 1, H = 12
 * (bench/RESULTS.md, webgpu section). Full attention at D ≤ 64: 192 query rows with 8×2 scores per
 * thread (192 threads); 4096 / 192 → 22 blocks × 12 heads = 264 workgroups, two per SM of the
 * H100's 132 in one wave, where 128-row blocks left a second, part-empty wave. Wider heads need
 * the smaller register tile (4×2). FORWARD_TILES[0] is also the query block of the split-KV rule.
 */
export const FORWARD_TILES: readonly Tiles[] = [
  G(192, 16, 8, 2),
  G(128, 16, 4, 2),
  G(64, 16, 4, 2),
  ...FALLBACK_TILES,
];
const FORWARD_TILES_WIDE: readonly Tiles[] = [G(192, 16, 4, 2), G(128, 16, 4, 2), G(64, 16, 4, 2), ...FALLBACK_TILES];
/**
 * Causal-like bands (bounded right, unbounded left): blocks carry unequal work, and 32-key tiles with 4×4 per thread beat the full
 * attention choice there (whose larger per-row work balanced worse).
 */
const FORWARD_TILES_BANDED: readonly Tiles[] = [G(192, 32, 4, 4), G(128, 16, 4, 2), G(64, 16, 4, 2), ...FALLBACK_TILES];

/**
 * Causal-like bands with whole paired query blocks (i with n−1−i in one workgroup,
 * attention_forward.ts): every workgroup does about (n + 1) blocks of keys, so the count should
 * fill the GPU evenly. 96-row blocks at N = 4096 give 43 blocks → 22 pairs × 12 heads = 264
 * workgroups, two per SM of the H100's 132 in one wave. Wide heads run this by default (H100,
 * D = 128: 96×16 4×2 2.74–2.95 ms against 4.18 one block per workgroup, bench/RESULTS.md); at
 * D ≤ 64 halved pairs run instead, and of these tiles 96×32 4×4 measured 2.6 ms, 96×16 4×2 1.47.
 */
const FORWARD_TILES_PAIRED: readonly Tiles[] = [G(96, 32, 4, 4), G(96, 16, 4, 2), G(64, 16, 4, 2), ...FALLBACK_TILES];
const FORWARD_TILES_PAIRED_WIDE: readonly Tiles[] = [G(96, 16, 4, 2), G(64, 16, 4, 2), ...FALLBACK_TILES];

/** Whether the forward band is causal-like: bounded right and unbounded left (blocks of unequal work). */
export function isBanded(c: AttentionConfig): boolean {
  return c.windowRight >= 0 && c.windowLeft < 0;
}

/**
 * The forward candidates for this problem (block-sparse reordering included); `schedule`: see
 * attention_forward.ts. Halved pairs give a causal band as many workgroups of equal work as the
 * full forward has, so they take the full forward's tiles.
 */
export function forwardTileCandidates(c: AttentionConfig, schedule: 'blocks' | 'paired' | 'halves' = 'blocks'): Tiles[] {
  const wide = c.headDim > 64 || c.headDimV > 64;
  const banded = isBanded(c) && schedule !== 'halves';
  const list = banded && schedule === 'paired' ? (wide ? FORWARD_TILES_PAIRED_WIDE : FORWARD_TILES_PAIRED)
    : banded ? FORWARD_TILES_BANDED : wide ? FORWARD_TILES_WIDE : FORWARD_TILES;
  return forBlockSize(list, c.blockSize);
}

export const BACKWARD_TILES: readonly Tiles[] = [
  { rows: 64, cols: 16, rowsPerThread: 4, colsPerThread: 2, rowsFromGlobal: true },
  ...FALLBACK_TILES,
];

/**
 * Block-sparse attention skips whole (query block × key tile) pairs only when a query block does
 * not straddle mask blocks, so tiles whose rows divide the block size go first there (128-row
 * blocks over a 64-block mask ran 2.4× slower at 10 % live blocks).
 */
export function forBlockSize(candidates: readonly Tiles[], blockSize: number): Tiles[] {
  if (blockSize === 0) return [...candidates];
  const aligned = (t: Tiles) => blockSize % t.rows === 0;
  return [...candidates.filter(aligned), ...candidates.filter(t => !aligned(t))];
}

/** The first of `preferred`, then `candidates`, whose workgroup memory (`bytes`) and threads fit. */
export function chooseTiles(bytes: (t: Tiles) => number, limit: number, maxThreads: number,
  candidates: readonly Tiles[], preferred?: Tiles): Tiles {
  const tiles = [...(preferred ? [preferred] : []), ...candidates]
    .find(t => bytes(t) <= limit && threadsOf(t).WG <= maxThreads);
  if (!tiles) throw new Error(`flashAttention (webgpu): no tile size fits ${limit} bytes of workgroup memory`);
  return tiles;
}

/** Whether rows sharing a thread row can reduce with subgroup shuffles on this device. */
export function subgroupReduceFits(t: Tiles, subgroupMinSize: number): boolean {
  const { TC } = threadsOf(t);
  return subgroupMinSize >= TC && (TC & (TC - 1)) === 0;
}

/** WGSL that reduces `value` (a f32 expression/variable name) over the TC threads of a row with `op`. */
export function rowReduce(t: Tiles, useSubgroups: boolean, op: 'max' | 'add', names: string[], rowIndex: (r: number) => string): string {
  const { TC } = threadsOf(t);
  const combine = (a: string, b: string) => (op === 'max' ? `max(${a}, ${b})` : `${a} + ${b}`);
  if (useSubgroups) {
    const lines: string[] = [];
    for (let m = 1; m < TC; m *= 2) {
      for (const n of names) lines.push(`${n} = ${combine(n, `subgroupShuffleXor(${n}, ${m}u)`)};`);
    }
    return lines.join('\n    ');
  }
  const lines = names.map((n, r) => `red[(${rowIndex(r)}) * TC + tc] = ${n};`);
  lines.push('workgroupBarrier();');
  names.forEach((n, r) => {
    const terms = Array.from({ length: TC }, (_, k) => `red[(${rowIndex(r)}) * TC + ${k}u]`);
    lines.push(`${n} = ${terms.reduce((a, b) => combine(a, b))};`);
  });
  lines.push('workgroupBarrier();');
  return lines.join('\n    ');
}
