// Backward, per key block: dS_ij = ∂loss/∂(scale·q_i·k_j) = P_ij (dP_ij Z_ij − D_i), through the
// softcap when there is one, with dP_ij = dO_i·v_j, for keys [keyStart, keyStart + blockKeys) and
// all query rows: a packed [B·Hq, Nq, blockKeys] tensor. P is read from the block's P̃ texture when
// that equals P (no dropout) and no softcap needs the score, else recomputed from q·k and the saved
// lse. One fragment per 2×2 (row, key) block, one or two small matrix products over the head
// dimensions; fragments whose four pairs are all hidden write 0 without reading anything.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, blockDot, decodeRow, elementAccessor, internalAccessor, optionalAccessors, rowsAccessor,
  scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

/**
 * dS of a 2×2 (row, key) block from its dot products q·k and dO·v, given lse `L` and the row term
 * `D` per entry: faDsOfScore is ∂loss/∂s (what the bias receives), faDs the same through the
 * softcap, ∂loss/∂(scale·q·k). Hidden entries are exactly 0.
 */
export function dsSnippet(c: AttentionConfig): string {
  const chain = c.softcap > 0 ? 'ds *= 1.0 - (capped / faSoftcap) * (capped / faSoftcap);' : '';
  return `
vec4 faDsOfScore(vec4 capped, vec4 dov, vec4 L, vec4 D, int b, int h, int i, int j) {
  vec4 s = faScore4(capped, b, h, i, j);
  vec4 ds = faProbs(s, L) * (dov * faDropScale4(b, h, i, j) - D);
  return mix(ds, vec4(0.0), equal(s, vec4(-FA_INF)));
}
vec4 faDs(vec4 qk, vec4 dov, vec4 L, vec4 D, int b, int h, int i, int j) {
  vec4 capped = faCapped4(qk);
  vec4 ds = faDsOfScore(capped, dov, L, D, b, h, i, j);
  ${chain}
  return ds;
}`;
}

/** Shared by the dS and P̃ programs: the block's fragment setup and its early exit. */
export function blockFragment(c: AttentionConfig): string {
  return `ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int j = faKeyStart + rc.z;
  ivec2 range = faKeyRange(b, i, i + 1);
  if (j + 1 < range.x || j >= range.y || !faBlockLive(b, h, i, i + 1, j, j + 1)) {
    setOutput(vec4(0.0));
    return;
  }`;
}

/** The lse of rows (i, i+1) as `vec4 L` and the block's q·k dot products as `vec4 qk`. */
export function lseAndDot(c: AttentionConfig): string {
  return `vec4 L = vec2(faAtLse(0, b, h, i), faAtLse(0, b, h, i + 1)).xxyy;
  vec4 qk = vec4(0.0);
  ${blockDot('qk', 'Q', 'h', 'i', 'K', 'g', 'j', c.headDim)}`;
}

/**
 * Whether dS may read P from the block's P̃ texture instead of recomputing q·k: without dropout
 * P̃ = P, and without a softcap dS needs no capped score. That saves one of the backward's six
 * matrix products over the head dimension per block.
 */
export function dsReusesProbs(c: AttentionConfig): boolean {
  return c.dropoutRate === 0 && c.softcap === 0;
}

export function dsProgram(c: AttentionConfig, textures: TexShapes, keyStart: number, blockKeys: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const uniforms = [...attentionUniforms(c), { name: 'faKeyStart', type: 'int' as const, value: keyStart }];
  const setup = `${rowsAccessor(c, 'V', textures)}
${rowsAccessor(c, 'DO', textures)}
${optional.code}
${scoreSnippet(c)}`;
  if (dsReusesProbs(c)) {
    // Hidden entries are found from the masks alone (the score pipeline on a zero dot product), as
    // in faDsOfScore, so a NaN of a visible entry still propagates.
    const userCode = `
${internalAccessor('Probs', [rows, c.seqQ, blockKeys], textures)}
${setup}
void main() {
  ${blockFragment(c)}
  vec4 dov = vec4(0.0);
  ${blockDot('dov', 'DO', 'h', 'i', 'V', 'g', 'j', c.headDimV)}
  vec4 p = faBlockProbs(rc.x, i, rc.z);
  vec4 ds = p * (dov - getRowTerm(rc.x, i, 0).xxzz);
  setOutput(mix(ds, vec4(0.0), equal(faScore4(vec4(0.0), b, h, i, j), vec4(-FA_INF))));
}`;
    return new AttentionProgram(['Probs', 'V', 'DO', 'RowTerm', ...optional.variables], [rows, c.seqQ, blockKeys], true,
      uniforms, userCode);
  }
  const userCode = `
${rowsAccessor(c, 'Q', textures)}
${rowsAccessor(c, 'K', textures)}
${setup}
${elementAccessor('Lse', [1, c.batch, c.headsQ, c.seqQ])}
${dsSnippet(c)}
void main() {
  ${blockFragment(c)}
  ${lseAndDot(c)}
  vec4 dov = vec4(0.0);
  ${blockDot('dov', 'DO', 'h', 'i', 'V', 'g', 'j', c.headDimV)}
  setOutput(faDs(qk, dov, L, getRowTerm(rc.x, i, 0).xxzz, b, h, i, j));
}`;
  return new AttentionProgram(['Q', 'K', 'V', 'DO', 'Lse', 'RowTerm', ...optional.variables], [rows, c.seqQ, blockKeys],
    true, uniforms, userCode);
}
