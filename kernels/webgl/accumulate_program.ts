// Pass 2b of the forward: O += P̃_block · V_block for one key block, as a packed [B·Hq, Nq, Dv]
// tensor (the previous block's sum is an input, so blocks chain through textures instead of
// through shared memory, which WebGL lacks). One fragment per 2×2 (row, column) block; each loop
// step reads one P̃ texel and one V texel (two keys) like tfjs' packed matMul, skipping keys outside
// the window, the key lengths and dead block-mask blocks.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, keyPairLoop, optionalAccessors, rowsAccessor, scoreSnippet } from './glsl';
import { AttentionProgram } from './program';

export function accumulateProgram(c: AttentionConfig, keyStart: number, blockKeys: number, first: boolean): AttentionProgram {
  const optional = optionalAccessors(c);
  const userCode = `
${rowsAccessor(c, 'V')}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int col = rc.z;
  vec4 result = ${first ? 'vec4(0.0)' : 'getPrevious(rc.x, i, col)'};
  ${keyPairLoop(c, 'faKeyStart', `faKeyStart + ${blockKeys}`, `
    vec4 p = getProbs(rc.x, i, j - faKeyStart);
    vec4 v = faRowsV(b, g, j, col);
    if (j + 1 >= ${c.seqK}) v.zw = vec2(0.0);
    result += p.xxzz * v.xyxy + p.yyww * v.zwzw;`)}
  setOutput(result);
}`;
  const variables = ['Probs', 'V', ...(first ? [] : ['Previous']), ...optional.variables];
  return new AttentionProgram(variables, [c.batch * c.headsQ, c.seqQ, c.headDimV], true,
    [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }], userCode);
}
