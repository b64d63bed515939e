// The element ranges a KVCacheUpdate writes, derived once for every backend's kernel.
//
// The new rows come as rows [B, T, S, D] of which the S ≥ H heads [firstHead, firstHead + H) are
// written: a decode step passes its fused q|k|v projection [B, T, 3H, D] as it is, with firstHead
// H for the keys and 2H for the values, so neither needs a slice kernel of its own.
import type { NamedAttrMap, NamedTensorInfoMap, TensorInfo } from '@tensorflow/tfjs-core';

export interface CacheWrite {
  /** Element offsets into rows and cache, and the element count of one contiguous range. */
  from: number;
  to: number;
  length: number;
}

export interface CacheWritePlan {
  cache: TensorInfo;
  rows: TensorInfo;
  /** Where each batch row's new positions start in the cache. */
  positions: number[];
  /** The first of the H heads written, among the S heads of a (batch, new position) of rows. */
  firstHead: number;
  /** Contiguous ranges: one per batch row when S = H, else one per (batch row, new position). */
  writes: CacheWrite[];
}

const isIndex = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0;

/** The kernel's inputs and attrs ({ positions, firstHead? }), checked, and the ranges to copy. */
export function cacheWrites(inputs: NamedTensorInfoMap, attrs: NamedAttrMap | undefined): CacheWritePlan {
  const { cache, rows } = inputs;
  if (!cache || !rows) throw new Error('KVCacheUpdate: inputs cache and rows are required');
  const positions = attrs?.positions;
  const firstHead = attrs?.firstHead ?? 0;
  const [B, L, H, D] = cache.shape;
  const [rb, T, S, rd] = rows.shape;
  if (cache.shape.length !== 4 || rows.shape.length !== 4 || rb !== B || rd !== D || !isIndex(firstHead) ||
      firstHead + H > S) {
    throw new Error(`KVCacheUpdate: heads [${firstHead}, ${firstHead}+${H}) of rows [${rows.shape.join(', ')}] ` +
      `do not fit cache [${cache.shape.join(', ')}]`);
  }
  if (cache.dtype !== 'float32' || rows.dtype !== 'float32') throw new Error('KVCacheUpdate: cache and rows must be float32');
  if (!Array.isArray(positions) || positions.length !== B || !positions.every(p => isIndex(p) && p + T <= L)) {
    throw new Error(`KVCacheUpdate: positions must be ${B} integers in [0, ${L - T}], got ${JSON.stringify(positions)}`);
  }
  const at = positions as number[];
  const row = H * D;
  const writes: CacheWrite[] = S === H
    ? at.map((p, b) => ({ from: b * T * row, to: (b * L + p) * row, length: T * row }))
    : at.flatMap((p, b) => Array.from({ length: T }, (_, t) =>
      ({ from: ((b * T + t) * S + firstHead) * D, to: (b * L + p + t) * row, length: row })));
  return { cache, rows, positions: at, firstHead, writes };
}
