// KVCacheUpdate on the webgpu backend: the new rows are copied into the cache tensor's own
// GPUBuffer with copyBufferToBuffer (one copy per batch, the rows of one batch being contiguous in
// [B, L, H, D]), queued after tfjs' pending work that computes them. No new tensor is made.
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { KVCacheUpdate } from '../../src/kernel_names';
import { cacheWrites } from '../../src/models/kv_cache_writes';
import { webgpuBackendOf } from './flash_attention';
import { flushTfjs, gpuBuffer } from './runtime';

const kvCacheUpdateWebGPU: KernelFunc = ({ inputs, backend: anyBackend, attrs }): TensorInfo[] => {
  const backend = webgpuBackendOf(anyBackend);
  const { cache, rows, writes } = cacheWrites(inputs, attrs);
  const target = gpuBuffer(backend, cache);
  const source = gpuBuffer(backend, rows);
  // A read of the cache may have left a CPU copy of its values behind; the GPU buffer is the truth now.
  const entry: { values: unknown } = backend.tensorMap.get(cache.dataId);
  entry.values = null;
  flushTfjs(backend);
  const encoder = backend.device.createCommandEncoder();
  for (const w of writes) encoder.copyBufferToBuffer(source, w.from * 4, target, w.to * 4, w.length * 4);
  backend.device.queue.submit([encoder.finish()]);
  return [];
};

export const kvCacheUpdateWebGPUConfig: KernelConfig = {
  kernelName: KVCacheUpdate,
  backendName: 'webgpu',
  kernelFunc: kvCacheUpdateWebGPU,
};
