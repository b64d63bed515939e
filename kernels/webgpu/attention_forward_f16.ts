// The `precision: 'float16'` forward program (FlashAttention-2 on the matrix units). A workgroup
// of `groups` subgroups of 32 invocations owns 16·groups query rows, 16 per subgroup; K and V tiles
// of `keys` keys stream through workgroup memory as f16. Per key tile, each subgroup:
//   1. S = Q·Kᵀ for its 16 rows: 16×16×16 subgroup-matrix products into f32 (its Q operands were
//      loaded once into registers), stored to its f32 slice of workgroup memory (`fs`);
//   2. two invocations per row read the row's scores, apply every score modifier (attention_wgsl's
//      score2: softcap, bias, ALiBi, causal/window/mask/keyLengths/block-sparse visibility), update
//      the row's running max and sum in f32 (online softmax, base 2), write P (with dropout, bit-exact)
//      as f16 to `ps`, and rescale their share of the f32 O accumulator, which lives in their
//      registers, by the row's alpha;
//   3. T = P·V in subgroup matrices, stored through `fs` in column chunks (`valueCols`) and added to
//      the O registers.
// So the O rescale costs no matrix round trip: the accumulator never is a subgroup matrix. Key
// tiles outside the causal band / window / keyLengths are never visited; block-sparse tiles with
// no live block are skipped. The 'registers' plan computes S and T per invocation from the same
// workgroup tiles and writes them to `fs` at the positions the matrices would, so everything
// around the products is the same code (and is tested on adapters without f16 in f32). keyLengths
// and block liveness are read by every invocation, never by one and broadcast: with a thread-0
// branch before the matrix products the H100 gave wrong outputs for exactly those cases; without
// it all 35 cases of test/cases.ts pass there (bench/RESULTS.md, float16 forward).
import { AttentionConfig } from '../../src/config';
import type { AuxLayout } from './aux';
import { forwardBindings, shaderConfig } from './attention_forward';
import {
  COMMON_UNIFORMS, constants, keyRange, queryBlockIds, queryScale, scoreFunctions, tensorAccess, vec4Q,
  vec4V,
} from './attention_wgsl';
import {
  F16Plan, f16Plan, leftType, matrixDiagnostic, matrixLoad, planExtensions, RESULT_TYPE, rightType,
  roundUp, stageTile, SUBGROUP_SIZE,
} from './f16_support';
import { f32, isSoftwareAdapter, ProgramSpec, range, subgroupMinSize } from './runtime';

/** Subgroups per workgroup (16 query rows each) and keys per K/V tile (a multiple of 16). */
export interface F16Tiles {
  groups: number;
  keys: number;
  /**
   * Columns of T = P·V staged through `fs` at a time (a multiple of 16; default `keys`): wider
   * chunks cost workgroup memory and save a barrier per chunk.
   */
  valueCols?: number;
}

/**
 * Fastest first where they fit (H100, N = 4096, bench/RESULTS.md float16 section): D = 64 takes
 * 8×32 (36 TFLOP/s with bounds checks; 64-key tiles ran at 5–7 with them, 38 without), D = 128 takes
 * 4×32 (Q staged for 8 subgroups exceeds 48 KiB there; the ranking there was noisy).
 */
export const F16_FORWARD_TILES: readonly F16Tiles[] = [
  { groups: 8, keys: 32 }, { groups: 4, keys: 32 }, { groups: 8, keys: 16 }, { groups: 4, keys: 16 },
  { groups: 2, keys: 32 }, { groups: 2, keys: 16 }, { groups: 1, keys: 16 },
];

interface Layout {
  DP: number; DVP: number; KS: number; VS: number; QS: number; FS: number; PS: number;
  /** Element offset of the V tile in `kv`. */
  VOFF: number;
  kvSize: number; qsSize: number; fsSize: number; psSize: number;
}

function chunkWidth(t: F16Tiles): number {
  return t.valueCols ?? t.keys;
}

/** Padded strides keep matrix rows 16-byte aligned and spread rows over memory banks. */
function layoutOf(c: AttentionConfig, plan: F16Plan, t: F16Tiles): Layout {
  const DP = roundUp(c.headDim, 16), DVP = roundUp(c.headDimV, 16);
  const KS = DP + 8, VS = DVP + 8, QS = DP + 8, FS = Math.max(t.keys, chunkWidth(t)) + 4, PS = t.keys + 8;
  const rows = 16 * t.groups;
  const VOFF = t.keys * KS;
  const kvTiles = VOFF + t.keys * VS;
  // The matrix plan stages Q once through `kv` (its operands then live in registers).
  const kvSize = plan.matmul === 'subgroup-matrix' ? Math.max(kvTiles, rows * QS) : kvTiles;
  const qsSize = plan.matmul === 'subgroup-matrix' ? 0 : rows * QS;
  return { DP, DVP, KS, VS, QS, FS, PS, VOFF, kvSize, qsSize, fsSize: rows * FS, psSize: rows * PS };
}

export function forwardF16WorkgroupBytes(c: AttentionConfig, plan: F16Plan, t: F16Tiles, useSubgroups: boolean): number {
  const l = layoutOf(c, plan, t);
  const e = plan.element === 'f16' ? 2 : 4;
  return e * (l.kvSize + l.qsSize + l.psSize) + 4 * l.fsSize + (useSubgroups ? 0 : 4 * 32 * t.groups) + 16;
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

export function forwardF16Program(c: AttentionConfig, aux: AuxLayout, withAux: boolean, plan: F16Plan, t: F16Tiles,
  useSubgroups: boolean): ProgramSpec {
  const bindings = forwardBindings(c, withAux);
  const uniforms = [...COMMON_UNIFORMS, ...bindings.map(b => `off_${b.name}`)];
  if (t.keys % 16 !== 0 || chunkWidth(t) % 16 !== 0) {
    throw new Error(`flashAttention (webgpu, float16): tiles ${JSON.stringify(t)} are not multiples of 16`);
  }
  const L = layoutOf(c, plan, t);
  const E = plan.element;
  const matrix = plan.matmul === 'subgroup-matrix';
  const BQ = 16 * t.groups, BK = t.keys, WG = SUBGROUP_SIZE * t.groups;
  const DV4 = Math.ceil(c.headDimV / 4);
  // Invocation (g, lane) owns row 16g + lane/2 and, of it, score columns half + 2k and O vec4
  // columns half + 2m (half = lane % 2).
  const cols = range(BK / 2);
  const o4 = range(L.DVP / 8);
  const CW = chunkWidth(t);
  const chunks = range(Math.ceil(L.DVP / CW));
  const chunkOf = (m: number) => Math.floor((4 * (2 * m)) / CW);
  const d16 = range(L.DP / 16), k16 = range(BK / 16);

  const partner = (x: string, op: 'max' | 'add') => {
    const f = (a: string, b: string) => (op === 'max' ? `max(${a}, ${b})` : `${a} + ${b}`);
    return useSubgroups ? `${x} = ${f(x, `subgroupShuffleXor(${x}, 1u)`)};`
      : `red[lidx] = ${x};\n    workgroupBarrier();\n    ${x} = ${f(x, 'red[lidx ^ 1u]')};\n    workgroupBarrier();`;
  };
  const el = (a: string) => (E === 'f32' ? a : `f32(${a})`);
  const vec = (arr: string, at: string) => `vec4<f32>(${[0, 1, 2, 3].map(e => el(`${arr}[${at} + ${e}u]`)).join(', ')})`;

  // S = Q·Kᵀ of this subgroup's rows into fs.
  const scores = matrix ? `
    ${k16.map(n => `{
      var acc = ${RESULT_TYPE}();
${d16.map(d => `      acc = subgroupMatrixMultiplyAccumulate(qm${d}, ${matrixLoad(rightType(E), 'kv', `${n * 16 * L.KS + d * 16}u`, true, 'KS')}, acc);`).join('\n')}
      subgroupMatrixStore(&fs, g * 16u * FS + ${n * 16}u, acc, false, FS);
    }`).join('\n    ')}` : `
${cols.map(k => `    var s${k} = 0.0;`).join('\n')}
    for (var d = 0u; d < DP; d += 4u) {
      let qv = ${vec('qs', 'row * QS + d')};
${cols.map(k => `      s${k} += dot(qv, ${vec('kv', `(half + ${2 * k}u) * KS + d`)});`).join('\n')}
    }
${cols.map(k => `    fs[row * FS + half + ${2 * k}u] = s${k};`).join('\n')}`;

  // T = P·V for the columns of chunk `ch`, into fs.
  const chunkBlocks = (ch: number) => range(L.DVP / 16).filter(n => Math.floor((n * 16) / CW) === ch);
  const values = (ch: number) => matrix ? chunkBlocks(ch).map(n => `{
      var acc = ${RESULT_TYPE}();
${k16.map(kk => `      acc = subgroupMatrixMultiplyAccumulate(pm${kk}, ${matrixLoad(rightType(E), 'kv', `${L.VOFF + kk * 16 * L.VS + n * 16}u`, false, 'VS')}, acc);`).join('\n')}
      subgroupMatrixStore(&fs, g * 16u * FS + ${n * 16 - ch * CW}u, acc, false, FS);
    }`).join('\n    ') : o4.filter(m => chunkOf(m) === ch).map(m => `{
      let col = half * 4u + ${8 * m}u;
      var acc = vec4<f32>(0.0);
      for (var kk = 0u; kk < BK; kk++) {
        acc += ${el('ps[row * PS + kk]')} * ${vec('kv', `VOFF + kk * VS + col`)};
      }
${[0, 1, 2, 3].map(e => `      fs[row * FS + col - ${ch * CW}u + ${e}u] = acc[${e}];`).join('\n')}
    }`).join('\n    ');
  const addValues = (ch: number) => o4.filter(m => chunkOf(m) === ch).map(m =>
    `o${m} += ${`vec4<f32>(${[0, 1, 2, 3].map(e => `fs[row * FS + half * 4u + ${8 * m - ch * CW + e}u]`).join(', ')})`};`)
    .join('\n    ');

  const body = () => `
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
var<workgroup> kv: array<${E}, ${L.kvSize}>;
${L.qsSize ? `var<workgroup> qs: array<${E}, ${L.qsSize}>;` : ''}
var<workgroup> fs: array<f32, ${L.fsSize}>;
var<workgroup> ps: array<${E}, ${L.psSize}>;
${useSubgroups ? '' : `var<workgroup> red: array<f32, ${WG}>;`}
${tensorAccess(c, 'q', c.headsQ, c.seqQ, c.headDim, vec4Q(c), 'load')}
${tensorAccess(c, 'k', c.headsKV, c.seqK, c.headDim, vec4Q(c), 'load')}
${tensorAccess(c, 'v', c.headsKV, c.seqK, c.headDimV, vec4V(c), 'load')}
${tensorAccess(c, 'out', c.headsQ, c.seqQ, c.headDimV, vec4V(c), 'store')}
${scoreFunctions(c, aux, BK)}

${matrixDiagnostic(plan)}@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let g = lidx / ${SUBGROUP_SIZE}u;
  let lane = lidx % ${SUBGROUP_SIZE}u;
  let half = lane % 2u;
  let row = g * 16u + lane / 2u;
  ${queryBlockIds(c, BQ)}
  let b = bh / HQ;
  let h = bh % HQ;
  let hk = h / GROUP;
  let i0 = qb * BQ;
  let i = i0 + row;
  // Scores of rows past the end are computed (and never stored) at the last row's indices.
  let iS = min(i, SEQQ - 1u);
  ${stageTile({ dst: matrix ? 'kv' : 'qs', element: E, rows: BQ, cols4: L.DP / 4, dim4: 'DK4', stride: L.QS,
    first: 'i0', limit: 'SEQQ', load: (r, c4) => `load_q(b, h, ${r}, ${c4})`, scale: 'QSCALE' })}
  workgroupBarrier();
  let kl = keyLimitOf(b);
${matrix ? d16.map(d => `  let qm${d} = ${matrixLoad(leftType(E), 'kv', `g * 16u * QS + ${d * 16}u`, false, 'QS')};`).join('\n') : ''}
  let iFirst = i0;
  let iLast = min(i0 + BQ, SEQQ) - 1u;
  ${keyRange(c)}
  let tFirst = jLo / BK;
  let tEnd = select(tFirst, (jHi + BK - 1u) / BK, jHi > jLo);
  var m = negInf();
  var l = 0.0;
${o4.map(x => `  var o${x} = vec4<f32>(0.0);`).join('\n')}
${c.dropoutRate > 0 ? '  let drop = dropoutRow(b, h, i);' : ''}
  for (var t = tFirst; t < tEnd; t++) {
    let j0 = t * BK;
    ${liveTileTest(c)}
    workgroupBarrier();
    ${stageTile({ dst: 'kv', element: E, rows: BK, cols4: L.DP / 4, dim4: 'DK4', stride: L.KS, first: 'j0',
    limit: 'SEQK', load: (r, c4) => `load_k(b, hk, ${r}, ${c4})` })}
    ${stageTile({ dst: 'kv', element: E, rows: BK, cols4: L.DVP / 4, dim4: 'DV4', stride: L.VS, first: 'j0',
    limit: 'SEQK', load: (r, c4) => `load_v(b, hk, ${r}, ${c4})`, at: L.VOFF })}
    workgroupBarrier();
${scores}
    workgroupBarrier();
    var mt = negInf();
${cols.map(k => `    let x${k} = score2(fs[row * FS + half + ${2 * k}u], b, h, iS, j0 + half + ${2 * k}u, kl);
    mt = max(mt, x${k});`).join('\n')}
    ${partner('mt', 'max')}
    let mNew = max(m, mt);
    let mUse = select(mNew, 0.0, mNew == negInf());
    let alpha = exp2(m - mUse);
    m = mNew;
    var ls = 0.0;
${cols.map(k => {
    const p = `p${k}`;
    const kept = c.dropoutRate > 0 ? `select(0.0, ${p} * KEEP_SCALE, dropoutKeep(drop, j0 + half + ${2 * k}u))` : p;
    return `    let ${p} = exp2(x${k} - mUse);
    ls += ${p};
    ps[row * PS + half + ${2 * k}u] = ${E}(${kept});`;
  }).join('\n')}
    l = l * alpha + ls;
${o4.map(x => `    o${x} *= alpha;`).join('\n')}
    workgroupBarrier();
${matrix ? k16.map(kk => `    let pm${kk} = ${matrixLoad(leftType(E), 'ps', `g * 16u * PS + ${kk * 16}u`, false, 'PS')};`).join('\n') : ''}
${chunks.map(ch => `    ${ch > 0 ? 'workgroupBarrier();\n    ' : ''}${values(ch)}
    workgroupBarrier();
    ${addValues(ch)}`).join('\n')}
  }
  ${partner('l', 'add')}
  if (i < SEQQ) {
    let inv = select(1.0 / l, 0.0, l == 0.0);
${o4.map(x => {
    const c4 = `half + ${2 * x}u`;
    const store = `store_out(b, h, i, ${c4}, o${x} * inv);`;
    return 2 * x + 1 < DV4 ? `    ${store}` : `    if (${c4} < DV4) { ${store} }`;
  }).join('\n')}
    if (half == 0u) {
      let mUse = select(m, 0.0, m == negInf());
      let value = select((mUse + log2(l)) * LN2, negInf(), l == 0.0);
      let special = select(nanValue(), -negInf(), m == -negInf());
      lse[bh * SEQQ + i - u.off_lse] = select(value, special, !isFinite(l) | (m == -negInf()));
    }
  }
}
`;
  return {
    key: JSON.stringify({ program: 'attention_forward_f16', config: shaderConfig(c), plan, tiles: t, useSubgroups, withAux }),
    bindings, uniforms, body,
    extensions: planExtensions(plan, useSubgroups),
  };
}

/** Tiles for a CPU adapter (tests): compile time dominates there. */
const SOFTWARE_F16_TILES: F16Tiles = { groups: 1, keys: 16 };

/** Overrides for tests and benches. */
export const f16ForwardTuning: { tiles?: F16Tiles; subgroups: boolean } = { subgroups: true };

/**
 * The float16 forward program for this device and the query rows per workgroup, or undefined when
 * the device has no f16 plan (f16_support.ts; the float32 kernel runs then).
 */
export function forwardF16(device: GPUDevice, c: AttentionConfig, aux: AuxLayout, withAux: boolean):
    { spec: ProgramSpec; rows: number } | undefined {
  const plan = f16Plan(device, 'forward');
  if (!plan) return undefined;
  const useSubgroups = f16ForwardTuning.subgroups && device.features.has('subgroups') &&
    subgroupMinSize(device) >= 2;
  const limit = device.limits.maxComputeWorkgroupStorageSize;
  const candidates = [
    ...(f16ForwardTuning.tiles ? [f16ForwardTuning.tiles] : isSoftwareAdapter(device) ? [SOFTWARE_F16_TILES] : []),
    ...F16_FORWARD_TILES,
  ];
  const tiles = candidates.find(t => forwardF16WorkgroupBytes(c, plan, t, useSubgroups) <= limit &&
    SUBGROUP_SIZE * t.groups <= device.limits.maxComputeInvocationsPerWorkgroup);
  if (!tiles) throw new Error(`flashAttention (webgpu, float16): no tile size fits ${limit} bytes of workgroup memory`);
  return { spec: forwardF16Program(c, aux, withAux, plan, tiles, useSubgroups), rows: 16 * tiles.groups };
}
