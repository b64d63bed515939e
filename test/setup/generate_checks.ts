// The KV-cache generation checks shared by the cpu and webgpu-in-Node test files: the in-place
// cache write, cached logits against recomputing the whole prefix (prompts of different lengths in
// one batch, so keyLengths matter), greedy generation against a cacheless greedy loop, and leaks.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor2D } from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { Gpt2Decoder, KVCache, KVCacheUpdate, generate, gpt2, recomputeLogits } from '../../src/index';
import { splitKvTuning } from '../../src/split_kv';

export function tinyModel() {
  return gpt2({ preset: 'tiny', vocabSize: 61, dropout: 0, seed: 3, name: 'gen_tiny' });
}

async function maxDiff(a: tf.Tensor, b: tf.Tensor): Promise<{ diff: number; scale: number }> {
  const [x, y] = [await a.data(), await b.data()];
  let diff = 0, scale = 0;
  for (let i = 0; i < x.length; i++) {
    diff = Math.max(diff, Math.abs(x[i] - y[i]));
    scale = Math.max(scale, Math.abs(y[i]));
  }
  return { diff, scale };
}

export async function checkInPlaceWrite(): Promise<void> {
  const cache = new KVCache({ layers: 1, batch: 2, maxLength: 6, heads: 2, headDim: 3 });
  const before = cache.keys[0];
  const rows = tf.tensor4d(Array.from({ length: 2 * 2 * 2 * 3 }, (_, i) => i + 1), [2, 2, 2, 3]);
  cache.lengths.splice(0, 2, 1, 4);
  cache.write(0, rows, rows);
  expect(tf.getKernel(KVCacheUpdate, tf.getBackend())).toBeDefined();
  expect(cache.keys[0]).toBe(before);
  const got = await cache.keys[0].array();
  const want = Array.from({ length: 2 }, (_, b) => Array.from({ length: 6 }, (_, p) =>
    Array.from({ length: 2 }, (_, h) => Array.from({ length: 3 }, (_, d) => {
      const t = p - (b === 0 ? 1 : 4);
      return t >= 0 && t < 2 ? ((b * 2 + t) * 2 + h) * 3 + d + 1 : 0;
    }))));
  expect(got).toEqual(want);
  // A second write after a read: the values read back must be the new ones.
  cache.lengths.splice(0, 2, 0, 0);
  cache.write(0, tf.mul(rows, -1), rows);
  expect((await cache.keys[0].array())[1][0][0][0]).toBe(-13);
  rows.dispose();
  cache.dispose();
  await checkFusedRowsWrite();
}

/**
 * Writes from one fused q|k|v tensor [B, T, 3H, D] (heads H… as keys, 2H… as values), H odd so
 * that a head offset falls mid-texel in webgl's packed layout, after an ordinary write.
 */
async function checkFusedRowsWrite(): Promise<void> {
  const [B, T, H, D, L] = [2, 2, 3, 2, 5];
  const cache = new KVCache({ layers: 1, batch: B, maxLength: L, heads: H, headDim: D });
  const qkv = tf.tensor4d(Array.from({ length: B * T * 3 * H * D }, (_, i) => i + 1), [B, T, 3 * H, D]);
  const positions = [3, 0];
  cache.lengths.splice(0, B, ...positions);
  cache.write(0, qkv, qkv, [H, 2 * H]);
  const want = (first: number) => Array.from({ length: B }, (_, b) => Array.from({ length: L }, (_, p) =>
    Array.from({ length: H }, (_, h) => Array.from({ length: D }, (_, d) => {
      const t = p - positions[b];
      return t >= 0 && t < T ? (((b * T + t) * 3 * H + first + h) * D + d) + 1 : 0;
    }))));
  expect(await cache.keys[0].array()).toEqual(want(H));
  expect(await cache.values[0].array()).toEqual(want(2 * H));
  qkv.dispose();
  cache.dispose();
}

/**
 * Kernels a decode step runs, by tf.profile (Reshape excluded: it moves no data): 22 per block
 * (LayerNorm 4 ×2, GELU 4, projections 4, residual adds 2, q slice, cache writes 2, attention) and
 * 8 around them (two embedding gathers and their add, the final LayerNorm, the output head).
 */
export async function checkStepKernels(model: LayersModel): Promise<void> {
  const decoder = new Gpt2Decoder(model);
  const cache = decoder.newCache(1, 4);
  const prefillIds = tf.tensor2d([[1, 2]], [1, 2], 'int32');
  tf.dispose([prefillIds, decoder.forward(cache, prefillIds, [2])]);
  const ids = tf.tensor2d([[3]], [1, 1], 'int32');
  const profile = await tf.profile(() => decoder.forward(cache, ids, [1]));
  const kernels = profile.kernels.map(k => k.name).filter(name => name !== 'Reshape' && !name.endsWith('__op'));
  const layers = model.layers.filter(l => l.name.endsWith('_attn')).length;
  expect(kernels.length).toBe(22 * layers + 8);
  expect(kernels.filter(name => name === 'FlashAttention').length).toBe(layers);
  tf.dispose([ids, profile.result]);
  cache.dispose();
  decoder.dispose();
}

/** Prefill + decode steps with the cache against recompute, for prompts of lengths 5 and 2. */
export async function checkCachedLogits(model: LayersModel, forceSplits?: number): Promise<void> {
  if (forceSplits !== undefined) splitKvTuning.force = forceSplits;
  try {
    const sequences = [[1, 2, 3, 4, 5], [7, 8]];
    const decoder = new Gpt2Decoder(model);
    const cache = decoder.newCache(2, 11);
    const ids = tf.tensor2d([1, 2, 3, 4, 5, 7, 8, 0, 0, 0], [2, 5], 'int32');
    const prefill = decoder.forward(cache, ids, [5, 2]);
    expect(cache.lengths).toEqual([5, 2]);
    let logits = tf.tidy(() => tf.reshape(
      tf.stack([tf.slice(prefill, [0, 4, 0], [1, 1, -1]), tf.slice(prefill, [1, 1, 0], [1, 1, -1])]), [2, -1]) as Tensor2D);
    tf.dispose([ids, prefill]);
    for (let step = 0; step < 5; step++) {
      const expected = recomputeLogits(model, sequences);
      const { diff, scale } = await maxDiff(logits, expected);
      expect(scale).toBeGreaterThan(0);
      expect(diff).toBeLessThanOrEqual(2e-5 * Math.max(1, scale));
      tf.dispose([logits, expected]);
      const next = [10 + step, 20 + step];
      next.forEach((t, b) => sequences[b].push(t));
      const stepIds = tf.tensor2d(next, [2, 1], 'int32');
      const out = decoder.forward(cache, stepIds, [1, 1]);
      logits = tf.tidy(() => tf.reshape(out, [2, -1]) as Tensor2D);
      tf.dispose([stepIds, out]);
    }
    expect(cache.lengths).toEqual([10, 7]);
    logits.dispose();
    cache.dispose();
    decoder.dispose();
  } finally {
    delete splitKvTuning.force;
  }
}

/** generate() (greedy) equals a greedy loop that recomputes the whole prefix each token; no tensor leaks. */
export async function checkGreedyGeneration(model: LayersModel): Promise<void> {
  const prompts = [[5, 6, 7], [9]];
  const tensorsBefore = tf.memory().numTensors;
  const cached = await generate(model, prompts, { maxNewTokens: 6, temperature: 0 });
  expect(tf.memory().numTensors).toBe(tensorsBefore);
  const sequences = prompts.map(p => [...p]);
  for (let step = 0; step < 6; step++) {
    const logits = recomputeLogits(model, sequences);
    const ids = tf.argMax(logits, 1);
    const next = Array.from(await ids.data());
    tf.dispose([logits, ids]);
    next.forEach((t, b) => sequences[b].push(t));
  }
  expect(cached).toEqual(sequences.map((s, b) => s.slice(prompts[b].length)));
  const sampled = await generate(model, prompts, { maxNewTokens: 4, temperature: 0.8, topK: 5, seed: 1 });
  expect(sampled.map(s => s.length)).toEqual([4, 4]);
  expect(sampled.flat().every(t => Number.isInteger(t) && t >= 0 && t < 61)).toBe(true);
  expect(tf.memory().numTensors).toBe(tensorsBefore);
}
