// Backward, per key block: the dropped-out probabilities P̃_ij = exp(s_ij − lse_i)·Z_ij that dV
// needs, recomputed from the saved lse, for keys [keyStart, keyStart + blockKeys): a packed
// [B·Hq, Nq, blockKeys] tensor (values in [0, 1/(1 − rate)]).
import type { AttentionConfig } from '../../src/config';
import { blockFragment, lseAndDot } from './ds_program';
import { attentionUniforms, elementAccessor, optionalAccessors, rowsAccessor, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function probsProgram(c: AttentionConfig, textures: TexShapes, keyStart: number, blockKeys: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const userCode = `
${rowsAccessor(c, 'Q', textures)}
${rowsAccessor(c, 'K', textures)}
${optional.code}
${elementAccessor('Lse', [1, c.batch, c.headsQ, c.seqQ])}
${scoreSnippet(c)}
void main() {
  ${blockFragment(c)}
  ${lseAndDot(c)}
  setOutput(faProbs(faScore4(faCapped4(qk), b, h, i, j), L) * faDropScale4(b, h, i, j));
}`;
  return new AttentionProgram(['Q', 'K', 'Lse', ...optional.variables], [c.batch * c.headsQ, c.seqQ, blockKeys], true,
    [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }], userCode);
}
