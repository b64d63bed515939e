// Split-KV forward, pass 3: the softmax weights of every key within its own range,
// P̃_ij = exp(s_ij − lse_i,range(j))·Z_ij, from the score texture (pass 1) and the ranges' lse
// (pass 2), as a packed [B·Hq, Nq, Nk] tensor (the split path serves Nq ≤ 16 rows, so this is
// linear in Nk). exp and the dropout hash run once per score here instead of once per output
// column pair in the accumulate pass.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, optionalAccessors, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';
import { rangeLseAccessor } from './split_glsl';

export function splitWeightsProgram(c: AttentionConfig, textures: TexShapes, splits: number, keysPerSplit: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const userCode = `
${internalAccessor('Scores', [rows, c.seqQ, c.seqK], textures)}
${optional.code}
${scoreSnippet(c)}
${rangeLseAccessor(rows, c.seqQ, splits, textures)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int j = rc.z;
  vec4 s = faLoad(faBlockScores(rc.x, i, j));
  vec2 lse = faRangeLse(rc.x, i, j / ${keysPerSplit});
  setOutput(faProbs(s, lse.xxyy) * faDropScale4(b, h, i, j));
}`;
  return new AttentionProgram(['Scores', 'Lse', ...optional.variables], [rows, c.seqQ, c.seqK], true,
    attentionUniforms(c), userCode);
}
