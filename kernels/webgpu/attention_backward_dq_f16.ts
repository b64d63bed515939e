// The `precision: 'float16'` dQ pass, parallel over query blocks (no atomics), in the shape of the
// float32 pass (attention_backward_dq.ts) with its products on 16×16 matrix tiles
// (attention_backward_f16_matrix.ts). A workgroup owns `rows` query rows of one head, 16 rows per
// strip of 32 invocations, and walks the key tiles of `cols` keys they can see:
//   S = Q·Kᵀ and dP = dO·Vᵀ   (Q and dO tiles held as left operands for the whole walk)
//   dS = P ∘ (dP·Z/(1−r) − D) elementwise in f32 (every option: scoreFunctions), with the bias
//   gradient written (per element, or summed over keys) as the float32 pass does
//   dQ += dS·K   (dS rounded to the element type as an operand), f32 in registers until the store.
import { AttentionConfig, layoutStrides } from '../../src/config';
import type { AuxLayout } from './aux';
import {
  backwardInputAccess, biasGradMode, COMMON_UNIFORMS, constants, keyRange, queryBlockIds, queryScale, scoreFunctions,
  storageBinding, vec4Q, vec4V,
} from './attention_wgsl';
import { shaderConfig } from './attention_forward';
import {
  elementIndex, F16Mode, f16Extensions, liveTileTest, matrixOps, ownTilesCapacity, ownTilesWgsl, stageLoops, StageMode,
  STRIP_THREADS, stripAccumulators, stripProducts, TILE, tilesOf, walkedStaging, WalkedOperand,
} from './attention_backward_f16_matrix';
import type { F16Tiles } from './attention_backward_dkdv_f16';
import { BindingSpec, f32, ProgramSpec, range } from './runtime';

/** Row strides (elements): K and V tiles of `cols` keys, f32 score tiles and the f16 dS tile. */
function strides(c: AttentionConfig, t: F16Tiles): { KS: number; VS: number; SS: number; PS: number } {
  return { KS: tilesOf(c.headDim) * TILE + 8, VS: tilesOf(c.headDimV) * TILE + 8, SS: t.cols + 4, PS: t.cols + 8 };
}

export function dqF16WorkgroupBytes(c: AttentionConfig, t: F16Tiles, mode: F16Mode): number {
  const { KS, VS, SS, PS } = strides(c, t);
  const e = mode.element === 'f16' ? 2 : 4;
  const staged = ownTilesCapacity(t.rows, t.cols * KS) + ownTilesCapacity(t.rows, t.cols * VS);
  return e * (staged + t.rows * PS) + 4 * 2 * t.rows * SS + 4 * 3 * t.rows + 16;
}

function bindings(c: AttentionConfig): BindingSpec[] {
  const b: BindingSpec[] = [
    storageBinding('q', vec4Q(c), false),
    storageBinding('k', vec4Q(c), false),
    storageBinding('v', vec4V(c), false),
    storageBinding('dout', vec4V(c), false),
    storageBinding('dq', false, true),
  ];
  if (c.biasShape.length) b.push(storageBinding('bias', false, false));
  if (biasGradMode(c) === 'rows' || biasGradMode(c) === 'full') b.push(storageBinding('dbias', false, true));
  b.push({ name: 'aux', type: 'u32', write: false });
  return b;
}

export function dqF16Program(c: AttentionConfig, aux: AuxLayout, t: F16Tiles, mode: F16Mode): ProgramSpec {
  const binds = bindings(c);
  return {
    key: JSON.stringify({ program: 'attention_backward_dq_f16', config: shaderConfig(c), tiles: t, mode }),
    bindings: binds, uniforms: [...COMMON_UNIFORMS, ...binds.map(b => `off_${b.name}`)],
    // Built only when the pipeline cache misses (host time per call otherwise, as the forward's).
    body: () => dqF16Source(c, aux, t, mode),
    extensions: f16Extensions(mode),
    // Key ranges of a split unit add into dQ (and the bias' row sums) written by the dispatch before.
    chunking: { rows: t.rows, keys: t.cols, accumulates: 'keys' },
  };
}

/** The WGSL of dqF16Program after its bindings. */
function dqF16Source(c: AttentionConfig, aux: AuxLayout, t: F16Tiles, mode: F16Mode): string {
  const ops = matrixOps(mode);
  const E = mode.element;
  const { KS, VS, SS, PS } = strides(c, t);
  const D16 = tilesOf(c.headDim), DV16 = tilesOf(c.headDimV), K16 = t.cols / TILE;
  const strips = t.rows / TILE, WG = strips * STRIP_THREADS;
  const dk4 = Math.ceil(c.headDim / 4), dv4 = Math.ceil(c.headDimV / 4);
  const rowSums = biasGradMode(c) === 'rows', fullBias = biasGradMode(c) === 'full';
  // Block-sparse walks skip tiles, so a tile prefetched for the next step may not be the next one visited.
  const stageMode: StageMode = t.stage === 'prefetch' && c.blockSize > 0 ? 'batched' : t.stage ?? 'loop';
  const chains = t.chains ?? false;
  const walked: WalkedOperand[] = [
    { dst: 'ks', stride: 'KS', cols4: dk4, tiles: D16, load: 'load_k', head: 'hk' },
    { dst: 'vs', stride: 'VS', cols4: dv4, tiles: DV16, load: 'load_v', head: 'hk' },
  ];
  const staging = walkedStaging(E, t.cols, WG, 'min(SEQK, u.key_end)', walked);
  const stageTile = {
    loop: stageLoops(E, 'BK', 'SEQK', walked, 'j0'),
    batched: `${staging.fetch('j0')}
    ${staging.store}`,
    prefetch: `${staging.store}
    ${staging.fetch('j0 + BK')}`,
  }[stageMode];

  // Q and dO rows of each strip become left tiles, staged through ks/vs.
  const ksSize = ownTilesCapacity(t.rows, t.cols * KS), vsSize = ownTilesCapacity(t.rows, t.cols * VS);
  const ownRows = ownTilesWgsl(ops, E, t.rows, 'i0', 'SEQQ', [
    { name: 'qf', buffer: 'ks', capacity: ksSize, tiles: D16, cols4: dk4, load: 'load_q', head: 'h', scale: 'QSCALE' },
    { name: 'dof', buffer: 'vs', capacity: vsSize, tiles: DV16, cols4: dv4, load: 'load_dout', head: 'h' },
  ]);

  const products = stripProducts(ops, [
    { dst: 'st', lefts: 'qf', src: 'ks', stride: 'KS', tiles: D16 },
    { dst: 'dpt', lefts: 'dof', src: 'vs', stride: 'VS', tiles: DV16 },
  ], K16, chains);

  const accumulate = range(K16).map(k => `    ${ops.loadLeft('lt[0]', 'dsh', `sg * 16u * PS + ${k * TILE}u`, 'PS')}
${range(D16).map(x => `    ${ops.multiplyAdd(`dqa[${x}]`, 'lt[0]', 'ks', `${k * TILE}u * KS + ${x * TILE}u`, 'KS', false)}`).join('\n')}`).join('\n');

  const dpz = c.dropoutRate > 0
    ? 'select(0.0, dpt[r * SS + col] * KEEP_SCALE, dropoutKeep(drows[r], j))' : 'dpt[r * SS + col]';
  const elementwise = `    for (var e = lidx; e < BQ * BK; e += WG) {
      let r = e / BK;
      let col = e % BK;
      let i = i0 + r;
      let j = j0 + col;
      let s = st[r * SS + col];
      let p = select(exp2(score2(s, b, h, min(i, SEQQ - 1u), min(j, SEQK - 1u), kl) - lses[r]), 0.0,
        (i >= SEQQ) | (j >= SEQK));
      let ds = p * (${dpz} - dterms[r]);
${fullBias ? '      if ((i < SEQQ) & (j < SEQK)) { dbias[(bh * SEQQ + i) * SEQK + j - u.off_dbias] = ds; }' : ''}
${rowSums ? '      st[r * SS + col] = ds;' : ''}
      dsh[r * PS + col] = ${E}(ds * softcapDerivative(s));
    }`;

  const qStrides = layoutStrides(c, c.headsQ, c.seqQ, c.headDim);
  const stores = range(D16).map(x => `  workgroupBarrier();
  ${ops.store(`dqa[${x}]`, 'st', 'sg * 16u * SS', 'SS')}
  workgroupBarrier();
  for (var e = lidx % 32u; e < 256u; e += 32u) {
    let i = i0 + sg * 16u + e / 16u;
    let d = ${x * TILE}u + e % 16u;
    if ((i < SEQQ) & (d < D)) {
      let at = ${elementIndex(qStrides, 'dq')};
      let x = st[(sg * 16u + e / 16u) * SS + e % 16u] * ${f32(c.scale)};
      dq[at] = select(x, x + dq[at], u.accumulate != 0u);
    }
  }`).join('\n');

  return `
${constants(c)}
const BQ = ${t.rows}u;
const BK = ${t.cols}u;
const WG = ${WG}u;
const KS = ${KS}u;
const VS = ${VS}u;
const SS = ${SS}u;
const PS = ${PS}u;
const QSCALE = ${f32(queryScale(c))};
var<workgroup> ks: array<${E}, ${ksSize}>;
var<workgroup> vs: array<${E}, ${vsSize}>;
var<workgroup> st: array<f32, ${t.rows * SS}>;
var<workgroup> dpt: array<f32, ${t.rows * SS}>;
var<workgroup> dsh: array<${E}, ${t.rows * PS}>;
var<workgroup> lses: array<f32, ${t.rows}>;
var<workgroup> dterms: array<f32, ${t.rows}>;
var<workgroup> drows: array<u32, ${t.rows}>;
${backwardInputAccess(c)}
${scoreFunctions(c, aux, 0)}

@compute @workgroup_size(${WG})
${ops.entryAttributes}fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let sg = lidx / 32u;
  ${ops.prelude}
  ${queryBlockIds(c, t.rows)}
  let b = bh / HQ;
  let h = bh % HQ;
  let hk = h / GROUP;
  let i0 = qb * BQ;
  let kl = keyLimitOf(b);
  let iFirst = i0;
  let iLast = min(i0 + BQ, SEQQ) - 1u;
  ${keyRange(c)}
  let tFirst = jLo / BK;
  let tEnd = select(tFirst, (jHi + BK - 1u) / BK, jHi > jLo);
  for (var e = lidx; e < BQ; e += WG) {
    let row = bh * SEQQ + min(i0 + e, SEQQ - 1u);
    let l = bitcast<f32>(aux[${aux.lse}u + row]);
    lses[e] = select(l, 0.0, l == negInf());
    dterms[e] = bitcast<f32>(aux[${aux.rowTerm}u + row]);
    ${c.dropoutRate > 0 ? 'drows[e] = dropoutRow(b, h, i0 + e);' : ''}
  }
  ${ops.declareLefts('qf', D16)}
  ${ops.declareLefts('dof', DV16)}
  ${ops.declareLefts('lt', 1)}
  ${ops.declareResults('acc', stripAccumulators(2, K16, chains))}
  ${ops.declareResults('dqa', D16)}
${rowSums ? '  var dbsum = 0.0;' : ''}
${ownRows}
  ${stageMode === 'loop' ? '' : staging.declare}
  ${stageMode === 'prefetch' ? staging.fetch('tFirst * BK') : ''}
  for (var t = tFirst; t < tEnd; t++) {
    let j0 = t * BK;
    ${liveTileTest(c.blockSize, 'iFirst', 'iLast', 'j0', 'min(j0 + BK, SEQK) - 1u')}
    workgroupBarrier();
    ${stageTile}
    workgroupBarrier();
${products}
    workgroupBarrier();
${elementwise}
    workgroupBarrier();
${rowSums ? '    if (lidx < BQ) { for (var col = 0u; col < BK; col++) { dbsum += st[lidx * SS + col]; } }' : ''}
${accumulate}
  }
${rowSums ? `  if ((lidx < BQ) & (i0 + lidx < SEQQ)) {
    let at = bh * SEQQ + i0 + lidx - u.off_dbias;
    dbias[at] = select(dbsum, dbsum + dbias[at], u.accumulate != 0u);
  }` : ''}
${stores}
}
`;
}
