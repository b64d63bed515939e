// The backward's dK/dV pass, parallel over key blocks (no atomics): one workgroup per (batch·KV
// head, block of keys) keeps its K and V block in workgroup memory and walks the query tiles that
// can see it, for every query head of its GQA group, so that the sum over the group happens in
// registers. It recomputes P = exp2(s − lse) and dS as the dQ pass does (transposed: the
// workgroup's rows are keys), and accumulates dV = (P∘Z/(1−r))ᵀ·dO and dK = scale·dSᵀ·Q.
import { AttentionConfig, layoutStrides } from '../../src/config';
import type { AuxLayout } from './aux';
import {
  backwardInputAccess, blockSkip, COMMON_UNIFORMS, constants, queryRange, queryScale, scoreFunctions, stageRows, storageBinding,
  tensorAccess, vec4Q, vec4V,
} from './attention_wgsl';
import { shaderConfig } from './attention_forward';
import { BindingSpec, f32, ProgramSpec, range } from './runtime';
import { rowReduce, threadsOf, Tiles } from './tiles';

export function dkdvWorkgroupBytes(c: AttentionConfig, t: Tiles): number {
  const qs = Math.ceil(c.headDim / 4) + 1, vs = Math.ceil(c.headDimV / 4) + 1;
  return 16 * ((t.rowsFromGlobal ? 0 : t.rows) + t.cols) * (qs + vs) + 8 * t.rows * (t.cols + 1) + 8 * t.cols + 16;
}

/**
 * 'dkdv' accumulates dK and dV; 'biasColumns' (a bias broadcast over query rows, see
 * biasGradMode) instead sums dS over the query rows of each (head, key) into `dbias`
 * [B, Hq, 1, Nk]. That second walk recomputes the scores but keeps the bias gradient O(Nk) per
 * head, where writing dS per element would cost Nq·Nk; it is its own pass because dK/dV already
 * use WebGPU's default 8 storage bindings.
 */
export type DkdvMode = 'dkdv' | 'biasColumns';

export function dkdvBindings(c: AttentionConfig, mode: DkdvMode): BindingSpec[] {
  const b: BindingSpec[] = [
    storageBinding('q', vec4Q(c), false),
    storageBinding('k', vec4Q(c), false),
    storageBinding('v', vec4V(c), false),
    storageBinding('dout', vec4V(c), false),
  ];
  if (mode === 'dkdv') b.push(storageBinding('dk', vec4Q(c), true), storageBinding('dv', vec4V(c), true));
  if (c.biasShape.length) b.push(storageBinding('bias', false, false));
  b.push({ name: 'aux', type: 'u32', write: false });
  if (mode === 'biasColumns') b.push(storageBinding('dbias', false, true));
  return b;
}

export function dkdvProgram(c: AttentionConfig, aux: AuxLayout, t: Tiles, mode: DkdvMode = 'dkdv'): ProgramSpec {
  const bindings = dkdvBindings(c, mode);
  const columns = mode === 'biasColumns';
  const { TR, TC, WG } = threadsOf(t);
  const TM = t.rowsPerThread, TN = t.colsPerThread;
  const dk4 = Math.ceil(c.headDim / 4), dv4 = Math.ceil(c.headDimV / 4);
  const KX = Math.ceil(dk4 / TC), VX = Math.ceil(dv4 / TC);
  const rowsR = range(TM), colsC = range(TN);
  const rowOf = (r: number) => `tr + ${r * TR}u`;
  const kStrides = layoutStrides(c, c.headsKV, c.seqK, c.headDim);
  const vStrides = layoutStrides(c, c.headsKV, c.seqK, c.headDimV);
  const base = (name: string, st: { batch: number; head: number; seq: number }, r: number) =>
    `  let ${name}row_${r} = (b * ${st.batch}u + hk * ${st.head}u + min(j_${r}, SEQK - 1u) * ${st.seq}u - u.off_${name}) / 4u;`;
  const ownRowBase = (r: number) => !t.rowsFromGlobal ? '' :
    [vec4Q(c) ? base('k', kStrides, r) : '', vec4V(c) ? base('v', vStrides, r) : ''].filter(x => x).join('\n');
  const ownRow = (name: 'k' | 'v', r: number) => {
    if (!t.rowsFromGlobal) return name === 'k' ? `ks[(${rowOf(r)}) * QS + d]` : `vs[(${rowOf(r)}) * VS + d]`;
    const vec = name === 'k' ? vec4Q(c) : vec4V(c);
    return vec ? `${name}[${name}row_${r} + d]` : `load_${name}(b, hk, min(j_${r}, SEQK - 1u), d)`;
  };
  const colIdx = (x: number, n4: number, name: string) => (n4 % TC === 0 ? `tc + ${x * TC}u` : `min(tc + ${x * TC}u, ${name} - 1u)`);
  const colOk = (x: number, n4: number, name: string) => (n4 % TC === 0 ? 'true' : `(tc + ${x * TC}u < ${name})`);

  const accumulate = () => `      workgroupBarrier();
      for (var qq = 0u; qq < BQC; qq++) {
${rowsR.map(r => `        let pt${r} = pts[(${rowOf(r)}) * PS + qq];\n        let g${r} = dss[(${rowOf(r)}) * PS + qq];`).join('\n')}
${range(VX).map(x => `        let o${x} = dos[qq * VS + ${colIdx(x, dv4, 'DV4')}];`).join('\n')}
${range(KX).map(x => `        let q${x} = qs[qq * QS + ${colIdx(x, dk4, 'DK4')}];`).join('\n')}
${rowsR.map(r => range(VX).map(x => `        dv_${r}_${x} += pt${r} * o${x};`).join('\n')).join('\n')}
${rowsR.map(r => range(KX).map(x => `        dk_${r}_${x} += g${r} * q${x};`).join('\n')).join('\n')}
      }
`;
  // Query-row ranges of a split unit (chunks.ts) add to what the dispatch before wrote.
  const plus = (x: string, old: string) => `select(${x}, ${x} + ${old}, u.accumulate != 0u)`;
  const stores = () => rowsR.map(r => `  if (j_${r} < SEQK) {
${range(KX).map(x => `    if (${colOk(x, dk4, 'DK4')}) {
      let at = tc + ${x * TC}u;
      let x = dk_${r}_${x} * ${f32(c.scale / queryScale(c))};
      store_dk(b, hk, j_${r}, at, ${plus('x', `load_dk(b, hk, j_${r}, at)`)});
    }`).join('\n')}
${range(VX).map(x => `    if (${colOk(x, dv4, 'DV4')}) {
      let at = tc + ${x * TC}u;
      store_dv(b, hk, j_${r}, at, ${plus(`dv_${r}_${x}`, `load_dv(b, hk, j_${r}, at)`)});
    }`).join('\n')}
  }`).join('\n');
  const columnSums = () => `    ${rowReduce(t, false, 'add', rowsR.map(r => `dbcol_${r}`), rowOf)}
${rowsR.map(r => `    if ((tc == 0u) & (j_${r} < SEQK)) {
      let at = bh * SEQK + j_${r} - u.off_dbias;
      dbias[at] = ${plus(`dbcol_${r}`, 'dbias[at]')};
    }`).join('\n')}`;

  const body = () => `
${constants(c)}
const BKR = ${t.rows}u;
const BQC = ${t.cols}u;
const TR = ${TR}u;
const TC = ${TC}u;
const WG = ${WG}u;
const QS = DK4 + 1u;
const VS = DV4 + 1u;
const PS = BQC + 1u;
const QSCALE = ${f32(queryScale(c))};
${t.rowsFromGlobal ? '' : `var<workgroup> ks: array<vec4<f32>, ${t.rows * (dk4 + 1)}>;
var<workgroup> vs: array<vec4<f32>, ${t.rows * (dv4 + 1)}>;`}
var<workgroup> qs: array<vec4<f32>, ${t.cols * (dk4 + 1)}>;
var<workgroup> dos: array<vec4<f32>, ${t.cols * (dv4 + 1)}>;
var<workgroup> pts: array<f32, ${t.rows * (t.cols + 1)}>;
var<workgroup> dss: array<f32, ${t.rows * (t.cols + 1)}>;
var<workgroup> lses: array<f32, ${t.cols}>;
var<workgroup> dterms: array<f32, ${t.cols}>;
var<workgroup> flag: u32;
${columns ? `var<workgroup> red: array<f32, ${t.rows * TC}>;` : ''}
${backwardInputAccess(c)}
${columns ? '' : tensorAccess(c, 'dk', c.headsKV, c.seqK, c.headDim, vec4Q(c), 'store')}
${columns ? '' : tensorAccess(c, 'dv', c.headsKV, c.seqK, c.headDimV, vec4V(c), 'store')}
${columns ? '' : tensorAccess(c, 'dk', c.headsKV, c.seqK, c.headDim, vec4Q(c), 'load')}
${columns ? '' : tensorAccess(c, 'dv', c.headsKV, c.seqK, c.headDimV, vec4V(c), 'load')}
${scoreFunctions(c, aux, 0)}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let tr = lidx / TC;
  let tc = lidx % TC;
  let bhk = u.unit_start * ${c.layout === 'BHSD' ? '1u' : 'HKV'} + wid.y;
  let b = bhk / HKV;
  let hk = bhk % HKV;
  let kb = u.key_start / BKR + wid.x;
  if (kb * BKR >= u.key_end) { return; }
  let j0 = kb * BKR;
  ${t.rowsFromGlobal ? '' : stageRows({ dst: 'ks', stride: 'QS', cols4: 'DK4', rows: 'BKR', first: 'j0', limit: 'SEQK', load: 'load_k', head: 'hk' })}
  ${t.rowsFromGlobal ? '' : stageRows({ dst: 'vs', stride: 'VS', cols4: 'DV4', rows: 'BKR', first: 'j0', limit: 'SEQK', load: 'load_v', head: 'hk' })}
  ${c.hasKeyLengths
    ? 'if (lidx == 0u) { flag = keyLimitOf(b); }\n  let kl = workgroupUniformLoad(&flag);'
    : 'let kl = SEQK;'}
  let jFirst = j0;
  let jLast = min(min(j0 + BKR, SEQK), max(kl, 1u)) - 1u;
  ${queryRange(c)}
  let tFirst = iLo / BQC;
  let tEnd = select(tFirst, (iHi + BQC - 1u) / BQC, (iHi > iLo) & (j0 < kl));
${rowsR.map(r => `  let j_${r} = j0 + ${rowOf(r)};
${ownRowBase(r)}
${range(KX).map(x => `  var dk_${r}_${x} = vec4<f32>(0.0);`).join('\n')}
${range(VX).map(x => `  var dv_${r}_${x} = vec4<f32>(0.0);`).join('\n')}`).join('\n')}
  for (var g = u.group_start; g < u.group_end; g++) {
    let h = hk * GROUP + g;
    let bh = b * HQ + h;
${columns ? rowsR.map(r => `    var dbcol_${r} = 0.0;`).join('\n') : ''}
    for (var t = tFirst; t < tEnd; t++) {
      let i0 = t * BQC;
      ${blockSkip(c, 'i0', 'min(i0 + BQC, SEQQ) - 1u', 'jFirst', 'jLast')}
      workgroupBarrier();
      ${stageRows({ dst: 'qs', stride: 'QS', cols4: 'DK4', rows: 'BQC', first: 'i0', limit: 'SEQQ', load: 'load_q', head: 'h', scale: 'QSCALE' })}
      ${stageRows({ dst: 'dos', stride: 'VS', cols4: 'DV4', rows: 'BQC', first: 'i0', limit: 'SEQQ', load: 'load_dout', head: 'h' })}
      for (var e = lidx; e < BQC; e += WG) {
        let row = bh * SEQQ + min(i0 + e, SEQQ - 1u);
        let l = bitcast<f32>(aux[${aux.lse}u + row]);
        lses[e] = select(l, 0.0, l == negInf());
        dterms[e] = bitcast<f32>(aux[${aux.rowTerm}u + row]);
      }
      workgroupBarrier();
${rowsR.map(r => colsC.map(k => `      var s_${r}_${k} = 0.0;\n      var dp_${r}_${k} = 0.0;`).join('\n')).join('\n')}
      for (var d = 0u; d < DK4; d++) {
${rowsR.map(r => `        let k${r} = ${ownRow('k', r)};`).join('\n')}
${colsC.map(k => `        let q${k} = qs[(tc + ${k * TC}u) * QS + d];`).join('\n')}
${rowsR.map(r => colsC.map(k => `        s_${r}_${k} += dot(q${k}, k${r});`).join('\n')).join('\n')}
      }
      for (var d = 0u; d < DV4; d++) {
${rowsR.map(r => `        let v${r} = ${ownRow('v', r)};`).join('\n')}
${colsC.map(k => `        let o${k} = dos[(tc + ${k * TC}u) * VS + d];`).join('\n')}
${rowsR.map(r => colsC.map(k => `        dp_${r}_${k} += dot(o${k}, v${r});`).join('\n')).join('\n')}
      }
${colsC.map(k => `      let ic_${k} = i0 + tc + ${k * TC}u;
${c.dropoutRate > 0 ? `      let drop_${k} = dropoutRow(b, h, ic_${k});` : ''}`).join('\n')}
${rowsR.map(r => colsC.map(k => {
    const col = `tc + ${k * TC}u`;
    const keep = `dropoutKeep(drop_${k}, j_${r})`;
    const pd = c.dropoutRate > 0 ? `select(0.0, p * KEEP_SCALE, ${keep})` : 'p';
    const dpz = c.dropoutRate > 0 ? `select(0.0, dp_${r}_${k} * KEEP_SCALE, ${keep})` : `dp_${r}_${k}`;
    return `      {
        let p = select(exp2(score2(s_${r}_${k}, b, h, ic_${k}, j_${r}, kl) - lses[${col}]), 0.0, ic_${k} >= SEQQ);
        pts[(${rowOf(r)}) * PS + ${col}] = ${pd};
        let ds = p * (${dpz} - dterms[${col}]);${columns ? `\n        dbcol_${r} += ds;` : ''}
        dss[(${rowOf(r)}) * PS + ${col}] = ds * softcapDerivative(s_${r}_${k});
      }`;
  }).join('\n')).join('\n')}
${columns ? '' : accumulate()}    }
${columns ? columnSums() : ''}
  }
${columns ? '' : stores()}
}
`;
  return {
    key: JSON.stringify({ program: 'attention_backward_dkdv', config: shaderConfig(c), tiles: t, mode }),
    bindings, uniforms: [...COMMON_UNIFORMS, ...bindings.map(b => `off_${b.name}`)], body,
    chunking: { rows: t.cols, keys: t.rows, accumulates: 'rows' },
  };
}
