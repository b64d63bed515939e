// The ablation of issue 6: attention replaced by an identity on V, so that the step time it removes
// is the time attention costs. The FlashAttention kernels of one backend are swapped for kernels
// that return V (and zero lse) forward and pass dOutput through to dV backward, using the backend's
// own Identity and Fill kernels: every other kernel of the step runs unchanged.
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { FlashAttention, FlashAttentionGrad } from '../src/index';
import { attentionConfig, outputShape } from '../src/config';
import { unpackAttentionInputs, unpackGradInputs } from '../src/inputs';

function backendKernel(name: string, backend: string): KernelFunc {
  const kernel = tf.getKernel(name, backend);
  if (!kernel) throw new Error(`the ${backend} backend has no ${name} kernel`);
  return kernel.kernelFunc;
}

export interface Ablation {
  restore(): void;
}

/** Swaps the FlashAttention kernels of `backendName` for identity-on-V until `restore()`. */
export function ablateAttention(backendName: string): Ablation {
  const identity = backendKernel('Identity', backendName);
  const fill = backendKernel('Fill', backendName);
  const saved = [FlashAttention, FlashAttentionGrad].map(name => tf.getKernel(name, backendName));
  const zeros = (backend: object, shape: number[]) =>
    fill({ inputs: {}, backend, attrs: { shape, value: 0, dtype: 'float32' } }) as TensorInfo;
  const pass = (backend: object, x: TensorInfo) => identity({ inputs: { x }, backend, attrs: {} }) as TensorInfo;
  const forward: KernelConfig = {
    kernelName: FlashAttention, backendName,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const config = attentionConfig(attrs);
      const { v } = unpackAttentionInputs(config, inputs);
      if (outputShape(config).join() !== v.shape.join()) throw new Error('ablation: output and V shapes differ');
      return [pass(backend, v), zeros(backend, [config.batch, config.headsQ, config.seqQ])];
    },
  };
  const backward: KernelConfig = {
    kernelName: FlashAttentionGrad, backendName,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const config = attentionConfig(attrs);
      const { q, k, dOutput } = unpackGradInputs(config, inputs);
      if (config.biasShape.length > 0) throw new Error('ablation: attention with a bias is not supported');
      return [zeros(backend, q.shape), zeros(backend, k.shape), pass(backend, dOutput)];
    },
  };
  for (const kernel of [forward, backward]) {
    if (tf.getKernel(kernel.kernelName, backendName)) tf.unregisterKernel(kernel.kernelName, backendName);
    tf.registerKernel(kernel);
  }
  return {
    restore() {
      for (const name of [FlashAttention, FlashAttentionGrad]) tf.unregisterKernel(name, backendName);
      for (const kernel of saved) if (kernel) tf.registerKernel(kernel);
    },
  };
}
