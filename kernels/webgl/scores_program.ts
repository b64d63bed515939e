// Forward, per key block: the scores s_ij of SPEC §2 (scale, softcap, bias, ALiBi; −Infinity where
// hidden) of keys [keyStart, keyStart + blockKeys) for all query rows, as a packed
// [B·Hq, Nq, blockKeys] tensor: memory linear in Nq for a fixed block, never Nq × Nk. One fragment
// per 2×2 (row, key) block is a small matrix product over the head dimension (each step one q texel
// and one k texel, as in tfjs' packed matMul); fragments whose four pairs all lie outside the window,
// the key lengths or a dead block-mask block write −Infinity without reading q or k.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, blockDot, decodeRow, optionalAccessors, rowsAccessor, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function scoresProgram(c: AttentionConfig, textures: TexShapes, keyStart: number, blockKeys: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const userCode = `
${rowsAccessor(c, 'Q', textures)}
${rowsAccessor(c, 'K', textures)}
${optional.code}
${scoreSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int j = faKeyStart + rc.z;
  ivec2 range = faKeyRange(b, i, i + 1);
  if (j + 1 < range.x || j >= range.y || !faBlockLive(b, h, i, i + 1, j, j + 1)) {
    setOutput(faStore(vec4(-FA_INF)));
    return;
  }
  vec4 dots = vec4(0.0);
  ${blockDot('dots', 'Q', 'h', 'i', 'K', 'g', 'j', c.headDim)}
  setOutput(faStore(faScore4(faCapped4(dots), b, h, i, j)));
}`;
  return new AttentionProgram(['Q', 'K', ...optional.variables], [c.batch * c.headsQ, c.seqQ, blockKeys], true,
    [...attentionUniforms(c), { name: 'faKeyStart', type: 'int', value: keyStart }], userCode);
}
