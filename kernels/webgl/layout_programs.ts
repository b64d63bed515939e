// The forward and backward passes work on [B·H, N, dim] tensors (rows of one head contiguous, so a
// packed texel pairs two sequence positions of the same head). These programs turn those into the
// user's layout when it is BSHD (for BHSD a view suffices), and the row statistics into lse.
import type { AttentionConfig } from '../../src/config';
import { AttentionProgram } from './program';

/** [B·heads, seq, dim] (packed) → [B, seq, heads, dim] (packed): a texel of the output pairs heads. */
export function toBSHDProgram(c: AttentionConfig, heads: number, seq: number, dim: number): AttentionProgram {
  const userCode = `
vec2 faRow(vec4 t, int n) { return (n % 2 == 0) ? t.xy : t.zw; }
void main() {
  ivec4 rc = getOutputCoords();
  int b = rc.x, n = rc.y, h = rc.z, d = rc.w;
  vec2 first = faRow(getSource(b * ${heads} + h, n, d), n);
  vec2 second = (h + 1 < ${heads}) ? faRow(getSource(b * ${heads} + h + 1, n, d), n) : vec2(0.0);
  setOutput(vec4(first, second));
}`;
  return new AttentionProgram(['Source'], [c.batch, seq, heads, dim], true, [], userCode);
}

/** Row statistics [B·Hq, Nq, 2] (packed, (lse_i, ·, lse_{i+1}, ·)) → lse [B, Hq, Nq]. */
export function lseProgram(c: AttentionConfig): AttentionProgram {
  const userCode = `
void main() {
  ivec3 rc = getOutputCoords();
  int i = rc.z;
  vec4 t = getStats(rc.x * ${c.headsQ} + rc.y, i, 0);
  setOutput((i % 2 == 0) ? t.x : t.z);
}`;
  return new AttentionProgram(['Stats'], [c.batch, c.headsQ, c.seqQ], false, [], userCode);
}
