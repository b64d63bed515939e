// Decoding benchmarks (issue 7), on the best backend Node has (`../examples/gpt2/backend.ts`):
//   1. decode attention alone: Nq = 1 against Nk keys (B = 1, 12 heads, D = 64) as the split rule of
//      src/split_kv.ts decides ("rule"), forced through the split path with the rule's range count
//      ("split"), and forced through the one-pass kernel ("one-pass");
//   2. GPT-2 ms per generated token at several cache lengths with the KV cache, in the same three
//      variants, against recomputing the whole prefix every token, as generation without a cache
//      does: model.predict with naive attention (the target's baseline) and with flash attention, and
//      the decoder's own forward over the whole window ("lean": the same kernels as a cached step).
// Robustness: variants are interleaved (attention: round-robin rounds of queued calls; GPT-2: rounds
// of one token per variant, cached ones on one shared cache, then the recompute ones, so all see the
// same machine state), warm-up rounds first (pipelines compile on first use; the recompute window
// keeps its length, so its shaders too are compiled before timing), medians reported with the min
// and max. A token's time includes reading its logits' argmax back, as real sampling must;
// `enqueueMs` is the part spent before the cached step's forward() returned (JS dispatch of the
// step's ops), which shows whether a fixed per-token cost is CPU-side; the dispatches, submissions
// and buffer creations of one cached step are counted at the WebGPU API. Random weights and tokens:
// they do not change the work.
// One JSON line per measurement on stdout (and in $OUT/decode.jsonl when $OUT is set), then a
// markdown summary (also $OUT/decode.md).
//
//   node decode.mjs [--preset small] [--lengths 128,256,512,1024,2048,4096,8192] [--tokens 16 (rounds)]
//     [--recompute-tokens 3 (rounds with recompute)] [--recompute-max 4096] [--keys 128,...,16384 ('' skips)]
//     [--backend auto|webgpu|cpu]
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor2D } from '@tensorflow/tfjs-core';
// A named import keeps the cpu backend in an esbuild bundle (its package is marked side-effect free).
import { version_cpu } from '@tensorflow/tfjs-backend-cpu';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { isBackendRequest, selectBackend } from '../examples/gpt2/backend';
import { flashAttention, gpt2, Gpt2Decoder, gpt2Config, KVCache, recomputeLogits } from '../src/index';
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

const WARMUP_ROUNDS = 2;
const VARIANTS = 3;

/** Positions of the cache for a prompt of `length`: every variant's warm-up and timed tokens, and one spare. */
function cacheSize(length: number, rounds: number): number {
  return length + VARIANTS * (WARMUP_ROUNDS + rounds) + 1;
}

interface TokenTimes { total: number[]; enqueue: number[] }

/** One cached decode step of `ids` [1, 1] with its argmax read back; returns the next token and its times. */
async function cachedToken(decoder: Gpt2Decoder, cache: KVCache, token: number): Promise<{ next: number; total: number; enqueue: number }> {
  const start = performance.now();
  const ids = tf.tensor2d([token], [1, 1], 'int32');
  const logits = decoder.forward(cache, ids, [1]);
  const enqueued = performance.now();
  const argmax = tf.argMax(tf.reshape(logits, [-1]));
  const next = (await argmax.data())[0];
  const done = performance.now();
  tf.dispose([ids, logits, argmax]);
  return { next, total: done - start, enqueue: enqueued - start };
}

/** A cacheless way to get the logits [1, vocab] after a window of tokens. */
interface Recompute {
  name: string;
  logits: (window: number[]) => Tensor2D;
}

/**
 * The recompute baselines: `model.predict` of the LayersModel over the whole window, with naive and
 * with flash attention (logits at every position, as the model computes them); and "lean": the
 * decoder's prefill over the whole window on an emptied cache (the decode step's kernels, causal
 * flash attention, logits at every position), the fastest cacheless forward this library has.
 */
function recomputes(naive: LayersModel, flash: LayersModel, lean: { decoder: Gpt2Decoder; cache: KVCache }): Recompute[] {
  const leanLogits = (window: number[]): Tensor2D => {
    lean.cache.lengths.fill(0);
    const ids = tf.tensor2d(window, [1, window.length], 'int32');
    const logits = lean.decoder.forward(lean.cache, ids, [window.length]);
    const last = tf.tidy(() => tf.reshape(tf.slice(logits, [0, window.length - 1, 0], [1, 1, -1]), [1, -1]) as Tensor2D);
    tf.dispose([ids, logits]);
    return last;
  };
  return [
    { name: 'naive', logits: window => recomputeLogits(naive, [window]) },
    { name: 'flash', logits: window => recomputeLogits(flash, [window]) },
    { name: 'lean', logits: leanLogits },
  ];
}

/**
 * One cacheless token: the logits after the window, then the argmax read back. The window keeps its
 * length (the oldest token leaves as the new one enters), so every call has the same shapes and
 * runs the shaders compiled by the warm-up calls.
 */
async function recomputeToken(recompute: Recompute, window: number[]): Promise<number> {
  const start = performance.now();
  const logits = recompute.logits(window);
  const argmax = tf.argMax(tf.reshape(logits, [-1]));
  const next = (await argmax.data())[0];
  tf.dispose([logits, argmax]);
  window.shift();
  window.push(next);
  return performance.now() - start;
}

/** Calls of a WebGPU method (e.g. GPUQueue.submit) while counting; the bench's instrument, undone by `restore`. */
function countCalls(className: string, method: string): { count: () => number; restore: () => void } {
  const prototype: unknown = Reflect.get(Reflect.get(globalThis, className) ?? {}, 'prototype');
  const original: unknown = prototype ? Reflect.get(prototype, method) : undefined;
  if (!prototype || typeof original !== 'function') return { count: () => NaN, restore: () => undefined };
  let calls = 0;
  Reflect.set(prototype, method, function (this: unknown, ...args: unknown[]) {
    calls++;
    return original.apply(this, args);
  });
  return { count: () => calls, restore: () => Reflect.set(prototype, method, original) };
}

/**
 * What one cached step enqueues: on webgpu the compute dispatches, queue submissions and buffers
 * created (uploads, and uniform buffers outside tfjs' pool), counted at the WebGPU API over a step
 * with its argmax and read-back; and the tfjs kernels of the step's forward() (tf.profile; Reshape
 * and op scopes excluded: they move no data).
 */
async function stepCounts(decoder: Gpt2Decoder, cache: KVCache): Promise<Record<string, number>> {
  const counters = {
    dispatches: countCalls('GPUComputePassEncoder', 'dispatchWorkgroups'),
    submits: countCalls('GPUQueue', 'submit'),
    buffersCreated: countCalls('GPUDevice', 'createBuffer'),
  };
  let counts: Record<string, number>;
  try {
    await cachedToken(decoder, cache, 0);
    counts = Object.fromEntries(Object.entries(counters).map(([name, c]) => [name, c.count()]));
  } finally {
    Object.values(counters).forEach(c => c.restore());
  }
  const ids = tf.tensor2d([0], [1, 1], 'int32');
  const profile = await tf.profile(() => decoder.forward(cache, ids, [1]));
  tf.dispose([ids, profile.result]);
  counts.tfjsKernels = profile.kernels.filter(k => k.name !== 'Reshape' && !k.name.endsWith('__op')).length;
  return counts;
}

interface LengthResult { cached: TokenTimes[]; recompute: number[][]; counts: Record<string, number> }

/**
 * ms per generated token at `length` tokens of context, in rounds: each round generates one token
 * with the KV cache in every split variant (all on one shared cache, which grows by one position per
 * token), then, in the first `recomputeRounds` rounds, one token per recompute model over a window of
 * `length` tokens. Warm-up rounds first (pipelines compile on first use), untimed.
 */
async function gpt2Rounds(naive: LayersModel, flash: LayersModel, recomputing: boolean, length: number, rounds: number,
  recomputeRounds: number, vocab: number, variants: Variant[]): Promise<LengthResult> {
  const decoder = new Gpt2Decoder(flash);
  const cache = decoder.newCache(1, cacheSize(length, rounds) + 2);
  const leanCache = recomputing ? decoder.newCache(1, length) : null;
  const baselines = leanCache ? recomputes(naive, flash, { decoder, cache: leanCache }) : [];
  const prompt = Array.from({ length }, () => Math.floor(Math.random() * vocab));
  const windows = baselines.map(() => [...prompt]);
  const result: LengthResult = {
    cached: variants.map(() => ({ total: [], enqueue: [] })), recompute: windows.map(() => []), counts: {},
  };
  try {
    const ids = tf.tensor2d(prompt, [1, length], 'int32');
    const prefill = decoder.forward(cache, ids, [length]);
    await prefill.data();
    tf.dispose([ids, prefill]);
    let next = 0;
    for (let r = -WARMUP_ROUNDS; r < rounds; r++) {
      for (const [n, variant] of variants.entries()) {
        setForce(variant.force);
        const t = await cachedToken(decoder, cache, next);
        next = t.next;
        if (r >= 0) {
          result.cached[n].total.push(t.total);
          result.cached[n].enqueue.push(t.enqueue);
        }
      }
      setForce(undefined);
      if (r >= recomputeRounds) continue;
      for (const [m, window] of windows.entries()) {
        const ms = await recomputeToken(baselines[m], window);
        if (r >= 0) result.recompute[m].push(ms);
      }
    }
    result.counts = await stepCounts(decoder, cache);
    return result;
  } finally {
    setForce(undefined);
    cache.dispose();
    leanCache?.dispose();
    decoder.dispose();
  }
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
  // --keys '' skips the attention part.
  for (const nk of values.keys.split(',').filter(k => k !== '').map(Number)) {
    try {
      await attention(nk);
    } catch (error) {
      report({ bench: 'decode-attention', nk, error: String(error) });
      summary(`| ${nk} | error: ${String(error).split('\n')[0]} | | | |`);
    }
  }

  const lengths = values.lengths.split(',').map(Number);
  const rounds = Number(values.tokens);
  const recomputeRounds = Number(values['recompute-tokens']);
  const config = gpt2Config({ preset: values.preset });
  const vocab = config.vocabSize;
  const heads = config.numHeads;
  const maxLength = cacheSize(Math.max(...lengths), rounds) + 2;
  const flash = gpt2({ preset: values.preset, contextLength: maxLength, dropout: 0, name: 'decode_flash' });
  const naive = gpt2({ preset: values.preset, contextLength: maxLength, dropout: 0, attention: 'naive', name: 'decode_naive' });
  naive.setWeights(flash.getWeights());
  summary(`\nGPT-2 ${values.preset}, batch 1, ms per token, median (min–max), in rounds after ${WARMUP_ROUNDS} warm-up ` +
    `rounds: each round one token with the cache per split variant (${rounds} rounds), then, in the first ` +
    `${recomputeRounds} rounds, one token recomputing the ${'`'}length${'`'}-token window: model.predict with naive and ` +
    "with flash attention, and lean (the decoder's prefill on an emptied cache, flash attention); logits at every " +
    'position, argmax of the last. enqueue = JS time until the ' +
    "cached step's forward() returned. Per cached step: dispatches / submits / buffers created (WebGPU API, with the " +
    'argmax and read-back) and tfjs kernels of forward() (no Reshape).\n');
  summary('| context | cache, rule | cache, split | cache, one-pass | enqueue (rule) | recompute, naive | recompute, flash | ' +
    'recompute, lean | rule vs naive recompute | rule vs lean recompute | dispatches / submits / buffers / kernels |');
  summary('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const length of lengths) {
    const base = { bench: 'gpt2-decode', preset: values.preset, cacheLength: length };
    // Attention reads the whole preallocated cache (keyLengths hide the unfilled part): the rule sees its size.
    const { variants } = variantsFor(heads, cacheSize(length, rounds));
    const recomputing = length <= Number(values['recompute-max']);
    try {
      const r = await gpt2Rounds(naive, flash, recomputing, length, rounds, recomputeRounds, vocab, variants);
      const cells = variants.map((variant, n) => {
        const s = stats(r.cached[n].total), e = stats(r.cached[n].enqueue);
        report({ ...base, variant: `cache, ${variant.name}`, msPerToken: round(s.median), min: round(s.min), max: round(s.max),
          tokens: s.n, enqueueMs: round(e.median), tokensPerSecond: round(1000 / s.median), ...(n === 0 ? r.counts : {}) });
        return `${round(s.median)} (${round(s.min)}–${round(s.max)})`;
      });
      const recompute = ['naive', 'flash', 'lean'].map((name, m) => {
        if (!recomputing) return { cell: 'not run', median: NaN };
        const s = stats(r.recompute[m]);
        report({ ...base, variant: `recompute, ${name}`, msPerToken: round(s.median), min: round(s.min),
          max: round(s.max), tokens: s.n, tokensPerSecond: round(1000 / s.median) });
        return { cell: `${round(s.median)} (${round(s.min)}–${round(s.max)})`, median: s.median };
      });
      const ruleMs = stats(r.cached[0].total).median;
      const ratio = (ms: number) => Number.isFinite(ms) ? `${round(ms / ruleMs)}×` : '—';
      const c = r.counts;
      summary(`| ${length} | ${cells.join(' | ')} | ${round(stats(r.cached[0].enqueue).median)} | ` +
        `${recompute.map(x => x.cell).join(' | ')} | ${ratio(recompute[0].median)} | ${ratio(recompute[2].median)} | ` +
        `${c.dispatches} / ${c.submits} / ${c.buffersCreated} / ${c.tfjsKernels} |`);
    } catch (error) {
      const message = error instanceof Error ? error.message.split('\n')[0] : String(error);
      report({ ...base, variant: 'all', error: message });
      summary(`| ${length} | error: ${message} | | | | | | | | | |`);
    }
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
