// Split-KV forward, pass 2: the log-sum-exp of every key range's visible scores for every query
// row, as a packed [B·Hq, Nq, splits] tensor holding (lse[i][s], lse[i][s+1], lse[i+1][s],
// lse[i+1][s+1]). One fragment per (row pair, range pair) reads its two ranges of the score texture
// (pass 1) twice, for the maximum and then the sum of exp(s − max): one exp per score. The ranges
// of a row run in parallel, which is what the split buys when there are few rows.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, keyPairLoop, optionalAccessors, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function splitStatsProgram(c: AttentionConfig, textures: TexShapes, splits: number, keysPerSplit: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const range = (body: string) =>
    keyPairLoop(c, `split * ${keysPerSplit}`, `min((split + 1) * ${keysPerSplit}, ${c.seqK})`, `
      vec4 s = faLoad(faBlockScores(rc.x, i, j));
      ${body}`);
  const userCode = `
${internalAccessor('Scores', [rows, c.seqQ, c.seqK], textures)}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  vec4 result = vec4(-FA_INF);
  for (int t = 0; t < 2; t++) {
    int split = rc.z + t;
    // Per row (x: row i, y: row i+1). GLSL's max() may drop a NaN operand: NaN is tracked apart.
    vec2 top = vec2(-FA_INF);
    bvec2 nan = bvec2(false);
    ${range(`top = max(top, max(s.xz, s.yw));
      nan = bvec2(nan.x || isnan(s.x) || isnan(s.y), nan.y || isnan(s.z) || isnan(s.w));`)}
    // A row with no visible key (top −Infinity) or a +Infinity score keeps top as its lse.
    vec2 base = mix(top, vec2(0.0), equal(abs(top), vec2(FA_INF)));
    vec2 sum = vec2(0.0);
    ${range('sum += vec2(exp(s.x - base.x) + exp(s.y - base.x), exp(s.z - base.y) + exp(s.w - base.y));')}
    vec2 lse = mix(base + log(sum), top, equal(abs(top), vec2(FA_INF)));
    lse = mix(lse, vec2(NAN), nan);
    if (t == 0) result.xz = lse; else result.yw = lse;
  }
  setOutput(faStore(result));
}`;
  return new AttentionProgram(['Scores', ...optional.variables], [rows, c.seqQ, splits], true,
    attentionUniforms(c), userCode);
}
