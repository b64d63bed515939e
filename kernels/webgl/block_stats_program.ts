// Forward, per key block: each query row's running log-sum-exp, updated with the block's scores,
// as a packed [B·Hq, Nq, 2] tensor holding (lse_i, previous lse_i, lse_{i+1}, previous lse_{i+1}) so
// that the accumulate pass can rescale the output it already has. Keeping lse rather than a running
// (max, sum) pair keeps every stored value in the range of the scores: nothing overflows a
// half-float render target however long the sequence.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, keyTexelLoop, optionalAccessors, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

/**
 * The block's row max m and Σ exp(s − m) as `vec2 m, l` (rows i, i+1), NaN scores flagged in
 * `vec4 nan` (max() may drop a NaN argument: GLSL leaves it undefined). Two sweeps (max, then sum):
 * one exp per score. One sweep with a running (max, sum): half the fetches, 1.5 exps per score (the
 * max correction per key pair), for GPUs where exps are cheap next to fetches.
 */
function rowMaxAndSum(c: AttentionConfig, blockKeys: number, onePass: boolean): string {
  const loop = (body: string) => keyTexelLoop(c, 'faKeyStart', `faKeyStart + ${blockKeys}`, body);
  // A row without visible keys keeps max −Infinity and sum 0 (exp(−Infinity − 0) = 0, not NaN).
  if (onePass) {
    return `vec2 m = vec2(-FA_INF);
  vec2 l = vec2(0.0);
  vec4 nan = vec4(0.0);
  ${loop(`
    vec4 s = faLoad(faTexScores(row, t));
    nan = max(nan, vec4(isnan(s)));
    vec2 top = max(m, max(s.xz, s.yw));
    vec2 shift = mix(top, vec2(0.0), equal(top, vec2(-FA_INF)));
    vec4 e = exp(s - shift.xxyy);
    l = l * exp(m - shift) + e.xz + e.yw;
    m = top;`)}`;
  }
  return `vec4 top = vec4(-FA_INF);
  vec4 nan = vec4(0.0);
  ${loop(`
    vec4 s = faLoad(faTexScores(row, t));
    top = max(top, s);
    nan = max(nan, vec4(isnan(s)));`)}
  vec2 m = max(top.xz, top.yw);
  vec4 shift = mix(m.xxyy, vec4(0.0), equal(m.xxyy, vec4(-FA_INF)));
  vec4 sum = vec4(0.0);
  ${loop(`
    sum += exp(faLoad(faTexScores(row, t)) - shift);`)}
  vec2 l = sum.xz + sum.yw;`;
}

export function blockStatsProgram(c: AttentionConfig, textures: TexShapes, keyStart: number, blockKeys: number,
  first: boolean, onePass: boolean): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const userCode = `
${internalAccessor('Scores', [rows, c.seqQ, blockKeys], textures)}
${first ? '' : internalAccessor('Previous', [rows, c.seqQ, 2], textures)}
${optional.code}
${scoreSnippet(c)}
// log(exp(a) + exp(b)) where a is a previous lse and (m, l) a block's max and sum of exp(s − m);
// ±Infinity stay.
float faMerge(float a, float m, float l) {
  if (isnan(a)) return a;
  float top = max(a, m);
  if (top == -FA_INF || top == FA_INF) return top;
  return top + log(exp(a - top) + l * exp(m - top));
}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int row = faBlockRowScores(rc.x, i);
  ${rowMaxAndSum(c, blockKeys, onePass)}
  vec2 previous = ${first ? 'vec2(-FA_INF)' : 'faLoad(faBlockPrevious(rc.x, i, 0)).xz'};
  vec2 lse = vec2(faMerge(previous.x, m.x, l.x), faMerge(previous.y, m.y, l.y));
  lse = mix(lse, vec2(NAN), greaterThan(max(nan.xz, nan.yw), vec2(0.0)));
  setOutput(faStore(vec4(lse.x, previous.x, lse.y, previous.y)));
}`;
  return new AttentionProgram(['Scores', ...(first ? [] : ['Previous']), ...optional.variables],
    [rows, c.seqQ, 2], true, [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }], userCode);
}
