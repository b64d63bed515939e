// GLSL ES 3.00 snippets shared by the attention programs, each generated from the AttentionConfig.
//
// Inputs arrive as tfjs packed textures: one RGBA texel holds the 2×2 block (rows r, r+1) × (columns
// c, c+1) of a tensor's last two dimensions, as (x, y, z, w) = ([r][c], [r][c+1], [r+1][c],
// [r+1][c+1]). Every program reads q, k, v, O and dO through `faRows<X>(b, h, n, d)`, which returns
// that block for sequence positions (n, n+1) and head-dim columns (d, d+1) whatever the layout: one
// fetch in BHSD, two in BSHD (whose texels pair heads, not positions). n and d are always even.
import { env } from '@tensorflow/tfjs-core';
import type { AttentionConfig } from '../../src/config';
import type { Uniform } from './program';

/** Name of tfjs' generated sampler for an input variable. */
function sampler(variable: string): string {
  return `get${variable.charAt(0).toUpperCase()}${variable.slice(1)}`;
}

/** Physical texture shapes of the inputs read through `texelFetch`, by variable name. */
export type TexShapes = Record<string, [number, number]>;

/**
 * `vec4 faTex<X>(int row, int col)`: the texel at texel index row·cols + col of a packed texture
 * whose logical rows of texels are `cols` texels wide. tfjs lays every packed tensor out as that
 * flat texel sequence, row-major in the texture; when the texture is exactly `cols` texels wide (the
 * usual case: it is squarified only beyond MAX_TEXTURE_SIZE) the address needs no division.
 */
function texelAccessor(variable: string, cols: number, texShape: [number, number]): string {
  const width = Math.ceil(texShape[1] / 2);
  const position = width === cols
    ? 'ivec2(col, row)'
    : `ivec2((row * ${cols} + col) % ${width}, (row * ${cols} + col) / ${width})`;
  return `vec4 faTex${variable}(int row, int col) { return texelFetch(${variable}, ${position}, 0); }`;
}

/** [heads, seq, dim] of the attention tensors by variable name. */
function headDims(c: AttentionConfig, variable: string): [number, number, number] {
  switch (variable) {
    case 'Q': return [c.headsQ, c.seqQ, c.headDim];
    case 'K': return [c.headsKV, c.seqK, c.headDim];
    case 'V': return [c.headsKV, c.seqK, c.headDimV];
    case 'O': case 'DO': return [c.headsQ, c.seqQ, c.headDimV];
    default: throw new Error(`flashAttention (webgl): no head tensor named ${variable}`);
  }
}

const half = (n: number) => Math.ceil(n / 2);

/**
 * Addressing of q, k, v, O or dO in the config's layout, split so that loops compute the part that
 * does not change once (SwiftShader's Subzero JIT hoists little itself):
 *   faBase<X>(b, h, n)       texel row of positions (n, n+1) of head h (n even)
 *   faRowsAt<X>(base, h, t)  the 2×2 block (positions n, n+1) × (columns 2t, 2t+1) at that row
 *   faRows<X>(b, h, n, d)    the same block for column d (even), all in one call
 * One fetch per block in BHSD; two in BSHD, whose texels pair heads instead of positions.
 */
export function rowsAccessor(c: AttentionConfig, variable: string, textures: TexShapes): string {
  const [heads, seq, dim] = headDims(c, variable);
  const fetch = texelAccessor(variable, half(dim), textures[variable]);
  const x = variable;
  const addressing = c.layout === 'BHSD'
    ? `int faBase${x}(int b, int h, int n) { return (b * ${heads} + h) * ${half(seq)} + n / 2; }
vec4 faRowsAt${x}(int base, int h, int t) { return faTex${x}(base, t); }`
    : `int faBase${x}(int b, int h, int n) { return (b * ${seq} + n) * ${half(heads)} + h / 2; }
vec4 faRowsAt${x}(int base, int h, int t) {
  vec4 t0 = faTex${x}(base, t);
  vec4 t1 = faTex${x}(base + ${half(heads)}, t);
  return (h % 2 == 0) ? vec4(t0.xy, t1.xy) : vec4(t0.zw, t1.zw);
}`;
  return `${fetch}
${addressing}
vec4 faRows${x}(int b, int h, int n, int d) { return faRowsAt${x}(faBase${x}(b, h, n), h, d / 2); }`;
}

/**
 * GLSL for the texel row offset of `pairs` position pairs further along q, k, v, O or dO (as added
 * to a faBase<X> row): the pairs themselves in BHSD, times the texel rows of one position in BSHD.
 */
export function rowStep(c: AttentionConfig, variable: string, pairs: string): string {
  return c.layout === 'BHSD' ? pairs : `${pairs} * ${2 * half(headDims(c, variable)[0])}`;
}

/**
 * `vec4 faBlock<X>(int x, int n, int col)`: the texel holding (n, col) of an internal [X, N, C]
 * tensor; `faBlockRow<X>(x, n)` its texel row, for loops that read `faTex<X>(row, col / 2)`.
 */
export function internalAccessor(variable: string, shape: number[], textures: TexShapes): string {
  const [, seq, cols] = shape;
  return `${texelAccessor(variable, half(cols), textures[variable])}
int faBlockRow${variable}(int x, int n) { return x * ${half(seq)} + n / 2; }
vec4 faBlock${variable}(int x, int n, int col) { return faTex${variable}(faBlockRow${variable}(x, n), col / 2); }`;
}

/** Picks element (r, c) out of the packed texel holding it. */
export const PICK = `
float faPick(vec4 t, int r, int c) {
  return (r % 2 == 0) ? ((c % 2 == 0) ? t.x : t.y) : ((c % 2 == 0) ? t.z : t.w);
}`;

/**
 * `float faAt<X>(int b, int h, int i, int j)`: one element of a rank-4 tensor broadcast to
 * [B, Hq, Nq, Nk]-like coordinates (a dimension of size 1 is read at 0).
 */
export function elementAccessor(variable: string, shape: number[]): string {
  const coords = ['b', 'h', 'i', 'j'].map((name, axis) => (shape[axis] === 1 ? '0' : name));
  return `float faAt${variable}(int b, int h, int i, int j) {
    return faPick(${sampler(variable)}(${coords.join(', ')}), ${coords[2]}, ${coords[3]});
  }`;
}

/** Uniforms the score snippet reads; values come from the config. */
function scoreUniforms(c: AttentionConfig): Uniform[] {
  const uniforms: Uniform[] = [{ name: 'faScale', type: 'float', value: c.scale }];
  if (c.softcap > 0) uniforms.push({ name: 'faSoftcap', type: 'float', value: c.softcap });
  return uniforms;
}

/** Every uniform `scoreSnippet` may read. */
export function attentionUniforms(c: AttentionConfig): Uniform[] {
  return [...scoreUniforms(c), ...dropoutUniforms(c)];
}

/**
 * Dropout keep decision, bit-exact with src/dropout.ts (lowbias32 chain over seed, b, h, i, j in
 * GLSL ES 3.00 uint arithmetic). The 32-bit seed travels as two 16-bit int uniforms because int
 * uniforms are signed and int→uint of a negative value is not portable.
 */
function dropoutUniforms(c: AttentionConfig): Uniform[] {
  if (c.dropoutRate === 0) return [];
  const seed = c.dropoutSeed >>> 0;
  return [
    { name: 'faSeedHi', type: 'int', value: seed >>> 16 },
    { name: 'faSeedLo', type: 'int', value: seed & 0xffff },
    { name: 'faThreshold', type: 'int', value: Math.round(c.dropoutRate * 16777216) },
    { name: 'faKeepScale', type: 'float', value: 1 / (1 - c.dropoutRate) },
  ];
}

const DROPOUT = `
uint faMix(uint x) {
  x ^= x >> 16u;
  x *= 0x7feb352du;
  x ^= x >> 15u;
  x *= 0x846ca68bu;
  x ^= x >> 16u;
  return x;
}
// Z_ij: 1/(1 − rate) when kept, 0 when dropped.
float faDropScale(int b, int h, int i, int j) {
  uint x = (uint(faSeedHi) << 16u) | uint(faSeedLo);
  x = faMix(x ^ uint(b));
  x = faMix(x ^ uint(h));
  x = faMix(x ^ uint(i));
  x = faMix(x ^ uint(j));
  return (x >> 8u) >= uint(faThreshold) ? faKeepScale : 0.0;
}
vec4 faDropScale4(int b, int h, int i, int j) {
  return vec4(faDropScale(b, h, i, j), faDropScale(b, h, i, j + 1),
              faDropScale(b, h, i + 1, j), faDropScale(b, h, i + 1, j + 1));
}`;

const NO_DROPOUT = `vec4 faDropScale4(int b, int h, int i, int j) { return vec4(1.0); }`;

/**
 * The score pipeline of SPEC §2 for one (b, h, i, j), given q_i·k_j:
 *   faCapped(dot)            scale, then softcap
 *   faScore(capped, b,h,i,j) + bias + ALiBi, or −Infinity when the key is hidden
 * and the loop bounds that skip hidden keys wholesale:
 *   faKeyRange(b, i0, i1)    [lo, hi) of keys any of rows i0..i1 may see (window, keyLengths)
 *   faRowRange(j0, j1)       [lo, hi) of rows whose window contains any of keys j0..j1
 *   faBlockLive(b, h, i0, i1, j0, j1)  whether the block mask leaves any of those pairs visible
 * Inputs used: faAtBias, faAtMask, faAtKeyLengths, faAtAlibi, faAtBlockMask (when present).
 */
export function scoreSnippet(c: AttentionConfig): string {
  const offset = c.seqK - c.seqQ;
  const hidden: string[] = [`j >= ${c.seqK}`, `i >= ${c.seqQ}`];
  if (c.windowLeft >= 0) hidden.push(`j < i + ${offset - c.windowLeft}`);
  if (c.windowRight >= 0) hidden.push(`j > i + ${offset + c.windowRight}`);
  if (c.hasKeyLengths) hidden.push('float(j) >= faAtKeyLengths(0, 0, 0, b)');
  if (c.maskShape.length) hidden.push('faAtMask(b, h, i, j) == 0.0');
  if (c.blockSize > 0) hidden.push(`faAtBlockMask(b, h, i / ${c.blockSize}, j / ${c.blockSize}) == 0.0`);
  const terms: string[] = [];
  if (c.biasShape.length) terms.push('s += faAtBias(b, h, i, j);');
  if (c.alibiShape.length) terms.push(`s -= faAtAlibi(0, 0, b, h) * abs(float(i + ${offset} - j));`);
  const capped = c.softcap > 0
    ? `float x = dotqk * faScale / faSoftcap;
       float t = exp(-2.0 * abs(x));
       return faSoftcap * sign(x) * (1.0 - t) / (1.0 + t);`
    : 'return dotqk * faScale;';
  const keyLo = c.windowLeft >= 0 ? `max(0, i0 + ${offset - c.windowLeft})` : '0';
  let keyHi = c.windowRight >= 0 ? `min(${c.seqK}, i1 + ${offset + c.windowRight + 1})` : `${c.seqK}`;
  if (c.hasKeyLengths) keyHi = `min(${keyHi}, int(faAtKeyLengths(0, 0, 0, b)))`;
  const rowLo = c.windowRight >= 0 ? `max(0, j0 - ${offset + c.windowRight})` : '0';
  const rowHi = c.windowLeft >= 0 ? `min(${c.seqQ}, j1 + ${c.windowLeft - offset + 1})` : `${c.seqQ}`;
  const blockLive = c.blockSize > 0
    ? `for (int ib = i0 / ${c.blockSize}; ib <= i1 / ${c.blockSize}; ib++) {
         for (int jb = j0 / ${c.blockSize}; jb <= j1 / ${c.blockSize}; jb++) {
           if (faAtBlockMask(b, h, ib, jb) != 0.0) return true;
         }
       }
       return false;`
    : 'return true;';
  // Infinities do not survive half-float render targets (SwiftShader reads them back as NaN), so
  // there "no score" (a hidden key, the lse of a row without keys) is stored as −60000 and read back
  // as −Infinity; any stored value below −30000 counts as none (exp of it is 0 in any case).
  const halfFloat = !env().getBool('WEBGL_RENDER_FLOAT32_ENABLED');
  const none = halfFloat
    ? `vec4 faStore(vec4 x) { return mix(x, vec4(-60000.0), equal(x, vec4(-FA_INF))); }
vec4 faLoad(vec4 x) { return mix(x, vec4(-FA_INF), lessThan(x, vec4(-30000.0))); }`
    : `vec4 faStore(vec4 x) { return x; }
vec4 faLoad(vec4 x) { return x; }`;
  return `
const float FA_INF = uintBitsToFloat(0x7f800000u);
// Scores and lse as stored in textures (faStore) and as used in registers (faLoad).
${none}
${c.dropoutRate > 0 ? DROPOUT : NO_DROPOUT}
float faCapped(float dotqk) { ${capped} }
vec4 faCapped4(vec4 d) { return vec4(faCapped(d.x), faCapped(d.y), faCapped(d.z), faCapped(d.w)); }
// Softmax weights exp(s − lse) with hidden scores giving exactly 0 (also for rows whose lse is
// −Infinity), selected rather than multiplied so that non-finite padding never leaks in. A row with
// a +Infinity score has lse +Infinity and P = ∞/∞ = NaN, stated explicitly because exp(NaN) is not
// NaN on every GPU (SwiftShader returns +Infinity).
vec4 faProbs(vec4 s, vec4 lse) {
  vec4 p = mix(exp(s - lse), vec4(NAN), equal(lse, vec4(FA_INF)));
  return mix(p, vec4(0.0), equal(s, vec4(-FA_INF)));
}
float faScore(float capped, int b, int h, int i, int j) {
  if (${hidden.join(' || ')}) return -FA_INF;
  float s = capped;
  ${terms.join('\n  ')}
  return s;
}
vec4 faScore4(vec4 capped, int b, int h, int i, int j) {
  return vec4(faScore(capped.x, b, h, i, j), faScore(capped.y, b, h, i, j + 1),
              faScore(capped.z, b, h, i + 1, j), faScore(capped.w, b, h, i + 1, j + 1));
}
ivec2 faKeyRange(int b, int i0, int i1) { return ivec2(${keyLo}, ${keyHi}); }
ivec2 faRowRange(int j0, int j1) { return ivec2(${rowLo}, ${rowHi}); }
bool faBlockLive(int b, int h, int i0, int i1, int j0, int j1) { ${blockLive} }
`;
}

/** Variable names and accessors of the optional inputs, in the kernel's input order. */
export function optionalAccessors(c: AttentionConfig): { variables: string[]; code: string } {
  const entries: Array<[string, number[]]> = [];
  if (c.biasShape.length) entries.push(['Bias', c.biasShape]);
  if (c.maskShape.length) entries.push(['Mask', c.maskShape]);
  if (c.hasKeyLengths) entries.push(['KeyLengths', [1, 1, 1, c.batch]]);
  if (c.alibiShape.length) entries.push(['Alibi', [1, 1, ...c.alibiShape]]);
  if (c.blockMaskShape.length) entries.push(['BlockMask', c.blockMaskShape]);
  return {
    variables: entries.map(([name]) => name),
    code: [PICK, ...entries.map(([name, shape]) => elementAccessor(name, shape))].join('\n'),
  };
}

/** The rank-4 shapes the optional inputs are viewed with (matching `optionalAccessors`). */
export function optionalShapes(c: AttentionConfig): number[][] {
  const shapes: number[][] = [];
  if (c.biasShape.length) shapes.push(c.biasShape);
  if (c.maskShape.length) shapes.push(c.maskShape);
  if (c.hasKeyLengths) shapes.push([1, 1, 1, c.batch]);
  if (c.alibiShape.length) shapes.push([1, 1, ...c.alibiShape]);
  if (c.blockMaskShape.length) shapes.push(c.blockMaskShape);
  return shapes;
}



/**
 * Loops `int j` over the even starts of key pairs (j, j+1) that rows (i, i+1) of head h may see,
 * within [from, to): the window and key lengths bound the loop, and with a block mask whole dead
 * key blocks are skipped (a pair straddling two blocks runs once, in the first live one).
 */
export function keyPairLoop(c: AttentionConfig, from: string, to: string, body: string): string {
  const bounds = `ivec2 faRange = faKeyRange(b, i, i + 1);
  int faLo = max(faRange.x, ${from});
  int faHi = min(faRange.y, ${to});`;
  if (c.blockSize === 0) {
    return `{ ${bounds}
  for (int j = faLo - faLo % 2; j < faHi; j += 2) { ${body} } }`;
  }
  const bs = c.blockSize;
  return `{ ${bounds}
  int faDone = faLo - faLo % 2;
  for (int faBlock = faLo / ${bs}; faBlock * ${bs} < faHi; faBlock++) {
    int faStart = max(faBlock * ${bs}, faDone);
    if (!faBlockLive(b, h, i, i + 1, faBlock * ${bs}, faBlock * ${bs} + ${bs - 1})) continue;
    int faEnd = min(faHi, (faBlock + 1) * ${bs});
    for (int j = faStart - faStart % 2; j < faEnd; j += 2) { ${body} faDone = j + 2; }
  } }`;
}

/**
 * Like keyPairLoop over a key block starting at `from` (even), but gives the body `int t`, the
 * texel column of key pair (j, j+1) in the block's textures (j = from + 2t): without a block mask it
 * is a plain counted loop, whose addresses are an add away (measured faster than stepping j on
 * SwiftShader; see the forward kernel's header).
 */
export function keyTexelLoop(c: AttentionConfig, from: string, to: string, body: string): string {
  if (c.blockSize > 0) return keyPairLoop(c, from, to, `int t = (j - ${from}) >> 1; ${body}`);
  return `{ ivec2 faRange = faKeyRange(b, i, i + 1);
  int faTLo = (max(faRange.x, ${from}) - ${from}) >> 1;
  int faTHi = (min(faRange.y, ${to}) - ${from} + 1) >> 1;
  for (int t = faTLo; t < faTHi; t++) { ${body} } }`;
}

/**
 * Loops `int h` over the query heads that share KV head g and `int i` over the even starts of the
 * query row pairs (i, i+1) that may see key pair (j, j+1), skipping dead row blocks of a block mask;
 * `int u` = i / 2 is the pair's texel row offset. `headSetup` runs once per head, before its rows.
 */
export function rowPairLoop(c: AttentionConfig, headSetup: string, body: string): string {
  const group = c.headsQ / c.headsKV;
  const bounds = `ivec2 faRows = faRowRange(j, j + 1);`;
  const heads = (inner: string) => `for (int h = g * ${group}; h < (g + 1) * ${group}; h++) { ${headSetup}
    ${inner} }`;
  if (c.blockSize === 0) {
    return `${bounds}
  ${heads(`for (int u = faRows.x >> 1; u < (faRows.y + 1) >> 1; u++) { int i = 2 * u; ${body} }`)}`;
  }
  const bs = c.blockSize;
  return `${bounds}
  ${heads(`int faDone = faRows.x - faRows.x % 2;
    for (int faBlock = faRows.x / ${bs}; faBlock * ${bs} < faRows.y; faBlock++) {
      int faStart = max(faBlock * ${bs}, faDone);
      if (!faBlockLive(b, h, faBlock * ${bs}, faBlock * ${bs} + ${bs - 1}, j, j + 1)) continue;
      int faEnd = min(faRows.y, (faBlock + 1) * ${bs});
      for (int i = faStart - faStart % 2; i < faEnd; i += 2) { int u = i >> 1; ${body} faDone = i + 2; }
    }`)}`;
}

/** Splits a row index of the [B·Hq, N, ·] internal tensors into batch, query head and KV head. */
export function decodeRow(c: AttentionConfig, bh: string): string {
  return `int b = ${bh} / ${c.headsQ};
  int h = ${bh} - b * ${c.headsQ};
  int g = h / ${c.headsQ / c.headsKV};`;
}

/**
 * Accumulates into `vec4 <acc>` the 2×2 block of dot products between rows (an, an+1) of A and rows
 * (xn, xn+1) of X over `dim` columns: (a_an·x_xn, a_an·x_xn+1, a_an+1·x_xn, a_an+1·x_xn+1). The odd
 * tail column is masked on both sides, so packed padding (possibly non-finite) never enters.
 */
export function blockDot(acc: string, a: string, ah: string, an: string, x: string, xh: string, xn: string,
  dim: number): string {
  const full = Math.floor(dim / 2);
  const step = (t: string, mask: string) => `{
      vec4 at = faRowsAt${a}(faA, ${ah}, ${t})${mask};
      vec4 xt = faRowsAt${x}(faX, ${xh}, ${t})${mask};
      ${acc} += at.xxzz * xt.xzxz + at.yyww * xt.ywyw; }`;
  return `{
    int faA = faBase${a}(b, ${ah}, ${an});
    int faX = faBase${x}(b, ${xh}, ${xn});
    for (int p = 0; p < ${full}; p++) ${step('p', '')}
    ${dim % 2 ? step(`${full}`, ' * vec4(1.0, 0.0, 1.0, 0.0)') : ''}
  }`;
}
