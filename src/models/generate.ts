// Text generation for the gpt2() models with a KV cache. The model's layers are run step by step
// outside the LayersModel graph, with the same weights: a prefill pass over the (right-padded)
// prompts writes every layer's keys and values into a preallocated KVCache (kv_cache.ts), then
// each new token runs the blocks on one position, writes its K/V rows in place and attends over
// the cache with `keyLengths` = each row's filled length, so prompts of different lengths share a
// batch. That decode attention (one query row against the whole cache) is the shape the split-KV
// path (src/split_kv.ts) serves.
//
// `recomputeLogits` is the cacheless baseline: the whole model on the whole prefix every token.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor2D, Tensor3D, Tensor4D } from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { flashAttention } from '../flash_attention';
import { CausalSelfAttention } from '../layers/causal_self_attention';
import { Gpt2Mlp, PositionEmbedding, TokenEmbedding } from '../layers/gpt2_blocks';
import { KVCache } from './kv_cache';

interface Block {
  ln1: tfl.layers.Layer;
  attn: CausalSelfAttention;
  ln2: tfl.layers.Layer;
  mlp: Gpt2Mlp;
}

function fail(message: string): never {
  throw new Error(`generate: ${message}`);
}

function layerOf<T extends tfl.layers.Layer>(model: tfl.LayersModel, name: string, type: abstract new (...a: never[]) => T): T {
  const layer = model.getLayer(name);
  if (!(layer instanceof type)) fail(`layer '${name}' of model '${model.name}' is not a ${type.name}`);
  return layer;
}

/** A layer weight by its name within the layer ('c_attn/kernel'), or null when absent. */
function weight(layer: tfl.layers.Layer, suffix: string): Tensor | null {
  const w = layer.weights.find(x => x.name.endsWith(`/${suffix}`) || x.originalName.endsWith(`/${suffix}`));
  return w ? w.read() : null;
}

/** The pieces of a gpt2() model, found by the names gpt2() gives its layers. */
export class Gpt2Decoder {
  readonly tokens: TokenEmbedding;
  readonly positions: PositionEmbedding;
  readonly blocks: Block[];
  readonly lnF: tfl.layers.Layer;
  readonly head: TokenEmbedding;
  readonly heads: number;
  readonly channels: number;

  constructor(readonly model: tfl.LayersModel) {
    const name = model.name;
    this.tokens = layerOf(model, `${name}_wte`, TokenEmbedding);
    this.positions = layerOf(model, `${name}_wpe`, PositionEmbedding);
    this.blocks = [];
    for (let i = 0; model.layers.some(l => l.name === `${name}_h${i}_attn`); i++) {
      const p = `${name}_h${i}`;
      this.blocks.push({
        ln1: model.getLayer(`${p}_ln_1`), attn: layerOf(model, `${p}_attn`, CausalSelfAttention),
        ln2: model.getLayer(`${p}_ln_2`), mlp: layerOf(model, `${p}_mlp`, Gpt2Mlp),
      });
    }
    if (this.blocks.length === 0) fail(`model '${name}' has no layers named ${name}_h<i>_attn (not a gpt2() model?)`);
    this.lnF = model.getLayer(`${name}_ln_f`);
    this.head = model.layers.some(l => l.name === `${name}_lm_head`)
      ? layerOf(model, `${name}_lm_head`, TokenEmbedding) : this.tokens;
    this.heads = this.blocks[0].attn.numHeads;
    this.channels = this.tokens.channels;
  }

  newCache(batch: number, maxLength: number): KVCache {
    if (maxLength > this.positions.contextLength) {
      fail(`maxLength ${maxLength} exceeds the model's context length ${this.positions.contextLength}`);
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
    const logits = tf.tidy(() => {
      const table = this.positions.weights[0].read() as Tensor2D;
      const where = tf.tensor2d(start.flatMap(p => Array.from({ length: steps }, (_, t) => p + t)), [batch, steps], 'int32');
      let x = tf.add(this.tokens.apply(ids) as Tensor3D, tf.gather(table, where)) as Tensor3D;
      // A prefill from empty rows attends over its own tokens (causal); later steps, one token each,
      // over the cache up to their own position (keyLengths), which is causal for a single query.
      const fromEmpty = start.every(p => p === 0);
      if (!fromEmpty && steps !== 1) fail(`steps after the prefill take one token per row, got ${steps}`);
      const keyLengths = fromEmpty ? null : tf.tensor1d(start.map(p => p + steps), 'int32');
      this.blocks.forEach((block, layer) => {
        const h = block.ln1.apply(x) as Tensor3D;
        x = tf.add(x, this.attend(block.attn, h, cache, layer, keyLengths)) as Tensor3D;
        x = tf.add(x, block.mlp.apply(block.ln2.apply(x) as Tensor3D) as Tensor3D) as Tensor3D;
      });
      return this.head.apply(this.lnF.apply(x) as Tensor3D) as Tensor3D;
    });
    cache.advance(validLengths);
    return logits;
  }

  /** CausalSelfAttention's computation on cached keys and values (its weights, its layout). */
  private attend(attn: CausalSelfAttention, x: Tensor3D, cache: KVCache, layer: number, keyLengths: Tensor | null): Tensor3D {
    const [batch, steps, channels] = x.shape;
    const heads = this.heads, headDim = channels / heads;
    const attnKernel = weight(attn, 'c_attn/kernel'), projKernel = weight(attn, 'c_proj/kernel');
    if (!attnKernel || !projKernel) fail(`layer '${attn.name}' has no c_attn/c_proj kernels`);
    const attnBias = weight(attn, 'c_attn/bias'), projBias = weight(attn, 'c_proj/bias');
    let qkv = tf.matMul(tf.reshape(x, [batch * steps, channels]), attnKernel as Tensor2D);
    if (attnBias) qkv = tf.add(qkv, attnBias);
    const [q, k, v] = tf.split(tf.reshape(qkv, [batch, steps, 3, heads, headDim]), 3, 2)
      .map(t => tf.reshape(t, [batch, steps, heads, headDim]) as Tensor4D);
    cache.write(layer, k, v);
    const attended = keyLengths === null
      ? flashAttention(q, k, v, { layout: 'BSHD', causal: true })
      : flashAttention(q, cache.keys[layer], cache.values[layer], { layout: 'BSHD', keyLengths });
    let y = tf.matMul(tf.reshape(attended, [batch * steps, channels]), projKernel as Tensor2D);
    if (projBias) y = tf.add(y, projBias);
    return tf.reshape(y, [batch, steps, channels]);
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
  const cache = decoder.newCache(promptIds.length, options.maxLength ?? Math.max(...lengths) + options.maxNewTokens);
  const out: number[][] = promptIds.map(() => []);
  try {
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
    cache.dispose();
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
