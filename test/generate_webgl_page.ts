// Page entry of the webgl KV-cache tests (test/generate_webgl.test.ts): the shared harness plus
// probes that run in the page and return plain results for Node to check: the in-place cache
// write (KVCacheUpdate drawing into the cache texture), cached logits against recomputing the
// prefix, and greedy generation against a cacheless greedy loop, with tensor and texture counts.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor2D } from '@tensorflow/tfjs-core';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { expose } from './browser/harness';
import { Gpt2Decoder, KVCache, KVCacheUpdate, generate, recomputeLogits } from '../src/index';
import { splitKvTuning } from '../src/split_kv';
import { tinyModel } from './setup/generate_checks';

function texturesInUse(): number {
  const manager = (tf.backend() as MathBackendWebGL).getTextureManager();
  return manager.numBytesAllocated - manager.numBytesFree;
}

export interface WriteProbe {
  kernel: boolean;
  sameTensor: boolean;
  packed: boolean;
  /** Width of the cache texture in texels (ceil(D / 2) unless tfjs squarified it). */
  texelWidth: number;
  /** The cache after the first write, and after a second write made after a read. */
  first: number[];
  second: number[];
  tensorsBefore: number;
  tensorsAfter: number;
}

/**
 * Two writes into a fresh cache [B, L, H, D]: `rows` values 1, 2, … at positions `first`, then
 * their negatives at positions `second` (after reading the cache back), the rows made by a program.
 */
async function writeProbe(B: number, L: number, H: number, D: number, T: number, first: number[], second: number[]): Promise<WriteProbe> {
  const tensorsBefore = tf.memory().numTensors;
  const cache = new KVCache({ layers: 1, batch: B, maxLength: L, heads: H, headDim: D });
  const before = cache.keys[0];
  const rows = tf.tensor4d(Array.from({ length: B * T * H * D }, (_, i) => i + 1), [B, T, H, D]);
  cache.lengths.splice(0, B, ...first);
  cache.write(0, rows, rows);
  const firstValues = Array.from(await cache.keys[0].data());
  const negative = tf.mul(rows, -1);
  cache.lengths.splice(0, B, ...second);
  cache.write(0, negative, rows);
  const secondValues = Array.from(await cache.keys[0].data());
  const data = (tf.backend() as MathBackendWebGL).texData.get(cache.keys[0].dataId);
  const result = {
    kernel: tf.getKernel(KVCacheUpdate, tf.getBackend()) !== undefined,
    sameTensor: cache.keys[0] === before,
    packed: data.isPacked === true,
    texelWidth: Math.ceil((data.texShape ?? [0, 0])[1] / 2),
    first: firstValues, second: secondValues,
  };
  tf.dispose([rows, negative]);
  cache.dispose();
  return { ...result, tensorsBefore, tensorsAfter: tf.memory().numTensors };
}

/**
 * One write from a fused q|k|v tensor [B, T, 3H, D] (values 1, 2, …; heads H… as keys, 2H… as
 * values) into a fresh cache at `positions`: the cache's keys and values after it.
 */
async function fusedWriteProbe(B: number, L: number, H: number, D: number, T: number, positions: number[]):
    Promise<{ keys: number[]; values: number[]; tensorsBefore: number; tensorsAfter: number }> {
  const tensorsBefore = tf.memory().numTensors;
  const cache = new KVCache({ layers: 1, batch: B, maxLength: L, heads: H, headDim: D });
  const qkv = tf.tensor4d(Array.from({ length: B * T * 3 * H * D }, (_, i) => i + 1), [B, T, 3 * H, D]);
  cache.lengths.splice(0, B, ...positions);
  cache.write(0, qkv, qkv, [H, 2 * H]);
  const keys = Array.from(await cache.keys[0].data());
  const values = Array.from(await cache.values[0].data());
  qkv.dispose();
  cache.dispose();
  return { keys, values, tensorsBefore, tensorsAfter: tf.memory().numTensors };
}

let model: LayersModel | undefined;

function theModel(): LayersModel {
  model ??= tinyModel();
  return model;
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

/** Prefill + 5 decode steps with the cache against recompute, prompts of lengths 5 and 2: per step diff and scale. */
async function cachedLogits(forceSplits: number | null): Promise<{ steps: Array<{ diff: number; scale: number }>; lengths: number[] }> {
  if (forceSplits !== null) splitKvTuning.force = forceSplits;
  try {
    const sequences = [[1, 2, 3, 4, 5], [7, 8]];
    const decoder = new Gpt2Decoder(theModel());
    const cache = decoder.newCache(2, 11);
    const ids = tf.tensor2d([1, 2, 3, 4, 5, 7, 8, 0, 0, 0], [2, 5], 'int32');
    const prefill = decoder.forward(cache, ids, [5, 2]);
    let logits = tf.tidy(() => tf.reshape(
      tf.stack([tf.slice(prefill, [0, 4, 0], [1, 1, -1]), tf.slice(prefill, [1, 1, 0], [1, 1, -1])]), [2, -1]) as Tensor2D);
    tf.dispose([ids, prefill]);
    const steps: Array<{ diff: number; scale: number }> = [];
    for (let step = 0; step < 5; step++) {
      const expected = recomputeLogits(theModel(), sequences);
      steps.push(await maxDiff(logits, expected));
      tf.dispose([logits, expected]);
      const next = [10 + step, 20 + step];
      next.forEach((t, b) => sequences[b].push(t));
      const stepIds = tf.tensor2d(next, [2, 1], 'int32');
      const out = decoder.forward(cache, stepIds, [1, 1]);
      logits = tf.tidy(() => tf.reshape(out, [2, -1]) as Tensor2D);
      tf.dispose([stepIds, out]);
    }
    const lengths = [...cache.lengths];
    logits.dispose();
    cache.dispose();
    decoder.dispose();
    return { steps, lengths };
  } finally {
    delete splitKvTuning.force;
  }
}

/** Greedy generate() with the cache and a greedy loop recomputing the prefix; tensor and texture counts around generate(). */
async function greedy(): Promise<{ cached: number[][]; recomputed: number[][]; tensorsBefore: number; tensorsAfter: number; textureBytesLeaked: number }> {
  const prompts = [[5, 6, 7], [9]];
  await generate(theModel(), prompts, { maxNewTokens: 2, temperature: 0 });
  const tensorsBefore = tf.memory().numTensors;
  const textures = texturesInUse();
  const cached = await generate(theModel(), prompts, { maxNewTokens: 6, temperature: 0 });
  const tensorsAfter = tf.memory().numTensors;
  const textureBytesLeaked = texturesInUse() - textures;
  const sequences = prompts.map(p => [...p]);
  for (let step = 0; step < 6; step++) {
    const logits = recomputeLogits(theModel(), sequences);
    const ids = tf.argMax(logits, 1);
    const next = Array.from(await ids.data());
    tf.dispose([logits, ids]);
    next.forEach((t, b) => sequences[b].push(t));
  }
  return { cached, recomputed: sequences.map((s, b) => s.slice(prompts[b].length)), tensorsBefore, tensorsAfter, textureBytesLeaked };
}

expose('faCacheWriteProbe', writeProbe);
expose('faFusedWriteProbe', fusedWriteProbe);
expose('faCachedLogits', cachedLogits);
expose('faGreedy', greedy);
