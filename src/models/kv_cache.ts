// A preallocated key/value cache for decoding: per layer, K and V of [B, maxLength, Hkv, D] (the
// op's BSHD layout, so attention reads the cache as it is) and the number of filled positions per
// batch row, which becomes the op's `keyLengths`.
//
// tfjs tensors are immutable to their users, but their storage is the backend's: the
// `KVCacheUpdate` kernel writes a step's new rows into the cache tensor's own storage (cpu: the
// backend's Float32Array; webgpu: its GPUBuffer through copyBufferToBuffer; webgl: its texture,
// drawn into with a scissor box over the new rows, kernels/webgl/kv_cache_update.ts), so a decode
// step costs O(new rows), not a concat that copies the whole growing cache every token. The cache
// tensors are owned here and never handed out beyond a step's attention call, so nobody observes
// them change. On a backend without that kernel (wasm, tensorflow) the write falls back to building
// the updated cache with tfjs ops and replacing the tensor, which copies the cache: correct, not in
// place, and said once.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor4D } from '@tensorflow/tfjs-core';
import { KVCacheUpdate } from '../kernel_names';
import { warnOnce } from '../warn';

export class KVCache {
  readonly batch: number;
  readonly maxLength: number;
  readonly keys: Tensor4D[];
  readonly values: Tensor4D[];
  /** Filled positions per batch row. */
  readonly lengths: number[];

  constructor(o: { layers: number; batch: number; maxLength: number; heads: number; headDim: number }) {
    this.batch = o.batch;
    this.maxLength = o.maxLength;
    const shape: [number, number, number, number] = [o.batch, o.maxLength, o.heads, o.headDim];
    this.keys = Array.from({ length: o.layers }, () => tf.zeros(shape) as Tensor4D);
    this.values = Array.from({ length: o.layers }, () => tf.zeros(shape) as Tensor4D);
    this.lengths = new Array<number>(o.batch).fill(0);
  }

  /**
   * Writes the new keys and values of `layer` at each batch row's current length (lengths advance
   * in `advance`): heads [firstHeads[0], + H) of k and [firstHeads[1], + H) of v, both [B, T, S, D]
   * (k and v may be one fused q|k|v tensor [B, T, 3H, D] with firstHeads [H, 2H]).
   */
  write(layer: number, k: Tensor, v: Tensor, firstHeads: [number, number] = [0, 0]): void {
    this.keys[layer] = writeRows(this.keys[layer], k, firstHeads[0], this.lengths);
    this.values[layer] = writeRows(this.values[layer], v, firstHeads[1], this.lengths);
  }

  /** Marks `counts[b]` more positions of row b as filled (after every layer has written them). */
  advance(counts: number[]): void {
    counts.forEach((n, b) => { this.lengths[b] += n; });
  }

  /** keyLengths for attention over the cache: the filled positions of each row. */
  keyLengths(): Tensor {
    return tf.tensor1d(this.lengths, 'int32');
  }

  dispose(): void {
    tf.dispose([...this.keys, ...this.values]);
  }
}

/**
 * Heads [firstHead, firstHead + H) of rows [B, T, S, D] into cache [B, L, H, D] at positions[b];
 * returns the cache (the same tensor when in place).
 */
function writeRows(cache: Tensor4D, rows: Tensor, firstHead: number, positions: number[]): Tensor4D {
  const [B, L, H] = cache.shape;
  const T = rows.shape[1] as number;
  if (positions.some(p => p + T > L)) {
    throw new Error(`KVCache: ${T} new position(s) after [${positions.join(', ')}] exceed the cache length ${L}`);
  }
  if (tf.getKernel(KVCacheUpdate, tf.getBackend())) {
    tf.engine().runKernel(KVCacheUpdate, { cache, rows }, { positions: [...positions], firstHead });
    return cache;
  }
  warnOnce(`kv-cache-${tf.getBackend()}`, `KVCache: no in-place cache write on the '${tf.getBackend()}' backend; ` +
    'each step rebuilds the cache tensors (a copy of the cache per token).');
  // Kept: the write may run inside a caller's tidy, and the cache outlives it.
  const updated = tf.keep(tf.tidy(() => tf.stack(Array.from({ length: B }, (_, b) => {
    const row = tf.squeeze(tf.slice(cache, [b, 0, 0, 0], [1, L, -1, -1]), [0]);
    const fresh = tf.squeeze(tf.slice(rows, [b, 0, firstHead, 0], [1, T, H, -1]), [0]);
    const p = positions[b];
    const parts = [tf.slice(row, [0, 0, 0], [p, -1, -1]), fresh, tf.slice(row, [p + T, 0, 0], [L - p - T, -1, -1])];
    return tf.concat(parts, 0);
  })) as Tensor4D));
  cache.dispose();
  return updated;
}
