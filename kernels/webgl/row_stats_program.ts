// Pass 1 of the forward: each row's log-sum-exp over all its visible keys, with an online max/sum
// in registers. One fragment per query row pair (i, i+1); the texel written is
// (lse_i, lse_i, lse_{i+1}, lse_{i+1}) of a packed [B·Hq, Nq, 2] tensor. The rows' q stays in
// registers and each K texel fetched serves two keys of both rows.
import type { AttentionConfig } from '../../src/config';
import { attentionUniforms, decodeRow, dotRows, keyPairLoop, loadRows, optionalAccessors, rowsAccessor, scoreSnippet } from './glsl';
import { AttentionProgram } from './program';

export function rowStatsProgram(c: AttentionConfig): AttentionProgram {
  const optional = optionalAccessors(c);
  const userCode = `
${rowsAccessor(c, 'Q')}
${rowsAccessor(c, 'K')}
${optional.code}
${scoreSnippet(c)}
void faOnline(inout float m, inout float l, float sa, float sb) {
  float mNew = max(m, max(sa, sb));
  if (mNew == -FA_INF) return;
  l = l * exp(m - mNew) + exp(sa - mNew) + exp(sb - mNew);
  m = mNew;
}
float faLse(float m, float l) {
  return (m == -FA_INF || m == FA_INF) ? m : m + log(l);
}
void main() {
  ivec3 rc = getOutputCoords();
  ${decodeRow(c, 'rc.x')}
  int i = rc.y;
  ${loadRows('Q', 'qr', c.headDim, 'b', 'h', 'i')}
  float m0 = -FA_INF, l0 = 0.0, m1 = -FA_INF, l1 = 0.0;
  ${keyPairLoop(c, '0', `${c.seqK}`, `
    vec4 dots = vec4(0.0);
    ${dotRows('dots', 'qr', 'K', c.headDim, 'b', 'g', 'j')}
    vec4 s = faScore4(faCapped4(dots), b, h, i, j);
    faOnline(m0, l0, s.x, s.y);
    faOnline(m1, l1, s.z, s.w);`)}
  float lse0 = faLse(m0, l0), lse1 = faLse(m1, l1);
  setOutput(vec4(lse0, lse0, lse1, lse1));
}`;
  return new AttentionProgram(['Q', 'K', ...optional.variables], [c.batch * c.headsQ, c.seqQ, 2], true,
    attentionUniforms(c), userCode);
}
