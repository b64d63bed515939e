// Split-KV forward, pass 4: the output of every query row from its ranges' partial outputs by the
// log-sum-exp rule of src/split_kv.ts, O = Σ_s exp(lse_s − lse)·O_s / Σ_s exp(lse_s − lse_max), as a
// packed [B·Hq, Nq, Dv] tensor. Ranges without visible keys (lse −Infinity) are skipped, so a row
// without any visible key gets 0; a NaN or +Infinity range lse makes the row NaN, as the one-pass
// softmax would.
import type { AttentionConfig } from '../../src/config';
import { internalAccessor } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';
import { rangeLseAccessor, storedValues } from './split_glsl';

export function mergeSplitsProgram(c: AttentionConfig, textures: TexShapes, splits: number): AttentionProgram {
  const rows = c.batch * c.headsQ;
  const stored = storedValues(c);
  const userCode = `
${stored.code}
${rangeLseAccessor(rows, c.seqQ, splits, textures)}
${internalAccessor('Partial', [rows * splits, c.seqQ, c.headDimV], textures)}
void main() {
  ivec3 rc = getOutputCoords();
  int i = rc.y;
  int col = rc.z;
  vec2 top = vec2(-FA_INF);
  bvec2 bad = bvec2(false);
  for (int s = 0; s < ${splits}; s++) {
    vec2 lse = faRangeLse(rc.x, i, s);
    bad = bvec2(bad.x || isnan(lse.x) || lse.x == FA_INF, bad.y || isnan(lse.y) || lse.y == FA_INF);
    top = max(top, lse);
  }
  vec2 sum = vec2(0.0);
  vec4 acc = vec4(0.0);
  for (int s = 0; s < ${splits}; s++) {
    vec2 lse = faRangeLse(rc.x, i, s);
    vec4 o = faBlockPartial(rc.x * ${splits} + s, i, col);
    if (lse.x != -FA_INF) { float w = exp(lse.x - top.x); sum.x += w; acc.xy += w * o.xy; }
    if (lse.y != -FA_INF) { float w = exp(lse.y - top.y); sum.y += w; acc.zw += w * o.zw; }
  }
  vec4 result = acc / sum.xxyy;
  result = mix(result, vec4(0.0), equal(top.xxyy, vec4(-FA_INF)));
  result = mix(result, vec4(NAN), bvec4(bad.x, bad.x, bad.y, bad.y));
  setOutput(result);
}`;
  return new AttentionProgram(['Lse', 'Partial'], [rows, c.seqQ, c.headDimV], true, stored.uniforms, userCode);
}
