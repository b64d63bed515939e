// Backward pre-pass: the row term D_i = rowsum(dO_i ∘ O_i) − dLse_i of dS = P ∘ (dP − D), as a
// packed [B·Hq, Nq, 2] tensor (D_i, D_i, D_{i+1}, D_{i+1}) per row pair. Folding dLse in here makes
// the lse output differentiable at no extra cost.
import type { AttentionConfig } from '../../src/config';
import { decodeRow, elementAccessor, PICK, rowsAccessor } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function rowTermProgram(c: AttentionConfig, textures: TexShapes): AttentionProgram {
  const full = Math.floor(c.headDimV / 2);
  const tail = c.headDimV % 2
    ? `{ vec4 t = faRowsO(b, h, i, ${2 * full}) * faRowsDO(b, h, i, ${2 * full});
         sum += t.xz; }`
    : '';
  const userCode = `
${rowsAccessor(c, 'O', textures)}
${rowsAccessor(c, 'DO', textures)}
${PICK}
${elementAccessor('DLse', [1, c.batch, c.headsQ, c.seqQ])}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  vec2 sum = vec2(0.0);
  for (int p = 0; p < ${full}; p++) {
    vec4 t = faRowsO(b, h, i, 2 * p) * faRowsDO(b, h, i, 2 * p);
    sum += t.xz + t.yw;
  }
  ${tail}
  float d0 = sum.x - faAtDLse(0, b, h, i);
  float d1 = (i + 1 < ${c.seqQ}) ? sum.y - faAtDLse(0, b, h, i + 1) : 0.0;
  setOutput(vec4(d0, d0, d1, d1));
}`;
  return new AttentionProgram(['O', 'DO', 'DLse'], [c.batch * c.headsQ, c.seqQ, 2], true, [], userCode);
}
