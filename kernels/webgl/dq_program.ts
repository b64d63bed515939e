// Backward, per key block: dQ ← dQ + scale · dS_block · K_block, a packed [B·Hq, Nq, D] tensor
// chained block to block like the forward's O. One fragment per 2×2 (row, column) block; each step
// reads one dS texel and one K texel (two keys), skipping keys the rows cannot see.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, keyPairLoop, optionalAccessors, rowsAccessor,
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
  int kBase = faBaseK(b, g, 0);
  int kCol = col / 2;
  ${keyPairLoop(c, 'faKeyStart', `faKeyStart + ${blockKeys}`, `
    vec4 ds = faTexDs(dsRow, (j - faKeyStart) >> 1);
    vec4 kt = faRowsAtK(kBase + (j >> 1) * FA_STEP_K, g, kCol);
    ${c.seqK % 2 ? `if (j + 1 >= ${c.seqK}) kt.zw = vec2(0.0);` : ''}
    sum += ds.xxzz * kt.xyxy + ds.yyww * kt.zwzw;`)}
  setOutput(${first ? '' : 'faBlockPrevious(rc.x, i, col) + '}faScale * sum);
}`;
  return new AttentionProgram(['Ds', 'K', ...(first ? [] : ['Previous']), ...optional.variables],
    [rows, c.seqQ, c.headDim], true, [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }],
    userCode);
}
