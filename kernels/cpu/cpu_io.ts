// What the cpu kernels need from tfjs: the cpu backend behind the untyped `backend` argument, the
// AttentionConfig behind the untyped `attrs`, and the values behind the kernels' TensorInfo inputs.
import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import type { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type { AttentionConfig } from '../../src/config';

/** Values of a float32 tensor, or of a bool (Uint8Array) / int32 tensor read as numbers. */
export type Numbers = Float32Array | Int32Array | Uint8Array;

function isCpuBackend(backend: object): backend is MathBackendCPU {
  return 'readSync' in backend && 'makeTensorInfo' in backend && 'data' in backend;
}

export function cpuBackend(backend: object): MathBackendCPU {
  if (!isCpuBackend(backend)) throw new Error('flashAttention: the cpu kernel was given a backend that is not tfjs-backend-cpu');
  return backend;
}

const NUMBER_FIELDS = [
  'batch', 'headsQ', 'headsKV', 'seqQ', 'seqK', 'headDim', 'headDimV', 'scale', 'windowLeft', 'windowRight',
  'softcap', 'dropoutRate', 'dropoutSeed', 'blockSize',
] as const;
const SHAPE_FIELDS = ['biasShape', 'maskShape', 'alibiShape', 'blockMaskShape'] as const;

function isAttentionConfig(attrs: unknown): attrs is AttentionConfig {
  if (typeof attrs !== 'object' || attrs === null) return false;
  const a = attrs as Record<string, unknown>;
  return NUMBER_FIELDS.every(name => typeof a[name] === 'number') &&
    SHAPE_FIELDS.every(name => Array.isArray(a[name])) &&
    typeof a.hasKeyLengths === 'boolean' && (a.layout === 'BHSD' || a.layout === 'BSHD') &&
    (a.precision === 'float32' || a.precision === 'float16');
}

/** The kernels' attrs are the AttentionConfig the op built; anything else is a caller's bug. */
export function attentionConfig(attrs: NamedAttrMap | undefined): AttentionConfig {
  if (!isAttentionConfig(attrs)) throw new Error('flashAttention: kernel attributes are not an AttentionConfig');
  return attrs;
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
