// Forward, per key block: each query row's running log-sum-exp, updated with the block's scores,
// as a packed [B·Hq, Nq, 2] tensor holding (lse_i, previous lse_i, lse_{i+1}, previous lse_{i+1}) so
// that the accumulate pass can rescale the output it already has. Keeping lse rather than a running
// (max, sum) pair keeps every stored value in the range of the scores: nothing overflows a
// half-float render target however long the sequence.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, keyPairLoop, optionalAccessors, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function blockStatsProgram(c: AttentionConfig, textures: TexShapes, keyStart: number, blockKeys: number,
  first: boolean): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const userCode = `
${internalAccessor('Scores', [rows, c.seqQ, blockKeys], textures)}
${first ? '' : internalAccessor('Previous', [rows, c.seqQ, 2], textures)}
${optional.code}
${scoreSnippet(c)}
void faOnline(inout float m, inout float l, float sa, float sb) {
  float mNew = max(m, max(sa, sb));
  if (mNew == -FA_INF) return;
  l = l * exp(m - mNew) + exp(sa - mNew) + exp(sb - mNew);
  m = mNew;
}
// log(exp(a) + exp(b)) where a is a previous lse and (m, l) a running max and sum; ±Infinity stay.
float faMerge(float a, float m, float l) {
  float top = max(a, m);
  if (top == -FA_INF || top == FA_INF) return top;
  return top + log(exp(a - top) + l * exp(m - top));
}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  float m0 = -FA_INF, l0 = 0.0, m1 = -FA_INF, l1 = 0.0;
  ${keyPairLoop(c, 'faKeyStart', `faKeyStart + ${blockKeys}`, `
    vec4 s = faLoad(faBlockScores(rc.x, i, j - faKeyStart));
    faOnline(m0, l0, s.x, s.y);
    faOnline(m1, l1, s.z, s.w);`)}
  vec2 previous = ${first ? 'vec2(-FA_INF)' : 'faLoad(faBlockPrevious(rc.x, i, 0)).xz'};
  setOutput(faStore(vec4(faMerge(previous.x, m0, l0), previous.x, faMerge(previous.y, m1, l1), previous.y)));
}`;
  return new AttentionProgram(['Scores', ...(first ? [] : ['Previous']), ...optional.variables],
    [rows, c.seqQ, 2], true, [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }], userCode);
}
