// GLSL shared by the webgl split-KV programs (flash_attention_split.ts): reading one key range's
// lse out of the packed [B·Hq, Nq, splits] statistics texture, and the stored-value conventions
// for the merge programs.
import type { AttentionConfig } from '../../src/config';
import type { TexShapes } from './glsl';
import { attentionUniforms, internalAccessor, scoreSnippet } from './glsl';
import type { Uniform } from './program';

/**
 * `vec2 faRangeLse(int bh, int i, int s)`: lse of key range s for query rows (i, i+1) (i even), as
 * stored (see faStore/faLoad in glsl.ts' scoreSnippet, which the caller includes).
 */
export function rangeLseAccessor(rows: number, seqQ: number, splits: number, textures: TexShapes): string {
  return `${internalAccessor('Lse', [rows, seqQ, splits], textures)}
vec2 faRangeLse(int bh, int i, int s) {
  vec4 t = faLoad(faBlockLse(bh, i, s));
  return (s % 2 == 0) ? t.xz : t.yw;
}`;
}

/**
 * FA_INF and the stored-value conventions (faLoad/faStore: −Infinity kept as a sentinel on
 * half-float targets) for the merge programs, which read no attention input: scoreSnippet of the
 * config without its optional inputs, and the uniforms that snippet declares.
 */
export function storedValues(c: AttentionConfig): { code: string; uniforms: Uniform[] } {
  const bare: AttentionConfig = {
    ...c, biasShape: [], maskShape: [], hasKeyLengths: false, alibiShape: [], blockMaskShape: [], blockSize: 0,
    softcap: 0, dropoutRate: 0, windowLeft: -1, windowRight: -1,
  };
  return { code: scoreSnippet(bare), uniforms: attentionUniforms(bare) };
}
