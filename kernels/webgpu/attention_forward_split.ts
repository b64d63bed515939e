// The split-KV forward program (flash-decoding, src/split_kv.ts): one workgroup per (key range,
// query head, query row). Decode has one or a few query rows, so instead of rows of a query block
// the workgroup's threads take the keys of a tile in parallel: thread t scores key j0 + t against
// the row's q (staged once in workgroup memory, pre-scaled into base 2), the tile's scores meet in
// workgroup memory for the online softmax, and thread t accumulates output column t (vec4) over the
// tile's keys, reading V rows coalesced. Each workgroup writes its range's normalized partial
// output and natural-log lse to scratch buffers that merge_splits.ts combines.
//
// Every option of the one-pass program applies through the same generated score function
// (attention_wgsl.ts): window/causal and keyLengths bound the loop, mask, bias, ALiBi, softcap and
// block-sparse blocks act per score (block-sparse tiles are masked here, not skipped: a decode row
// touches each key once anyway), dropout uses the same keep hash.
import type { AttentionConfig } from '../../src/config';
import type { AuxLayout } from './aux';
import {
  COMMON_UNIFORMS, constants, keyRange, queryScale, scoreFunctions, storageBinding, tensorAccess, vec4Q, vec4V,
} from './attention_wgsl';
import type { BindingSpec, ProgramSpec } from './runtime';
import { f32 } from './runtime';

/** Keys per tile = threads per workgroup; covers the largest head size's vec4 output columns (256 / 4). */
export const SPLIT_TILE = 64;

/** The config fields the shader depends on (everything but the dropout seed, a uniform). */
function shaderFields(c: AttentionConfig): Omit<AttentionConfig, 'dropoutSeed'> {
  const { dropoutSeed: _seed, ...rest } = c;
  return rest;
}

export function splitForwardBindings(c: AttentionConfig, withAux: boolean): BindingSpec[] {
  const b: BindingSpec[] = [
    storageBinding('q', vec4Q(c), false),
    storageBinding('k', vec4Q(c), false),
    storageBinding('v', vec4V(c), false),
    // Partials: [splits, B·Hq·Nq, DV4] vec4 and [splits, B·Hq·Nq], indexed by absolute row.
    { name: 'partial_out', type: 'vec4<f32>', write: true },
    { name: 'partial_lse', type: 'f32', write: true },
  ];
  if (c.biasShape.length) b.push(storageBinding('bias', false, false));
  if (withAux) b.push({ name: 'aux', type: 'u32', write: false });
  return b;
}

/** Workgroup grid: x = key range, y = query head within the dispatch's chunk, z = query row. */
export function splitForwardGrid(c: AttentionConfig, splits: number, headsInChunk: number): [number, number, number] {
  return [splits, headsInChunk, c.seqQ];
}

export function splitForwardProgram(c: AttentionConfig, aux: AuxLayout, withAux: boolean, splits: number,
  keysPerSplit: number): ProgramSpec {
  const bindings = splitForwardBindings(c, withAux);
  const uniforms = [...COMMON_UNIFORMS, ...bindings.map(b => `off_${b.name}`)];
  const perUnit = c.layout === 'BHSD' ? 'GROUP' : 'HQ';
  const body = () => `
${constants(c)}
const WG = ${SPLIT_TILE}u;
const SPLITS = ${splits}u;
const SPLIT_KEYS = ${keysPerSplit}u;
const ROWS = ${c.batch * c.headsQ * c.seqQ}u;
const QSCALE = ${f32(queryScale(c))};
var<workgroup> qs: array<vec4<f32>, ${Math.ceil(c.headDim / 4)}>;
var<workgroup> scores: array<f32, ${SPLIT_TILE}>;
var<workgroup> weights: array<f32, ${SPLIT_TILE}>;
${c.dropoutRate > 0 ? `var<workgroup> probs: array<f32, ${SPLIT_TILE}>;` : ''}
var<workgroup> flag: u32;
${tensorAccess(c, 'q', c.headsQ, c.seqQ, c.headDim, vec4Q(c), 'load')}
${tensorAccess(c, 'k', c.headsKV, c.seqK, c.headDim, vec4Q(c), 'load')}
${tensorAccess(c, 'v', c.headsKV, c.seqK, c.headDimV, vec4V(c), 'load')}
${scoreFunctions(c, aux, 0)}

@compute @workgroup_size(${SPLIT_TILE})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let split = wid.x;
  let bh = u.unit_start * ${perUnit} + wid.y;
  let i = wid.z;
  let b = bh / HQ;
  let h = bh % HQ;
  let hk = h / GROUP;
  for (var d = lidx; d < DK4; d += WG) { qs[d] = load_q(b, h, i, d) * QSCALE; }
  ${c.hasKeyLengths
    ? 'if (lidx == 0u) { flag = keyLimitOf(b); }\n  let kl = workgroupUniformLoad(&flag);'
    : 'let kl = SEQK;'}
  let iFirst = i;
  let iLast = i;
  ${keyRange(c)}
  let lo = max(jLo, split * SPLIT_KEYS);
  let hi = min(jHi, min(split * SPLIT_KEYS + SPLIT_KEYS, SEQK));
${c.dropoutRate > 0 ? '  let dropRow = dropoutRow(b, h, i);\n' : ''}  var m = negInf();
  var l = 0.0;
  var acc = vec4<f32>(0.0);
  let col = min(lidx, DV4 - 1u);
  workgroupBarrier();
  for (var j0 = lo; j0 < hi; j0 += WG) {
    let j = j0 + lidx;
    var s = negInf();
    if (j < hi) {
      var qk = 0.0;
      for (var d = 0u; d < DK4; d++) { qk += dot(qs[d], load_k(b, hk, j, d)); }
      s = score2(qk, b, h, i, j, kl);
    }
    scores[lidx] = s;
    workgroupBarrier();
    var mt = negInf();
    for (var e = 0u; e < WG; e++) { mt = max(mt, scores[e]); }
    let mNew = max(m, mt);
    let mUse = select(mNew, 0.0, mNew == negInf());
    let alpha = exp2(m - mUse);
    m = mNew;
    let p = exp2(s - mUse);
${c.dropoutRate > 0 ? `    probs[lidx] = p;
    weights[lidx] = select(0.0, p * KEEP_SCALE, dropoutKeep(dropRow, j));` : '    weights[lidx] = p;'}
    workgroupBarrier();
    var lt = 0.0;
    for (var e = 0u; e < WG; e++) { lt += ${c.dropoutRate > 0 ? 'probs' : 'weights'}[e]; }
    l = l * alpha + lt;
    acc *= alpha;
    let n = min(WG, hi - j0);
    for (var e = 0u; e < n; e++) { acc += weights[e] * load_v(b, hk, j0 + e, col); }
    workgroupBarrier();
  }
  let row = bh * SEQQ + i;
  let at = split * ROWS + row;
  if (lidx < DV4) {
    partial_out[at * DV4 + lidx - u.off_partial_out] = acc * select(1.0 / l, 0.0, l == 0.0);
  }
  if (lidx == 0u) {
    let mUse = select(m, 0.0, m == negInf());
    let value = select((mUse + log2(l)) * LN2, negInf(), l == 0.0);
    // As in the one-pass program: a NaN score leaves l non-finite, +∞ where the largest score is +∞.
    let special = select(nanValue(), -negInf(), m == -negInf());
    partial_lse[at - u.off_partial_lse] = select(value, special, !isFinite(l) | (m == -negInf()));
  }
}
`;
  return {
    key: JSON.stringify({ program: 'attention_forward_split', config: shaderFields(c), splits, keysPerSplit, withAux }),
    bindings, uniforms, body,
  };
}
