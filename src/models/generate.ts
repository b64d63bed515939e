// Text generation for the gpt2() models with a KV cache. A prefill pass over the (right-padded)
// prompts writes every layer's keys and values into a preallocated KVCache (kv_cache.ts), then each
// new token runs the blocks on one position, writes its K/V rows in place and attends over the cache
// with `keyLengths` = each row's filled length, so prompts of different lengths share a batch. That
// decode attention (one query row against the whole cache) is the shape the split-KV path
// (src/split_kv.ts) serves.
//
// A decode step is host-bound on a fast GPU: its kernels are tiny, and their number times tfjs'
// cost of dispatching one (and of each upload and queue submission) sets the time per token. So the
// decoder does not run the model's layers (layer.apply adds symbolic bookkeeping and per-call
// constants that are uploads): it reads their weight tensors once and computes the same functions
// with as few kernels as tfjs allows, in one tidy per step, uploading only the token ids, their
// positions and the key lengths:
//   - projections as tf.fused.matMul with their bias (one kernel each);
//   - LayerNorm in four kernels and GELU in four, both through batchNorm (see `layerNorm`, `gelu`);
//   - q, k, v read from the fused projection [B, T, 3H, D] as it is (BSHD, no transposes): the cache
//     writes take the key and value heads straight from it, only q is sliced;
//   - the cache writes on webgpu are buffer copies recorded in tfjs' own command encoder.
// GPT-2 small: 248 GPU dispatches per token (20 per block, 8 outside), was 494 through the layers;
// on the H100 at 1024 tokens of context 28 ms per token where the layers took 221 in the same run,
// and still host-bound (bench/RESULTS.md, Decoding).
//
// `recomputeLogits` is the cacheless baseline: the whole model on the whole prefix every token.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor1D, Tensor2D, Tensor3D, Tensor4D } from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { flashAttention } from '../flash_attention';
import { CausalSelfAttention } from '../layers/causal_self_attention';
import { Gpt2Mlp, PositionEmbedding, TokenEmbedding } from '../layers/gpt2_blocks';
import { LayerNorm } from '../layers/layer_norm';
import { KVCache } from './kv_cache';

/** x [N, in] · kernel [in, out] + bias, as one fused kernel. */
interface Affine {
  kernel: Tensor2D;
  bias: Tensor1D | null;
}

interface LayerNormWeights {
  gamma: Tensor;
  beta: Tensor;
  epsilon: number;
}

interface Block {
  ln1: LayerNormWeights;
  attn: Affine;
  attnProj: Affine;
  ln2: LayerNormWeights;
  fc: Affine;
  mlpProj: Affine;
}

function fail(message: string): never {
  throw new Error(`generate: ${message}`);
}

function layerOf<T extends tfl.layers.Layer>(model: tfl.LayersModel, name: string, type: abstract new (...a: never[]) => T): T {
  const layer = model.getLayer(name);
  if (!(layer instanceof type)) fail(`layer '${name}' of model '${model.name}' is not a ${type.name}`);
  return layer;
}

/**
 * A layer weight by its name within the layer ('c_attn/kernel'), or null when absent. The tensor is
 * the weight's variable, which training and setWeights assign in place, so it stays current.
 */
function weight(layer: tfl.layers.Layer, suffix: string): Tensor | null {
  const w = layer.weights.find(x => x.name.endsWith(`/${suffix}`) || x.originalName.endsWith(`/${suffix}`));
  return w ? w.read() : null;
}

function required(layer: tfl.layers.Layer, suffix: string): Tensor {
  return weight(layer, suffix) ?? fail(`layer '${layer.name}' has no weight '${suffix}'`);
}

function affineOf(layer: tfl.layers.Layer, name: string): Affine {
  return { kernel: required(layer, `${name}/kernel`) as Tensor2D, bias: weight(layer, `${name}/bias`) as Tensor1D | null };
}

function affine(x: Tensor2D, w: Affine): Tensor2D {
  return tf.fused.matMul({ a: x, b: w.kernel, bias: w.bias ?? undefined }) as Tensor2D;
}

function layerNormOf(layer: LayerNorm): LayerNormWeights {
  return { gamma: required(layer, 'gamma'), beta: required(layer, 'beta'), epsilon: layer.epsilon };
}

/**
 * Backends whose batchNorm broadcasts per-row statistics [N, 1] over the channels. tfjs' cpu (and
 * wasm) kernel indexes mean and variance by flat position modulo their length instead, which is
 * right for one row only.
 */
const ROW_STATISTICS_BATCH_NORM = new Set(['webgpu', 'webgl']);

/** GPT-2's tanh GELU constants: 2·√(2/π)·(h + c·h³) = k·h·(h² + 1/c) with c = 0.044715, k = 2·√(2/π)·c. */
const GELU_C = 0.044715;
const GELU_K = 2 * Math.sqrt(2 / Math.PI) * GELU_C;

/**
 * The pieces of a gpt2() model, found by the names gpt2() gives its layers, and its forward pass
 * on a KV cache. Holds a few constant tensors: `dispose()` it when done.
 */
export class Gpt2Decoder {
  readonly heads: number;
  readonly channels: number;
  readonly contextLength: number;
  private readonly tokens: Tensor2D;
  private readonly positions: Tensor2D;
  private readonly blocks: Block[] = [];
  private readonly lnF: LayerNormWeights;
  private readonly head: Tensor2D;
  /** [C, 1] of 1/C: x · average is the row means, as the LayerNorm layer computes them. */
  private readonly average: Tensor2D;
  /** [1, 1] each: batchNorm's mean and variance in `gelu`. */
  private readonly geluShift: Tensor2D;
  private readonly geluVariance: Tensor2D;

  constructor(readonly model: tfl.LayersModel) {
    const name = model.name;
    const tokens = layerOf(model, `${name}_wte`, TokenEmbedding);
    const positions = layerOf(model, `${name}_wpe`, PositionEmbedding);
    this.tokens = required(tokens, 'embeddings') as Tensor2D;
    this.positions = required(positions, 'embeddings') as Tensor2D;
    this.contextLength = positions.contextLength;
    let heads = 0;
    for (let i = 0; model.layers.some(l => l.name === `${name}_h${i}_attn`); i++) {
      const p = `${name}_h${i}`;
      const attn = layerOf(model, `${p}_attn`, CausalSelfAttention);
      const mlp = layerOf(model, `${p}_mlp`, Gpt2Mlp);
      heads = attn.numHeads;
      this.blocks.push({
        ln1: layerNormOf(layerOf(model, `${p}_ln_1`, LayerNorm)),
        attn: affineOf(attn, 'c_attn'), attnProj: affineOf(attn, 'c_proj'),
        ln2: layerNormOf(layerOf(model, `${p}_ln_2`, LayerNorm)),
        fc: affineOf(mlp, 'c_fc'), mlpProj: affineOf(mlp, 'c_proj'),
      });
    }
    if (this.blocks.length === 0) fail(`model '${name}' has no layers named ${name}_h<i>_attn (not a gpt2() model?)`);
    this.lnF = layerNormOf(layerOf(model, `${name}_ln_f`, LayerNorm));
    this.head = model.layers.some(l => l.name === `${name}_lm_head`)
      ? required(layerOf(model, `${name}_lm_head`, TokenEmbedding), 'embeddings') as Tensor2D : this.tokens;
    this.heads = heads;
    this.channels = tokens.channels;
    const c = this.channels;
    // Kept: a decoder made inside a caller's tidy outlives it.
    this.average = tf.keep(tf.fill([c, 1], 1 / c) as Tensor2D);
    this.geluShift = tf.keep(tf.tensor2d([-1 / GELU_C], [1, 1]));
    this.geluVariance = tf.keep(tf.tensor2d([1 / (GELU_K * GELU_K)], [1, 1]));
  }

  newCache(batch: number, maxLength: number): KVCache {
    if (maxLength > this.contextLength) {
      fail(`maxLength ${maxLength} exceeds the model's context length ${this.contextLength}`);
    }
    return new KVCache({
      layers: this.blocks.length, batch, maxLength, heads: this.heads, headDim: this.channels / this.heads,
    });
  }

  /**
   * Runs `ids` [B, T] (row b's tokens at positions cache.lengths[b] …) through the model, writing
   * their keys and values into the cache, and returns the logits [B, T, vocab]. `validLengths[b]`
   * of the T tokens count as filled afterwards (the rest is padding that later steps overwrite).
   */
  forward(cache: KVCache, ids: Tensor2D, validLengths: number[]): Tensor3D {
    const [batch, steps] = ids.shape;
    if (batch !== cache.batch) fail(`ids have batch ${batch}, the cache ${cache.batch}`);
    const start = [...cache.lengths];
    // A prefill from empty rows attends over its own tokens (causal); later steps, one token each,
    // over the cache up to their own position (keyLengths), which is causal for a single query.
    const fromEmpty = start.every(p => p === 0);
    if (!fromEmpty && steps !== 1) fail(`steps after the prefill take one token per row, got ${steps}`);
    const logits = tf.tidy(() => {
      const rows = batch * steps;
      const where = tf.tensor1d(start.flatMap(p => Array.from({ length: steps }, (_, t) => p + t)), 'int32');
      const tokenIds = tf.reshape(ids.dtype === 'int32' ? ids : tf.cast(ids, 'int32'), [rows]);
      let x = tf.add(tf.gather(this.tokens, tokenIds), tf.gather(this.positions, where)) as Tensor2D;
      const keyLengths = fromEmpty ? null : tf.tensor1d(start.map(p => p + steps), 'int32');
      this.blocks.forEach((block, layer) => {
        const attended = this.attend(this.layerNorm(x, block.ln1), block.attn, cache, layer, [batch, steps], keyLengths);
        x = tf.add(x, affine(attended, block.attnProj));
        x = tf.add(x, affine(this.gelu(affine(this.layerNorm(x, block.ln2), block.fc)), block.mlpProj));
      });
      const out = tf.matMul(this.layerNorm(x, this.lnF), this.head, false, true);
      return tf.reshape(out, [batch, steps, -1]) as Tensor3D;
    });
    cache.advance(validLengths);
    return logits;
  }

  /**
   * CausalSelfAttention's computation on cached keys and values (its weights, its layout): the
   * fused projection [B·T, 3C] is [B, T, 3H, D], heads [0, H) q, [H, 2H) k and [2H, 3H) v.
   */
  private attend(x: Tensor2D, w: Affine, cache: KVCache, layer: number, [batch, steps]: [number, number],
    keyLengths: Tensor | null): Tensor2D {
    const heads = this.heads, headDim = this.channels / heads;
    const qkv = tf.reshape(affine(x, w), [batch, steps, 3 * heads, headDim]) as Tensor4D;
    let attended: Tensor4D;
    if (keyLengths === null) {
      const [q, k, v] = tf.split(qkv, 3, 2) as Tensor4D[];
      cache.write(layer, k, v);
      attended = flashAttention(q, k, v, { layout: 'BSHD', causal: true });
    } else {
      cache.write(layer, qkv, qkv, [heads, 2 * heads]);
      const q = tf.slice(qkv, [0, 0, 0, 0], [batch, steps, heads, headDim]);
      attended = flashAttention(q, cache.keys[layer], cache.values[layer], { layout: 'BSHD', keyLengths });
    }
    return tf.reshape(attended, [batch * steps, this.channels]);
  }

  /**
   * LayerNorm over the channels of x [N, C] (src/layers/layer_norm.ts) in four kernels: the row
   * means as a product with 1/C (as the layer computes them), the same for the squared deviations,
   * then batchNorm, which computes (x − mean)·gamma/√(variance + ε) + beta in one kernel. Where
   * batchNorm cannot take per-row statistics (ROW_STATISTICS_BATCH_NORM), rows > 1 take the
   * elementwise form.
   */
  private layerNorm(x: Tensor2D, w: LayerNormWeights): Tensor2D {
    const mean = tf.matMul(x, this.average);
    if (x.shape[0] === 1 || ROW_STATISTICS_BATCH_NORM.has(tf.getBackend())) {
      const variance = tf.matMul(tf.squaredDifference(x, mean), this.average);
      const row = (t: Tensor) => tf.reshape(t, [1, -1]) as Tensor2D;
      return tf.batchNorm(x, mean, variance, row(w.beta), row(w.gamma), w.epsilon) as Tensor2D;
    }
    const centered = tf.sub(x, mean);
    const r = tf.rsqrt(tf.add(tf.matMul(tf.square(centered), this.average), w.epsilon));
    return tf.add(tf.mul(tf.mul(centered, r), w.gamma), w.beta) as Tensor2D;
  }

  /**
   * GPT-2's tanh GELU (geluTanh, src/layers/gpt2_blocks.ts) in four kernels: with
   * a = √(2/π)·(h + c·h³), 0.5·h·(1 + tanh(a)) = h·σ(2a), and 2a = k·h·(h² + 1/c). tfjs has no
   * multiply-add kernel, but batchNorm's (x − mean)·scale/√(variance + ε) is one: x = h²,
   * mean = −1/c, scale = h, variance = 1/k², ε = 0.
   */
  private gelu(h: Tensor2D): Tensor2D {
    const twoA = tf.batchNorm(tf.square(h), this.geluShift, this.geluVariance, undefined, h, 0);
    return tf.mul(h, tf.sigmoid(twoA));
  }

  dispose(): void {
    tf.dispose([this.average, this.geluShift, this.geluVariance]);
  }
}

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0: greedy (argmax). Default 1. */
  temperature?: number;
  /** Sample among the k most likely tokens; default: all. */
  topK?: number;
  /** Seed of the sampler; random if absent. */
  seed?: number;
  /** Cache length; default: longest prompt + maxNewTokens. */
  maxLength?: number;
}

/** Pads prompts on the right to one length with token 0 (the pads are never attended to). */
function padPrompts(prompts: number[][]): Tensor2D {
  const width = Math.max(...prompts.map(p => p.length));
  return tf.tensor2d(prompts.flatMap(p => [...p, ...new Array<number>(width - p.length).fill(0)]),
    [prompts.length, width], 'int32');
}

/** Logits [B, vocab] at the last real token of each prompt of `logits` [B, T, vocab]. */
function lastLogits(logits: Tensor3D, lengths: number[]): Tensor2D {
  return tf.tidy(() => {
    const [batch, steps, vocab] = logits.shape;
    const at = tf.tensor1d(lengths.map((n, b) => b * steps + n - 1), 'int32');
    return tf.gather(tf.reshape(logits, [batch * steps, vocab]), at) as Tensor2D;
  });
}

async function sample(logits: Tensor2D, o: GenerateOptions, step: number): Promise<number[]> {
  const temperature = o.temperature ?? 1;
  const ids = tf.tidy(() => {
    if (temperature === 0) return tf.argMax(logits, 1);
    const scaled = tf.div(logits, temperature) as Tensor2D;
    const seed = o.seed === undefined ? undefined : o.seed + step;
    if (!o.topK) return tf.squeeze(tf.multinomial(scaled, 1, seed), [1]);
    const { values, indices } = tf.topk(scaled, Math.min(o.topK, scaled.shape[1]));
    const pick = tf.multinomial(values as Tensor2D, 1, seed);
    return tf.squeeze(tf.gather(indices, pick, 1, 1), [1]);
  });
  const values = Array.from(await ids.data());
  ids.dispose();
  return values;
}

function checkPrompts(prompts: number[][], o: GenerateOptions): void {
  if (!Array.isArray(prompts) || prompts.length === 0 || prompts.some(p => !Array.isArray(p) || p.length === 0)) {
    fail('promptIds must be a non-empty array of non-empty token id arrays');
  }
  if (!(Number.isInteger(o.maxNewTokens) && o.maxNewTokens >= 0)) fail(`maxNewTokens must be an integer ≥ 0, got ${o.maxNewTokens}`);
  if (o.temperature !== undefined && !(o.temperature >= 0)) fail(`temperature must be ≥ 0, got ${o.temperature}`);
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 1)) fail(`topK must be an integer ≥ 1, got ${o.topK}`);
}

/**
 * Generates `maxNewTokens` tokens after each prompt with a KV cache; returns the new tokens per
 * prompt. Prompts may differ in length.
 */
export async function generate(model: tfl.LayersModel, promptIds: number[][], options: GenerateOptions): Promise<number[][]> {
  checkPrompts(promptIds, options);
  const decoder = new Gpt2Decoder(model);
  const lengths = promptIds.map(p => p.length);
  const out: number[][] = promptIds.map(() => []);
  let cache: KVCache | null = null;
  try {
    cache = decoder.newCache(promptIds.length, options.maxLength ?? Math.max(...lengths) + options.maxNewTokens);
    const ids = padPrompts(promptIds);
    const prefill = decoder.forward(cache, ids, lengths);
    let logits = lastLogits(prefill, lengths);
    tf.dispose([ids, prefill]);
    for (let step = 0; step < options.maxNewTokens; step++) {
      const next = await sample(logits, options, step);
      logits.dispose();
      next.forEach((id, b) => out[b].push(id));
      if (step + 1 === options.maxNewTokens) return out;
      const stepIds = tf.tensor2d(next, [next.length, 1], 'int32');
      const stepLogits = decoder.forward(cache, stepIds, next.map(() => 1));
      logits = tf.tidy(() => tf.squeeze(stepLogits, [1]) as Tensor2D);
      tf.dispose([stepIds, stepLogits]);
    }
    logits.dispose();
    return out;
  } finally {
    cache?.dispose();
    decoder.dispose();
  }
}

/**
 * The cacheless baseline: logits [B, vocab] of the next token after each sequence, recomputing
 * the whole model over the whole (right-padded) prefix.
 */
export function recomputeLogits(model: tfl.LayersModel, sequences: number[][]): Tensor2D {
  return tf.tidy(() => {
    const logits = model.predict(padPrompts(sequences)) as Tensor3D;
    return lastLogits(logits, sequences.map(s => s.length));
  });
}
