// Backward: dQ ← dQ + scale · Σ_blocks dS_block · K_block, a packed [B·Hq, Nq, D] tensor, for one or
// more key blocks whose dS textures are all alive (the kernel runs one block per draw, chained like
// the forward's O, or, for short sequences, every block in one draw: see flash_attention_grad.ts).
// One fragment per 2×2 (row, column) block; each step reads one dS texel and one K texel (two keys),
// skipping keys the rows cannot see.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, internalAccessor, keyTexelLoop, optionalAccessors, rowsAccessor, rowStep,
  scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram, keyStartUniforms } from './program';

export function dqProgram(c: AttentionConfig, textures: TexShapes, keyStarts: number[], blockKeys: number,
  first: boolean): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const ds = keyStarts.map((_, n) => `Ds${n}`);
  const block = (n: number) => `{
    int dsRow = faBlockRowDs${n}(rc.x, i);
    int kRow = faBaseK(b, g, faKeyStart${n});
    ${keyTexelLoop(c, `faKeyStart${n}`, `faKeyStart${n} + ${blockKeys}`, `
      vec4 ds = faTexDs${n}(dsRow, t);
      vec4 kt = faRowsAtK(kRow + ${rowStep(c, 'K', 't')}, g, kCol);
      ${c.seqK % 2 ? `if (faKeyStart${n} + 2 * t + 1 >= ${c.seqK}) kt.zw = vec2(0.0);` : ''}
      sum += ds.xxzz * kt.xyxy + ds.yyww * kt.zwzw;`)}
  }`;
  const userCode = `
${rowsAccessor(c, 'K', textures)}
${ds.map(name => internalAccessor(name, [rows, c.seqQ, blockKeys], textures)).join('\n')}
${first ? '' : internalAccessor('Previous', [rows, c.seqQ, c.headDim], textures)}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int col = rc.z;
  vec4 sum = vec4(0.0);
  int kCol = col / 2;
  ${keyStarts.map((_, n) => block(n)).join('\n  ')}
  setOutput(${first ? '' : 'faBlockPrevious(rc.x, i, col) + '}faScale * sum);
}`;
  return new AttentionProgram([...ds, 'K', ...(first ? [] : ['Previous']), ...optional.variables],
    [rows, c.seqQ, c.headDim], true, [...attentionUniforms(c), ...keyStartUniforms(keyStarts)], userCode);
}
