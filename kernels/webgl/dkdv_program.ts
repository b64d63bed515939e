// Backward: dK_j = scale · Σ dS_ij q_i and dV_j = Σ P̃_ij dO_i for the keys of one or more key blocks
// whose dS / P̃ textures are all alive (one block per draw, or every block of a short sequence in
// one draw: see flash_attention_grad.ts), summed over the query rows of all query heads that share
// j's KV head (GQA) without atomics: one fragment per 2×2 (key, column) block of the full packed
// [B·Hkv, Nk, dim] gradient loops over the row pairs whose window holds its keys. Keys outside the
// blocks keep the previous draw's values (0 for the first), so the gradient fills up draw by draw at
// O(Nk·dim) extra copying per draw.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, internalAccessor, optionalAccessors, rowPairLoop, rowsAccessor, rowStep, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram, keyStartUniforms } from './program';

export function dkdvProgram(c: AttentionConfig, textures: TexShapes, target: 'dk' | 'dv', keyStarts: number[],
  blockKeys: number, first: boolean): AttentionProgram {
  const optional = optionalAccessors(c);
  const [weights, rowsOf, dim] = target === 'dk' ? ['Ds', 'Q', c.headDim] : ['Probs', 'DO', c.headDimV];
  const names = keyStarts.map((_, n) => `${weights}${n}`);
  const rows = c.batch * c.headsKV;
  const inBlock = (n: number) => `j >= faKeyStart${n} && j < faKeyStart${n} + ${blockKeys}`;
  const block = (n: number) => `if (${inBlock(n)}) {
    int wCol = (j - faKeyStart${n}) / 2;
    ${rowPairLoop(c, `
      int wRow = faBlockRow${names[n]}(b * ${c.headsQ} + h, 0);
      int xBase = faBase${rowsOf}(b, h, 0);`, `
      vec4 w = faTex${names[n]}(wRow + u, wCol);
      vec4 x = faRowsAt${rowsOf}(xBase + ${rowStep(c, rowsOf, 'u')}, h, xCol);
      ${c.seqQ % 2 ? `if (i + 1 >= ${c.seqQ}) x.zw = vec2(0.0);` : ''}
      sum += w.xxyy * x.xyxy + w.zzww * x.zwzw;`)}
  }`;
  const userCode = `
${rowsAccessor(c, rowsOf, textures)}
${names.map(name => internalAccessor(name, [c.batch * c.headsQ, c.seqQ, blockKeys], textures)).join('\n')}
${first ? '' : internalAccessor('Previous', [rows, c.seqK, dim], textures)}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  int b = rc.x / ${c.headsKV};
  int g = rc.x - b * ${c.headsKV};
  int j = rc.y;
  int col = rc.z;
  if (!(${keyStarts.map((_, n) => `(${inBlock(n)})`).join(' || ')})) {
    setOutput(${first ? 'vec4(0.0)' : 'faBlockPrevious(rc.x, j, col)'});
    return;
  }
  vec4 sum = vec4(0.0);
  int xCol = col / 2;
  ${keyStarts.map((_, n) => block(n)).join(' else ')}
  setOutput(${target === 'dk' ? 'faScale * sum' : 'sum'});
}`;
  return new AttentionProgram([...names, rowsOf, ...(first ? [] : ['Previous']), ...optional.variables],
    [rows, c.seqK, dim], true, [...attentionUniforms(c), ...keyStartUniforms(keyStarts)], userCode);
}
