// Backward: dK_j = scale · Σ_i dS_ij q_i and dV_j = Σ_i P_ij Z_ij dO_i, summed over the query heads
// of j's KV head group (GQA) without atomics: one fragment per 2×2 (key, column) block of a packed
// [B·Hkv, Nk, dim] tensor loops over the query row pairs whose window holds its keys, recomputing
// the scores from lse (the keys' k, and v for dK, stay in registers). dK and dV are two programs
// because a fragment writes one RGBA texel.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, dotRows, elementAccessor, loadRows, optionalAccessors, rowPairLoop, rowsAccessor,
  scoreSnippet } from './glsl';
import { dsSnippet } from './dq_program';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

function keyProgram(c: AttentionConfig, textures: TexShapes, target: 'dk' | 'dv'): AttentionProgram {
  const optional = optionalAccessors(c);
  const dim = target === 'dk' ? c.headDim : c.headDimV;
  // Dot products come out key-major ((j,i), (j,i+1), (j+1,i), (j+1,i+1)); .xzyw makes them row-major.
  const weights = target === 'dk'
    ? `vec4 qk = vec4(0.0);
       ${dotRows('qk', 'kr', 'Q', c.headDim, 'b', 'h', 'i')}
       vec4 dov = vec4(0.0);
       ${dotRows('dov', 'vr', 'DO', c.headDimV, 'b', 'h', 'i')}
       vec4 w = faDs(qk.xzyw, dov.xzyw, L, getRowTerm(b * ${c.headsQ} + h, i, 0).xxzz, b, h, i, j);
       vec4 x = faRowsQ(b, h, i, col);`
    : `vec4 qk = vec4(0.0);
       ${dotRows('qk', 'kr', 'Q', c.headDim, 'b', 'h', 'i')}
       vec4 w = faProbs(faScore4(faCapped4(qk.xzyw), b, h, i, j), L) * faDropScale4(b, h, i, j);
       vec4 x = faRowsDO(b, h, i, col);`;
  const userCode = `
${rowsAccessor(c, 'Q', textures)}
${rowsAccessor(c, 'K', textures)}
${rowsAccessor(c, 'V', textures)}
${rowsAccessor(c, 'DO', textures)}
${optional.code}
${elementAccessor('Lse', [1, c.batch, c.headsQ, c.seqQ])}
${scoreSnippet(c)}
${dsSnippet(c)}
void main() {
  ivec3 rc = getOutputCoords();
  int b = rc.x / ${c.headsKV};
  int g = rc.x - b * ${c.headsKV};
  int j = rc.y;
  int col = rc.z;
  ${loadRows('K', 'kr', c.headDim, 'b', 'g', 'j')}
  ${target === 'dk' ? loadRows('V', 'vr', c.headDimV, 'b', 'g', 'j') : ''}
  vec4 result = vec4(0.0);
  ${rowPairLoop(c, `
    vec4 L = vec4(faAtLse(0, b, h, i), faAtLse(0, b, h, i), faAtLse(0, b, h, i + 1), faAtLse(0, b, h, i + 1));
    ${weights}
    if (i + 1 >= ${c.seqQ}) x.zw = vec2(0.0);
    result += w.xxyy * x.xyxy + w.zzww * x.zwzw;`)}
  setOutput(${target === 'dk' ? 'result * faScale' : 'result'});
}`;
  const variables = ['Q', 'K', 'V', 'DO', 'Lse', ...(target === 'dk' ? ['RowTerm'] : []), ...optional.variables];
  return new AttentionProgram(variables, [c.batch * c.headsKV, c.seqK, dim], true, attentionUniforms(c), userCode);
}

export const dkProgram = (c: AttentionConfig, textures: TexShapes) => keyProgram(c, textures, 'dk');
export const dvProgram = (c: AttentionConfig, textures: TexShapes) => keyProgram(c, textures, 'dv');
