// KVCacheUpdate on the cpu backend: the cache's values are the backend's own Float32Array, so the
// new rows are copied into it with TypedArray.set: no new tensor, no copy of the rest of the cache.
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { KVCacheUpdate } from '../../src/kernel_names';
import { cacheWrites } from '../../src/models/kv_cache_writes';
import { cpuBackend, readFloats } from './cpu_io';

const kvCacheUpdateCpu: KernelFunc = ({ inputs, backend, attrs }): TensorInfo[] => {
  const cpu = cpuBackend(backend);
  const { cache, rows, writes } = cacheWrites(inputs, attrs);
  const target = readFloats(cpu, cache);
  const source = readFloats(cpu, rows);
  for (const w of writes) {
    target.set(source.subarray(w.from, w.from + w.length), w.to);
  }
  return [];
};

export const kvCacheUpdateCpuConfig: KernelConfig = {
  kernelName: KVCacheUpdate,
  backendName: 'cpu',
  kernelFunc: kvCacheUpdateCpu,
};
