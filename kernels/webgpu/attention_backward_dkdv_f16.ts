// The `precision: 'float16'` dK/dV pass, parallel over key blocks (no atomics), in the shape of the
// float32 pass (attention_backward_dkdv.ts) with its products on 16×16 matrix tiles
// (attention_backward_f16_matrix.ts). A workgroup owns `rows` keys of one KV head, 16 keys per
// strip of 32 invocations, and walks the query tiles of `cols` rows that can see them, for every
// query head of its GQA group:
//   Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ   (K and V tiles held as left operands for the whole walk)
//   P, dS elementwise in f32 on the f32 tiles in workgroup memory (every option: scoreFunctions)
//   dV += (P∘Z/(1−r))ᵀ·dO and dK += dSᵀ·Q   (P and dS rounded to the element type as operands)
// Q, K, V and dO are staged as f16; the accumulators stay f32 in registers until the one store.
import { AttentionConfig, layoutStrides } from '../../src/config';
import type { AuxLayout } from './aux';
import {
  backwardInputAccess, COMMON_UNIFORMS, constants, queryRange, queryScale, scoreFunctions, storageBinding,
  vec4Q, vec4V,
} from './attention_wgsl';
import { shaderConfig } from './attention_forward';
import {
  elementIndex, F16Mode, f16Extensions, liveTileTest, matrixOps, ownTilesCapacity, ownTilesWgsl, stageLoops, StageMode,
  STRIP_THREADS, stripAccumulators, stripProducts, TILE, tilesOf, walkedStaging, WalkedOperand,
} from './attention_backward_f16_matrix';
import { BindingSpec, f32, ProgramSpec, range } from './runtime';

/**
 * `rows`: own rows per workgroup (keys here, query rows in the dQ pass; 16 per strip); `cols`: rows of
 * each walked tile. Both multiples of 16. `stage` and `chains`: see StageMode and stripProducts
 * (defaults 'loop' and false).
 */
export interface F16Tiles {
  rows: number;
  cols: number;
  stage?: StageMode;
  chains?: boolean;
}

/** Row strides (elements) of the staged operands and f32 tiles: padded against bank conflicts, 16-byte aligned. */
export function f16Strides(c: AttentionConfig, t: F16Tiles): { QS: number; VS: number; SS: number; PS: number } {
  return { QS: tilesOf(c.headDim) * TILE + 8, VS: tilesOf(c.headDimV) * TILE + 8, SS: t.cols + 4, PS: t.cols + 8 };
}

export type DkdvF16Mode = 'dkdv' | 'biasColumns';

export function dkdvF16WorkgroupBytes(c: AttentionConfig, t: F16Tiles, mode: F16Mode): number {
  const { QS, VS, SS, PS } = f16Strides(c, t);
  const e = mode.element === 'f16' ? 2 : 4;
  const staged = ownTilesCapacity(t.rows, t.cols * QS) + ownTilesCapacity(t.rows, t.cols * VS);
  return e * (staged + 2 * t.rows * PS) + 4 * 2 * t.rows * SS + 4 * 3 * t.cols + 16;
}

function bindings(c: AttentionConfig, program: DkdvF16Mode): BindingSpec[] {
  const b: BindingSpec[] = [
    storageBinding('q', vec4Q(c), false),
    storageBinding('k', vec4Q(c), false),
    storageBinding('v', vec4V(c), false),
    storageBinding('dout', vec4V(c), false),
  ];
  if (program === 'dkdv') b.push(storageBinding('dk', false, true), storageBinding('dv', false, true));
  if (c.biasShape.length) b.push(storageBinding('bias', false, false));
  b.push({ name: 'aux', type: 'u32', write: false });
  if (program === 'biasColumns') b.push(storageBinding('dbias', false, true));
  return b;
}

/**
 * 'biasColumns' (a bias broadcast over query rows) sums dS over the query rows of each key into
 * `dbias` [B, Hq, 1, Nk] instead of accumulating dK and dV, as the float32 pass does.
 */
export function dkdvF16Program(c: AttentionConfig, aux: AuxLayout, t: F16Tiles, mode: F16Mode,
  program: DkdvF16Mode = 'dkdv'): ProgramSpec {
  const binds = bindings(c, program);
  return {
    key: JSON.stringify({ program: 'attention_backward_dkdv_f16', config: shaderConfig(c), tiles: t, mode, pass: program }),
    bindings: binds, uniforms: [...COMMON_UNIFORMS, ...binds.map(b => `off_${b.name}`)],
    // Built only when the pipeline cache misses (host time per call otherwise, as the forward's).
    body: () => dkdvF16Source(c, aux, t, mode, program),
    extensions: f16Extensions(mode),
    chunking: { rows: t.cols, keys: t.rows, accumulates: 'rows' },
  };
}

/** The WGSL of dkdvF16Program after its bindings. */
function dkdvF16Source(c: AttentionConfig, aux: AuxLayout, t: F16Tiles, mode: F16Mode, program: DkdvF16Mode): string {
  const columns = program === 'biasColumns';
  const ops = matrixOps(mode);
  const E = mode.element;
  const { QS, VS, SS, PS } = f16Strides(c, t);
  const D16 = tilesOf(c.headDim), DV16 = tilesOf(c.headDimV), Q16 = t.cols / TILE;
  const strips = t.rows / TILE, WG = strips * STRIP_THREADS;
  const dk4 = Math.ceil(c.headDim / 4), dv4 = Math.ceil(c.headDimV / 4);
  // Block-sparse walks skip tiles, so a tile prefetched for the next step may not be the next one visited.
  const stageMode: StageMode = t.stage === 'prefetch' && c.blockSize > 0 ? 'batched' : t.stage ?? 'loop';
  const chains = t.chains ?? false;
  const walked: WalkedOperand[] = [
    { dst: 'qs', stride: 'QS', cols4: dk4, tiles: D16, load: 'load_q', head: 'h', scale: 'QSCALE' },
    { dst: 'dos', stride: 'VS', cols4: dv4, tiles: DV16, load: 'load_dout', head: 'h' },
  ];
  const staging = walkedStaging(E, t.cols, WG, 'min(SEQQ, u.row_end)', walked);
  // The walked tile's row statistics; with register staging, held like its operands.
  const statSlots = range(Math.ceil(t.cols / WG));
  const fetchStats = (first: string) => statSlots.map(k => `{
      let row = bh * SEQQ + min(${first} + lidx + ${k * WG}u, SEQQ - 1u);
      sl${k} = bitcast<f32>(aux[${aux.lse}u + row]);
      sd${k} = bitcast<f32>(aux[${aux.rowTerm}u + row]);
    }`).join('\n    ');
  const storeStats = statSlots.map(k => `if (lidx + ${k * WG}u < BQ) {
      let e = lidx + ${k * WG}u;
      lses[e] = select(sl${k}, 0.0, sl${k} == negInf());
      dterms[e] = sd${k};
      ${c.dropoutRate > 0 ? 'drows[e] = dropoutRow(b, h, i0 + e);' : ''}
    }`).join('\n    ');
  const loopStats = `for (var e = lidx; e < BQ; e += WG) {
        let row = bh * SEQQ + min(i0 + e, SEQQ - 1u);
        let l = bitcast<f32>(aux[${aux.lse}u + row]);
        lses[e] = select(l, 0.0, l == negInf());
        dterms[e] = bitcast<f32>(aux[${aux.rowTerm}u + row]);
        ${c.dropoutRate > 0 ? 'drows[e] = dropoutRow(b, h, i0 + e);' : ''}
      }`;
  const stageTile = {
    loop: `${stageLoops(E, 'BQ', 'SEQQ', walked, 'i0')}
      ${loopStats}`,
    batched: `${staging.fetch('i0')}
    ${fetchStats('i0')}
    ${staging.store}
    ${storeStats}`,
    prefetch: `${staging.store}
    ${storeStats}
    ${staging.fetch('i0 + BQ')}
    ${fetchStats('i0 + BQ')}`,
  }[stageMode];
  const registers = stageMode === 'loop' ? '' : `${staging.declare}
  ${statSlots.map(k => `var sl${k}: f32; var sd${k}: f32;`).join(' ')}`;

  // K and V rows of each strip become left tiles, staged through qs/dos.
  const qsSize = ownTilesCapacity(t.rows, t.cols * QS), dosSize = ownTilesCapacity(t.rows, t.cols * VS);
  const ownRows = ownTilesWgsl(ops, E, t.rows, 'j0', 'SEQK', [
    { name: 'kf', buffer: 'qs', capacity: qsSize, tiles: D16, cols4: dk4, load: 'load_k', head: 'hk' },
    { name: 'vf', buffer: 'dos', capacity: dosSize, tiles: DV16, cols4: dv4, load: 'load_v', head: 'hk' },
  ]);

  const products = stripProducts(ops, [
    { dst: 'st', lefts: 'kf', src: 'qs', stride: 'QS', tiles: D16 },
    { dst: 'dpt', lefts: 'vf', src: 'dos', stride: 'VS', tiles: DV16 },
  ], Q16, chains);

  const accumulate = (acc: string, operand: string, src: string, stride: string, tiles: number) => range(Q16).map(q =>
    `      ${ops.loadLeft('lt[0]', operand, `sg * 16u * PS + ${q * TILE}u`, 'PS')}
${range(tiles).map(x => `      ${ops.multiplyAdd(`${acc}[${x}]`, 'lt[0]', src, `${q * TILE}u * ${stride} + ${x * TILE}u`, stride, false)}`).join('\n')}`).join('\n');

  const keep = c.dropoutRate > 0 ? 'dropoutKeep(drows[col], j)' : '';
  const elementwise = `      for (var e = lidx; e < BK * BQ; e += WG) {
        let r = e / BQ;
        let col = e % BQ;
        let j = j0 + r;
        let i = i0 + col;
        let s = st[r * SS + col];
        let p = select(exp2(score2(s, b, h, min(i, SEQQ - 1u), min(j, SEQK - 1u), kl) - lses[col]), 0.0, i >= SEQQ);
        let dpz = ${c.dropoutRate > 0 ? `select(0.0, dpt[r * SS + col] * KEEP_SCALE, ${keep})` : 'dpt[r * SS + col]'};
        let ds = p * (dpz - dterms[col]);
${columns ? '        st[r * SS + col] = ds;' : `        pt[r * PS + col] = ${E}(${c.dropoutRate > 0 ? `select(0.0, p * KEEP_SCALE, ${keep})` : 'p'});
        dst[r * PS + col] = ${E}(ds * softcapDerivative(s));`}
      }`;

  // Query-row ranges and head ranges of a split unit (chunks.ts) add to what the dispatch before wrote.
  const plus = (x: string, old: string) => `select(${x}, ${x} + ${old}, u.accumulate != 0u)`;
  const kStrides = layoutStrides(c, c.headsKV, c.seqK, c.headDim);
  const vStrides = layoutStrides(c, c.headsKV, c.seqK, c.headDimV);
  const storeTiles = (acc: string, out: string, strides: typeof kStrides, tiles: number, dim: number, factor: string) =>
    range(tiles).map(x => `  workgroupBarrier();
  ${ops.store(`${acc}[${x}]`, 'st', 'sg * 16u * SS', 'SS')}
  workgroupBarrier();
  for (var e = lidx % 32u; e < 256u; e += 32u) {
    let j = j0 + sg * 16u + e / 16u;
    let d = ${x * TILE}u + e % 16u;
    if ((j < SEQK) & (d < ${dim}u)) {
      let h = hk;
      let i = j;
      let at = ${elementIndex(strides, out)};
      let x = st[(sg * 16u + e / 16u) * SS + e % 16u]${factor};
      ${out}[at] = ${plus('x', `${out}[at]`)};
    }
  }`).join('\n');

  return `
${constants(c)}
const BK = ${t.rows}u;
const BQ = ${t.cols}u;
const WG = ${WG}u;
const QS = ${QS}u;
const VS = ${VS}u;
const SS = ${SS}u;
const PS = ${PS}u;
const QSCALE = ${f32(queryScale(c))};
var<workgroup> qs: array<${E}, ${qsSize}>;
var<workgroup> dos: array<${E}, ${dosSize}>;
var<workgroup> st: array<f32, ${t.rows * SS}>;
var<workgroup> dpt: array<f32, ${t.rows * SS}>;
var<workgroup> pt: array<${E}, ${t.rows * PS}>;
var<workgroup> dst: array<${E}, ${t.rows * PS}>;
var<workgroup> lses: array<f32, ${t.cols}>;
var<workgroup> dterms: array<f32, ${t.cols}>;
var<workgroup> drows: array<u32, ${t.cols}>;
${backwardInputAccess(c)}
${scoreFunctions(c, aux, 0)}

@compute @workgroup_size(${WG})
${ops.entryAttributes}fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let sg = lidx / 32u;
  ${ops.prelude}
  let bhk = u.unit_start * ${c.layout === 'BHSD' ? '1u' : 'HKV'} + wid.y;
  let b = bhk / HKV;
  let hk = bhk % HKV;
  let kb = u.key_start / BK + wid.x;
  if (kb * BK >= u.key_end) { return; }
  let j0 = kb * BK;
  let kl = keyLimitOf(b);
  let jFirst = j0;
  let jLast = min(min(j0 + BK, SEQK), max(kl, 1u)) - 1u;
  ${queryRange(c)}
  let tFirst = iLo / BQ;
  let tEnd = select(tFirst, (iHi + BQ - 1u) / BQ, (iHi > iLo) & (j0 < kl));
  ${ops.declareLefts('kf', D16)}
  ${ops.declareLefts('vf', DV16)}
  ${ops.declareLefts('lt', 1)}
  ${ops.declareResults('acc', stripAccumulators(2, Q16, chains))}
  ${ops.declareResults('dka', D16)}
  ${ops.declareResults('dva', DV16)}
${ownRows}
  ${registers}
  for (var g = u.group_start; g < u.group_end; g++) {
    let h = hk * GROUP + g;
    let bh = b * HQ + h;
${columns ? '    var dbcol = 0.0;' : ''}
    ${stageMode === 'prefetch' ? `${staging.fetch('tFirst * BQ')}
    ${fetchStats('tFirst * BQ')}` : ''}
    for (var t = tFirst; t < tEnd; t++) {
      let i0 = t * BQ;
      ${liveTileTest(c.blockSize, 'i0', 'min(i0 + BQ, SEQQ) - 1u', 'jFirst', 'jLast')}
      workgroupBarrier();
      ${stageTile}
      workgroupBarrier();
${products}
      workgroupBarrier();
${elementwise}
      workgroupBarrier();
${columns ? '      if (lidx < BK) { for (var col = 0u; col < BQ; col++) { dbcol += st[lidx * SS + col]; } }' : `${accumulate('dva', 'pt', 'dos', 'VS', DV16)}
${accumulate('dka', 'dst', 'qs', 'QS', D16)}`}
    }
${columns ? `    if ((lidx < BK) & (j0 + lidx < SEQK)) {
      let at = bh * SEQK + j0 + lidx - u.off_dbias;
      dbias[at] = ${plus('dbcol', 'dbias[at]')};
    }` : ''}
  }
${columns ? '' : `${storeTiles('dka', 'dk', kStrides, D16, c.headDim, ` * ${f32(c.scale / queryScale(c))}`)}
${storeTiles('dva', 'dv', vStrides, DV16, c.headDimV, '')}`}
}
`;
}
