// Split-KV forward, pass 2: the softmax weights of every key within its own range,
// P̃_ij = exp(s_ij − lse_i,range(j))·Z_ij, as a packed [B·Hq, Nq, Nk] tensor (the split path serves
// Nq ≤ 16 rows, so this is linear in Nk). The scores are recomputed rather than stored by pass 1,
// which saves a texture pass; exp and the dropout hash run once per score here instead of once per
// output column pair in the accumulate pass.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, blockDot, decodeRow, optionalAccessors, rowsAccessor, scoreSnippet } from './glsl';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';
import { rangeLseAccessor } from './split_glsl';

export function splitWeightsProgram(c: AttentionConfig, textures: TexShapes, splits: number, keysPerSplit: number): AttentionProgram {
  const optional = optionalAccessors(c);
  const rows = c.batch * c.headsQ;
  const userCode = `
${rowsAccessor(c, 'Q', textures)}
${rowsAccessor(c, 'K', textures)}
${optional.code}
${scoreSnippet(c)}
${rangeLseAccessor(rows, c.seqQ, splits, textures)}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  int j = rc.z;
  ivec2 range = faKeyRange(b, i, i + 1);
  if (j + 1 < range.x || j >= range.y || !faBlockLive(b, h, i, i + 1, j, j + 1)) {
    setOutput(vec4(0.0));
    return;
  }
  vec4 dots = vec4(0.0);
  ${blockDot('dots', 'Q', 'h', 'i', 'K', 'g', 'j', c.headDim)}
  vec4 s = faScore4(faCapped4(dots), b, h, i, j);
  vec2 lse = faRangeLse(rc.x, i, j / ${keysPerSplit});
  setOutput(faProbs(s, lse.xxyy) * faDropScale4(b, h, i, j));
}`;
  return new AttentionProgram(['Q', 'K', 'Lse', ...optional.variables], [rows, c.seqQ, c.seqK], true,
    attentionUniforms(c), userCode);
}
