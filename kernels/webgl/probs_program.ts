// Pass 2a of the forward (and of nothing else): the dropped-out softmax weights
// P̃_ij = exp(s_ij − lse_i)·Z_ij of one key block [keyStart, keyStart + blockKeys), as a packed
// [B·Hq, Nq, blockKeys] tensor: memory linear in Nq for a fixed block, never Nq × Nk. One fragment
// per 2×2 (row, key) block, a small matrix product over the head dimension like tfjs' packed matMul,
// but with the score pipeline and the normalization fused in. Fragments whose four pairs are all
// outside the window, the key lengths or a dead block-mask block write 0 without reading q or k.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, even, optionalAccessors, rowsAccessor, scoreSnippet } from './glsl';
import { AttentionProgram } from './program';

export function probsProgram(c: AttentionConfig, keyStart: number, blockKeys: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const full = Math.floor(c.headDim / 2);
  const tail = c.headDim % 2
    ? `{ vec4 qt = faRowsQ(b, h, i, ${2 * full}) * vec4(1.0, 0.0, 1.0, 0.0);
         vec4 kt = faRowsK(b, g, j, ${2 * full}) * vec4(1.0, 0.0, 1.0, 0.0);
         dots += qt.xxzz * kt.xzxz + qt.yyww * kt.ywyw; }`
    : '';
  const userCode = `
${rowsAccessor(c, 'Q')}
${rowsAccessor(c, 'K')}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int j = faKeyStart + rc.z;
  ivec2 range = faKeyRange(b, i, i + 1);
  if (j + 1 < range.x || j >= range.y || !faBlockLive(b, h, i, i + 1, j, j + 1)) {
    setOutput(vec4(0.0));
    return;
  }
  vec4 dots = vec4(0.0);
  for (int p = 0; p < ${full}; p++) {
    vec4 qt = faRowsQ(b, h, i, 2 * p);
    vec4 kt = faRowsK(b, g, j, 2 * p);
    dots += qt.xxzz * kt.xzxz + qt.yyww * kt.ywyw;
  }
  ${tail}
  vec4 s = faScore4(faCapped4(dots), b, h, i, j);
  vec4 lse = getStats(rc.x, i, 0).xxzz;
  setOutput(faProbs(s, lse) * faDropScale4(b, h, i, j));
}`;
  return new AttentionProgram(['Q', 'K', 'Stats', ...optional.variables],
    [c.batch * c.headsQ, c.seqQ, even(blockKeys)], true,
    [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }], userCode);
}
