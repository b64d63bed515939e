// The attention scores as both cpu kernels see them, defined once: which tiles exist, which tiles
// may hold a visible key, and the score of each (query, key) pair of a tile
//     s = scale·q·k → softcap → + bias → + ALiBi, or −Infinity when the key is hidden
// (window/causal, mask, keyLengths; block-sparse blocks are skipped as whole tiles).
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { AttentionConfig, layoutStrides, queryOffset } from '../../src/config';
import { dropoutKeep, dropoutThreshold } from '../../src/dropout';
import type { AttentionInputs } from '../../src/inputs';
import { Numbers, readFloats, readNumbers } from './cpu_io';

/** Query rows per tile and keys per tile. */
export const TILE_Q = 32;
export const TILE_K = 64;

export interface ScoreInputs {
  q: Float32Array;
  k: Float32Array;
  bias?: Float32Array;
  mask?: Numbers;
  keyLengths?: Numbers;
  alibiSlopes?: Float32Array;
  blockMask?: Numbers;
}

export function readScoreInputs(backend: MathBackendCPU, t: AttentionInputs<TensorInfo>): ScoreInputs {
  return {
    q: readFloats(backend, t.q),
    k: readFloats(backend, t.k),
    bias: t.bias && readFloats(backend, t.bias),
    mask: t.mask && readNumbers(backend, t.mask),
    keyLengths: t.keyLengths && readNumbers(backend, t.keyLengths),
    alibiSlopes: t.alibiSlopes && readFloats(backend, t.alibiSlopes),
    blockMask: t.blockMask && readNumbers(backend, t.blockMask),
  };
}

/** A run of positions [start, end) inside block number `block` of the block-sparse grid. */
export interface Tile {
  start: number;
  end: number;
  block: number;
}

/**
 * Splits [0, n) into tiles of at most `size` positions that never straddle a block of `blockSize`
 * positions, so a zero entry of the block mask is skipped as whole tiles.
 */
function tilesOf(n: number, blockSize: number, size: number): Tile[] {
  const tiles: Tile[] = [];
  for (let blockStart = 0, block = 0; blockStart < n; blockStart += blockSize, block++) {
    const blockEnd = Math.min(blockStart + blockSize, n);
    for (let start = blockStart; start < blockEnd; start += size) {
      tiles.push({ start, end: Math.min(start + size, blockEnd), block });
    }
  }
  return tiles;
}

/** Row-major element strides of a rank-4 shape, 0 on size-1 dims so that they broadcast. */
function broadcastStrides(shape: number[]): [number, number, number, number] {
  const [, d1, d2, d3] = shape;
  const dense = [d1 * d2 * d3, d2 * d3, d3, 1];
  return [0, 1, 2, 3].map(axis => (shape[axis] === 1 ? 0 : dense[axis])) as [number, number, number, number];
}

type Strides = { batch: number; head: number; seq: number };

export class AttentionScores {
  readonly queryTiles: Tile[];
  readonly keyTiles: Tile[];
  /** Element strides of q and k in the config's layout; the head dim is contiguous in both layouts. */
  readonly qStrides: Strides;
  readonly kStrides: Strides;
  private readonly offset: number;
  private readonly biasStrides: number[];
  private readonly maskStrides: number[];
  private readonly blockMaskStrides: number[];
  private readonly dropThreshold: number;
  private readonly keptScale: number;

  constructor(private readonly c: AttentionConfig, private readonly data: ScoreInputs) {
    const sparse = c.blockSize > 0;
    this.queryTiles = tilesOf(c.seqQ, sparse ? c.blockSize : c.seqQ, TILE_Q);
    this.keyTiles = tilesOf(c.seqK, sparse ? c.blockSize : c.seqK, TILE_K);
    this.qStrides = layoutStrides(c, c.headsQ, c.seqQ, c.headDim);
    this.kStrides = layoutStrides(c, c.headsKV, c.seqK, c.headDim);
    this.offset = queryOffset(c);
    this.biasStrides = c.biasShape.length ? broadcastStrides(c.biasShape) : [];
    this.maskStrides = c.maskShape.length ? broadcastStrides(c.maskShape) : [];
    this.blockMaskStrides = c.blockMaskShape.length ? broadcastStrides(c.blockMaskShape) : [];
    this.dropThreshold = dropoutThreshold(c.dropoutRate);
    this.keptScale = 1 / (1 - c.dropoutRate);
  }

  /** KV head read by query head h (GQA). */
  kvHead(h: number): number {
    return Math.floor(h / (this.c.headsQ / this.c.headsKV));
  }

  /** Keys [lo, hi) that query row i of batch b may see under the window and keyLengths. */
  private keyRange(b: number, i: number): [number, number] {
    const { windowLeft, windowRight, seqK } = this.c;
    const pos = i + this.offset;
    const lo = windowLeft < 0 ? 0 : Math.max(0, pos - windowLeft);
    let hi = windowRight < 0 ? seqK : Math.min(seqK, pos + windowRight + 1);
    if (this.data.keyLengths) hi = Math.min(hi, this.data.keyLengths[b]);
    return [lo, hi];
  }

  /**
   * Whether some pair of the query tile and key tile may be visible: the block mask entry is live and
   * the tile overlaps the keys the tile's rows may see. Dead tiles are skipped, not computed.
   */
  tileLive(b: number, h: number, qt: Tile, kt: Tile): boolean {
    const { blockMask } = this.data;
    if (blockMask) {
      const [sb, sh, si, sj] = this.blockMaskStrides;
      if (blockMask[b * sb + h * sh + qt.block * si + kt.block * sj] === 0) return false;
    }
    // The window's bounds grow with the row, so the first row gives the lowest key and the last the highest.
    const lo = this.keyRange(b, qt.start)[0];
    const hi = this.keyRange(b, qt.end - 1)[1];
    return lo < kt.end && hi > kt.start && lo < hi;
  }

  /** Index into the bias of the score (b, h, i, j), broadcasting. */
  biasIndex(b: number, h: number, i: number, j: number): number {
    const [sb, sh, si, sj] = this.biasStrides;
    return b * sb + h * sh + i * si + j * sj;
  }

  /** The dropout factor of a probability: 0 (dropped) or 1/(1 − rate) (kept); 1 without dropout. */
  dropoutFactor(b: number, h: number, i: number, j: number): number {
    if (this.c.dropoutRate === 0) return 1;
    return dropoutKeep(this.dropThreshold, this.c.dropoutSeed, b, h, i, j) ? this.keptScale : 0;
  }

  /**
   * Writes the score of (query qt.start + r, key kt.start + col) to out[r·cols + col], −Infinity
   * where the key is hidden. With softcap and `capSlope` given, also writes d(softcap)/d(raw score)
   * = 1 − tanh²(raw/c) there, which the backward's chain rule needs.
   */
  scoreTile(b: number, h: number, qt: Tile, kt: Tile, out: Float64Array, capSlope?: Float64Array): void {
    const { c, data } = this;
    const { q, k, bias, mask, alibiSlopes } = data;
    const cols = kt.end - kt.start;
    const D = c.headDim;
    const kBase = b * this.kStrides.batch + this.kvHead(h) * this.kStrides.head;
    const [mb, mh, mi, mj] = this.maskStrides;
    const slope = alibiSlopes ? alibiSlopes[(c.alibiShape[0] === 1 ? 0 : b) * c.headsQ + h] : 0;
    for (let i = qt.start; i < qt.end; i++) {
      const row = (i - qt.start) * cols;
      const qBase = b * this.qStrides.batch + h * this.qStrides.head + i * this.qStrides.seq;
      const [lo, hi] = this.keyRange(b, i);
      const pos = i + this.offset;
      for (let j = kt.start; j < kt.end; j++) {
        const at = row + j - kt.start;
        if (j < lo || j >= hi || (mask && mask[b * mb + h * mh + i * mi + j * mj] === 0)) {
          out[at] = -Infinity;
          continue;
        }
        const kRow = kBase + j * this.kStrides.seq;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[qBase + d] * k[kRow + d];
        let s = c.scale * dot;
        if (c.softcap > 0) {
          const t = Math.tanh(s / c.softcap);
          s = c.softcap * t;
          if (capSlope) capSlope[at] = 1 - t * t;
        }
        if (bias) s += bias[this.biasIndex(b, h, i, j)];
        if (alibiSlopes) s -= slope * Math.abs(pos - j);
        out[at] = s;
      }
    }
  }
}
