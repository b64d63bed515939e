// KVCacheUpdate on the webgpu backend: the new rows are copied into the cache tensor's own
// GPUBuffer with copyBufferToBuffer (one copy per contiguous range, kv_cache_writes.ts). No new
// tensor is made.
//
// The copies are recorded in tfjs' own command encoder, after the pending work that computes the
// rows and before whatever tfjs records next (the attention that reads the cache), and go to the
// queue with tfjs' next submit. A decode step writes the keys and values of every layer: a
// submit of their own (plus the flush of tfjs' encoder that must precede it) cost two queue
// submissions per write, the largest share of the step's submissions. tfjs 4.22 keeps the encoder
// in a private field; its public `ensureCommandEncoderReady` / `endComputePassEncoder` open it and
// close the open compute pass (a copy may not be recorded inside one), as tfjs' own uploads do.
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { KVCacheUpdate } from '../../src/kernel_names';
import { cacheWrites } from '../../src/models/kv_cache_writes';
import { webgpuBackendOf } from './flash_attention';
import { gpuBuffer } from './runtime';

/** tfjs' open command encoder (made if none is open), with no compute pass open on it. */
function tfjsEncoder(backend: WebGPUBackend): GPUCommandEncoder {
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder();
  const encoder: unknown = backend['commandEncoder'];
  if (!(encoder instanceof GPUCommandEncoder)) throw new Error('KVCacheUpdate: tfjs webgpu has no open command encoder');
  return encoder;
}

const kvCacheUpdateWebGPU: KernelFunc = ({ inputs, backend: anyBackend, attrs }): TensorInfo[] => {
  const backend = webgpuBackendOf(anyBackend);
  const { cache, rows, writes } = cacheWrites(inputs, attrs);
  // Uploads first: an upload records its own copy in the encoder.
  const target = gpuBuffer(backend, cache);
  const source = gpuBuffer(backend, rows);
  // A read of the cache may have left a CPU copy of its values behind; the GPU buffer is the truth now.
  const entry: { values: unknown } = backend.tensorMap.get(cache.dataId);
  entry.values = null;
  const encoder = tfjsEncoder(backend);
  for (const w of writes) encoder.copyBufferToBuffer(source, w.from * 4, target, w.to * 4, w.length * 4);
  return [];
};

export const kvCacheUpdateWebGPUConfig: KernelConfig = {
  kernelName: KVCacheUpdate,
  backendName: 'webgpu',
  kernelFunc: kvCacheUpdateWebGPU,
};
