// What the cpu kernels need from tfjs: the cpu backend behind the untyped `backend` argument and
// the values behind the kernels' TensorInfo inputs.
import type { TensorInfo } from '@tensorflow/tfjs-core';
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';

/** Values of a float32 tensor, or of a bool (Uint8Array) / int32 tensor read as numbers. */
export type Numbers = Float32Array | Int32Array | Uint8Array;

function isCpuBackend(backend: object): backend is MathBackendCPU {
  return 'readSync' in backend && 'makeTensorInfo' in backend && 'data' in backend;
}

export function cpuBackend(backend: object): MathBackendCPU {
  if (!isCpuBackend(backend)) throw new Error('flashAttention: the cpu kernel was given a backend that is not tfjs-backend-cpu');
  return backend;
}

export function readNumbers(backend: MathBackendCPU, info: TensorInfo): Numbers {
  const values = backend.readSync(info.dataId);
  if (values instanceof Float32Array || values instanceof Int32Array || values instanceof Uint8Array) return values;
  throw new Error(`flashAttention: cpu kernel input of dtype ${info.dtype} is not numeric`);
}

export function readFloats(backend: MathBackendCPU, info: TensorInfo): Float32Array {
  const values = backend.readSync(info.dataId);
  if (values instanceof Float32Array) return values;
  throw new Error(`flashAttention: cpu kernel expected a float32 input, got dtype ${info.dtype}`);
}
