// Decoding benchmarks (issue 7), on the best backend Node has (`../examples/gpt2/backend.ts`):
//   1. decode attention alone: Nq = 1 against Nk keys (B = 1, 12 heads, D = 64) as the split rule of
//      src/split_kv.ts decides ("rule"), forced through the split path with the rule's range count
//      ("split"), and forced through the one-pass kernel ("one-pass");
//   2. GPT-2 ms per generated token at several cache lengths with the KV cache, in the same three
//      variants, against recomputing the whole prefix every token with naive attention (and with
//      flash attention), as generation without a cache does.
// Robustness: variants are interleaved (attention: round-robin rounds of queued calls; GPT-2: token
// by token on one shared cache, so every variant sees the same cache and the same machine state),
// warm-up first (pipelines compile on first use), medians reported with the min and max. A token's
// time includes reading its logits' argmax back, as real sampling must; `enqueueMs` is the part
// spent before the step's forward() returned (JS dispatch of the step's ops), which shows whether a
// fixed per-token cost is CPU-side. Random weights and tokens: they do not change the work.
// One JSON line per measurement on stdout (and in $OUT/decode.jsonl when $OUT is set), then a
// markdown summary (also $OUT/decode.md).
//
//   node decode.mjs [--preset small] [--lengths 128,256,512,1024,2048,4096,8192] [--tokens 16]
//     [--recompute-tokens 3] [--recompute-max 4096] [--keys 128,...,16384] [--backend auto|webgpu|cpu]
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import * as tf from '@tensorflow/tfjs-core';
// A named import keeps the cpu backend in an esbuild bundle (its package is marked side-effect free).
import { version_cpu } from '@tensorflow/tfjs-backend-cpu';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { isBackendRequest, selectBackend } from '../examples/gpt2/backend';
import { flashAttention, gpt2, Gpt2Decoder, gpt2Config, recomputeLogits } from '../src/index';
import { normalizeAttention } from '../src/config';
import { keySplits, splitCount, splitKvTuning } from '../src/split_kv';
import { FORWARD_TILES } from '../kernels/webgpu/tiles';

const lines: string[] = [];

function report(m: Record<string, unknown>): void {
  const line = JSON.stringify(m);
  console.log(line);
  if (process.env.OUT) fs.appendFileSync(path.join(process.env.OUT, 'decode.jsonl'), line + '\n');
}

function summary(line: string): void {
  lines.push(line);
}

function stats(xs: number[]): { median: number; min: number; max: number; n: number } {
  const s = [...xs].sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)], min: s[0], max: s[s.length - 1], n: s.length };
}

const round = (x: number) => Math.round(x * 1000) / 1000;

/** A split setting: undefined = the rule, n = n ranges forced (1: the one-pass kernel). */
interface Variant { name: string; force: number | undefined }

function setForce(force: number | undefined): void {
  if (force === undefined) delete splitKvTuning.force; else splitKvTuning.force = force;
}

/** Key ranges the rule gives decode attention (Nq = 1, BSHD cache of `nk`), and the count it would use if it split. */
function splitsFor(heads: number, nk: number): { rule: number; forced: number } {
  return tf.tidy(() => {
    const q = tf.zeros([1, 1, heads, 64]);
    const kv = tf.zeros([1, nk, heads, 64]);
    const c = normalizeAttention(q, kv, kv, { layout: 'BSHD' }).config;
    return { rule: keySplits(c, FORWARD_TILES[0].rows), forced: splitCount(c, FORWARD_TILES[0].rows) };
  });
}

function variantsFor(heads: number, nk: number): { variants: Variant[]; rule: number } {
  const { rule, forced } = splitsFor(heads, nk);
  return {
    rule,
    variants: [
      { name: `rule (${rule === 1 ? 'one-pass' : `${rule} ranges`})`, force: undefined },
      { name: `split (${forced} ranges)`, force: forced },
      { name: 'one-pass', force: 1 },
    ],
  };
}

/** ms per call of decode attention per variant: rounds of `reps` queued calls, variants interleaved. */
async function attention(nk: number): Promise<void> {
  const [heads, d, reps, rounds] = [12, 64, 20, 9];
  const { variants } = variantsFor(heads, nk);
  const q = tf.randomNormal([1, 1, heads, d]);
  const k = tf.randomNormal([1, nk, heads, d]);
  const v = tf.randomNormal([1, nk, heads, d]);
  const samples = variants.map(() => [] as number[]);
  try {
    const once = () => flashAttention(q, k, v, { layout: 'BSHD' });
    for (let r = -1; r < rounds; r++) {
      for (const [n, variant] of variants.entries()) {
        setForce(variant.force);
        const start = performance.now();
        const outs = Array.from({ length: r < 0 ? 3 : reps }, once);
        await outs[outs.length - 1].data();
        if (r >= 0) samples[n].push((performance.now() - start) / reps);
        tf.dispose(outs);
      }
    }
  } finally {
    setForce(undefined);
    tf.dispose([q, k, v]);
  }
  const onePass = stats(samples[variants.length - 1]).median;
  const row = variants.map((variant, n) => {
    const s = stats(samples[n]);
    report({ bench: 'decode-attention', nq: 1, nk, heads, d: 64, layout: 'BSHD', variant: variant.name,
      msPerCall: round(s.median), min: round(s.min), max: round(s.max), rounds, callsPerRound: reps,
      speedupVsOnePass: round(onePass / s.median) });
    return `${round(s.median)} (${round(s.min)}–${round(s.max)})`;
  });
  summary(`| ${nk} | ${row.join(' | ')} | ${round(onePass / stats(samples[0]).median)}× |`);
}

const WARMUP_TOKENS = 2;
const VARIANTS = 3;

/** Positions of the cache for a prompt of `length`: every variant's warm-up and timed tokens, and one spare. */
function cacheSize(length: number, tokens: number): number {
  return length + VARIANTS * (WARMUP_TOKENS + tokens) + 1;
}

/**
 * ms per generated token with the KV cache at `length` cached positions, for every variant, token
 * by token interleaved on one cache (it grows by one position per token: 3·tokens positions in all).
 */
async function cachedTokens(model: LayersModel, length: number, tokens: number, vocab: number, variants: Variant[]):
    Promise<Array<{ total: number[]; enqueue: number[] }>> {
  const decoder = new Gpt2Decoder(model);
  const cache = decoder.newCache(1, cacheSize(length, tokens));
  const times = variants.map(() => ({ total: [] as number[], enqueue: [] as number[] }));
  try {
    const prompt = tf.tensor2d(Int32Array.from({ length }, () => Math.floor(Math.random() * vocab)), [1, length], 'int32');
    const prefill = decoder.forward(cache, prompt, [length]);
    await prefill.data();
    tf.dispose([prompt, prefill]);
    let next = 0;
    for (let t = 0; t < WARMUP_TOKENS + tokens; t++) {
      for (const [n, variant] of variants.entries()) {
        setForce(variant.force);
        const start = performance.now();
        const ids = tf.tensor2d([next], [1, 1], 'int32');
        const logits = decoder.forward(cache, ids, [1]);
        const enqueued = performance.now();
        const argmax = tf.argMax(tf.reshape(logits, [-1]));
        next = (await argmax.data())[0];
        const done = performance.now();
        tf.dispose([ids, logits, argmax]);
        if (t >= WARMUP_TOKENS) {
          times[n].total.push(done - start);
          times[n].enqueue.push(enqueued - start);
        }
      }
    }
    return times;
  } finally {
    setForce(undefined);
    cache.dispose();
  }
}

/** ms per generated token recomputing the whole prefix of `length` tokens (after one warm-up token). */
async function recomputeTokens(model: LayersModel, length: number, tokens: number, vocab: number): Promise<number[]> {
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
  return times;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      preset: { type: 'string', default: 'small' },
      lengths: { type: 'string', default: '128,256,512,1024,2048,4096,8192' },
      tokens: { type: 'string', default: '16' },
      'recompute-tokens': { type: 'string', default: '3' },
      'recompute-max': { type: 'string', default: '4096' },
      keys: { type: 'string', default: '128,256,512,1024,2048,4096,8192,16384' },
      backend: { type: 'string', default: 'auto' },
    },
  });
  if (!isBackendRequest(values.backend)) throw new Error(`--backend must be auto, webgpu or cpu, got ${values.backend}`);
  const backend = await selectBackend(values.backend);
  console.error(`backend: ${backend.description}`);
  summary(`Device: ${backend.description}`);
  report({ bench: 'decode-backend', device: backend.description, tfjsBackendCpu: version_cpu });

  summary('\n| Nq=1, 12 heads, D=64, Nk | rule ms | split ms | one-pass ms | one-pass / rule |\n|---|---|---|---|---|');
  for (const nk of values.keys.split(',').map(Number)) {
    try {
      await attention(nk);
    } catch (error) {
      report({ bench: 'decode-attention', nk, error: String(error) });
      summary(`| ${nk} | error: ${String(error).split('\n')[0]} | | | |`);
    }
  }

  const lengths = values.lengths.split(',').map(Number);
  const tokens = Number(values.tokens);
  const recomputeCount = Number(values['recompute-tokens']);
  const maxLength = cacheSize(Math.max(...lengths), tokens);
  const config = gpt2Config({ preset: values.preset });
  const vocab = config.vocabSize;
  const heads = config.numHeads;
  const flash = gpt2({ preset: values.preset, contextLength: maxLength, dropout: 0, name: 'decode_flash' });
  const naive = gpt2({ preset: values.preset, contextLength: maxLength, dropout: 0, attention: 'naive', name: 'decode_naive' });
  naive.setWeights(flash.getWeights());
  summary(`\nGPT-2 ${values.preset}, batch 1, ms per token (median, min–max; ${tokens} tokens per cached variant, ` +
    `interleaved; ${recomputeCount} per recompute variant); enqueue = JS time until the step's forward() returned.\n`);
  summary('| cache length | cache, rule | cache, split | cache, one-pass | enqueue (rule) | recompute, naive | recompute, flash | rule vs naive recompute |');
  summary('|---|---|---|---|---|---|---|---|');
  for (const length of lengths) {
    const base = { bench: 'gpt2-decode', preset: values.preset, cacheLength: length };
    // Attention reads the whole preallocated cache (keyLengths hide the unfilled part): the rule sees its size.
    const { variants } = variantsFor(heads, cacheSize(length, tokens));
    const cells: string[] = [];
    let ruleMs = NaN, enqueueCell = '';
    try {
      const times = await cachedTokens(flash, length, tokens, vocab, variants);
      variants.forEach((variant, n) => {
        const s = stats(times[n].total), e = stats(times[n].enqueue);
        report({ ...base, variant: `cache, ${variant.name}`, msPerToken: round(s.median), min: round(s.min), max: round(s.max),
          tokens: s.n, enqueueMs: round(e.median), tokensPerSecond: round(1000 / s.median) });
        cells.push(`${round(s.median)} (${round(s.min)}–${round(s.max)})`);
        if (n === 0) {
          ruleMs = s.median;
          enqueueCell = `${round(e.median)}`;
        }
      });
    } catch (error) {
      report({ ...base, variant: 'cache', error: error instanceof Error ? error.message.split('\n')[0] : String(error) });
      cells.push('error', 'error', 'error');
    }
    let naiveMs = NaN;
    for (const [name, model] of [['naive', naive], ['flash', flash]] as const) {
      if (length > Number(values['recompute-max'])) {
        cells.push('not run');
        continue;
      }
      try {
        const s = stats(await recomputeTokens(model, length, recomputeCount, vocab));
        report({ ...base, variant: `recompute, ${name} attention`, msPerToken: round(s.median), min: round(s.min),
          max: round(s.max), tokens: s.n, tokensPerSecond: round(1000 / s.median) });
        cells.push(`${round(s.median)}`);
        if (name === 'naive') naiveMs = s.median;
      } catch (error) {
        report({ ...base, variant: `recompute, ${name} attention`, error: error instanceof Error ? error.message.split('\n')[0] : String(error) });
        cells.push('error');
      }
    }
    const ratio = Number.isFinite(naiveMs / ruleMs) ? `${round(naiveMs / ruleMs)}×` : '—';
    summary(`| ${length} | ${cells.slice(0, 3).join(' | ')} | ${enqueueCell} | ${cells.slice(3).join(' | ')} | ${ratio} |`);
  }
  flash.dispose();
  naive.dispose();
  const text = lines.join('\n');
  console.log(`\n${text}`);
  if (process.env.OUT) fs.writeFileSync(path.join(process.env.OUT, 'decode.md'), text + '\n');
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
