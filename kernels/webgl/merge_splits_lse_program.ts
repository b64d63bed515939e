// Split-KV forward, pass 5: each query row's lse from its ranges' lse, logsumexp_s lse_s, as the
// op's [B, Hq, Nq] lse output. Special values as in merge_splits_program.ts: no visible key gives
// −Infinity (stored as on half-float targets), a NaN range gives NaN, a +Infinity one +Infinity.
import type { AttentionConfig } from '../../src/config';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';
import { rangeLseAccessor, storedValues } from './split_glsl';

export function mergeSplitsLseProgram(c: AttentionConfig, textures: TexShapes, splits: number): AttentionProgram {
  const rows = c.batch * c.headsQ;
  const stored = storedValues(c);
  const userCode = `
${stored.code}
${rangeLseAccessor(rows, c.seqQ, splits, textures)}
void main() {
  ivec3 rc = getOutputCoords();
  int bh = rc.x * ${c.headsQ} + rc.y;
  int i = rc.z - rc.z % 2;
  bool second = rc.z % 2 == 1;
  float top = -FA_INF;
  bool nan = false;
  for (int s = 0; s < ${splits}; s++) {
    vec2 pair = faRangeLse(bh, i, s);
    float lse = second ? pair.y : pair.x;
    nan = nan || isnan(lse);
    top = max(top, lse);
  }
  float result = top;
  if (nan) {
    result = NAN;
  } else if (top != -FA_INF && top != FA_INF) {
    float sum = 0.0;
    for (int s = 0; s < ${splits}; s++) {
      vec2 pair = faRangeLse(bh, i, s);
      sum += exp((second ? pair.y : pair.x) - top);
    }
    result = top + log(sum);
  }
  setOutput(faStore(vec4(result)).x);
}`;
  return new AttentionProgram(['Lse'], [c.batch, c.headsQ, c.seqQ], false, stored.uniforms, userCode);
}
