// The `webgl` FlashAttentionGrad kernel, recomputation-based like FlashAttention's backward: from
// q, k, v, the output, lse and the upstream gradients it computes the row term D = rowsum(dO ∘ O) −
// dLse, then per key block of `blockKeys` keys (the forward's tiling across textures):
//   probs: P̃ = P·Z for the block                        [B·Hq, Nq, blockKeys]
//   ds:    dS = P ∘ (dP·Z − D) for the block            [B·Hq, Nq, blockKeys]
//   dq:    dQ ← dQ + scale · dS · K_block                [B·Hq, Nq, D]
//   dk:    dK_block = scale · Σ_group dSᵀ · Q            [B·Hkv, Nk, D]
//   dv:    dV_block = Σ_group P̃ᵀ · dO                    [B·Hkv, Nk, Dv]
// P̃ comes first and dS reads P from it when they are equal (no dropout, no softcap), so the scores
// are recomputed once per block (twice otherwise); each product is a 2×2-blocked matrix product;
// memory is linear in N. (A first version gave each fragment of dQ, dK and dV its own loop over all
// keys or rows recomputing the scores, which repeats the score work once per pair of output columns:
// 10–20× slower than naive tfjs attention on SwiftShader; see bench/RESULTS.md.) dBias, when a bias
// was given, loops over the (b, h, i, j) each bias element stands for.
// Short sequences (Nk ≤ `togetherKeys`, at most two blocks, all P̃ and dS within one block texture's
// budget) keep both blocks' P̃ and dS and run dq, dk and dv once over both: three draws fewer, and
// every dk/dv fragment works, where per block half of them only copy the other block's keys. On the
// H100 forward+backward over naive attention went from 0.96× to 1.03× at N = 256, 1.00× to 1.01× at
// 512 and 1.06× to 1.07× at 1024 (per block vs together, same rounds, 19:06 UTC): small N is where
// draws and under-filled programs weigh most. Memory there is at most one more block texture's
// worth; longer sequences keep one block's textures at a time.
import { env } from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { unpackGradInputs } from '../../src/inputs';
import { FlashAttentionGrad } from '../../src/kernel_names';
import { attentionConfig } from '../../src/config';
import { dbiasProgram } from './dbias_program';
import { dkdvProgram } from './dkdv_program';
import { dqProgram } from './dq_program';
import { dsProgram, dsReusesProbs } from './ds_program';
import { BLOCK_ELEMENTS, blockKeys, blockVisible, checkWebGL2, optionalInputs, packedInputs, toUserLayout } from './flash_attention';
import { probsProgram } from './probs_program';
import { isWebGLBackend, run, texShapeOf, view } from './program';
import { rowTermProgram } from './row_term_program';

/**
 * Most keys for which the backward keeps all (at most two) key blocks' P̃ and dS alive at once and
 * runs dQ, dK and dV in one draw each (see the header).
 */
const TOGETHER_KEYS = 1024;
let togetherKeys = TOGETHER_KEYS;

/** Tuning knob for benchmarks: the most keys for the together path above (0: never; no argument: the default). */
export function setWebGLTogetherKeys(keys = TOGETHER_KEYS): void {
  togetherKeys = keys;
}

const flashAttentionGradWebGL: KernelFunc = ({ inputs, backend, attrs }) => {
  if (!isWebGLBackend(backend)) throw new Error('flashAttention: the webgl kernel needs the webgl backend');
  checkWebGL2();
  const c = attentionConfig(attrs);
  const x = unpackGradInputs(c, inputs);
  const optional = optionalInputs(c, x);
  const keys = blockKeys(c, env().getNumber('WEBGL_MAX_TEXTURE_SIZE'));
  const packed = packedInputs(backend, { Q: x.q, K: x.k, V: x.v, O: x.output, DO: x.dOutput });
  const { Q, K, V, O, DO } = packed.info;
  const textures = packed.textures;
  const lse = view(x.lse, [1, c.batch, c.headsQ, c.seqQ]);
  const rowTerm = run(backend, rowTermProgram(c, textures), [O, DO, view(x.dLse, [1, c.batch, c.headsQ, c.seqQ])]);

  // Block 0 always runs: it also writes the zeros of keys and rows that nothing reaches.
  const starts: number[] = [];
  for (let start = 0; start < c.seqK; start += keys) if (start === 0 || blockVisible(c, start, start + keys)) starts.push(start);
  // Short sequences keep every block's P̃ and dS and run dQ, dK and dV once over all of them (fewer
  // draws, and dK/dV fragments all working instead of half of them copying); longer ones run them
  // per block, chained, so that only one block's textures are alive at a time.
  const groups = starts.length <= 2 && c.seqK <= togetherKeys && 2 * c.batch * c.headsQ * c.seqQ * c.seqK <= BLOCK_ELEMENTS
    ? [starts] : starts.map(start => [start]);
  let dq: TensorInfo | undefined, dk: TensorInfo | undefined, dv: TensorInfo | undefined;
  for (const group of groups) {
    const probs: TensorInfo[] = [], ds: TensorInfo[] = [];
    for (const [n, start] of group.entries()) {
      probs.push(run(backend, probsProgram(c, textures, start, keys), [Q, K, lse, ...optional]));
      textures.Probs = textures[`Probs${n}`] = texShapeOf(backend, probs[n]);
      ds.push(run(backend, dsProgram(c, textures, start, keys),
        dsReusesProbs(c) ? [probs[n], V, DO, rowTerm, ...optional] : [Q, K, V, DO, lse, rowTerm, ...optional]));
      textures[`Ds${n}`] = texShapeOf(backend, ds[n]);
    }
    const chain = (previous: TensorInfo | undefined, make: (first: boolean) => TensorInfo): TensorInfo => {
      if (previous) textures.Previous = texShapeOf(backend, previous);
      const next = make(!previous);
      if (previous) backend.disposeIntermediateTensorInfo(previous);
      return next;
    };
    dq = chain(dq, first => run(backend, dqProgram(c, textures, group, keys, first),
      [...ds, K, ...(dq ? [dq] : []), ...optional]));
    dk = chain(dk, first => run(backend, dkdvProgram(c, textures, 'dk', group, keys, first),
      [...ds, Q, ...(dk ? [dk] : []), ...optional]));
    dv = chain(dv, first => run(backend, dkdvProgram(c, textures, 'dv', group, keys, first),
      [...probs, DO, ...(dv ? [dv] : []), ...optional]));
    for (const t of [...ds, ...probs]) backend.disposeIntermediateTensorInfo(t);
  }
  if (!dq || !dk || !dv) throw new Error('flashAttention (webgl): no key block ran');
  const dbias = c.biasShape.length
    ? [run(backend, dbiasProgram(c, textures), [Q, K, V, DO, lse, rowTerm, ...optional])]
    : [];
  backend.disposeIntermediateTensorInfo(rowTerm);
  packed.release();
  return [
    toUserLayout(backend, c, dq, c.headsQ, c.seqQ, c.headDim),
    toUserLayout(backend, c, dk, c.headsKV, c.seqK, c.headDim),
    toUserLayout(backend, c, dv, c.headsKV, c.seqK, c.headDimV),
    ...dbias,
  ];
};

export const flashAttentionGradWebGLConfig: KernelConfig = {
  kernelName: FlashAttentionGrad,
  backendName: 'webgl',
  kernelFunc: flashAttentionGradWebGL,
};
