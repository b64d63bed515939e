// Backward, per key block: dQ ← dQ + scale · dS_block · K_block, a packed [B·Hq, Nq, D] tensor
// chained block to block like the forward's O. One fragment per 2×2 (row, column) block; each step
// reads one dS texel and one K texel (two keys), skipping keys the rows cannot see.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, keyTexelLoop, optionalAccessors, rowsAccessor, rowStep,
  scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function dqProgram(c: AttentionConfig, textures: TexShapes, keyStart: number, blockKeys: number,
  first: boolean): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const userCode = `
${rowsAccessor(c, 'K', textures)}
${internalAccessor('Ds', [rows, c.seqQ, blockKeys], textures)}
${first ? '' : internalAccessor('Previous', [rows, c.seqQ, c.headDim], textures)}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int col = rc.z;
  vec4 sum = vec4(0.0);
  int dsRow = faBlockRowDs(rc.x, i);
  int kRow = faBaseK(b, g, faKeyStart);
  int kCol = col / 2;
  ${keyTexelLoop(c, 'faKeyStart', `faKeyStart + ${blockKeys}`, `
    vec4 ds = faTexDs(dsRow, t);
    vec4 kt = faRowsAtK(kRow + ${rowStep(c, 'K', 't')}, g, kCol);
    ${c.seqK % 2 ? `if (faKeyStart + 2 * t + 1 >= ${c.seqK}) kt.zw = vec2(0.0);` : ''}
    sum += ds.xxzz * kt.xyxy + ds.yyww * kt.zwzw;`)}
  setOutput(${first ? '' : 'faBlockPrevious(rc.x, i, col) + '}faScale * sum);
}`;
  return new AttentionProgram(['Ds', 'K', ...(first ? [] : ['Previous']), ...optional.variables],
    [rows, c.seqQ, c.headDim], true, [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }],
    userCode);
}
