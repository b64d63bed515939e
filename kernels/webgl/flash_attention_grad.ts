// The `webgl` FlashAttentionGrad kernel: recomputation-based like FlashAttention's backward. From
// q, k, v, the output, lse and the upstream gradients it computes the row term D, then dQ (looping
// over keys), dK and dV (looping over the query rows of each KV head's group, so GQA needs no
// atomics) and dBias, each a fragment program that recomputes its scores from lse. Nothing of size
// Nq × Nk is allocated (beyond a full-size bias' own gradient).
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { unpackGradInputs } from '../../src/inputs';
import { FlashAttentionGrad } from '../../src/kernel_names';
import { attentionConfig } from './attrs';
import { dbiasProgram } from './dbias_program';
import { dkProgram, dvProgram } from './dkdv_programs';
import { dqProgram } from './dq_program';
import { optionalInputs, packedInputs, toUserLayout } from './flash_attention';
import { isWebGLBackend, run, view } from './program';
import { rowTermProgram } from './row_term_program';

const flashAttentionGradWebGL: KernelFunc = ({ inputs, backend, attrs }) => {
  if (!isWebGLBackend(backend)) throw new Error('flashAttention: the webgl kernel needs the webgl backend');
  const c = attentionConfig(attrs);
  const x = unpackGradInputs(c, inputs);
  const optional = optionalInputs(c, x);
  const rowView = (t: TensorInfo) => view(t, [1, c.batch, c.headsQ, c.seqQ]);
  const packed = packedInputs(backend, { Q: x.q, K: x.k, V: x.v, O: x.output, DO: x.dOutput });
  const { Q, K, V, O, DO } = packed.info;
  const textures = packed.textures;
  const rowTerm = run(backend, rowTermProgram(c, textures), [O, DO, rowView(x.dLse)]);
  const common = [Q, K, V, DO, rowView(x.lse)];
  const dq = run(backend, dqProgram(c, textures), [...common, rowTerm, ...optional]);
  const dk = run(backend, dkProgram(c, textures), [...common, rowTerm, ...optional]);
  const dv = run(backend, dvProgram(c, textures), [...common, ...optional]);
  const dbias = c.biasShape.length ? [run(backend, dbiasProgram(c, textures), [...common, rowTerm, ...optional])] : [];
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
