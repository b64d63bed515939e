// Backward: dBias = ∂loss/∂s summed over the dimensions the bias is broadcast along, in the bias'
// own (rank-4 padded) shape. One fragment per bias element loops over the (b, h, i, j) it stands
// for, recomputing each 2×2 block of dS it touches from q, k, v, dO and lse: no Nq × Nk tensor
// exists beyond the bias itself.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, blockDot, elementAccessor, optionalAccessors, rowsAccessor, scoreSnippet } from './glsl';
import { dsSnippet } from './ds_program';
import type { TexShapes } from './glsl';
import { AttentionProgram } from './program';

export function dbiasProgram(c: AttentionConfig, textures: TexShapes): AttentionProgram {
  const optional = optionalAccessors(c);
  const [sb, sh, si, sj] = c.biasShape;
  const range = (size: number, coord: string, extent: number, step: number) => size === 1
    ? `int faLo${coord} = 0; int faHi${coord} = ${extent};`
    : `int faLo${coord} = rc.${coord} - rc.${coord} % ${step}; int faHi${coord} = faLo${coord} + 1;`;
  const select = (size: number, coord: string) => size === 1 ? 'vec2(1.0)'
    : `(rc.${coord} % 2 == 0 ? vec2(1.0, 0.0) : vec2(0.0, 1.0))`;
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
  ivec4 rc = getOutputCoords();
  ${range(sb, 'x', c.batch, 1)}
  ${range(sh, 'y', c.headsQ, 1)}
  ${range(si, 'z', c.seqQ, 2)}
  ${range(sj, 'w', c.seqK, 2)}
  vec2 rows = ${select(si, 'z')};
  vec2 keys = ${select(sj, 'w')};
  vec4 weight = vec4(rows.x * keys.x, rows.x * keys.y, rows.y * keys.x, rows.y * keys.y);
  float result = 0.0;
  for (int b = faLox; b < faHix; b++) {
    for (int h = faLoy; h < faHiy; h++) {
      int g = h / ${c.headsQ / c.headsKV};
      for (int i = faLoz; i < faHiz; i += 2) {
        vec4 L = vec2(faAtLse(0, b, h, i), faAtLse(0, b, h, i + 1)).xxyy;
        vec4 rowTerm = getRowTerm(b * ${c.headsQ} + h, i, 0).xxzz;
        for (int j = faLow; j < faHiw; j += 2) {
          vec4 qk = vec4(0.0);
          ${blockDot('qk', 'Q', 'h', 'i', 'K', 'g', 'j', c.headDim)}
          vec4 dov = vec4(0.0);
          ${blockDot('dov', 'DO', 'h', 'i', 'V', 'g', 'j', c.headDimV)}
          vec4 ds = faDsOfScore(faCapped4(qk), dov, L, rowTerm, b, h, i, j);
          result += dot(mix(ds, vec4(0.0), equal(weight, vec4(0.0))), vec4(1.0));
        }
      }
    }
  }
  setOutput(result);
}`;
  return new AttentionProgram(['Q', 'K', 'V', 'DO', 'Lse', 'RowTerm', ...optional.variables], c.biasShape, false,
    attentionUniforms(c), userCode);
}
