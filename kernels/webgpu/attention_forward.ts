// The FlashAttention-2 forward program: one workgroup per (batch·head, block of query rows). The
// Q block is staged once in workgroup memory, pre-scaled into base 2 (or, with rowsFromGlobal, each
// thread reads its Q rows from global memory and scales the dot products); K and V tiles of `cols` keys
// stream through workgroup memory; each thread keeps its rowsPerThread × colsPerThread scores, its
// rows' running max and partial sum, and its slice of the output accumulator in registers (online
// softmax with exp2). Key tiles outside the window / causal band or past keyLengths are never
// visited (loop bounds), block-sparse tiles with no live block are skipped, and only tiles that
// cross a band edge or the key limit evaluate the visibility mask. The output and the log-sum-exp
// are written once at the end. No Nq × Nk buffer exists. Under a causal band a workgroup may run
// two query blocks, i and n−1−i, one after the other (ForwardPlan.paired), so all do equal work;
// with ForwardPlan.halves two workgroups share a pair's key walk, half each, and write partial
// outputs and lse that merge_splits.ts combines (flash_attention.ts runs both).
import { AttentionConfig, layoutStrides, queryOffset } from '../../src/config';
import type { AuxLayout } from './aux';
import {
  broadcastIndex, COMMON_UNIFORMS, constants, keyRange, queryBlockGrid, queryBlockIds, queryScale, scoreFunctions,
  stageRows, storageBinding, tensorAccess, vec4Q, vec4V,
} from './attention_wgsl';
import { BindingSpec, f32, ProgramSpec, range } from './runtime';
import { isBanded, rowReduce, threadsOf, Tiles } from './tiles';
import type { ForwardSchedule } from './tuning';

/**
 * How query blocks map to workgroups (ForwardSchedule's pairBlocks and halvePairs resolved against
 * the config); the float16 forward (attention_forward_f16.ts) pairs its blocks the same way.
 */
export interface BlockPairing {
  paired: boolean;
  /** Two workgroups per pair, each half of its key walk, writing partials (ForwardSchedule.halvePairs). */
  halves: boolean;
}

export function blockPairing(c: AttentionConfig, s: Pick<ForwardSchedule, 'pairBlocks' | 'halvePairs'>): BlockPairing {
  const paired = s.pairBlocks === 'always' || (s.pairBlocks === 'banded' && isBanded(c));
  const narrow = c.headDim <= 64 && c.headDimV <= 64;
  const halves = paired && (s.halvePairs === 'always' || (s.halvePairs === 'narrow' && narrow));
  return { paired, halves };
}

/** The forward program's schedule for one problem (ForwardSchedule resolved against the config). */
export interface ForwardPlan extends BlockPairing {
  maskEdgeTilesOnly: boolean;
  sparseFromBits: boolean;
}

export function forwardPlan(c: AttentionConfig, s: ForwardSchedule): ForwardPlan {
  return { ...blockPairing(c, s), maskEdgeTilesOnly: s.maskEdgeTilesOnly, sparseFromBits: s.sparseFromBits };
}

/** Workgroup grid of the forward: one workgroup per (query head, query block or pair of blocks or half a pair). */
export function forwardGrid(c: AttentionConfig, rows: number, heads: number, plan: BlockPairing): [number, number, number] {
  const pairs = Math.ceil(Math.ceil(c.seqQ / rows) / 2);
  return plan.halves ? [2 * pairs, heads, 1] : plan.paired ? [pairs, heads, 1] : queryBlockGrid(c, rows, heads);
}

/**
 * WGSL of a paired grid: the dispatch's qbCount query blocks (of its rows, chunks.ts; numbered
 * from 0, see pairedBlockRows) are paired from both ends, pair p = blocks qbCount−1−p (run first:
 * the heavier under a causal band) and p; the middle block of an odd count runs alone. Defines
 * qbHeavy, qbLight, blocks, bh, and with halves `walkHalf` (workgroup x = 2·pair + half).
 */
export function pairedIds(c: AttentionConfig, rows: number, halves: boolean): string {
  const perUnit = c.layout === 'BHSD' ? 'GROUP' : 'HQ';
  return `let qbCount = (u.row_end - u.row_start + ${rows - 1}u) / ${rows}u;
  let pair = wid.x${halves ? ' / 2u' : ''};
  ${halves ? 'let walkHalf = wid.x % 2u;' : ''}
  if ((2u * pair >= qbCount) | (wid.y >= u.heads_in_chunk)) { return; }
  let qbHeavy = qbCount - 1u - pair;
  let qbLight = pair;
  let blocks = select(2u, 1u, qbHeavy == qbLight);
  let bh = u.unit_start * ${perUnit} + u.group_start + wid.y;`;
}

/**
 * A WGSL bool, uniform over the workgroup, that is true when every key of tile [j0, j0 + BK) is
 * visible to every row [iFirst, iLast] (so the tile may skip the mask); undefined when every tile
 * takes the same path: no key is hidden by position, or an elementwise mask (or block-sparse tiles
 * across mask blocks) needs the test everywhere. A visited block-sparse tile inside one mask block
 * (rows and cols dividing the block size) is wholly live.
 */
function tileVisibleTest(c: AttentionConfig, t: Tiles): string | undefined {
  const off = queryOffset(c);
  const terms: string[] = [];
  if (c.hasKeyLengths || c.seqK % t.cols !== 0) terms.push('(j0 + BK <= kl)');
  if (c.windowRight >= 0) terms.push(`(i32(j0 + BK) - 1 <= i32(iFirst) + ${off + c.windowRight})`);
  if (c.windowLeft >= 0) terms.push(`(i32(j0) >= i32(iLast) + ${off - c.windowLeft})`);
  const sparseInside = c.blockSize > 0 && c.blockSize % t.rows === 0 && c.blockSize % t.cols === 0;
  if (c.maskShape.length || (c.blockSize > 0 && !sparseInside)) return undefined;
  if (terms.length === 0) return sparseInside ? 'true' : undefined;
  return terms.join(' & ');
}
/** Workgroup memory of the forward program for these tiles, in bytes. */
export function forwardWorkgroupBytes(c: AttentionConfig, t: Tiles, useSubgroups: boolean): number {
  const dk4 = Math.ceil(c.headDim / 4), dv4 = Math.ceil(c.headDimV / 4);
  const { TC } = threadsOf(t);
  const qRows = t.rowsFromGlobal ? 0 : t.rows;
  return 16 * ((qRows + t.cols) * (dk4 + 1) + t.cols * (dv4 + 1)) + 4 * t.rows * probsStride(t) +
    (useSubgroups ? 0 : 4 * t.rows * TC) + (c.blockSize > 0 ? 4 * TILE_LIST : 0) + 16;
}

/** Floats per row of the probability tile: one pad float, or a pad vec4 when read as vec4s. */
function probsStride(t: Tiles): number {
  return t.probsVec4 ? t.cols + 4 : t.cols + 1;
}

/**
 * Merging a key range's normalized output and lse (b) into an earlier range's (a) in the output
 * buffers: weights of a and b and the merged lse, the log-sum-exp rule of merge_splits.ts with its
 * treatment of non-finite rows (NaN anywhere: NaN; +∞: lse +∞, output NaN; −∞: an empty range).
 */
const MERGE_WEIGHTS = `fn isNanBits(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn mergeWeights(a: f32, b: f32) -> vec3<f32> {
  if (isNanBits(a) | isNanBits(b)) { return vec3<f32>(nanValue()); }
  if ((a == -negInf()) | (b == -negInf())) { return vec3<f32>(nanValue(), nanValue(), -negInf()); }
  if (a == negInf()) { return vec3<f32>(0.0, 1.0, b); }
  if (b == negInf()) { return vec3<f32>(1.0, 0.0, a); }
  let m = max(a, b);
  let wa = exp(a - m);
  let wb = exp(b - m);
  return vec3<f32>(wa / (wa + wb), wb / (wa + wb), m + log(wa + wb));
}`;

/** Key tiles whose block-sparse liveness is decided together, listed in workgroup memory. */
const TILE_LIST = 128;

/** The config fields the forward shader depends on (everything but the dropout seed, a uniform). */
export function shaderConfig(c: AttentionConfig): Omit<AttentionConfig, 'dropoutSeed'> {
  const { dropoutSeed: _seed, ...rest } = c;
  return rest;
}

/**
 * The forward's bindings; with `halves` it writes merge_splits.ts' partials ([2, B·Hq·Nq, DV4]
 * vec4 and [2, B·Hq·Nq], by absolute row) instead of the output and lse.
 */
export function forwardBindings(c: AttentionConfig, withAux: boolean, halves = false): BindingSpec[] {
  const b: BindingSpec[] = [
    storageBinding('q', vec4Q(c), false),
    storageBinding('k', vec4Q(c), false),
    storageBinding('v', vec4V(c), false),
    ...(halves
      ? [{ name: 'partial_out', type: 'vec4<f32>', write: true } as const, { name: 'partial_lse', type: 'f32', write: true } as const]
      : [storageBinding('out', vec4V(c), true), storageBinding('lse', false, true)]),
  ];
  if (c.biasShape.length) b.push(storageBinding('bias', false, false));
  if (withAux) b.push({ name: 'aux', type: 'u32', write: false });
  return b;
}

/**
 * The loop over key tiles [tFirst, tEnd) around `body` (which sees `t`). Block-sparse: the tiles of
 * each run of TILE_LIST are tested in parallel and the live ones listed in order by thread 0, so a
 * dead tile costs no barrier and no serial mask read.
 */
function tileLoop(c: AttentionConfig, plan: ForwardPlan, body: string): string {
  if (c.blockSize === 0) return `for (var t = tFirst; t < tEnd; t++) {${body}  }`;
  if (plan.sparseFromBits) return liveBlockLoop(body);
  return `for (var base = tFirst; base < tEnd; base += ${TILE_LIST}u) {
    workgroupBarrier();
    for (var e = lidx; e < ${TILE_LIST}u; e += WG) {
      let j0 = (base + e) * BK;
      var any = false;
      if (base + e < tEnd) {
        for (var qb2 = iFirst / BLOCK; qb2 <= iLast / BLOCK; qb2++) {
          for (var kb2 = j0 / BLOCK; kb2 <= (min(j0 + BK, SEQK) - 1u) / BLOCK; kb2++) {
            any = any | blockLive(b, h, qb2, kb2);
          }
        }
      }
      tileFlags[e] = select(0u, 1u, any);
    }
    workgroupBarrier();
    if (lidx == 0u) {
      var n = 0u;
      for (var e = 0u; e < ${TILE_LIST}u; e++) {
        if (tileFlags[e] != 0u) { tileFlags[n] = base + e; n++; }
      }
      flag = n;
    }
    let live = workgroupUniformLoad(&flag);
    for (var idx = 0u; idx < live; idx++) {
      let t = tileFlags[idx];${body}    }
  }`;
}

/**
 * The block-sparse loop over live key blocks: thread 0 reads the liveness of 32 key blocks at once
 * from the packed mask bits (OR over the mask rows the query block covers), and the workgroup runs
 * the key tiles of each live block; a tile across two live blocks runs once (tNext).
 */
function liveBlockLoop(body: string): string {
  return `var tNext = tFirst;
  let kbFirst = tFirst * BK / BLOCK;
  let kbEnd = select(kbFirst, (min(tEnd * BK, SEQK) + BLOCK - 1u) / BLOCK, tEnd > tFirst);
  for (var kw = kbFirst; kw < kbEnd; kw += 32u) {
    workgroupBarrier();
    if (lidx == 0u) {
      var any = 0u;
      for (var qb2 = iFirst / BLOCK; qb2 <= iLast / BLOCK; qb2++) { any = any | liveBits(b, h, qb2, kw, min(32u, kbEnd - kw)); }
      flag = any;
    }
    var bits = workgroupUniformLoad(&flag);
    while (bits != 0u) {
      let kb = kw + countTrailingZeros(bits);
      bits = bits & (bits - 1u);
      let tA = max(tNext, kb * BLOCK / BK);
      let tB = min(tEnd, ((kb + 1u) * BLOCK + BK - 1u) / BK);
      for (var t = tA; t < tB; t++) {${body}    }
      tNext = max(tNext, tB);
    }
  }`;
}

/** liveBits(b, h, qb, kb0, count): bit k = liveness of key block kb0 + k of mask row qb (count ≤ 32). */
function liveBitsFunction(c: AttentionConfig, aux: AuxLayout): string {
  // A mask row's key blocks are consecutive bits (kb is the innermost index), from any bit offset.
  return `fn liveBits(b: u32, h: u32, qb: u32, kb0: u32, count: u32) -> u32 {
  let e = ${broadcastIndex(c.blockMaskShape, 'b', 'h', 'qb', 'kb0')};
  let at = ${aux.blockMask}u + (e >> 5u);
  let s = e & 31u;
  var bits = aux[at] >> s;
  if (s + count > 32u) { bits = bits | (aux[at + 1u] << (32u - s)); }
  return select(bits & ((1u << count) - 1u), bits, count == 32u);
}`;
}

/**
 * Paired blocks are cut from the end of the dispatch's rows [row_start, row_end): blockStart(qb)
 * is block qb's first row, wrapping below row_start for block 0 when the row count is not a
 * multiple of BQ. A partial block is then the first one, which a causal band makes the lightest
 * (N = 4096, 192-row blocks: every pair walks 260 key tiles, where top-aligned blocks put the
 * 64-row partial block last, with all the keys, and pairs walked 268–276). blockRows(qb): its
 * first row inside the dispatch and its last row. Block-sparse problems keep blocks aligned to
 * the top, as the mask blocks are, so that a query block lies inside one row of mask blocks.
 */
export function pairedBlockRows(c: AttentionConfig): string {
  return `fn blockStart(qb: u32) -> u32 {
  return u.row_start + qb * BQ${c.blockSize > 0 ? '' : ' - (BQ - (u.row_end - u.row_start) % BQ) % BQ'};
}
fn blockRows(qb: u32) -> vec2<u32> {
  let i0 = blockStart(qb);
  return vec2<u32>(select(i0, u.row_start, i32(i0) < i32(u.row_start)), min(i0 + BQ, u.row_end) - 1u);
}`;
}

/** blockTiles(qb, kl): the key tiles [x, y) that paired block qb visits (window, keyLengths, the dispatch's keys). */
export function blockTilesFunction(c: AttentionConfig): string {
  return `fn blockTiles(qb: u32, kl: u32) -> vec2<u32> {
  let rowsOf = blockRows(qb);
  let iFirst = rowsOf.x;
  let iLast = rowsOf.y;
  ${keyRange(c)}
  let tFirst = jLo / BK;
  return vec2<u32>(tFirst, select(tFirst, (jHi + BK - 1u) / BK, jHi > jLo));
}`;
}

/**
 * With halves (after pairedIds and blockTilesFunction): the pair's walk is the heavy block's key
 * tiles, then the light block's; this workgroup takes positions [walkLo, walkHi) of it.
 */
export const PAIR_WALK_HALVES = `let heavyTiles = blockTiles(qbHeavy, kl);
  let lightTiles = blockTiles(qbLight, kl);
  let nHeavy = heavyTiles.y - heavyTiles.x;
  let walkLength = nHeavy + select(lightTiles.y - lightTiles.x, 0u, blocks == 1u);
  let walkMid = (walkLength + 1u) / 2u;
  let walkLo = select(0u, walkMid, walkHalf == 1u);
  let walkHi = select(walkMid, walkLength, walkHalf == 1u);`;

/** Opens the loop over a paired workgroup's blocks (`slot` 0: the heavy one), defining `qb`; the caller closes it. */
export function pairedBlockLoop(slot: string): string {
  return `for (var ${slot} = 0u; ${slot} < blocks; ${slot}++) {
  let qb = select(qbLight, qbHeavy, ${slot} == 0u);
  // The previous block's last readers of workgroup memory are done before this one stages into it.
  workgroupBarrier();`;
}

/** With halves, in pairedBlockLoop after keyRange: block qb's key tiles [tFirst, tEnd) in this half of the walk. */
export function halfWalkTiles(slot: string): string {
  return `let blockFirst = jLo / BK;
  let blockEnd = select(blockFirst, (jHi + BK - 1u) / BK, jHi > jLo);
  // This block's part of the pair's walk (heavy block's tiles at 0, the light one's after them).
  let walkBase = select(nHeavy, 0u, ${slot} == 0u);
  let tFirst = blockFirst + min(max(walkLo, walkBase) - walkBase, blockEnd - blockFirst);
  let tEnd = blockFirst + min(max(walkHi, walkBase) - walkBase, blockEnd - blockFirst);`;
}

/** Query row `i` of a paired block (pairedBlockRows), SEQQ (no row) where the block wraps below the dispatch's rows. */
export function pairedRow(i: string): string {
  return `select(${i}, SEQQ, i32(${i}) < i32(u.row_start))`;
}

export function forwardProgram(c: AttentionConfig, aux: AuxLayout, withAux: boolean, t: Tiles,
  useSubgroups: boolean, plan: ForwardPlan): ProgramSpec {
  if (t.probsVec4 && t.cols % 4 !== 0) throw new Error('flashAttention (webgpu): probsVec4 tiles need cols % 4 == 0');
  const bindings = forwardBindings(c, withAux, plan.halves);
  const uniforms = [...COMMON_UNIFORMS, ...bindings.map(b => `off_${b.name}`)];
  const { TR, TC, WG } = threadsOf(t);
  const TM = t.rowsPerThread, TN = t.colsPerThread;
  const OX = Math.ceil(Math.ceil(c.headDimV / 4) / TC);
  const rowsR = range(TM), colsC = range(TN), oxX = range(OX);
  const rowOf = (r: number) => `tr + ${r * TR}u`;
  const colOk = (x: number) => ((Math.ceil(c.headDimV / 4) % TC === 0) ? 'true' : `(tc + ${x * TC}u < DV4)`);
  const S = (r: number, k: number) => `s_${r}_${k}`;
  // Without a staged Q block, each thread reads its rows of Q from global memory (L1-cached) in the
  // score loop and scales the dot product instead; that frees workgroup memory for larger tiles.
  const queryOperand = (r: number) => !t.rowsFromGlobal ? `qs[(${rowOf(r)}) * QS + d]`
    : vec4Q(c) ? `q[qrow_${r} + d]` : `load_q(b, h, min(i_${r}, SEQQ - 1u), d)`;
  const qs = layoutStrides(c, c.headsQ, c.seqQ, c.headDim);
  const O = (r: number, x: number) => `o_${r}_${x}`;
  const vCol = (x: number) => (colOk(x) === 'true' ? `tc + ${x * TC}u` : `min(tc + ${x * TC}u, DV4 - 1u)`);
  const probsTimesV = () => (t.probsVec4 ? `    for (var k4 = 0u; k4 < BK / 4u; k4++) {
${rowsR.map(r => `      let p${r} = ps[(${rowOf(r)}) * (PS / 4u) + k4];`).join('\n')}
${range(4).map(e => `${oxX.map(x => `      let v${e}_${x} = vs[(k4 * 4u + ${e}u) * VS + ${vCol(x)}];`).join('\n')}
${rowsR.map(r => oxX.map(x => `      ${O(r, x)} += p${r}[${e}] * v${e}_${x};`).join('\n')).join('\n')}`).join('\n')}
    }` : `    for (var kk = 0u; kk < BK; kk++) {
${rowsR.map(r => `      let p${r} = ps[(${rowOf(r)}) * PS + kk];`).join('\n')}
${oxX.map(x => `      let v${x} = vs[kk * VS + ${vCol(x)}];`).join('\n')}
${rowsR.map(r => oxX.map(x => `      ${O(r, x)} += p${r} * v${x};`).join('\n')).join('\n')}
    }`);

  const scoreOf = (f: 'score2' | 'scoreValue2') => rowsR.map(r => colsC.map(k => `    ${S(r, k)} = ${f}(${S(r, k)}` +
    `${t.rowsFromGlobal ? ' * QSCALE' : ''}, b, h, i_${r}, j0 + tc + ${k * TC}u${f === 'score2' ? ', kl' : ''});`)
    .join('\n')).join('\n');
  const visible = plan.maskEdgeTilesOnly ? tileVisibleTest(c, t) : undefined;
  const scoreLines = () => {
    if (visible === undefined) return scoreOf('score2');
    if (visible === 'true') return scoreOf('scoreValue2');
    return `    if (${visible}) {
${scoreOf('scoreValue2')}
    } else {
${scoreOf('score2')}
    }`;
  };
  // A row's normalized output (O · inv) and natural-log lse.
  const rowResult = (r: number) => `    let inv = select(1.0 / l_${r}, 0.0, l_${r} == 0.0);
    let mUse = select(m_${r}, 0.0, m_${r} == negInf());
    let value = select((mUse + log2(l_${r})) * LN2, negInf(), l_${r} == 0.0);
    // A NaN score leaves l non-finite whatever max() and exp2() make of NaN (both are
    // implementation-defined in WGSL; SwiftShader's exp2(NaN) is +∞): the row's lse is NaN, as
    // in the reference, and +∞ where the largest score is +∞.
    let special = select(nanValue(), -negInf(), m_${r} == -negInf());
    let lseNew = select(value, special, !isFinite(l_${r}) | (m_${r} == -negInf()));`;
  // The output and lse; a dispatch that continues an earlier one's key ranges (chunks.ts) merges
  // with what it wrote, reading that lse before any thread of the row writes the new one.
  const finalStores = () => `${rowsR.map(r => `  var lseOld_${r} = negInf();`).join('\n')}
  if (u.accumulate != 0u) {
${rowsR.map(r => `    lseOld_${r} = lse[bh * SEQQ + min(i_${r}, SEQQ - 1u) - u.off_lse];`).join('\n')}
  }
  workgroupBarrier();
${rowsR.map(r => `  if (i_${r} < SEQQ) {
${rowResult(r)}
    if (u.accumulate == 0u) {
${oxX.map(x => `      if (${colOk(x)}) { store_out(b, h, i_${r}, tc + ${x * TC}u, ${O(r, x)} * inv); }`).join('\n')}
      if (tc == 0u) { lse[bh * SEQQ + i_${r} - u.off_lse] = lseNew; }
    } else {
      let w = mergeWeights(lseOld_${r}, lseNew);
${oxX.map(x => `      if (${colOk(x)}) {
        let at = tc + ${x * TC}u;
        store_out(b, h, i_${r}, at, w.x * load_out(b, h, i_${r}, at) + w.y * (${O(r, x)} * inv));
      }`).join('\n')}
      if (tc == 0u) { lse[bh * SEQQ + i_${r} - u.off_lse] = w.z; }
    }
  }`).join('\n')}`;
  // With halves: this half's partial for the block, also where its part of the walk is empty
  // (output 0, lse −∞, which the merge weighs 0), so every (half, row) entry is written.
  const partialStores = () => rowsR.map(r => `  if (i_${r} < SEQQ) {
${rowResult(r)}
    let prow = walkHalf * ROWS + bh * SEQQ + i_${r};
${oxX.map(x => `    if (${colOk(x)}) { partial_out[prow * DV4 + tc + ${x * TC}u - u.off_partial_out] = ${O(r, x)} * inv; }`).join('\n')}
    if (tc == 0u) { partial_lse[prow - u.off_partial_lse] = lseNew; }
  }`).join('\n');
  const body = () => `
${constants(c)}
const BQ = ${t.rows}u;
const BK = ${t.cols}u;
const TR = ${TR}u;
const TC = ${TC}u;
const WG = ${WG}u;
const QS = DK4 + 1u;
const VS = DV4 + 1u;
const PS = ${probsStride(t)}u;
const QSCALE = ${f32(queryScale(c))};
const ROWS = ${c.batch * c.headsQ * c.seqQ}u;
${t.rowsFromGlobal ? '' : `var<workgroup> qs: array<vec4<f32>, ${t.rows * (Math.ceil(c.headDim / 4) + 1)}>;`}
${c.blockSize > 0 && !plan.sparseFromBits ? `var<workgroup> tileFlags: array<u32, ${TILE_LIST}>;` : ''}
var<workgroup> ks: array<vec4<f32>, ${t.cols * (Math.ceil(c.headDim / 4) + 1)}>;
var<workgroup> vs: array<vec4<f32>, ${t.cols * (Math.ceil(c.headDimV / 4) + 1)}>;
${t.probsVec4 ? `var<workgroup> ps: array<vec4<f32>, ${t.rows * probsStride(t) / 4}>;`
    : `var<workgroup> ps: array<f32, ${t.rows * probsStride(t)}>;`}
${useSubgroups ? '' : `var<workgroup> red: array<f32, ${t.rows * TC}>;`}
var<workgroup> flag: u32;
${tensorAccess(c, 'q', c.headsQ, c.seqQ, c.headDim, vec4Q(c), 'load')}
${tensorAccess(c, 'k', c.headsKV, c.seqK, c.headDim, vec4Q(c), 'load')}
${tensorAccess(c, 'v', c.headsKV, c.seqK, c.headDimV, vec4V(c), 'load')}
${plan.halves ? '' : tensorAccess(c, 'out', c.headsQ, c.seqQ, c.headDimV, vec4V(c), 'store')}
${plan.halves ? '' : tensorAccess(c, 'out', c.headsQ, c.seqQ, c.headDimV, vec4V(c), 'load')}
${scoreFunctions(c, aux, t.cols)}
${c.blockSize > 0 && plan.sparseFromBits ? liveBitsFunction(c, aux) : ''}
${plan.paired ? pairedBlockRows(c) : ''}
${plan.halves ? blockTilesFunction(c) : MERGE_WEIGHTS}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let tr = lidx / TC;
  let tc = lidx % TC;
  ${plan.paired ? pairedIds(c, t.rows, plan.halves) : queryBlockIds(c, t.rows)}
  let b = bh / HQ;
  let h = bh % HQ;
  let hk = h / GROUP;
  ${c.hasKeyLengths
    ? 'if (lidx == 0u) { flag = keyLimitOf(b); }\n  let kl = workgroupUniformLoad(&flag);'
    : 'let kl = SEQK;'}
  ${plan.halves ? PAIR_WALK_HALVES : ''}
  ${plan.paired ? pairedBlockLoop('slot') : ''}
  let i0 = ${plan.paired ? 'blockStart(qb)' : 'qb * BQ'};
  ${t.rowsFromGlobal ? '' : stageRows({ dst: 'qs', stride: 'QS', cols4: 'DK4', rows: 'BQ', first: 'i0', limit: 'SEQQ', load: 'load_q', head: 'h', scale: 'QSCALE' })}
  ${plan.paired ? `let blockRange = blockRows(qb);
  let iFirst = blockRange.x;
  let iLast = blockRange.y;` : `let iFirst = i0;
  let iLast = min(i0 + BQ, SEQQ) - 1u;`}
  ${keyRange(c)}
  ${plan.halves ? halfWalkTiles('slot') : `let tFirst = jLo / BK;
  let tEnd = select(tFirst, (jHi + BK - 1u) / BK, jHi > jLo);`}
${rowsR.map(r => `  let i_${r} = ${plan.paired ? pairedRow(`i0 + ${rowOf(r)}`) : `i0 + ${rowOf(r)}`};
  var m_${r} = negInf();
  var l_${r} = 0.0;
${t.rowsFromGlobal && vec4Q(c) ? `  let qrow_${r} = (b * ${qs.batch}u + h * ${qs.head}u + min(i_${r}, SEQQ - 1u) * ${qs.seq}u - u.off_q) / 4u;\n` : ''}${c.dropoutRate > 0 ? `  let drop_${r} = dropoutRow(b, h, i_${r});\n` : ''}${oxX.map(x => `  var ${O(r, x)} = vec4<f32>(0.0);`).join('\n')}`).join('\n')}
  ${tileLoop(c, plan, `
    let j0 = t * BK;
    workgroupBarrier();
    for (var e = lidx; e < BK * DK4; e += WG) {
      let r = e / DK4;
      let c = e % DK4;
      var x = vec4<f32>(0.0);
      if (j0 + r < SEQK) { x = load_k(b, hk, j0 + r, c); }
      ks[r * QS + c] = x;
    }
    for (var e = lidx; e < BK * DV4; e += WG) {
      let r = e / DV4;
      let c = e % DV4;
      var x = vec4<f32>(0.0);
      if (j0 + r < SEQK) { x = load_v(b, hk, j0 + r, c); }
      vs[r * VS + c] = x;
    }
    workgroupBarrier();
${rowsR.map(r => colsC.map(k => `    var ${S(r, k)} = 0.0;`).join('\n')).join('\n')}
    for (var d = 0u; d < DK4; d++) {
${rowsR.map(r => `      let q${r} = ${queryOperand(r)};`).join('\n')}
${colsC.map(k => `      let k${k} = ks[(tc + ${k * TC}u) * QS + d];`).join('\n')}
${rowsR.map(r => colsC.map(k => `      ${S(r, k)} += dot(q${r}, k${k});`).join('\n')).join('\n')}
    }
${scoreLines()}
${rowsR.map(r => `    var mt_${r} = ${colsC.map(k => S(r, k)).reduce((a, bb) => `max(${a}, ${bb})`)};`).join('\n')}
    ${rowReduce(t, useSubgroups, 'max', rowsR.map(r => `mt_${r}`), rowOf)}
${rowsR.map(r => `    {
      let mNew = max(m_${r}, mt_${r});
      let mUse = select(mNew, 0.0, mNew == negInf());
      let alpha = exp2(m_${r} - mUse);
      m_${r} = mNew;
${colsC.map(k => `      let p${k} = exp2(${S(r, k)} - mUse);`).join('\n')}
      l_${r} = l_${r} * alpha + ${colsC.map(k => `p${k}`).join(' + ')};
${colsC.map(k => {
    const j = `j0 + tc + ${k * TC}u`;
    const value = c.dropoutRate > 0 ? `select(0.0, p${k} * KEEP_SCALE, dropoutKeep(drop_${r}, ${j}))` : `p${k}`;
    const at = `(${rowOf(r)}) * PS + tc + ${k * TC}u`;
    return t.probsVec4 ? `      ps[(${at}) / 4u][(${at}) % 4u] = ${value};` : `      ps[${at}] = ${value};`;
  }).join('\n')}
${oxX.map(x => `      ${O(r, x)} *= alpha;`).join('\n')}
    }`).join('\n')}
    workgroupBarrier();
${probsTimesV()}
`)}
  ${rowReduce(t, useSubgroups, 'add', rowsR.map(r => `l_${r}`), rowOf)}
${plan.halves ? partialStores() : finalStores()}
${plan.paired ? '  }' : ''}
}
`;
  return {
    key: JSON.stringify({ program: 'attention_forward', config: shaderConfig(c), tiles: t, useSubgroups, withAux, plan }),
    bindings, uniforms, body, chunking: { rows: t.rows, keys: t.cols, accumulates: 'keys' },
    extensions: useSubgroups ? ['subgroups'] : [],
  };
}
