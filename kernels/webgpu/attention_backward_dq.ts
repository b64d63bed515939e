// The backward's dQ pass, parallel over query blocks (no atomics): one workgroup per (batch·head,
// block of query rows) walks the same key tiles as the forward, recomputes P = exp2(s − lse) from
// the saved log-sum-exp, dP = dO·Vᵀ, dS = P ∘ (dP·Z/(1−r) − D), and accumulates dQ = scale·dS·K in
// registers. With a bias it also writes dS (the bias gradient before broadcasting) into the
// expanded [B, Hq, Nq, Nk'] buffer `dbias`, summed over keys in registers when Nk' = 1 (a bias
// broadcast over query rows is left to the dK/dV-shaped column pass instead). A unit too large to
// bind is split into query-row ranges (independent) and key ranges, each adding to dQ (chunks.ts).
import { AttentionConfig, layoutStrides } from '../../src/config';
import type { AuxLayout } from './aux';
import {
  backwardInputAccess, biasGradMode, blockSkip, COMMON_UNIFORMS, constants, keyRange, queryBlockIds, queryScale, scoreFunctions, stageRows,
  storageBinding, tensorAccess, vec4Q, vec4V,
} from './attention_wgsl';
import { shaderConfig } from './attention_forward';
import { BindingSpec, f32, ProgramSpec, range } from './runtime';
import { rowReduce, threadsOf, Tiles } from './tiles';

function biasRowSums(c: AttentionConfig): boolean {
  return biasGradMode(c) === 'rows';
}

export function dqWorkgroupBytes(c: AttentionConfig, t: Tiles, useSubgroups: boolean): number {
  const qs = Math.ceil(c.headDim / 4) + 1, vs = Math.ceil(c.headDimV / 4) + 1;
  const { TC } = threadsOf(t);
  return 16 * ((t.rowsFromGlobal ? 0 : t.rows) + t.cols) * (qs + vs) + 4 * t.rows * (t.cols + 1) +
    (biasRowSums(c) && !useSubgroups ? 4 * t.rows * TC : 0) + 16;
}

export function dqBindings(c: AttentionConfig): BindingSpec[] {
  const b: BindingSpec[] = [
    storageBinding('q', vec4Q(c), false),
    storageBinding('k', vec4Q(c), false),
    storageBinding('v', vec4V(c), false),
    storageBinding('dout', vec4V(c), false),
    storageBinding('dq', vec4Q(c), true),
  ];
  if (c.biasShape.length) b.push(storageBinding('bias', false, false));
  if (biasGradMode(c) === 'rows' || biasGradMode(c) === 'full') b.push(storageBinding('dbias', false, true));
  b.push({ name: 'aux', type: 'u32', write: false });
  return b;
}

export function dqProgram(c: AttentionConfig, aux: AuxLayout, t: Tiles, useSubgroups: boolean): ProgramSpec {
  const bindings = dqBindings(c);
  const { TR, TC, WG } = threadsOf(t);
  const TM = t.rowsPerThread, TN = t.colsPerThread;
  const dk4 = Math.ceil(c.headDim / 4);
  const QX = Math.ceil(dk4 / TC);
  const rowsR = range(TM), colsC = range(TN), qxX = range(QX);
  const rowOf = (r: number) => `tr + ${r * TR}u`;
  const strides = { q: layoutStrides(c, c.headsQ, c.seqQ, c.headDim), dout: layoutStrides(c, c.headsQ, c.seqQ, c.headDimV) };
  const vec = { q: vec4Q(c), dout: vec4V(c) };
  const ownRowBase = (r: number) => !t.rowsFromGlobal ? '' : (['q', 'dout'] as const).filter(n => vec[n]).map(n =>
    `  let ${n}row_${r} = (b * ${strides[n].batch}u + h * ${strides[n].head}u + min(i_${r}, SEQQ - 1u) * ${strides[n].seq}u - u.off_${n}) / 4u;`)
    .join('\n');
  // Without staged rows, Q is read unscaled and the dot product is scaled instead.
  const ownRow = (n: 'q' | 'dout', r: number) => {
    if (!t.rowsFromGlobal) return n === 'q' ? `qs[(${rowOf(r)}) * QS + d]` : `dos[(${rowOf(r)}) * VS + d]`;
    return vec[n] ? `${n}[${n}row_${r} + d]` : `load_${n}(b, h, min(i_${r}, SEQQ - 1u), d)`;
  };
  const colIdx = (x: number) => (dk4 % TC === 0 ? `tc + ${x * TC}u` : `min(tc + ${x * TC}u, DK4 - 1u)`);
  const colOk = (x: number) => (dk4 % TC === 0 ? 'true' : `(tc + ${x * TC}u < DK4)`);
  const rowSums = biasRowSums(c);
  const fullBias = biasGradMode(c) === 'full';

  const body = () => `
${constants(c)}
const BQ = ${t.rows}u;
const BK = ${t.cols}u;
const TR = ${TR}u;
const TC = ${TC}u;
const WG = ${WG}u;
const QS = DK4 + 1u;
const VS = DV4 + 1u;
const PS = BK + 1u;
const QSCALE = ${f32(queryScale(c))};
${t.rowsFromGlobal ? '' : `var<workgroup> qs: array<vec4<f32>, ${t.rows * (dk4 + 1)}>;
var<workgroup> dos: array<vec4<f32>, ${t.rows * (Math.ceil(c.headDimV / 4) + 1)}>;`}
var<workgroup> ks: array<vec4<f32>, ${t.cols * (dk4 + 1)}>;
var<workgroup> vs: array<vec4<f32>, ${t.cols * (Math.ceil(c.headDimV / 4) + 1)}>;
var<workgroup> dss: array<f32, ${t.rows * (t.cols + 1)}>;
${rowSums && !useSubgroups ? `var<workgroup> red: array<f32, ${t.rows * TC}>;` : ''}
var<workgroup> flag: u32;
${backwardInputAccess(c)}
${tensorAccess(c, 'dq', c.headsQ, c.seqQ, c.headDim, vec4Q(c), 'store')}
${tensorAccess(c, 'dq', c.headsQ, c.seqQ, c.headDim, vec4Q(c), 'load')}
${scoreFunctions(c, aux, t.cols)}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let tr = lidx / TC;
  let tc = lidx % TC;
  ${queryBlockIds(c, t.rows)}
  let b = bh / HQ;
  let h = bh % HQ;
  let hk = h / GROUP;
  let i0 = qb * BQ;
  ${t.rowsFromGlobal ? '' : stageRows({ dst: 'qs', stride: 'QS', cols4: 'DK4', rows: 'BQ', first: 'i0', limit: 'SEQQ', load: 'load_q', head: 'h', scale: 'QSCALE' })}
  ${t.rowsFromGlobal ? '' : stageRows({ dst: 'dos', stride: 'VS', cols4: 'DV4', rows: 'BQ', first: 'i0', limit: 'SEQQ', load: 'load_dout', head: 'h' })}
  ${c.hasKeyLengths
    ? 'if (lidx == 0u) { flag = keyLimitOf(b); }\n  let kl = workgroupUniformLoad(&flag);'
    : 'let kl = SEQK;'}
  let iFirst = i0;
  let iLast = min(i0 + BQ, SEQQ) - 1u;
  ${keyRange(c)}
  let tFirst = jLo / BK;
  let tEnd = select(tFirst, (jHi + BK - 1u) / BK, jHi > jLo);
${rowsR.map(r => `  let i_${r} = i0 + ${rowOf(r)};
${ownRowBase(r)}
  let row_${r} = bh * SEQQ + min(i_${r}, SEQQ - 1u);
  let lse_${r} = bitcast<f32>(aux[${aux.lse}u + row_${r}]);
  let lseUse_${r} = select(lse_${r}, 0.0, lse_${r} == negInf());
  let dterm_${r} = bitcast<f32>(aux[${aux.rowTerm}u + row_${r}]);
${rowSums ? `  var dbsum_${r} = 0.0;\n` : ''}${c.dropoutRate > 0 ? `  let drop_${r} = dropoutRow(b, h, i_${r});\n` : ''}${qxX.map(x => `  var acc_${r}_${x} = vec4<f32>(0.0);`).join('\n')}`).join('\n')}
  for (var t = tFirst; t < tEnd; t++) {
    let j0 = t * BK;
    ${blockSkip(c, 'iFirst', 'iLast', 'j0', 'min(j0 + BK, SEQK) - 1u')}
    workgroupBarrier();
    ${stageRows({ dst: 'ks', stride: 'QS', cols4: 'DK4', rows: 'BK', first: 'j0', limit: 'SEQK', load: 'load_k', head: 'hk' })}
    ${stageRows({ dst: 'vs', stride: 'VS', cols4: 'DV4', rows: 'BK', first: 'j0', limit: 'SEQK', load: 'load_v', head: 'hk' })}
    workgroupBarrier();
${rowsR.map(r => colsC.map(k => `    var s_${r}_${k} = 0.0;\n    var dp_${r}_${k} = 0.0;`).join('\n')).join('\n')}
    for (var d = 0u; d < DK4; d++) {
${rowsR.map(r => `      let q${r} = ${ownRow('q', r)};`).join('\n')}
${colsC.map(k => `      let k${k} = ks[(tc + ${k * TC}u) * QS + d];`).join('\n')}
${rowsR.map(r => colsC.map(k => `      s_${r}_${k} += dot(q${r}, k${k});`).join('\n')).join('\n')}
    }
    for (var d = 0u; d < DV4; d++) {
${rowsR.map(r => `      let o${r} = ${ownRow('dout', r)};`).join('\n')}
${colsC.map(k => `      let v${k} = vs[(tc + ${k * TC}u) * VS + d];`).join('\n')}
${rowsR.map(r => colsC.map(k => `      dp_${r}_${k} += dot(o${r}, v${k});`).join('\n')).join('\n')}
    }
${t.rowsFromGlobal ? rowsR.map(r => colsC.map(k => `    s_${r}_${k} *= QSCALE;`).join('\n')).join('\n') : ''}
${rowsR.map(r => colsC.map(k => {
    const j = `j0 + tc + ${k * TC}u`;
    const dpz = c.dropoutRate > 0 ? `select(0.0, dp_${r}_${k} * KEEP_SCALE, dropoutKeep(drop_${r}, ${j}))` : `dp_${r}_${k}`;
    const dbias = fullBias
      ? `\n      if ((i_${r} < SEQQ) & (${j} < SEQK)) { dbias[row_${r} * SEQK + ${j} - u.off_dbias] = ds; }`
      : rowSums ? `\n      dbsum_${r} += ds;` : '';
    return `    {
      let p = exp2(score2(s_${r}_${k}, b, h, i_${r}, ${j}, kl) - lseUse_${r});
      let ds = p * (${dpz} - dterm_${r});${dbias}
      dss[(${rowOf(r)}) * PS + tc + ${k * TC}u] = ds * softcapDerivative(s_${r}_${k});
    }`;
  }).join('\n')).join('\n')}
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
${rowsR.map(r => `      let g${r} = dss[(${rowOf(r)}) * PS + kk];`).join('\n')}
${qxX.map(x => `      let k${x} = ks[kk * QS + ${colIdx(x)}];`).join('\n')}
${rowsR.map(r => qxX.map(x => `      acc_${r}_${x} += g${r} * k${x};`).join('\n')).join('\n')}
    }
  }
${rowSums ? `  ${rowReduce(t, useSubgroups, 'add', rowsR.map(r => `dbsum_${r}`), rowOf)}` : ''}
${rowsR.map(r => `  if (i_${r} < SEQQ) {
${qxX.map(x => `    if (${colOk(x)}) {
      let at = tc + ${x * TC}u;
      let x = acc_${r}_${x} * ${f32(c.scale)};
      store_dq(b, h, i_${r}, at, select(x, x + load_dq(b, h, i_${r}, at), u.accumulate != 0u));
    }`).join('\n')}
${rowSums ? `    if (tc == 0u) {
      let at = row_${r} - u.off_dbias;
      dbias[at] = select(dbsum_${r}, dbsum_${r} + dbias[at], u.accumulate != 0u);
    }` : ''}
  }`).join('\n')}
}
`;
  return {
    key: JSON.stringify({ program: 'attention_backward_dq', config: shaderConfig(c), tiles: t, useSubgroups }),
    bindings, uniforms: [...COMMON_UNIFORMS, ...bindings.map(b => `off_${b.name}`)], body,
    extensions: useSubgroups && rowSums ? ['subgroups'] : [],
    // Key ranges add into dQ (and the bias' row sums) written by the dispatch before.
    chunking: { rows: t.rows, keys: t.cols, accumulates: 'keys' },
  };
}
