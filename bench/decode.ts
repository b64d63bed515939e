// Decoding benchmarks (issue 7), on the best backend Node has (`../examples/gpt2/backend.ts`):
//   1. decode attention alone: Nq = 1 against Nk keys (B = 1, 12 heads, D = 64), the split-KV path
//      (src/split_kv.ts, as the shape rule picks it) against the one-pass kernel (split forced off);
//   2. GPT-2 ms per generated token at several cache lengths: with the KV cache (split path by the
//      rule, and with split forced off) against recomputing the whole prefix every token with naive
//      attention (and with flash attention), as generation without a cache does.
// A token's time includes reading its logits' argmax back, as real sampling must. Random weights
// and tokens: they do not change the work. One JSON line per measurement on stdout (and appended to
// $OUT/decode.jsonl when $OUT is set).
//
//   node decode.mjs [--preset small] [--lengths 128,256,512,1024,2048,4096,8192] [--tokens 8]
//     [--recompute-max 4096] [--keys 1024,4096,8192,16384] [--backend auto|webgpu|cpu]
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import * as tf from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { isBackendRequest, selectBackend } from '../examples/gpt2/backend';
import { flashAttention, gpt2, Gpt2Decoder, gpt2Config, recomputeLogits } from '../src/index';
import { normalizeAttention } from '../src/config';
import { keySplits, splitKvTuning } from '../src/split_kv';
import { FORWARD_TILES } from '../kernels/webgpu/tiles';

function report(m: Record<string, unknown>): void {
  const line = JSON.stringify(m);
  console.log(line);
  if (process.env.OUT) fs.appendFileSync(path.join(process.env.OUT, 'decode.jsonl'), line + '\n');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const round = (x: number) => Math.round(x * 1000) / 1000;

/** Runs with the split path as the rule decides (undefined) or forced off (1). */
async function withSplit<T>(force: number | undefined, run: () => Promise<T>): Promise<T> {
  if (force === undefined) delete splitKvTuning.force; else splitKvTuning.force = force;
  try {
    return await run();
  } finally {
    delete splitKvTuning.force;
  }
}

/** ms per call of decode attention: `reps` calls queued back to back, timed to the last readback. */
async function attentionMs(nk: number, force: number | undefined): Promise<number> {
  const [heads, d, reps] = [12, 64, 20];
  const q = tf.randomNormal([1, heads, 1, d]);
  const k = tf.randomNormal([1, heads, nk, d]);
  const v = tf.randomNormal([1, heads, nk, d]);
  try {
    return await withSplit(force, async () => {
      const once = () => flashAttention(q, k, v);
      for (let i = 0; i < 3; i++) {
        const o = once();
        await o.data();
        o.dispose();
      }
      const samples: number[] = [];
      for (let s = 0; s < 5; s++) {
        const start = performance.now();
        const outs = Array.from({ length: reps }, once);
        await outs[reps - 1].data();
        samples.push((performance.now() - start) / reps);
        tf.dispose(outs);
      }
      return median(samples);
    });
  } finally {
    tf.dispose([q, k, v]);
  }
}

/** The number of key ranges the rule picks for a decode step over a cache of `maxLength` (webgpu's one-pass tile). */
function splitsFor(heads: number, maxLength: number): number {
  return tf.tidy(() => {
    const q = tf.zeros([1, 1, heads, 64]);
    const kv = tf.zeros([1, maxLength, heads, 64]);
    return keySplits(normalizeAttention(q, kv, kv, { layout: 'BSHD' }).config, FORWARD_TILES[0].rows);
  });
}

/** ms per generated token with the KV cache, at `length` cached positions. */
async function cachedTokenMs(model: LayersModel, length: number, tokens: number, vocab: number): Promise<number> {
  const decoder = new Gpt2Decoder(model);
  const warmup = 2;
  const cache = decoder.newCache(1, length + warmup + tokens);
  try {
    const prompt = tf.tensor2d(Int32Array.from({ length }, () => Math.floor(Math.random() * vocab)), [1, length], 'int32');
    const prefill = decoder.forward(cache, prompt, [length]);
    await prefill.data();
    tf.dispose([prompt, prefill]);
    const times: number[] = [];
    let next = 0;
    for (let t = 0; t < warmup + tokens; t++) {
      const start = performance.now();
      const ids = tf.tensor2d([next], [1, 1], 'int32');
      const logits = decoder.forward(cache, ids, [1]);
      const argmax = tf.argMax(tf.reshape(logits, [-1]));
      next = (await argmax.data())[0];
      tf.dispose([ids, logits, argmax]);
      if (t >= warmup) times.push(performance.now() - start);
    }
    return median(times);
  } finally {
    cache.dispose();
  }
}

/** ms per generated token recomputing the whole prefix of `length` tokens. */
async function recomputeTokenMs(model: LayersModel, length: number, tokens: number, vocab: number): Promise<number> {
  const sequence = Array.from({ length }, () => Math.floor(Math.random() * vocab));
  const times: number[] = [];
  for (let t = 0; t < 1 + tokens; t++) {
    const start = performance.now();
    const logits = recomputeLogits(model, [sequence]);
    const argmax = tf.argMax(tf.reshape(logits, [-1]));
    const next = (await argmax.data())[0];
    tf.dispose([logits, argmax]);
    if (t >= 1) times.push(performance.now() - start);
    // The window stays `length` tokens long, so every token costs the same.
    sequence.shift();
    sequence.push(next);
  }
  return median(times);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      preset: { type: 'string', default: 'small' },
      lengths: { type: 'string', default: '128,256,512,1024,2048,4096,8192' },
      tokens: { type: 'string', default: '8' },
      'recompute-max': { type: 'string', default: '4096' },
      keys: { type: 'string', default: '1024,4096,8192,16384' },
      backend: { type: 'string', default: 'auto' },
    },
  });
  if (!isBackendRequest(values.backend)) throw new Error(`--backend must be auto, webgpu or cpu, got ${values.backend}`);
  const backend = await selectBackend(values.backend);
  console.error(`backend: ${backend.description}`);
  const device = backend.description;

  for (const nk of values.keys.split(',').map(Number)) {
    for (const force of [undefined, 1]) {
      try {
        const ms = await attentionMs(nk, force);
        report({ bench: 'decode-attention', device, nq: 1, nk, heads: 12, d: 64, splits: force ?? 'rule', msPerCall: round(ms) });
      } catch (error) {
        report({ bench: 'decode-attention', device, nk, splits: force ?? 'rule', error: String(error) });
      }
    }
  }

  const lengths = values.lengths.split(',').map(Number);
  const tokens = Number(values.tokens);
  const maxLength = Math.max(...lengths) + tokens + 2;
  const config = gpt2Config({ preset: values.preset });
  const vocab = config.vocabSize;
  const flash = gpt2({ preset: values.preset, contextLength: maxLength, dropout: 0, name: 'decode_flash' });
  const naive = gpt2({ preset: values.preset, contextLength: maxLength, dropout: 0, attention: 'naive', name: 'decode_naive' });
  naive.setWeights(flash.getWeights());
  const heads = config.numHeads;
  for (const length of lengths) {
    const base = { bench: 'gpt2-decode', device, preset: values.preset, cacheLength: length, tokens };
    const splits = splitsFor(heads, length + tokens + 2);
    const variants: Array<[string, () => Promise<number>]> = [
      [`cache, split by rule (${splits})`, () => withSplit(undefined, () => cachedTokenMs(flash, length, tokens, vocab))],
      ['cache, one-pass', () => withSplit(1, () => cachedTokenMs(flash, length, tokens, vocab))],
    ];
    if (length <= Number(values['recompute-max'])) {
      variants.push(['recompute, naive attention', () => recomputeTokenMs(naive, length, tokens, vocab)]);
      variants.push(['recompute, flash attention', () => recomputeTokenMs(flash, length, tokens, vocab)]);
    }
    for (const [variant, run] of variants) {
      try {
        const ms = await run();
        report({ ...base, variant, msPerToken: round(ms), tokensPerSecond: round(1000 / ms) });
      } catch (error) {
        report({ ...base, variant, error: error instanceof Error ? error.message.split('\n')[0] : String(error) });
      }
    }
  }
  flash.dispose();
  naive.dispose();
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
