// Forward, per key block: the block's softmax weights P̃_ij = exp(s_ij − lse_i)·Z_ij under the
// running lse just updated by blockStats, as a packed [B·Hq, Nq, blockKeys] tensor. Computing them
// once here keeps exp and the dropout hash out of the accumulate pass, whose fragments (one per
// pair of output columns) would otherwise each redo them: measured in bench/RESULTS.md.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, optionalAccessors, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function weightsProgram(c: AttentionConfig, textures: TexShapes, keyStart: number, blockKeys: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const userCode = `
${internalAccessor('Scores', [rows, c.seqQ, blockKeys], textures)}
${internalAccessor('Stats', [rows, c.seqQ, 2], textures)}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int j = faKeyStart + rc.z;
  vec4 s = faLoad(faBlockScores(rc.x, i, rc.z));
  vec4 lse = faLoad(faBlockStats(rc.x, i, 0)).xxzz;
  setOutput(faProbs(s, lse) * faDropScale4(b, h, i, j));
}`;
  return new AttentionProgram(['Scores', 'Stats', ...optional.variables], [rows, c.seqQ, blockKeys], true,
    [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }], userCode);
}
