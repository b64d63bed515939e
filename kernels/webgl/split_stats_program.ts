// Split-KV forward, pass 1: the log-sum-exp of every key range's visible scores for every query
// row, as a packed [B·Hq, Nq, splits] tensor holding (lse[i][s], lse[i][s+1], lse[i+1][s],
// lse[i+1][s+1]). One fragment per (row pair, range pair) computes the scores of its two ranges
// (2×2-blocked dot products, as the one-pass scores pass) with an online max and sum: the ranges of
// a row run in parallel, which is what the split buys when there are few rows.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, blockDot, decodeRow, keyPairLoop, optionalAccessors, rowsAccessor, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';
import { RANGE_STATS } from './split_glsl';

export function splitStatsProgram(c: AttentionConfig, textures: TexShapes, splits: number, keysPerSplit: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const userCode = `
${rowsAccessor(c, 'Q', textures)}
${rowsAccessor(c, 'K', textures)}
${optional.code}
${scoreSnippet(c)}
${RANGE_STATS}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  vec4 result = vec4(-FA_INF);
  for (int t = 0; t < 2; t++) {
    int split = rc.z + t;
    FaStats row0 = FaStats(-FA_INF, 0.0, false);
    FaStats row1 = FaStats(-FA_INF, 0.0, false);
    ${keyPairLoop(c, `split * ${keysPerSplit}`, `min((split + 1) * ${keysPerSplit}, ${c.seqK})`, `
      vec4 dots = vec4(0.0);
      ${blockDot('dots', 'Q', 'h', 'i', 'K', 'g', 'j', c.headDim)}
      vec4 s = faScore4(faCapped4(dots), b, h, i, j);
      faOnline(row0, s.x, s.y);
      faOnline(row1, s.z, s.w);`)}
    vec2 lse = vec2(faStatsLse(row0), faStatsLse(row1));
    if (t == 0) result.xz = lse; else result.yw = lse;
  }
  setOutput(faStore(result));
}`;
  return new AttentionProgram(['Q', 'K', ...optional.variables], [c.batch * c.headsQ, c.seqQ, splits], true,
    attentionUniforms(c), userCode);
}
