// Forward, per key block: O ← O·exp(lse_prev − lse) + Σ_j P̃_ij·v_j over the block's keys, as a
// packed [B·Hq, Nq, Dv] tensor. P̃ comes from the weights pass, or, with `fromScores` (no dropout),
// is exp(s − lse) taken here from the scores: one draw and one block texture fewer per block, for an
// exp redone by each of the Dv/2 fragments that read a score (see the forward kernel's header).
// O stays normalized by the running lse after every block (a convex combination of v rows), so it
// never grows with N, and the last block's O is the output. One fragment per 2×2 (row, column)
// block; each loop step reads one P̃ (or score) texel and one V texel (two keys), like tfjs' packed
// matMul, skipping keys outside the window, the key lengths and dead block-mask blocks.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, keyTexelLoop, optionalAccessors, rowsAccessor, rowStep,
  scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function accumulateProgram(c: AttentionConfig, textures: TexShapes, keyStart: number, blockKeys: number,
  first: boolean, fromScores: boolean): AttentionProgram {
  if (fromScores && c.dropoutRate > 0) throw new Error('flashAttention (webgl): dropout needs the weights pass');
  const source = fromScores ? 'Scores' : 'Weights';
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const userCode = `
${rowsAccessor(c, 'V', textures)}
${internalAccessor(source, [rows, c.seqQ, blockKeys], textures)}
${internalAccessor('Stats', [rows, c.seqQ, 2], textures)}
${first ? '' : internalAccessor('Previous', [rows, c.seqQ, c.headDimV], textures)}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int col = rc.z;
  vec4 stats = faLoad(faBlockStats(rc.x, i, 0));
  vec4 lse = stats.xxzz;
  ${first ? 'vec4 result = vec4(0.0);' : `
  vec4 rescale = mix(exp(stats.yyww - lse), vec4(0.0), equal(stats.yyww, vec4(-FA_INF)));
  vec4 result = faBlockPrevious(rc.x, i, col) * rescale;`}
  int pRow = faBlockRow${source}(rc.x, i);
  int vRow = faBaseV(b, g, faKeyStart);
  int vCol = col / 2;
  ${keyTexelLoop(c, 'faKeyStart', `faKeyStart + ${blockKeys}`, `
    vec4 p = ${fromScores ? 'faProbs(faLoad(faTexScores(pRow, t)), lse)' : 'faTexWeights(pRow, t)'};
    vec4 v = faRowsAtV(vRow + ${rowStep(c, 'V', 't')}, g, vCol);
    ${c.seqK % 2 ? `if (faKeyStart + 2 * t + 1 >= ${c.seqK}) v.zw = vec2(0.0);` : ''}
    result += p.xxzz * v.xyxy + p.yyww * v.zwzw;`)}
  setOutput(result);
}`;
  const variables = [source, 'V', 'Stats', ...(first ? [] : ['Previous']), ...optional.variables];
  return new AttentionProgram(variables, [rows, c.seqQ, c.headDimV], true,
    [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }], userCode);
}
