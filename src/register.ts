// Registers every kernel and the gradient with tfjs' registries. Kernels are keyed by backend
// name, so registering for a backend package that is not loaded costs nothing.
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig } from '@tensorflow/tfjs-core';
import { flashAttentionGradConfig } from '../gradients/flash_attention_grad';
import { flashAttentionCpuConfig } from '../kernels/cpu/flash_attention';
import { flashAttentionGradCpuConfig } from '../kernels/cpu/flash_attention_grad';
import { kvCacheUpdateCpuConfig } from '../kernels/cpu/kv_cache_update';
import { flashAttentionWebGLConfig } from '../kernels/webgl/flash_attention';
import { flashAttentionGradWebGLConfig } from '../kernels/webgl/flash_attention_grad';
import { kvCacheUpdateWebGLConfig } from '../kernels/webgl/kv_cache_update';
import { flashAttentionWebGPUConfig } from '../kernels/webgpu/flash_attention';
import { flashAttentionGradWebGPUConfig } from '../kernels/webgpu/flash_attention_grad';
import { kvCacheUpdateWebGPUConfig } from '../kernels/webgpu/kv_cache_update';

const KERNELS: KernelConfig[] = [
  flashAttentionCpuConfig,
  flashAttentionGradCpuConfig,
  flashAttentionWebGLConfig,
  flashAttentionGradWebGLConfig,
  flashAttentionWebGPUConfig,
  flashAttentionGradWebGPUConfig,
  kvCacheUpdateCpuConfig,
  kvCacheUpdateWebGPUConfig,
  kvCacheUpdateWebGLConfig,
];

let registered = false;

export function registerFlashAttention(): void {
  if (registered) return;
  registered = true;
  for (const kernel of KERNELS) {
    if (!tf.getKernel(kernel.kernelName, kernel.backendName)) tf.registerKernel(kernel);
  }
  if (!tf.getGradient(flashAttentionGradConfig.kernelName)) tf.registerGradient(flashAttentionGradConfig);
}
