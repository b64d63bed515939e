// WGSL shared by the attention programs, generated from the AttentionConfig: problem constants,
// tensor loads/stores (BHSD and BSHD through strides, vec4 where the head size allows), the score
// s = scale·q·k → softcap → + bias + ALiBi → visibility, and the dropout keep hash.
//
// Scores live in base 2: Q is pre-scaled so that exp2 replaces exp (log2 e folded into the scale,
// or into the softcap's factor), and the bias and ALiBi terms are multiplied by log2 e.
//
// The optional small inputs (keyLengths, alibiSlopes, blockMask, mask) and, in the backward, the
// row statistics are packed into one u32 `aux` buffer (see aux.ts): WebGPU's default limit is 8
// storage buffers per shader stage, and the backward passes would need up to 11 bindings otherwise.
//
// Boolean logic uses `&` and `|` on bools, never `&&`/`||`: SwiftShader compiles short-circuit
// masks orders of magnitude slower.
import { AttentionConfig, layoutStrides, queryOffset } from '../../src/config';
import type { AuxLayout } from './aux';
import { BindingSpec, f32 } from './runtime';

export const LOG2E = Math.LOG2E;

/**
 * Uniforms every attention program has; the rest are per-program. A dispatch covers the query heads
 * [group_start, group_end) of each unit's GQA group (BHSD), query rows [row_start, row_end) and keys
 * [key_start, key_end) of its units (all of them unless one unit is split, chunks.ts);
 * `accumulate` = 1 when it adds to what an earlier dispatch wrote.
 */
export const COMMON_UNIFORMS = ['neg_inf_bits', 'seed', 'unit_start', 'heads_in_chunk', 'group_start', 'group_end',
  'row_start', 'row_end', 'key_start', 'key_end', 'accumulate'] as const;
export const NEG_INF_BITS = 0xff800000;

/** Which tensors a program reads as vec4 (head size a multiple of 4). */
export function vec4Q(c: AttentionConfig): boolean { return c.headDim % 4 === 0; }
export function vec4V(c: AttentionConfig): boolean { return c.headDimV % 4 === 0; }

/** The multiplier applied to Q when it is staged, so that scores come out in base 2 (see scoreFunctions). */
export function queryScale(c: AttentionConfig): number {
  return c.softcap > 0 ? c.scale / c.softcap : c.scale * LOG2E;
}

export function storageBinding(name: string, vec4: boolean, write: boolean): BindingSpec {
  return { name, type: vec4 ? 'vec4<f32>' : 'f32', write };
}

export function constants(c: AttentionConfig): string {
  const u = (x: number) => `${x}u`;
  return `
const B = ${u(c.batch)};
const HQ = ${u(c.headsQ)};
const HKV = ${u(c.headsKV)};
const GROUP = ${u(c.headsQ / c.headsKV)};
const SEQQ = ${u(c.seqQ)};
const SEQK = ${u(c.seqK)};
const D = ${u(c.headDim)};
const DV = ${u(c.headDimV)};
const DK4 = ${u(Math.ceil(c.headDim / 4))};
const DV4 = ${u(Math.ceil(c.headDimV / 4))};
const OFF = ${c.seqK - c.seqQ};
const LOG2E = ${f32(LOG2E)};
const LN2 = ${f32(Math.LN2)};
fn negInf() -> f32 { return bitcast<f32>(u.neg_inf_bits); }
fn nanValue() -> f32 { return bitcast<f32>(u.neg_inf_bits | 0x7fc00000u); }
// By the bits: compilers may fold x != x away.
fn isFinite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }
`;
}

/**
 * load_<name>(b, h, i, c) → vec4 of elements 4c..4c+3 of row i of head h, zero past the head size;
 * store_<name>(b, h, i, c, x) the same for writing. `elementOffset` is the uniform with the bound
 * range's first element.
 */
export function tensorAccess(c: AttentionConfig, name: string, heads: number, seq: number, dim: number,
  vec4: boolean, access: 'load' | 'store'): string {
  const s = layoutStrides(c, heads, seq, dim);
  const index = `b * ${s.batch}u + h * ${s.head}u + i * ${s.seq}u + c * 4u - u.off_${name}`;
  if (access === 'load') {
    if (vec4) {
      return `fn load_${name}(b: u32, h: u32, i: u32, c: u32) -> vec4<f32> { return ${name}[(${index}) / 4u]; }\n`;
    }
    const lanes = [0, 1, 2, 3].map(k =>
      `  if (c * 4u + ${k}u < ${dim}u) { x[${k}] = ${name}[e + ${k}u]; }`).join('\n');
    return `fn load_${name}(b: u32, h: u32, i: u32, c: u32) -> vec4<f32> {
  let e = ${index};
  var x = vec4<f32>(0.0);
${lanes}
  return x;
}\n`;
  }
  if (vec4) {
    return `fn store_${name}(b: u32, h: u32, i: u32, c: u32, x: vec4<f32>) { ${name}[(${index}) / 4u] = x; }\n`;
  }
  const lanes = [0, 1, 2, 3].map(k => `  if (c * 4u + ${k}u < ${dim}u) { ${name}[e + ${k}u] = x[${k}]; }`).join('\n');
  return `fn store_${name}(b: u32, h: u32, i: u32, c: u32, x: vec4<f32>) {
  let e = ${index};
${lanes}
}\n`;
}

/** The loads every backward pass reads: q, k, v and dO (load_q, load_k, load_v, load_dout). */
export function backwardInputAccess(c: AttentionConfig): string {
  return [
    tensorAccess(c, 'q', c.headsQ, c.seqQ, c.headDim, vec4Q(c), 'load'),
    tensorAccess(c, 'k', c.headsKV, c.seqK, c.headDim, vec4Q(c), 'load'),
    tensorAccess(c, 'v', c.headsKV, c.seqK, c.headDimV, vec4V(c), 'load'),
    tensorAccess(c, 'dout', c.headsQ, c.seqQ, c.headDimV, vec4V(c), 'load'),
  ].join('\n');
}

/** Row-major index into a rank-4 broadcast shape [B', H', N', M'] at (b, h, i, j). */
export function broadcastIndex(shape: number[], b: string, h: string, i: string, j: string): string {
  const [sb, sh, si] = [shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3]];
  const terms: string[] = [];
  if (shape[0] > 1) terms.push(`${b} * ${sb}u`);
  if (shape[1] > 1) terms.push(`${h} * ${sh}u`);
  if (shape[2] > 1) terms.push(`${i} * ${si}u`);
  if (shape[3] > 1) terms.push(j);
  return terms.length ? terms.join(' + ') : '0u';
}

/**
 * The score functions:
 *   keyLimit(b)                      keys ≥ this are hidden (keyLengths[b], clamped to SEQK)
 *   score2(dot, b, h, i, j, kl) → f32  base-2 score of a pre-scaled dot product, −∞ when hidden;
 *                                    scoreValue2(dot, b, h, i, j) the same without the visibility test
 *                                    (every key of the loops' key range is < SEQK unless keyTile says so)
 *   softcapDerivative(dot) → f32     d(capped)/d(uncapped) for the backward (1 without softcap)
 *   dropoutRow(b, h, i) → u32, dropoutKeep(row, j) → bool   (src/dropout.ts, bit for bit)
 *   blockLive(b, h, qb, kb) → bool
 * The bias binding is `bias` (f32) with element offset uniform `off_bias`.
 */
export function scoreFunctions(c: AttentionConfig, aux: AuxLayout, keyTile: number): string {
  const out: string[] = [];
  out.push(c.hasKeyLengths
    ? `fn keyLimitOf(b: u32) -> u32 { return u32(clamp(bitcast<i32>(aux[${aux.keyLengths}u + b]), 0, i32(SEQK))); }`
    : 'fn keyLimitOf(b: u32) -> u32 { return SEQK; }');

  // Keys past SEQK only occur in a partial last key tile of `keyTile` keys (0: the pass never
  // lets them matter), so the bound is compiled in only where it can bite.
  const hidden: string[] = [];
  if (c.hasKeyLengths || (keyTile > 0 && c.seqK % keyTile !== 0)) hidden.push('(j >= kl)');
  const off = queryOffset(c);
  if (c.windowLeft >= 0) hidden.push(`(i32(j) < i32(i) + ${off - c.windowLeft})`);
  if (c.windowRight >= 0) hidden.push(`(i32(j) > i32(i) + ${off + c.windowRight})`);
  if (c.maskShape.length) {
    // The mask is packed 32 keys per word (pack_mask.ts).
    out.push(`fn maskHidden(b: u32, h: u32, i: u32, j: u32) -> bool {
  let e = ${broadcastIndex(c.maskShape, 'b', 'h', 'i', 'j')};
  return ((aux[${aux.mask}u + (e >> 5u)] >> (e & 31u)) & 1u) == 0u;
}`);
    hidden.push('maskHidden(b, h, i, j)');
  }
  if (c.blockSize > 0) hidden.push(`!blockLive(b, h, i / ${c.blockSize}u, j / ${c.blockSize}u)`);

  if (c.blockSize > 0) {
    const [, , nqb, nkb] = c.blockMaskShape;
    const index = broadcastIndex(c.blockMaskShape, 'b', 'h', 'qb', 'kb');
    out.push(`fn blockLive(b: u32, h: u32, qb: u32, kb: u32) -> bool {
  let e = ${index};
  return ((aux[${aux.blockMask}u + (e >> 5u)] >> (e & 31u)) & 1u) != 0u;
}
const NQBLOCKS = ${nqb}u;
const NKBLOCKS = ${nkb}u;
const BLOCK = ${c.blockSize}u;`);
  }

  let body = 'var s = dot;';
  if (c.softcap > 0) body = `var s = ${f32(c.softcap * LOG2E)} * tanh(clamp(dot, -15.0, 15.0));`;
  const extra: string[] = [];
  if (c.biasShape.length) extra.push(`bias[${broadcastIndex(c.biasShape, 'b', 'h', 'i', 'j')} - u.off_bias]`);
  if (c.alibiShape.length) {
    const slope = `bitcast<f32>(aux[${aux.alibi}u + ${c.alibiShape[0] > 1 ? 'b * HQ + h' : 'h'}])`;
    extra.push(`-${slope} * abs(f32(i32(i) + OFF - i32(j)))`);
  }
  if (extra.length) body += `\n  s += LOG2E * (${extra.join(' + ')});`;
  // scoreValue2: the score of a key known to be visible (the forward's tiles inside the band).
  out.push(`fn scoreValue2(dot: f32, b: u32, h: u32, i: u32, j: u32) -> f32 {
  ${body}
  return s;
}
fn score2(dot: f32, b: u32, h: u32, i: u32, j: u32, kl: u32) -> f32 {
  let hidden = ${hidden.length ? hidden.join(' | ') : 'false'};
  return select(scoreValue2(dot, b, h, i, j), negInf(), hidden);
}`);
  out.push(c.softcap > 0
    ? 'fn softcapDerivative(dot: f32) -> f32 { let t = tanh(clamp(dot, -15.0, 15.0)); return 1.0 - t * t; }'
    : 'fn softcapDerivative(dot: f32) -> f32 { return 1.0; }');

  if (c.dropoutRate > 0) {
    const threshold = Math.round(c.dropoutRate * 16777216);
    out.push(`fn mix32(v: u32) -> u32 {
  var x = v;
  x = x ^ (x >> 16u);
  x = x * 0x7feb352du;
  x = x ^ (x >> 15u);
  x = x * 0x846ca68bu;
  return x ^ (x >> 16u);
}
fn dropoutRow(b: u32, h: u32, i: u32) -> u32 { return mix32(mix32(mix32(u.seed ^ b) ^ h) ^ i); }
fn dropoutKeep(row: u32, j: u32) -> bool { return (mix32(row ^ j) >> 8u) >= ${threshold}u; }
const KEEP_SCALE = ${f32(1 / (1 - c.dropoutRate))};`);
  }
  return out.join('\n');
}

/**
 * The visible key range [lo, hi) of query rows [iFirst, iLast] (window and keyLengths), as WGSL
 * statements defining `jLo` and `jHi` (u32, jHi may be ≤ jLo).
 */
export function keyRange(c: AttentionConfig): string {
  const off = queryOffset(c);
  const lo = c.windowLeft >= 0 ? `max(0, i32(iFirst) + ${off - c.windowLeft})` : '0';
  const hi = c.windowRight >= 0 ? `min(i32(kl), i32(iLast) + ${off + c.windowRight + 1})` : 'i32(kl)';
  return `let jLo = max(u32(${lo}), u.key_start);\n  let jHi = min(u32(max(${hi}, 0)), u.key_end);`;
}

/** The query rows [iLo, iHi) that can see keys [jFirst, jLast] (window), as WGSL statements. */
export function queryRange(c: AttentionConfig): string {
  const off = queryOffset(c);
  const lo = c.windowRight >= 0 ? `max(0, i32(jFirst) - ${off + c.windowRight})` : '0';
  const hi = c.windowLeft >= 0 ? `min(i32(SEQQ), i32(jLast) - ${off - c.windowLeft} + 1)` : 'i32(SEQQ)';
  return `let iLo = max(u32(${lo}), u.row_start);\n  let iHi = min(u32(max(${hi}, 0)), u.row_end);`;
}

/**
 * A loop in which the workgroup's WG threads copy `rows` rows of a tensor (vec4 columns `cols4`)
 * into workgroup array `dst` (row stride `stride` vec4s), zero past `limit`, times `scale`.
 */
export function stageRows(o: { dst: string; stride: string; cols4: string; rows: string; first: string;
  limit: string; load: string; head: string; scale?: string }): string {
  return `for (var e = lidx; e < ${o.rows} * ${o.cols4}; e += WG) {
      let r = e / ${o.cols4};
      let c = e % ${o.cols4};
      var x = vec4<f32>(0.0);
      if (${o.first} + r < ${o.limit}) { x = ${o.load}(b, ${o.head}, ${o.first} + r, c); }
      ${o.dst}[r * ${o.stride} + c] = x${o.scale ? ` * ${o.scale}` : ''};
    }`;
}

/**
 * WGSL for the block-sparse tile test of rows [rFirst, rLast] × keys [kFirst, kLast] of head h:
 * sets `live` (workgroup-uniform) and ends in `if (live == 0u) { continue; }`. Thread 0 scans the
 * blockMask; the barrier before it keeps the previous tile's readers of `flag` safe.
 */
export function blockSkip(c: AttentionConfig, rFirst: string, rLast: string, kFirst: string, kLast: string): string {
  if (c.blockSize === 0) return '';
  return `workgroupBarrier();
    if (lidx == 0u) {
      var any = 0u;
      for (var qb2 = (${rFirst}) / BLOCK; qb2 <= (${rLast}) / BLOCK; qb2++) {
        for (var kb2 = (${kFirst}) / BLOCK; kb2 <= (${kLast}) / BLOCK; kb2++) {
          if (blockLive(b, h, qb2, kb2)) { any = 1u; }
        }
      }
      flag = any;
    }
    if (workgroupUniformLoad(&flag) == 0u) { continue; }`;
}

/**
 * Causal-like bands give the last query blocks the most keys. GPUs start workgroups in x-major
 * order, so for those the grid runs heads in groups: x = (query block, reversed) × head within
 * the group, y = group. The heaviest blocks of a group's heads start first and light ones fill the
 * tail, while the workgroups in flight share the K/V of only one group of heads. On the H100 all 12
 * heads at once was best at N = 4096, D = 64 (K/V 24 MiB) but, with 8 MiB per head at N = 16384,
 * overflowed its 50 MB L2 and halved the speed, where groups of 4 heads (32 MiB) were fast; groups
 * are sized to keep their K/V within 32 MiB.
 */
const GROUP_KV_BYTES = 32 * 2 ** 20;

function headGroup(c: AttentionConfig, rows: number): number {
  const perHead = c.seqK * (c.headDim + c.headDimV) * 4;
  const fitsX = Math.floor(65535 / Math.ceil(c.seqQ / rows));
  return Math.max(1, Math.min(c.batch * c.headsQ, fitsX, Math.floor(GROUP_KV_BYTES / perHead)));
}

function heavyFirst(c: AttentionConfig): boolean {
  return c.windowRight >= 0 && c.windowLeft < 0;
}

/** Workgroup grid of a pass with one workgroup per (query head, block of `rows` query rows). */
export function queryBlockGrid(c: AttentionConfig, rows: number, heads: number): [number, number, number] {
  const blocks = Math.ceil(c.seqQ / rows);
  const group = headGroup(c, rows);
  return heavyFirst(c) ? [blocks * group, Math.ceil(heads / group), 1] : [blocks, heads, 1];
}

/**
 * WGSL defining `qb` (query block) and `bh` (flat b·Hq + h) for queryBlockGrid; workgroups past
 * the chunk's heads (the last head group may be partial) or outside its query rows
 * [row_start, row_end) (a split unit runs the whole grid, see chunks.ts) return at once.
 */
export function queryBlockIds(c: AttentionConfig, rows: number): string {
  const perUnit = c.layout === 'BHSD' ? 'GROUP' : 'HQ';
  if (!heavyFirst(c)) {
    return `let qb = u.row_start / ${rows}u + wid.x;
  if ((qb * ${rows}u >= u.row_end) | (wid.y >= u.heads_in_chunk)) { return; }
  let bh = u.unit_start * ${perUnit} + u.group_start + wid.y;`;
  }
  const group = headGroup(c, rows);
  return `let qbEnd = (u.row_end + ${rows - 1}u) / ${rows}u;
  if (wid.x / ${group}u >= qbEnd - u.row_start / ${rows}u) { return; }
  let qb = qbEnd - 1u - wid.x / ${group}u;
  let hInChunk = wid.y * ${group}u + wid.x % ${group}u;
  if (hInChunk >= u.heads_in_chunk) { return; }
  let bh = u.unit_start * ${perUnit} + u.group_start + hInChunk;`;
}

/**
 * How the bias gradient dS is reduced in-kernel before tfjs' Sum finishes it:
 *   'rows'    bias broadcast over keys ([.., .., Nq or 1, 1]): the dQ pass sums over keys;
 *   'columns' bias broadcast over query rows ([.., .., 1, Nk]): a dK/dV-shaped pass sums over rows;
 *   'full'    bias with both extents: the dQ pass writes dS per element.
 */
export function biasGradMode(c: AttentionConfig): 'none' | 'rows' | 'columns' | 'full' {
  if (!c.biasShape.length) return 'none';
  if (c.biasShape[3] === 1 && c.seqK > 1) return 'rows';
  if (c.biasShape[2] === 1 && c.seqQ > 1) return 'columns';
  return 'full';
}

/** Shape of the in-kernel dS buffer: [B, Hq, Nq or 1, Nk or 1]. */
export function dbiasExpandedShape(c: AttentionConfig): number[] {
  const mode = biasGradMode(c);
  return [c.batch, c.headsQ, mode === 'columns' ? 1 : c.seqQ, mode === 'rows' ? 1 : c.seqK];
}
