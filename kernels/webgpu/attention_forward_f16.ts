// The `precision: 'float16'` forward program (FlashAttention-2 on the matrix units). A workgroup
// of `groups` subgroups of 32 invocations owns 16·groups query rows, 16 per subgroup; K and V tiles
// of `keys` keys stream through workgroup memory as f16. Per key tile, each subgroup:
//   1. S = Q·Kᵀ for its 16 rows: 16×16×16 subgroup-matrix products into f32 (its Q operands were
//      loaded once into registers, or with `qShared` are reloaded from a workgroup slice), stored to
//      its own f32 slice of workgroup memory (`fs[g]`);
//   2. two invocations per row read the row's scores, apply every score modifier (attention_wgsl's
//      score2: softcap, bias, ALiBi, causal/window/mask/keyLengths/block-sparse visibility), update
//      the row's running max and sum in f32 (online softmax, base 2) and write P (with dropout,
//      bit-exact) as f16 to its slice `ps[g]`;
//   3. O += P·V, where O, the f32 output accumulator, is one of:
//      'matrices'  subgroup-matrix accumulators: P·V multiply-accumulates straight into them. The
//                  O rescale then needs a round trip through workgroup memory (no per-row scaling of
//                  a matrix exists), so it is lazy: a row's exponents stay relative to a max that
//                  may lag the true one by up to RESCALE_SLACK (P ≤ 2^8, far inside f16), and O and
//                  the row sums are rescaled only in tiles where some row of the workgroup outgrows
//                  it (a workgroup-uniform decision, so every barrier of the round trip is in
//                  uniform control flow). O / l is exact whatever the reference max; on random
//                  inputs that is the first tile only. Needs subgroups (subgroupAny).
//      'lanes'     f32 registers of the row's two invocations: T = P·V is stored through `fs[g]` in
//                  column chunks (`valueCols`) and added; rescaled every tile (exact FA-2).
// Bounds checks (Dawn's robustness, on in browsers): every subgroup-matrix load and store is at a
// compile-time offset into a constant-size array (the subgroup's slice is `fs[g]`, `ps[g]`, the
// K/V tile `kv[slot]`), so Tint's range test around it folds away; only the slice index is clamped.
// K/V tiles may be double-buffered (`doubleBuffer`: the next tile is staged into the other slot,
// which saves the barrier before staging) and staged through registers (`stage`: all of an
// invocation's loads in flight together, or the next tile's loads issued before this tile's
// products). Key tiles outside the causal band / window / keyLengths
// are never visited; block-sparse tiles with no live block are skipped. The 'registers' plan
// computes S and P·V per invocation from the same workgroup tiles and writes them where the
// matrices would, so everything around the products is the same code (and is tested on adapters
// without f16 in f32). keyLengths and block liveness are read by every invocation, never by one and
// broadcast: with a thread-0 branch before the matrix products the H100 gave wrong outputs for
// exactly those cases; without it all 35 cases of test/cases.ts pass there (bench/RESULTS.md,
// float16 forward).
// Under a causal band, query blocks may run paired (i with n−1−i in one workgroup) or as halved
// pairs (two workgroups per pair, partial outputs merged by merge_splits.ts), exactly as in the
// float32 forward and with its WGSL helpers (f16ForwardTuning.schedule; flash_attention.ts).
import { AttentionConfig } from '../../src/config';
import type { AuxLayout } from './aux';
import {
  BlockPairing, blockPairing, blockTilesFunction, forwardBindings, halfWalkTiles, PAIR_WALK_HALVES, pairedBlockLoop,
  pairedBlockRows, pairedIds, pairedRow, shaderConfig,
} from './attention_forward';
import {
  COMMON_UNIFORMS, constants, keyRange, queryBlockIds, queryScale, scoreFunctions, tensorAccess, vec4Q,
  vec4V,
} from './attention_wgsl';
import type { StageMode } from './attention_backward_f16_matrix';
import {
  F16Plan, f16Plan, leftType, matrixDiagnostic, matrixLoad, planExtensions, RESULT_TYPE, rightType,
  roundUp, stageTile, SUBGROUP_SIZE,
} from './f16_support';
import { f32, isSoftwareAdapter, ProgramSpec, range, subgroupMinSize } from './runtime';
import type { ForwardSchedule } from './tuning';

/** How a forward program holds the O accumulator (see the header). */
export type F16Accumulator = 'matrices' | 'lanes';

/** Subgroups per workgroup (16 query rows each), keys per K/V tile (a multiple of 16) and the rest of the schedule. */
export interface F16Tiles {
  groups: number;
  keys: number;
  /** Default 'lanes'; 'matrices' only runs where subgroups are used (else the candidate is skipped). */
  accumulator?: F16Accumulator;
  /** Two K/V tile slots (default one). */
  doubleBuffer?: boolean;
  /**
   * How K/V tiles reach workgroup memory (default 'loop'): 'loop' loads, converts and stores one
   * vec4 at a time; 'batched' loads all of an invocation's vec4s into registers first (the global
   * loads in flight together); 'prefetch' issues the next tile's loads right after this tile is
   * stored, so they are in flight during this tile's products (runs 'batched' with block-sparse
   * masks, whose walks skip tiles). As the f16 backward's StageMode.
   */
  stage?: StageMode;
  /**
   * Matrix plan: Q stays in a workgroup slice per subgroup and its operands are loaded for every
   * key tile, instead of living in registers (default): 4·D/16 fewer registers per invocation for
   * wide heads, at the cost of 15·(D+8)+D f16 per subgroup of workgroup memory.
   */
  qShared?: boolean;
  /**
   * Columns of O staged through `fs` at a time (a multiple of 16; default `keys`): T = P·V for
   * 'lanes', the rescale and the final read for 'matrices'. Wider chunks cost workgroup memory
   * and save barriers.
   */
  valueCols?: number;
}

/**
 * Schedules fastest first where they fit, by head width (H100, N = 4096, bounds checks on,
 * bench/RESULTS.md float16 forward, 2026-11-26 19:41 and 19:44 UTC: 15 interleaved rounds each on
 * shared inputs, the float32 kernel steady at 23.0–23.1 (D = 64) and 19.6–19.7 (D = 128) TFLOP/s
 * beside them; host-clock medians, GPU-timestamp medians in brackets):
 *   - heads up to 64: 4×32 with O in matrices and the next K/V tile prefetched into registers
 *     (8 vec4 per invocation): 79.7 and 76.7 (87.4) TFLOP/s, against 62.2 and 62.5 (71.5) for the
 *     previous default 8×32. The gain is the 4 subgroups: 4×32 staged by loop or batched read the
 *     same (79.2, 79.9; 87.4), 8×32 double-buffered and prefetched 75.7 and 75.5 (78.6);
 *   - wider heads: 4×32 with O in matrices and Q operands reloaded from a workgroup slice
 *     (qShared): 74.9 and 74.8 (78.6) at D = 128, against 66.2 and 67.2 (78.6) for the previous
 *     default (Q in registers, whose batches had more slow passes), 74.5 and 74.0 with batched
 *     staging; prefetched 70.6 (74.9), qShared and prefetched 68.7 (71.5): the prefetch holds 16
 *     vec4 per invocation there, beside O's 64 registers.
 * Then the previous defaults, and the 'lanes' schedules for devices without subgroups.
 */
const NARROW_HEAD_TILES: readonly F16Tiles[] = [{ groups: 4, keys: 32, accumulator: 'matrices', stage: 'prefetch' }];
const WIDE_HEAD_TILES: readonly F16Tiles[] = [{ groups: 4, keys: 32, accumulator: 'matrices', qShared: true }];
const FALLBACK_TILES: readonly F16Tiles[] = [
  { groups: 8, keys: 32, accumulator: 'matrices' }, { groups: 4, keys: 32, accumulator: 'matrices' },
  { groups: 4, keys: 16, accumulator: 'matrices' },
  { groups: 8, keys: 32 }, { groups: 4, keys: 32 }, { groups: 8, keys: 16 }, { groups: 4, keys: 16 },
  { groups: 2, keys: 32 }, { groups: 2, keys: 16 }, { groups: 1, keys: 16 },
];

/** The forward's schedule candidates for this problem, best first (the first that fits runs). */
export function f16ForwardTiles(c: AttentionConfig): readonly F16Tiles[] {
  return [...(Math.max(c.headDim, c.headDimV) > 64 ? WIDE_HEAD_TILES : NARROW_HEAD_TILES), ...FALLBACK_TILES];
}

/**
 * Fewest subgroups per workgroup of the subgroup-matrix plan: with 2 subgroups (2×64 and 2×32
 * double-buffered, O in matrices) the H100 gave wrong outputs (errors 0.3–1·max|v| on plain cases,
 * 18:50 UTC), where 4 and 8 were right on all 35 cases (18:50 and 19:03); unexplained, so smaller
 * workgroups run the f16 registers plan.
 */
const MIN_MATRIX_GROUPS = 4;

/**
 * The largest RESCALE_SLACK (log2 units) by which a row's exponent reference may lag its max in
 * the 'matrices' accumulator: P ≤ 2^8 = 256 keeps f16's 11-bit precision and ample range below
 * 65504, and O, l in f32 grow by at most that factor.
 */
const RESCALE_SLACK = 8;

interface Layout {
  DP: number; DVP: number; KS: number; VS: number; QS: number; FS: number; PS: number;
  /** Element offset of the V tile in a `kv` slot. */
  VOFF: number;
  slots: number; qGroups: number; kvSize: number; qsSize: number; fsSize: number; psSize: number;
  /** Elements per subgroup of the matrix plan's shared Q slices (0: Q operands in registers). */
  qwSize: number;
}

function chunkWidth(t: F16Tiles): number {
  return t.valueCols ?? t.keys;
}

/** Padded strides keep matrix rows 16-byte aligned and spread rows over memory banks. */
function layoutOf(c: AttentionConfig, plan: F16Plan, t: F16Tiles): Layout {
  const DP = roundUp(c.headDim, 16), DVP = roundUp(c.headDimV, 16);
  const matrix = plan.matmul === 'subgroup-matrix';
  const KS = DP + 8, VS = DVP + 8, QS = DP + 8, FS = Math.max(t.keys, chunkWidth(t)) + 4, PS = t.keys + 8;
  const VOFF = t.keys * KS;
  const slots = t.doubleBuffer ? 2 : 1;
  // Unless Q is kept shared, the matrix plan stages Q once through the K/V slots, `qGroups`
  // subgroups' 16 rows per slot (its operands then live in registers).
  const qGroups = Math.ceil(t.groups / slots);
  const qShared = matrix && t.qShared === true;
  const kvSize = Math.max(VOFF + t.keys * VS, matrix && !qShared ? 16 * qGroups * QS : 0);
  return {
    DP, DVP, KS, VS, QS, FS, PS, VOFF, slots, qGroups, kvSize,
    // A Q slice ends where its last row does (no padding after it): 4×32 with qShared then fits
    // 48 KiB at D = 128.
    qsSize: matrix ? 0 : 16 * t.groups * QS, fsSize: 16 * FS, psSize: 16 * PS, qwSize: qShared ? 15 * QS + DP : 0,
  };
}

export function forwardF16WorkgroupBytes(c: AttentionConfig, plan: F16Plan, t: F16Tiles, useSubgroups: boolean): number {
  const l = layoutOf(c, plan, t);
  const e = plan.element === 'f16' ? 2 : 4;
  return e * (l.slots * l.kvSize + l.qsSize + t.groups * (l.psSize + l.qwSize)) + 4 * t.groups * l.fsSize +
    (t.accumulator === 'matrices' ? 4 * t.groups : 0) + (useSubgroups ? 0 : 4 * SUBGROUP_SIZE * t.groups) + 16;
}

/** One operand of the K/V tile as registerStaging stages it: `at` is its offset in the slot. */
interface StagedOperand {
  load: string;
  at: number;
  stride: number;
  /** vec4 columns staged (the padded head) and the head's own (zero past them). */
  cols4: number;
  dim4: string;
}

/**
 * 'batched' and 'prefetch' staging of a `rows`-row K/V tile by `wg` invocations, in the manner of
 * the backward's walkedStaging (attention_backward_f16_matrix.ts) but into one slot at offsets:
 * invocation lidx holds vec4s lidx, lidx + wg, … of each operand in its own variables (constant
 * indices keep them in registers). Rows past the sequence and columns past the head are zeroed
 * by select, so the loads carry no branch; their addresses are clamped to the walk's last key
 * `kLast` (a prefetch past the last tile then reads no row outside the dispatch's K/V binding,
 * chunks.ts) and the head's last column. `declare` once, `fetch(first)` into the registers,
 * `store(dst)` them.
 */
function registerStaging(element: string, rows: number, wg: number, operands: StagedOperand[]):
    { declare: string; fetch: (first: string) => string; store: (dst: string) => string } {
  const parts = operands.map((o, n) => {
    const total = rows * o.cols4, slots = Math.ceil(total / wg);
    const name = (k: number) => `stg${n}_${k}`;
    const index = (k: number) => (total % wg === 0 ? `lidx + ${k * wg}u` : `min(lidx + ${k * wg}u, ${total - 1}u)`);
    const fetch = (first: string) => range(slots).map(k => `{
      let e = ${index(k)};
      let r = e / ${o.cols4}u;
      let c = e % ${o.cols4}u;
      let x = ${o.load}(b, hk, min(${first} + r, kLast), min(c, ${o.dim4} - 1u));
      ${name(k)} = select(vec4<f32>(0.0), x, (${first} + r < SEQK) & (c < ${o.dim4}));
    }`).join('\n    ');
    const store = (dst: string) => range(slots).map(k => {
      const body = `let e = lidx + ${k * wg}u;
      let at = ${o.at}u + (e / ${o.cols4}u) * ${o.stride}u + (e % ${o.cols4}u) * 4u;
${range(4).map(x => `      ${dst}[at + ${x}u] = ${element}(${name(k)}[${x}]);`).join('\n')}`;
      return (k + 1) * wg <= total ? `{\n      ${body}\n    }` : `if (lidx + ${k * wg}u < ${total}u) {\n      ${body}\n    }`;
    }).join('\n    ');
    return { declare: range(slots).map(k => `var ${name(k)}: vec4<f32>;`).join(' '), fetch, store };
  });
  return {
    declare: parts.map(p => p.declare).join('\n  '),
    fetch: first => parts.map(p => p.fetch(first)).join('\n    '),
    store: dst => parts.map(p => p.store(dst)).join('\n    '),
  };
}

/**
 * Block-sparse: skips key tile [j0, j0 + BK) when none of its mask blocks is live for the
 * workgroup's rows. Every invocation reads the (few) blockMask entries itself: reads of a
 * read-only buffer at workgroup-uniform indices are uniform, so no invocation branches alone. A
 * branch taken by one invocation (thread 0 scanning the mask, then a workgroupUniformLoad) left
 * wrong results next to the subgroup-matrix operations on the H100, where the same code without
 * matrices was right.
 */
function liveTileTest(c: AttentionConfig): string {
  if (c.blockSize === 0) return '';
  return `var live = false;
    for (var qb2 = iFirst / BLOCK; qb2 <= iLast / BLOCK; qb2++) {
      for (var kb2 = j0 / BLOCK; kb2 <= (min(j0 + BK, SEQK) - 1u) / BLOCK; kb2++) {
        live = live | blockLive(b, h, qb2, kb2);
      }
    }
    if (!live) { continue; }`;
}

/**
 * `pairing`: query blocks i and n−1−i in one workgroup, or with halves in two that split the pair's
 * key walk and write partials for merge_splits.ts, as the float32 forward (attention_forward.ts,
 * whose WGSL helpers these are; flash_attention.ts runs the merge).
 */
export function forwardF16Program(c: AttentionConfig, aux: AuxLayout, withAux: boolean, plan: F16Plan, t: F16Tiles,
  useSubgroups: boolean, pairing: BlockPairing): ProgramSpec {
  const bindings = forwardBindings(c, withAux, pairing.halves);
  const uniforms = [...COMMON_UNIFORMS, ...bindings.map(b => `off_${b.name}`)];
  if (t.keys % 16 !== 0 || chunkWidth(t) % 16 !== 0) {
    throw new Error(`flashAttention (webgpu, float16): tiles ${JSON.stringify(t)} are not multiples of 16`);
  }
  if (t.accumulator === 'matrices' && !useSubgroups) {
    throw new Error('flashAttention (webgpu, float16): the \'matrices\' accumulator needs subgroups');
  }
  return {
    key: JSON.stringify({ program: 'attention_forward_f16', config: shaderConfig(c), plan, tiles: t, useSubgroups, withAux, pairing }),
    bindings, uniforms,
    // Built only when the pipeline cache misses: assembling the text took 50–90 µs of host time per
    // call (D = 64 / 128, measured in Node), a sizeable part of a call at N = 1024, where the host,
    // not the GPU, bounds the forward.
    body: () => forwardF16Source(c, aux, plan, t, useSubgroups, pairing),
    extensions: planExtensions(plan, useSubgroups),
  };
}

/** The WGSL of forwardF16Program after its bindings (see the header). */
function forwardF16Source(c: AttentionConfig, aux: AuxLayout, plan: F16Plan, t: F16Tiles, useSubgroups: boolean,
  pairing: BlockPairing): string {
  const inMatrices = t.accumulator === 'matrices';
  const L = layoutOf(c, plan, t);
  const E = plan.element;
  const matrix = plan.matmul === 'subgroup-matrix';
  const BQ = 16 * t.groups, BK = t.keys, WG = SUBGROUP_SIZE * t.groups;
  const DV4 = Math.ceil(c.headDimV / 4);
  // Invocation (g, lane) owns row r = lane/2 of its subgroup's 16 and, of it, score columns
  // half + 2k and O vec4 columns half + 2m (half = lane % 2), i.e. elements 8m + 4·half + 0..3.
  const cols = range(BK / 2);
  const o4 = range(L.DVP / 8);
  const CW = chunkWidth(t);
  const chunks = range(Math.ceil(L.DVP / CW));
  const chunkOf = (m: number) => Math.floor((8 * m) / CW);
  const chunkBlocks = (ch: number) => range(L.DVP / 16).filter(n => Math.floor((n * 16) / CW) === ch);
  const d16 = range(L.DP / 16), k16 = range(BK / 16);
  const slot = L.slots > 1 ? 'kv[slot]' : 'kv[0]';

  const partner = (x: string, op: 'max' | 'add') => {
    const f = (a: string, b: string) => (op === 'max' ? `max(${a}, ${b})` : `${a} + ${b}`);
    return useSubgroups ? `${x} = ${f(x, `subgroupShuffleXor(${x}, 1u)`)};`
      : `red[lidx] = ${x};\n    workgroupBarrier();\n    ${x} = ${f(x, 'red[lidx ^ 1u]')};\n    workgroupBarrier();`;
  };
  const el = (a: string) => (E === 'f32' ? a : `f32(${a})`);
  const vec = (arr: string, at: string) => `vec4<f32>(${[0, 1, 2, 3].map(e => el(`${arr}[${at} + ${e}u]`)).join(', ')})`;
  /** fs[g] position of element e of the invocation's O vec4 m within chunk ch. */
  const oAt = (m: number, ch: number, e: number) => `r * FS + half * 4u + ${8 * m - ch * CW + e}u`;

  const qOperand = (d: number) => (L.qwSize ? matrixLoad(leftType(E), 'qw[g]', `${d * 16}u`, false, 'QS') : `qm${d}`);
  // S = Q·Kᵀ of this subgroup's rows into fs[g].
  const scores = matrix ? `
    ${k16.map(n => `{
      var acc = ${RESULT_TYPE}();
${d16.map(d => `      acc = subgroupMatrixMultiplyAccumulate(${qOperand(d)}, ${matrixLoad(rightType(E), slot, `${n * 16 * L.KS + d * 16}u`, true, 'KS')}, acc);`).join('\n')}
      subgroupMatrixStore(&fs[g], ${n * 16}u, acc, false, FS);
    }`).join('\n    ')}` : `
${cols.map(k => `    var s${k} = 0.0;`).join('\n')}
    for (var d = 0u; d < DP; d += 4u) {
      let qv = ${vec('qs', 'row * QS + d')};
${cols.map(k => `      s${k} += dot(qv, ${vec(slot, `(half + ${2 * k}u) * KS + d`)});`).join('\n')}
    }
${cols.map(k => `    fs[g][r * FS + half + ${2 * k}u] = s${k};`).join('\n')}`;

  // P·V with the registers plan: vec4 m of the invocation's row.
  const laneValues = (m: number) => `{
      let col = half * 4u + ${8 * m}u;
      var acc = vec4<f32>(0.0);
      for (var kk = 0u; kk < BK; kk++) {
        acc += ${el('ps[g][r * PS + kk]')} * ${vec(slot, 'VOFF + kk * VS + col')};
      }`;
  const vLoad = (kk: number, n: number) => matrixLoad(rightType(E), slot, `${L.VOFF + kk * 16 * L.VS + n * 16}u`, false, 'VS');

  // 'lanes': T = P·V for the columns of chunk `ch`, into fs[g], then added to the O registers.
  const lanesValues = (ch: number) => matrix ? chunkBlocks(ch).map(n => `{
      var acc = ${RESULT_TYPE}();
${k16.map(kk => `      acc = subgroupMatrixMultiplyAccumulate(pm${kk}, ${vLoad(kk, n)}, acc);`).join('\n')}
      subgroupMatrixStore(&fs[g], ${n * 16 - ch * CW}u, acc, false, FS);
    }`).join('\n    ') : o4.filter(m => chunkOf(m) === ch).map(m => `${laneValues(m)}
${[0, 1, 2, 3].map(e => `      fs[g][${oAt(m, ch, e)}] = acc[${e}];`).join('\n')}
    }`).join('\n    ');
  const addValues = (ch: number) => o4.filter(m => chunkOf(m) === ch).map(m =>
    `o${m} += vec4<f32>(${[0, 1, 2, 3].map(e => `fs[g][${oAt(m, ch, e)}]`).join(', ')});`).join('\n    ');
  const lanesUpdate = `${partner('mt', 'max')}
    let mNew = max(m, mt);
    let mUse = select(mNew, 0.0, mNew == negInf());
    let alpha = exp2(m - mUse);
    m = mNew;
    l *= alpha;
${o4.map(x => `    o${x} *= alpha;`).join('\n')}`;
  const lanesAccumulate = `${matrix ? k16.map(kk => `    let pm${kk} = ${matrixLoad(leftType(E), 'ps[g]', `${kk * 16}u`, false, 'PS')};`).join('\n') : ''}
${chunks.map(ch => `    ${ch > 0 ? 'workgroupBarrier();\n    ' : ''}${lanesValues(ch)}
    workgroupBarrier();
    ${addValues(ch)}`).join('\n')}`;

  // 'matrices': O lives in om<n> (matrix plan) or in the invocations' o<m> registers (registers
  // plan, which emulates the same data flow through fs[g]).
  const storeO = (ch: number) => matrix
    ? chunkBlocks(ch).map(n => `subgroupMatrixStore(&fs[g], ${n * 16 - ch * CW}u, om${n}, false, FS);`).join('\n      ')
    : o4.filter(m => chunkOf(m) === ch).map(m => [0, 1, 2, 3].map(e => `fs[g][${oAt(m, ch, e)}] = o${m}[${e}];`).join(' '))
      .join('\n      ');
  const loadO = (ch: number) => matrix
    ? chunkBlocks(ch).map(n => `om${n} = ${matrixLoad(RESULT_TYPE, 'fs[g]', `${n * 16 - ch * CW}u`, false, 'FS')};`).join('\n      ')
    : o4.filter(m => chunkOf(m) === ch).map(m => `o${m} = vec4<f32>(${[0, 1, 2, 3].map(e => `fs[g][${oAt(m, ch, e)}]`).join(', ')});`)
      .join('\n      ');
  const rescaleO = chunks.map(ch => `${ch > 0 ? 'workgroupBarrier();\n      ' : ''}${storeO(ch)}
      workgroupBarrier();
      ${o4.filter(m => chunkOf(m) === ch).map(m => [0, 1, 2, 3].map(e => `fs[g][${oAt(m, ch, e)}] *= alpha;`).join(' ')).join('\n      ')}
      workgroupBarrier();
      ${loadO(ch)}`).join('\n      ');
  const matricesUpdate = `${partner('mt', 'max')}
    let mNew = max(m, mt);
    grew[g] = select(0u, 1u, subgroupAny(mNew > m + ${f32(RESCALE_SLACK)}));
    let grewAny = workgroupUniformLoad(&grew);
    if ((${range(t.groups).map(x => `grewAny[${x}]`).join(' | ')}) != 0u) {
      let alpha = exp2(m - select(mNew, 0.0, mNew == negInf()));
      m = mNew;
      l *= alpha;
      ${rescaleO}
    }
    let mUse = select(m, 0.0, m == negInf());`;
  const matricesAccumulate = matrix
    ? `${k16.map(kk => `    let pm${kk} = ${matrixLoad(leftType(E), 'ps[g]', `${kk * 16}u`, false, 'PS')};`).join('\n')}
${range(L.DVP / 16).map(n => k16.map(kk => `    om${n} = subgroupMatrixMultiplyAccumulate(pm${kk}, ${vLoad(kk, n)}, om${n});`).join('\n')).join('\n')}`
    : o4.map(m => `    ${laneValues(m)}
      o${m} += acc;
    }`).join('\n');
  // 'matrices' with the matrix plan: O comes out of its matrices through fs[g] at the end.
  const readO = inMatrices && matrix ? `${o4.map(x => `  var o${x} = vec4<f32>(0.0);`).join('\n')}
${chunks.map(ch => `  ${ch > 0 ? 'workgroupBarrier();\n  ' : ''}${storeO(ch)}
  workgroupBarrier();
  ${o4.filter(m => chunkOf(m) === ch).map(m => `o${m} = vec4<f32>(${[0, 1, 2, 3].map(e => `fs[g][${oAt(m, ch, e)}]`).join(', ')});`).join('\n  ')}`).join('\n')}` : '';

  // Each subgroup stages its own 16 Q rows, into its shared slice or K/V slot g / qGroups.
  const qSlot = L.qwSize ? 'qw[g]' : `kv[g / ${L.qGroups}u]`;
  const qBase = L.qwSize ? '0u' : `(g % ${L.qGroups}u) * ${16 * L.QS}u`;
  const stageQ = matrix ? `${stageTile({ dst: qSlot, element: E, rows: 16, cols4: L.DP / 4, dim4: 'DK4', stride: L.QS,
    first: 'i0 + g * 16u', limit: 'SEQQ', load: (row, c4) => `load_q(b, h, ${row}, ${c4})`, scale: 'QSCALE',
    at: qBase, invocations: SUBGROUP_SIZE, thread: 'lane' })}
  workgroupBarrier();
${L.qwSize ? '' : d16.map(d => `  let qm${d} = ${matrixLoad(leftType(E), qSlot, `${qBase} + ${d * 16}u`, false, 'QS')};`).join('\n')}`
    : `${stageTile({ dst: 'qs', element: E, rows: BQ, cols4: L.DP / 4, dim4: 'DK4', stride: L.QS, first: 'i0',
      limit: 'SEQQ', load: (row, c4) => `load_q(b, h, ${row}, ${c4})`, scale: 'QSCALE', invocations: WG })}
  workgroupBarrier();`;

  // A prefetch walk must visit consecutive tiles: block-sparse walks skip some.
  const stage: StageMode = t.stage === 'prefetch' && c.blockSize > 0 ? 'batched' : t.stage ?? 'loop';
  const staging = registerStaging(E, BK, WG, [
    { load: 'load_k', at: 0, stride: L.KS, cols4: L.DP / 4, dim4: 'DK4' },
    { load: 'load_v', at: L.VOFF, stride: L.VS, cols4: L.DVP / 4, dim4: 'DV4' },
  ]);
  const stageKV = {
    loop: `${stageTile({ dst: slot, element: E, rows: BK, cols4: L.DP / 4, dim4: 'DK4', stride: L.KS, first: 'j0',
      limit: 'SEQK', load: (row, c4) => `load_k(b, hk, ${row}, ${c4})`, invocations: WG })}
    ${stageTile({ dst: slot, element: E, rows: BK, cols4: L.DVP / 4, dim4: 'DV4', stride: L.VS, first: 'j0',
      limit: 'SEQK', load: (row, c4) => `load_v(b, hk, ${row}, ${c4})`, at: L.VOFF, invocations: WG })}`,
    batched: `${staging.fetch('j0')}
    ${staging.store(slot)}`,
    prefetch: `${staging.store(slot)}
    ${staging.fetch('j0 + BK')}`,
  }[stage];

  // With halves, this half's partial output and lse for the row (by absolute row, merge_splits.ts),
  // also where its part of the walk is empty (output 0, lse −∞, which the merge weighs 0).
  const lseAt = pairing.halves ? 'partial_lse[prow - u.off_partial_lse]' : 'lse[bh * SEQQ + i - u.off_lse]';
  return `
${constants(c)}
const BQ = ${BQ}u;
const BK = ${BK}u;
const WG = ${WG}u;
const DP = ${L.DP}u;
const KS = ${L.KS}u;
const VS = ${L.VS}u;
const QS = ${L.QS}u;
const FS = ${L.FS}u;
const PS = ${L.PS}u;
const VOFF = ${L.VOFF}u;
const QSCALE = ${f32(queryScale(c))};
${pairing.halves ? `const ROWS = ${c.batch * c.headsQ * c.seqQ}u;` : ''}
var<workgroup> kv: array<array<${E}, ${L.kvSize}>, ${L.slots}>;
${L.qsSize ? `var<workgroup> qs: array<${E}, ${L.qsSize}>;` : ''}
${L.qwSize ? `var<workgroup> qw: array<array<${E}, ${L.qwSize}>, ${t.groups}>;` : ''}
var<workgroup> fs: array<array<f32, ${L.fsSize}>, ${t.groups}>;
var<workgroup> ps: array<array<${E}, ${L.psSize}>, ${t.groups}>;
${inMatrices ? `var<workgroup> grew: array<u32, ${t.groups}>;` : ''}
${useSubgroups ? '' : `var<workgroup> red: array<f32, ${WG}>;`}
${tensorAccess(c, 'q', c.headsQ, c.seqQ, c.headDim, vec4Q(c), 'load')}
${tensorAccess(c, 'k', c.headsKV, c.seqK, c.headDim, vec4Q(c), 'load')}
${tensorAccess(c, 'v', c.headsKV, c.seqK, c.headDimV, vec4V(c), 'load')}
${pairing.halves ? '' : tensorAccess(c, 'out', c.headsQ, c.seqQ, c.headDimV, vec4V(c), 'store')}
${scoreFunctions(c, aux, BK)}
${pairing.paired ? pairedBlockRows(c) : ''}
${pairing.halves ? blockTilesFunction(c) : ''}

${matrixDiagnostic(plan)}@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let g = lidx / ${SUBGROUP_SIZE}u;
  let lane = lidx % ${SUBGROUP_SIZE}u;
  let half = lane % 2u;
  let r = lane / 2u;
  let row = g * 16u + r;
  ${pairing.paired ? pairedIds(c, BQ, pairing.halves) : queryBlockIds(c, BQ)}
  let b = bh / HQ;
  let h = bh % HQ;
  let hk = h / GROUP;
  let kl = keyLimitOf(b);
  ${pairing.halves ? PAIR_WALK_HALVES : ''}
  ${pairing.paired ? pairedBlockLoop('pairSlot') : ''}
  let i0 = ${pairing.paired ? 'blockStart(qb)' : 'qb * BQ'};
  let i = ${pairing.paired ? pairedRow('i0 + row') : 'i0 + row'};
  // Scores of rows past the end are computed (and never stored) at the last row's indices.
  let iS = min(i, SEQQ - 1u);
  ${stageQ}
${L.slots > 1 && !L.qwSize ? '  workgroupBarrier(); // every Q read out of the slots before the first K/V tile lands there\n' : ''}  ${pairing.paired ? `let blockRange = blockRows(qb);
  let iFirst = blockRange.x;
  let iLast = blockRange.y;` : `let iFirst = i0;
  let iLast = min(i0 + BQ, SEQQ) - 1u;`}
  ${keyRange(c)}
  ${pairing.halves ? halfWalkTiles('pairSlot') : `let tFirst = jLo / BK;
  let tEnd = select(tFirst, (jHi + BK - 1u) / BK, jHi > jLo);`}
  var m = negInf();
  var l = 0.0;
${inMatrices && matrix ? range(L.DVP / 16).map(n => `  var om${n} = ${RESULT_TYPE}();`).join('\n')
    : o4.map(x => `  var o${x} = vec4<f32>(0.0);`).join('\n')}
${L.slots > 1 ? '  var slot = 0u;' : ''}
${c.dropoutRate > 0 ? '  let drop = dropoutRow(b, h, i);' : ''}
${stage === 'loop' ? '' : `  let kLast = max(jHi, jLo + 1u) - 1u;\n  ${staging.declare}\n`}${stage === 'prefetch' ? `  if (tEnd > tFirst) {\n    ${staging.fetch('tFirst * BK')}\n  }\n` : ''}  for (var t = tFirst; t < tEnd; t++) {
    let j0 = t * BK;
    ${liveTileTest(c)}
    ${L.slots > 1 ? '' : 'workgroupBarrier();'}
    ${stageKV}
    workgroupBarrier();
${scores}
    workgroupBarrier();
    var mt = negInf();
${cols.map(k => `    let x${k} = score2(fs[g][r * FS + half + ${2 * k}u], b, h, iS, j0 + half + ${2 * k}u, kl);
    mt = max(mt, x${k});`).join('\n')}
    ${inMatrices ? matricesUpdate : lanesUpdate}
    var ls = 0.0;
${cols.map(k => {
    const p = `p${k}`;
    const kept = c.dropoutRate > 0 ? `select(0.0, ${p} * KEEP_SCALE, dropoutKeep(drop, j0 + half + ${2 * k}u))` : p;
    return `    let ${p} = exp2(x${k} - mUse);
    ls += ${p};
    ps[g][r * PS + half + ${2 * k}u] = ${E}(${kept});`;
  }).join('\n')}
    l += ls;
    workgroupBarrier();
${inMatrices ? matricesAccumulate : lanesAccumulate}
${L.slots > 1 ? '    slot = 1u - slot;' : ''}
  }
  ${partner('l', 'add')}
${readO}
  if (i < SEQQ) {
    let inv = select(1.0 / l, 0.0, l == 0.0);
${pairing.halves ? '    let prow = walkHalf * ROWS + bh * SEQQ + i;\n' : ''}${o4.map(x => {
    const c4 = `half + ${2 * x}u`;
    const store = pairing.halves ? `partial_out[prow * DV4 + ${c4} - u.off_partial_out] = o${x} * inv;`
      : `store_out(b, h, i, ${c4}, o${x} * inv);`;
    return 2 * x + 1 < DV4 ? `    ${store}` : `    if (${c4} < DV4) { ${store} }`;
  }).join('\n')}
    if (half == 0u) {
      let mUse = select(m, 0.0, m == negInf());
      let value = select((mUse + log2(l)) * LN2, negInf(), l == 0.0);
      let special = select(nanValue(), -negInf(), m == -negInf());
      ${lseAt} = select(value, special, !isFinite(l) | (m == -negInf()));
    }
  }
${pairing.paired ? '  }' : ''}
}
`;
}

/** Tiles for a CPU adapter (tests): compile time dominates there. */
const SOFTWARE_F16_TILES: F16Tiles = { groups: 1, keys: 16 };

/** Overrides for tests and benches. */
export const f16ForwardTuning: {
  tiles?: F16Tiles;
  subgroups: boolean;
  /**
   * Paired (and halved) query blocks as the float32 forward's ForwardSchedule. Off ('never'): one
   * 64-row block per workgroup, heaviest first, was as fast or faster on the H100 at N = 4096
   * (bench/RESULTS.md, float16 forward, 21:36 UTC, 7 interleaved rounds, causal, default tiles):
   * D = 64 0.345 ms against 0.353 halved pairs and 0.399 whole pairs; D = 128 0.752 against 0.827
   * and 0.793. Whole pairs won only at N = 8192, D = 64 (1.068 against 1.178 ms).
   */
  schedule: Pick<ForwardSchedule, 'pairBlocks' | 'halvePairs'>;
} = { subgroups: true, schedule: { pairBlocks: 'never', halvePairs: 'never' } };

/** How the float16 forward maps query blocks to workgroups for this problem (f16ForwardTuning.schedule). */
export function f16Pairing(c: AttentionConfig): BlockPairing {
  return blockPairing(c, f16ForwardTuning.schedule);
}

/**
 * The float16 forward program for this device, by block pairing, and the query rows per workgroup
 * (a block), or undefined when the device has no f16 plan (f16_support.ts; the float32 kernel runs then).
 */
export function forwardF16(device: GPUDevice, c: AttentionConfig, aux: AuxLayout, withAux: boolean):
    { program: (pairing: BlockPairing) => ProgramSpec; rows: number } | undefined {
  const planned = f16Plan(device, 'forward');
  if (!planned) return undefined;
  const useSubgroups = f16ForwardTuning.subgroups && device.features.has('subgroups') &&
    subgroupMinSize(device) >= 2;
  const limit = device.limits.maxComputeWorkgroupStorageSize;
  const candidates = [
    ...(f16ForwardTuning.tiles ? [f16ForwardTuning.tiles] : isSoftwareAdapter(device) ? [SOFTWARE_F16_TILES] : []),
    ...f16ForwardTiles(c),
  ];
  const fits = (t: F16Tiles, p: F16Plan) => forwardF16WorkgroupBytes(c, p, t, useSubgroups) <= limit &&
    SUBGROUP_SIZE * t.groups <= device.limits.maxComputeInvocationsPerWorkgroup &&
    (useSubgroups || t.accumulator !== 'matrices') && (p.matmul !== 'subgroup-matrix' || t.groups >= MIN_MATRIX_GROUPS);
  let plan = planned;
  let tiles = candidates.find(t => fits(t, plan));
  if (!tiles && plan.matmul === 'subgroup-matrix') {
    plan = { matmul: 'registers', element: plan.element };
    tiles = candidates.find(t => fits(t, plan));
  }
  if (!tiles) throw new Error(`flashAttention (webgpu, float16): no tile size fits ${limit} bytes of workgroup memory`);
  const chosen = { plan, tiles };
  return {
    program: pairing => forwardF16Program(c, aux, withAux, chosen.plan, chosen.tiles, useSubgroups, pairing),
    rows: 16 * tiles.groups,
  };
}
