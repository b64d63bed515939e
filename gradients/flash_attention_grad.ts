// The gradient of FlashAttention, recomputation-based as in FlashAttention: only q, k, v, the
// output and the log-sum-exp are saved, and the FlashAttentionGrad kernel recomputes the scores
// tile by tile. A gradient of lse (when the caller used it) folds into the kernel's row term
// D = rowsum(dO ∘ O) − dLse, so it costs nothing extra.
import * as tf from '@tensorflow/tfjs-core';
import type { GradConfig, GradFunc, Tensor } from '@tensorflow/tfjs-core';

type NamedGradientMap = ReturnType<GradFunc>;
import { attentionConfig } from '../src/config';
import { attentionInputNames, gradInputNames, packInputs } from '../src/inputs';
import { FlashAttention, FlashAttentionGrad } from '../src/kernel_names';

export const flashAttentionGradConfig: GradConfig = {
  kernelName: FlashAttention,
  saveAllInputs: true,
  outputsToSave: [true, true],
  gradFunc: (dy, saved, attrs): NamedGradientMap => {
    const config = attentionConfig(attrs);
    const names = attentionInputNames(config);
    const inputs = Object.fromEntries(names.map((name, index) => [name, saved[index]])) as Record<string, Tensor>;
    const [output, lse] = saved.slice(names.length);
    const [dOutput, dLse] = Array.isArray(dy) ? dy : [dy, null];
    const gradInputs = packInputs(gradInputNames(config), {
      ...inputs, output, lse,
      dOutput: dOutput ?? tf.zerosLike(output),
      dLse: dLse ?? tf.zerosLike(lse),
    });
    const [dq, dk, dv, dbias] = tf.engine().runKernel(FlashAttentionGrad, gradInputs, config) as Tensor[];
    const grads: NamedGradientMap = {};
    names.forEach((name, index) => {
      const input = inputs[name];
      const grad = { q: dq, k: dk, v: dv, bias: dbias }[name as string];
      grads[index] = grad ? () => tf.reshape(grad, input.shape) : () => tf.zeros(input.shape);
    });
    return grads;
  },
};
