// Split-KV forward, pass 3: every key range's partial output O_s = Σ_{j in range} P̃_ij·v_j (P̃
// from pass 2, normalized by the range's own lse), as a packed [B·Hq·splits, Nq, Dv] tensor. One
// fragment per (range, row pair, column pair): each loop runs over one range's keys only.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, keyPairLoop, optionalAccessors, rowsAccessor,
  scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function splitAccumulateProgram(c: AttentionConfig, textures: TexShapes, splits: number, keysPerSplit: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const userCode = `
${rowsAccessor(c, 'V', textures)}
${internalAccessor('Weights', [rows, c.seqQ, c.seqK], textures)}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  int bh = rc.x / ${splits};
  int split = rc.x - bh * ${splits};
  ${decodeRow(c, 'bh')}
  int i = rc.y;
  int col = rc.z;
  vec4 result = vec4(0.0);
  ${keyPairLoop(c, `split * ${keysPerSplit}`, `min((split + 1) * ${keysPerSplit}, ${c.seqK})`, `
    vec4 p = faBlockWeights(bh, i, j);
    vec4 v = faRowsV(b, g, j, col);
    if (j + 1 >= ${c.seqK}) v.zw = vec2(0.0);
    result += p.xxzz * v.xyxy + p.yyww * v.zwzw;`)}
  setOutput(result);
}`;
  return new AttentionProgram(['Weights', 'V', ...optional.variables], [rows * splits, c.seqQ, c.headDimV], true,
    attentionUniforms(c), userCode);
}
