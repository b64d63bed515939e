// Backward, per key block: dK_j = scale · Σ dS_ij q_i and dV_j = Σ P̃_ij dO_i for the block's keys,
// summed over the query rows of all query heads that share j's KV head (GQA) without atomics: one
// fragment per 2×2 (key, column) block of the full packed [B·Hkv, Nk, dim] gradient loops over the
// row pairs whose window holds its keys. Keys outside the block keep the previous block's values
// (0 for the first), so the gradient fills up block by block at O(Nk·dim) extra copying per block.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, internalAccessor, optionalAccessors, rowPairLoop, rowsAccessor, rowStep, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function dkdvProgram(c: AttentionConfig, textures: TexShapes, target: 'dk' | 'dv', keyStart: number,
  blockKeys: number, first: boolean): AttentionProgram {
  const optional = optionalAccessors(c);
  const [weights, rowsOf, dim] = target === 'dk' ? ['Ds', 'Q', c.headDim] : ['Probs', 'DO', c.headDimV];
  const rows = c.batch * c.headsKV;
  const userCode = `
${rowsAccessor(c, rowsOf, textures)}
${internalAccessor(weights, [c.batch * c.headsQ, c.seqQ, blockKeys], textures)}
${first ? '' : internalAccessor('Previous', [rows, c.seqK, dim], textures)}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  int b = rc.x / ${c.headsKV};
  int g = rc.x - b * ${c.headsKV};
  int j = rc.y;
  int col = rc.z;
  if (j < faKeyStart || j >= faKeyStart + ${blockKeys}) {
    setOutput(${first ? 'vec4(0.0)' : 'faBlockPrevious(rc.x, j, col)'});
    return;
  }
  vec4 sum = vec4(0.0);
  int wCol = (j - faKeyStart) / 2;
  int xCol = col / 2;
  ${rowPairLoop(c, `
    int wRow = faBlockRow${weights}(b * ${c.headsQ} + h, 0);
    int xBase = faBase${rowsOf}(b, h, 0);`, `
    vec4 w = faTex${weights}(wRow + u, wCol);
    vec4 x = faRowsAt${rowsOf}(xBase + ${rowStep(c, rowsOf, 'u')}, h, xCol);
    ${c.seqQ % 2 ? `if (i + 1 >= ${c.seqQ}) x.zw = vec2(0.0);` : ''}
    sum += w.xxyy * x.xyxy + w.zzww * x.zwzw;`)}
  setOutput(${target === 'dk' ? 'faScale * sum' : 'sum'});
}`;
  return new AttentionProgram([weights, rowsOf, ...(first ? [] : ['Previous']), ...optional.variables],
    [rows, c.seqK, dim], true, [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }],
    userCode);
}
