// The `webgl` FlashAttention kernel: WebGL2 fragment programs through tfjs' runWebGLProgram.
//
// Algorithm (tiling across textures; chosen by measurement, see bench/RESULTS.md):
//   1. rowStats: per query row pair, the log-sum-exp over all visible keys, online in registers.
//   2. for each key block of `blockKeys` keys:
//        probs:      P̃ = exp(s − lse)·Z for the block        [B·Hq, Nq, blockKeys] texture
//        accumulate: O += P̃ · V_block                          [B·Hq, Nq, Dv]
// A fragment writes one RGBA texel, so a fragment that owned a (row, 4 columns) slice of O and looped
// over all keys itself would recompute every score Dv/4 times (and fetch K as often); materializing
// one key block of probabilities at a time computes each score once per pass and keeps memory at
// O(Nq·blockKeys + Nq·Dv): linear in N, never an Nq × Nk texture. Normalizing by the final lse in
// step 2 (two-pass softmax) instead of rescaling a running sum keeps every stored value in [0, 1/(1−rate)]
// (P̃) or a convex combination of V (O): nothing overflows half-float render targets.
import { env } from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import type { AttentionConfig } from '../../src/config';
import { unpackAttentionInputs } from '../../src/inputs';
import { FlashAttention } from '../../src/kernel_names';
import { accumulateProgram } from './accumulate_program';
import { attentionConfig } from './attrs';
import { optionalShapes } from './glsl';
import { lseProgram, toBSHDProgram } from './layout_programs';
import { probsProgram } from './probs_program';
import { isWebGLBackend, run, view } from './program';
import { rowStatsProgram } from './row_stats_program';

/** Keys per block of the forward's probability texture (measured: bench/RESULTS.md). */
export const BLOCK_KEYS = 256;

/**
 * The key block size: BLOCK_KEYS, fewer when the keys are fewer, and fewer when a
 * [B·Hq, Nq, blockKeys] packed texture would exceed MAX_TEXTURE_SIZE² texels.
 */
export function blockKeys(c: AttentionConfig, maxTextureSize: number): number {
  const keys = Math.min(BLOCK_KEYS, c.seqK + (c.seqK % 2));
  const rowTexels = c.batch * c.headsQ * Math.ceil(c.seqQ / 2);
  const fit = 2 * Math.floor(maxTextureSize * maxTextureSize / rowTexels);
  return Math.max(2, Math.min(keys, fit));
}

/** Whether some query row may see a key in [start, end) (window bounds only). */
function blockVisible(c: AttentionConfig, start: number, end: number): boolean {
  const offset = c.seqK - c.seqQ;
  if (c.windowRight >= 0 && start > c.seqQ - 1 + offset + c.windowRight) return false;
  if (c.windowLeft >= 0 && end - 1 < offset - c.windowLeft) return false;
  return true;
}

/** The user's layout of a [B·heads, seq, dim] internal result. */
export function toUserLayout(backend: MathBackendWebGL, c: AttentionConfig, x: TensorInfo,
  heads: number, seq: number, dim: number): TensorInfo {
  if (c.layout === 'BHSD') return view(x, [c.batch, heads, seq, dim]);
  const out = run(backend, toBSHDProgram(c, heads, seq, dim), [x]);
  backend.disposeIntermediateTensorInfo(x);
  return out;
}

export function optionalInputs(c: AttentionConfig, inputs: Partial<Record<string, TensorInfo>>): TensorInfo[] {
  const present = [inputs.bias, inputs.mask, inputs.keyLengths, inputs.alibiSlopes, inputs.blockMask]
    .filter((t): t is TensorInfo => t !== undefined);
  const shapes = optionalShapes(c);
  return present.map((t, n) => view(t, shapes[n]));
}

const flashAttentionWebGL: KernelFunc = ({ inputs, backend, attrs }) => {
  if (!isWebGLBackend(backend)) throw new Error('flashAttention: the webgl kernel needs the webgl backend');
  const c = attentionConfig(attrs);
  const x = unpackAttentionInputs(c, inputs);
  const optional = optionalInputs(c, x);
  const keys = blockKeys(c, env().getNumber('WEBGL_MAX_TEXTURE_SIZE'));

  const stats = run(backend, rowStatsProgram(c), [x.q, x.k, ...optional]);
  // Block 0 always runs (it also initializes O, e.g. to zeros for rows that see no key).
  const accumulate = (start: number, previous?: TensorInfo): TensorInfo => {
    const probs = run(backend, probsProgram(c, start, keys), [x.q, x.k, stats, ...optional]);
    const next = run(backend, accumulateProgram(c, start, keys, previous === undefined),
      [probs, x.v, ...(previous ? [previous] : []), ...optional]);
    backend.disposeIntermediateTensorInfo(probs);
    if (previous) backend.disposeIntermediateTensorInfo(previous);
    return next;
  };
  let sum = accumulate(0);
  for (let start = keys; start < c.seqK; start += keys) {
    if (blockVisible(c, start, start + keys)) sum = accumulate(start, sum);
  }
  const lse = run(backend, lseProgram(c), [stats]);
  backend.disposeIntermediateTensorInfo(stats);
  return [toUserLayout(backend, c, sum, c.headsQ, c.seqQ, c.headDimV), lse];
};

export const flashAttentionWebGLConfig: KernelConfig = {
  kernelName: FlashAttention,
  backendName: 'webgl',
  kernelFunc: flashAttentionWebGL,
};
