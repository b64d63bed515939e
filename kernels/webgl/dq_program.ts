// Backward: dQ_i = scale · Σ_j dS_ij k_j with dS = P ∘ (dP·Z − D) (and the softcap chain), P
// recomputed from the saved lse. One fragment per 2×2 (row, head-dim column) block of a packed
// [B·Hq, Nq, D] tensor, looping over the rows' visible key pairs; the rows' q and dO stay in
// registers. Each fragment recomputes its rows' scores (a factor D/2 of redundant score work, the
// price of one RGBA output per fragment) but nothing of size Nq × Nk is ever stored.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, dotRows, elementAccessor, keyPairLoop, loadRows, optionalAccessors,
  rowsAccessor, scoreSnippet } from './glsl';
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

export function dqProgram(c: AttentionConfig, textures: TexShapes): AttentionProgram {
  const optional = optionalAccessors(c);
  const userCode = `
${rowsAccessor(c, 'Q', textures)}
${rowsAccessor(c, 'K', textures)}
${rowsAccessor(c, 'V', textures)}
${rowsAccessor(c, 'DO', textures)}
${optional.code}
${elementAccessor('Lse', [1, c.batch, c.headsQ, c.seqQ])}
${scoreSnippet(c)}
${dsSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int col = rc.z;
  ${loadRows('Q', 'qr', c.headDim, 'b', 'h', 'i')}
  ${loadRows('DO', 'gr', c.headDimV, 'b', 'h', 'i')}
  vec4 L = vec4(faAtLse(0, b, h, i), faAtLse(0, b, h, i), faAtLse(0, b, h, i + 1), faAtLse(0, b, h, i + 1));
  vec4 D = getRowTerm(rc.x, i, 0).xxzz;
  vec4 result = vec4(0.0);
  ${keyPairLoop(c, '0', `${c.seqK}`, `
    vec4 qk = vec4(0.0);
    ${dotRows('qk', 'qr', 'K', c.headDim, 'b', 'g', 'j')}
    vec4 dov = vec4(0.0);
    ${dotRows('dov', 'gr', 'V', c.headDimV, 'b', 'g', 'j')}
    vec4 ds = faDs(qk, dov, L, D, b, h, i, j);
    vec4 kt = faRowsK(b, g, j, col);
    if (j + 1 >= ${c.seqK}) kt.zw = vec2(0.0);
    result += ds.xxzz * kt.xyxy + ds.yyww * kt.zwzw;`)}
  setOutput(result * faScale);
}`;
  return new AttentionProgram(['Q', 'K', 'V', 'DO', 'Lse', 'RowTerm', ...optional.variables],
    [c.batch * c.headsQ, c.seqQ, c.headDim], true, attentionUniforms(c), userCode);
}
