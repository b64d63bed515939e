// The element ranges a KVCacheUpdate writes, derived once for every backend's kernel.
import type { NamedAttrMap, NamedTensorInfoMap, TensorInfo } from '@tensorflow/tfjs-core';

export interface CacheWrite {
  /** Element offsets into rows and cache, and the element count of one batch's rows. */
  from: number;
  to: number;
  length: number;
}

/** The kernel's inputs, checked, and its writes: rows[b] (T·H·D contiguous elements) to cache[b, positions[b]]. */
export function cacheWrites(inputs: NamedTensorInfoMap, attrs: NamedAttrMap | undefined):
    { cache: TensorInfo; rows: TensorInfo; writes: CacheWrite[] } {
  const { cache, rows } = inputs;
  if (!cache || !rows) throw new Error('KVCacheUpdate: inputs cache and rows are required');
  const positions = attrs?.positions;
  const [B, L, H, D] = cache.shape;
  const [rb, T, rh, rd] = rows.shape;
  if (cache.shape.length !== 4 || rows.shape.length !== 4 || rb !== B || rh !== H || rd !== D) {
    throw new Error(`KVCacheUpdate: rows [${rows.shape.join(', ')}] do not fit cache [${cache.shape.join(', ')}]`);
  }
  if (cache.dtype !== 'float32' || rows.dtype !== 'float32') throw new Error('KVCacheUpdate: cache and rows must be float32');
  if (!Array.isArray(positions) || positions.length !== B ||
      !positions.every(p => typeof p === 'number' && Number.isInteger(p) && p >= 0 && p + T <= L)) {
    throw new Error(`KVCacheUpdate: positions must be ${B} integers in [0, ${L - T}], got ${JSON.stringify(positions)}`);
  }
  const row = H * D;
  const writes = positions.map((p, b) => ({ from: b * T * row, to: (b * L + (p as number)) * row, length: T * row }));
  return { cache, rows, writes };
}
