// Flash attention against naive tfjs webgpu attention (matMul → softmax → matMul), in one run, on
// the webgpu backend through Dawn in Node: ms, TFLOP/s and peak tensor memory, forward and
// forward+backward, causal and not, D = 64 and 128, B = 1, H = 12, float32. First sweeps tile
// configurations at N = 4096 and keeps the fastest for the rest.
//
//   /work/shared/gpu/pack.sh bench/webgpu.ts   then on the GPU machine:   bash .gpu/run.sh webgpu.mjs
//   (--final: the headline table with default tiles; --sweep / --sweep-causal: the wide forward tile
//   sweep; --ab: interleaved rounds of the forward candidates; --ab-schedule: interleaved rounds of the
//   forward schedules, old against new (paired causal blocks, mask on edge tiles only, block-sparse
//   from mask bits); --ab-targets: interleaved rounds of the candidates for the causal and
//   block-sparse ratio targets (halved pairs, sparse tiles); --split-check: dispatch splitting
//   under a 2 MiB binding limit vs unsplit; --quick)
// Results: a table on stdout and JSON in $OUT/webgpu_bench.json (when OUT is set).
//
// Timing: after a warm-up (compilation), the fastest of three runs sizes the batch, then `iters` runs are
// queued back to back and timed with the host clock around queue.onSubmittedWorkDone(). Memory:
// tf.profile's peakBytes (bytes of live tensors at the peak, which includes the naive scores).
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { flashAttention } from '../src/index';
import type { FlashAttentionOptions } from '../src/config';
import { forwardWorkgroupBytes } from '../kernels/webgpu/attention_forward';
import { dkdvWorkgroupBytes } from '../kernels/webgpu/attention_backward_dkdv';
import { dqWorkgroupBytes } from '../kernels/webgpu/attention_backward_dq';
import { webgpuAttentionTuning } from '../kernels/webgpu/flash_attention';
import type { ForwardSchedule } from '../kernels/webgpu/tuning';
import { threadsOf, Tiles } from '../kernels/webgpu/tiles';
import type { AttentionConfig } from '../src/config';
import { initDawn } from '../src/node';
import { backend, settle, timeRepeated } from './webgpu_timing';

const H = 12;
const quick = process.argv.includes('--quick');
/** `--repeats R`: each row is the median of R timed batches (after a warm-up), its spread printed beside it. */
const repeats = Math.max(1, Number(process.argv[process.argv.indexOf('--repeats') + 1]) || 1);

interface Row {
  impl: string; pass: 'fwd' | 'fwd+bwd'; n: number; d: number; causal: boolean; note?: string;
  ms?: number; enqueueMs?: number; tflops?: number; peakMiB?: number; error?: string;
  /** Fastest and slowest repeat (ms) when a row is timed more than once (--repeats). */
  spread?: [number, number];
}
const rows: Row[] = [];

function flops(n: number, d: number, causal: boolean, pass: Row['pass']): number {
  const fwd = 4 * H * n * n * d * (causal ? 0.5 : 1);
  return pass === 'fwd' ? fwd : 3.5 * fwd;
}

type Impl = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.Tensor;

function naive(causal: boolean, n: number): { f: Impl; dispose: () => void } {
  const mask = causal ? tf.tidy(() => tf.where(
    tf.greater(tf.reshape(tf.range(0, n), [1, n]), tf.reshape(tf.range(0, n), [n, 1])),
    tf.fill([n, n], -Infinity), tf.zeros([n, n]))) : null;
  return {
    f: (q, k, v) => {
      let s = tf.mul(tf.matMul(q as tf.Tensor4D, k as tf.Tensor4D, false, true), 1 / Math.sqrt(q.shape[3] as number));
      if (mask) s = tf.add(s, mask);
      return tf.matMul(tf.softmax(s), v as tf.Tensor4D);
    },
    dispose: () => mask?.dispose(),
  };
}

function flash(options: FlashAttentionOptions): Impl {
  return (q, k, v) => flashAttention(q, k, v, options);
}

/**
 * The inputs (q, k, v, dy; seeds 1–4) of the last measured shape, kept while measurements stay at
 * that shape. Made afresh before every timed batch, as they were, they coincided with erratic dense
 * times in the multi-variant processes (H100, 18:45–19:15 UTC: the first dense batch 7–11 ms, later
 * ones 2.3–4.9, where processes that made them once measured 2.30–2.35 every time); cause unproven.
 */
let lastInputs: { key: string; tensors: tf.Tensor[] } | undefined;

function inputsFor(n: number, d: number): tf.Tensor[] {
  const key = `${n}x${d}`;
  if (lastInputs?.key !== key) {
    if (lastInputs) tf.dispose(lastInputs.tensors);
    lastInputs = { key, tensors: [1, 2, 3, 4].map(seed => tf.randomNormal([1, H, n, d], 0, 1, 'float32', seed)) };
  }
  return lastInputs.tensors;
}

/** Times `impl` for `row`; `report` false: neither printed nor kept for the summary (--ab-schedule rounds). */
async function measure(row: Row, impl: Impl, budgetMs: number, withMemory = true, report = true): Promise<Row> {
  const { n, d } = row;
  const [q, k, v, dy] = inputsFor(n, d);
  const step = row.pass === 'fwd'
    ? () => tf.tidy(() => { impl(q, k, v); })
    : () => tf.tidy(() => { tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => impl(a, b, c))([q, k, v], dy); });
  const device = backend().device;
  device.pushErrorScope('validation');
  try {
    const t = await timeRepeated(step, budgetMs, repeats);
    row.ms = t.median;
    row.enqueueMs = t.enqueue;
    if (repeats > 1) row.spread = [t.min, t.max];
    row.tflops = flops(n, d, row.causal, row.pass) / (row.ms * 1e9);
    if (withMemory) {
      const profile = await tf.profile(() => { step(); });
      row.peakMiB = profile.peakBytes / 2 ** 20;
    }
  } catch (e) {
    row.error = (e as Error).message.slice(0, 200);
  }
  await settle();
  const invalid = await device.popErrorScope();
  if (invalid) row.error = `WebGPU validation error: ${invalid.message.split('\n')[0]}`;
  if (report || row.error) {
    rows.push(row);
    console.log(format(row));
  }
  return row;
}

function format(r: Row): string {
  const cells = [r.impl.padEnd(7), r.pass.padEnd(7), `N=${r.n}`.padEnd(8), `D=${r.d}`.padEnd(5),
    (r.causal ? 'causal' : 'full').padEnd(6),
    r.error ? `FAILED ${r.error}` : `${r.ms?.toFixed(3).padStart(9)} ms ${r.tflops?.toFixed(2).padStart(6)} TFLOP/s` +
      (r.spread ? ` (${r.spread.map(x => x.toFixed(3)).join('–')})` : '') +
      (r.peakMiB !== undefined ? ` peak ${r.peakMiB.toFixed(1)} MiB` : ''), r.note ?? ''];
  return cells.join(' ');
}

/** A config shaped like the bench problem, for the workgroup-memory fit check. */
function benchConfig(n: number, d: number): AttentionConfig {
  return {
    batch: 1, headsQ: H, headsKV: H, seqQ: n, seqK: n, headDim: d, headDimV: d, layout: 'BHSD', scale: 1 / Math.sqrt(d),
    windowLeft: -1, windowRight: -1, softcap: 0, dropoutRate: 0, dropoutSeed: 0, biasShape: [], maskShape: [],
    alibiShape: [], hasKeyLengths: false, blockMaskShape: [], blockSize: 0, precision: 'float32',
  };
}

const T = (rows: number, cols: number, rowsPerThread: number, colsPerThread: number): Tiles =>
  ({ rows, cols, rowsPerThread, colsPerThread });

/** Sweeps forward and backward tiles at N = 4096 and keeps the fastest in webgpuAttentionTuning. */
async function tune(d: number, limit: number, threads: number): Promise<void> {
  const c = benchConfig(4096, d);
  const G = (t: Tiles): Tiles => ({ ...t, rowsFromGlobal: true });
  const forward = [G(T(64, 16, 4, 2)), T(64, 16, 4, 2), G(T(64, 16, 2, 2)), G(T(128, 16, 8, 2)), G(T(32, 16, 2, 2)),
    G(T(64, 32, 4, 2)), G(T(128, 16, 4, 2)), G(T(64, 8, 4, 2)), G(T(64, 16, 4, 4))]
    .filter(t => forwardWorkgroupBytes(c, t, true) <= limit && threadsOf(t).WG <= threads);
  let best: { t: Tiles; ms: number } | undefined;
  for (const t of forward) {
    webgpuAttentionTuning.forwardTiles = t;
    const r = await measure({ impl: 'flash', pass: 'fwd', n: 4096, d, causal: false,
      note: `tiles ${JSON.stringify(t)} subgroups true` }, flash({}), 150, false);
    if (r.ms !== undefined && (!best || r.ms < best.ms)) best = { t, ms: r.ms };
  }
  if (best) {
    webgpuAttentionTuning.forwardTiles = best.t;
    webgpuAttentionTuning.subgroups = false;
    await measure({ impl: 'flash', pass: 'fwd', n: 4096, d, causal: false,
      note: `tiles ${JSON.stringify(best.t)} subgroups false` }, flash({}), 150, false);
  }
  webgpuAttentionTuning.subgroups = true;
  webgpuAttentionTuning.forwardTiles = best?.t;
  const backward = [T(32, 32, 2, 2), G(T(32, 32, 2, 2)), G(T(64, 32, 4, 2)), G(T(64, 16, 4, 2)), G(T(64, 32, 4, 4)),
    G(T(32, 16, 2, 2)), G(T(16, 16, 1, 2)), T(16, 16, 1, 2)]
    .filter(t => dkdvWorkgroupBytes(c, t) <= limit && dqWorkgroupBytes(c, t, true) <= limit && threadsOf(t).WG <= threads);
  let bestB: { t: Tiles; ms: number } | undefined;
  for (const t of backward) {
    webgpuAttentionTuning.dkdvTiles = t;
    webgpuAttentionTuning.dqTiles = t;
    const r = await measure({ impl: 'flash', pass: 'fwd+bwd', n: 4096, d, causal: false,
      note: `bwd tiles ${JSON.stringify(Object.values(t))}` }, flash({}), 150, false);
    if (r.ms !== undefined && (!bestB || r.ms < bestB.ms)) bestB = { t, ms: r.ms };
  }
  webgpuAttentionTuning.dkdvTiles = bestB?.t;
  webgpuAttentionTuning.dqTiles = bestB?.t;
  console.log(`D=${d}: forward tiles ${JSON.stringify(best)}, backward tiles ${JSON.stringify(bestB)}`);
}

/**
 * Wide forward tile sweep (`--sweep`, causal with `--sweep-causal`): query rows × (key cols, rows
 * and cols per thread) × P read as vec4 or not, at N = 4096 for D = 64 and 128; the five fastest of
 * each D are timed again with a longer budget (to see the noise), full and causal, and at N = 8192.
 */
async function sweep(limit: number, threads: number, causal: boolean): Promise<void> {
  for (const d of [64, 128]) {
    const c = benchConfig(4096, d);
    const shapes: Array<[number, number, number]> = [[16, 4, 2], [32, 4, 4], [32, 4, 2], [32, 8, 4], [16, 8, 2], [32, 2, 4]];
    const candidates: Tiles[] = [];
    for (const rows of [64, 96, 128, 192, 256]) {
      for (const [cols, tm, tn] of shapes) {
        for (const probsVec4 of [false, true]) {
          const t: Tiles = { ...T(rows, cols, tm, tn), rowsFromGlobal: true, probsVec4 };
          if (rows % tm === 0 && forwardWorkgroupBytes(c, t, true) <= limit && threadsOf(t).WG <= threads) candidates.push(t);
        }
      }
    }
    const timed: Array<{ t: Tiles; ms: number }> = [];
    for (const t of candidates) {
      webgpuAttentionTuning.forwardTiles = t;
      const r = await measure({ impl: 'flash', pass: 'fwd', n: 4096, d, causal, note: `sweep ${JSON.stringify(t)}` },
        flash({ causal }), 150, false);
      if (r.ms !== undefined) timed.push({ t, ms: r.ms });
    }
    timed.sort((a, b) => a.ms - b.ms);
    if (timed.length) {
      webgpuAttentionTuning.forwardTiles = timed[0].t;
      await crossCheck(1024, d, false);
      await crossCheck(1024, d, true);
    }
    for (const { t } of timed.slice(0, 5)) {
      webgpuAttentionTuning.forwardTiles = t;
      const note = `top ${JSON.stringify(t)}`;
      await measure({ impl: 'flash', pass: 'fwd', n: 4096, d, causal: false, note }, flash({}), 600, false);
      await measure({ impl: 'flash', pass: 'fwd', n: 4096, d, causal: true, note }, flash({ causal: true }), 400, false);
      await measure({ impl: 'flash', pass: 'fwd', n: 8192, d, causal: false, note }, flash({}), 400, false);
    }
    webgpuAttentionTuning.forwardTiles = undefined;
    await measure({ impl: 'flash', pass: 'fwd', n: 4096, d, causal: false, note: 'default tiles' }, flash({}), 600, false);
    console.log(`D=${d} ${causal ? 'causal ' : ''}sweep ranking (N=4096 fwd ms):\n` + timed.map(x => `  ${x.ms.toFixed(3)} ${JSON.stringify(x.t)}`).join('\n'));
  }
}

/**
 * `--ab`: the forward tile candidates at N = 4096, D = 64 timed in interleaved rounds (machine
 * noise moves single runs by 10 % and more), full and causal, with medians, under the default
 * forward schedule (causal blocks paired unless tuning.ts says otherwise; --ab-schedule compares).
 */
async function abRounds(threads: number): Promise<void> {
  const c = benchConfig(4096, 64);
  const P = (t: Tiles): Tiles => ({ ...t, probsVec4: true });
  const G = (t: Tiles): Tiles => ({ ...t, rowsFromGlobal: true });
  const sets: Array<{ causal: boolean; tiles: Tiles[] }> = [
    { causal: false, tiles: [G(T(192, 16, 8, 2)), G(T(128, 16, 4, 2)), P(G(T(192, 16, 8, 2)))] },
    { causal: true, tiles: [G(T(192, 32, 4, 4)), P(G(T(192, 32, 4, 4))), G(T(128, 32, 4, 4)), G(T(64, 16, 4, 2)),
      P(G(T(64, 16, 4, 2))), P(G(T(96, 16, 4, 2))), P(G(T(128, 16, 4, 2))), G(T(128, 16, 4, 2))] },
  ];
  for (const { causal, tiles } of sets) {
    const fit = tiles.filter(t => threadsOf(t).WG <= threads && forwardWorkgroupBytes(c, t, true) <= 49152);
    const times = new Map<string, number[]>();
    for (let round = 0; round < 3; round++) {
      for (const t of fit) {
        webgpuAttentionTuning.forwardTiles = t;
        const r = await measure({ impl: 'flash', pass: 'fwd', n: 4096, d: 64, causal, note: `ab ${JSON.stringify(t)}` },
          flash({ causal }), 600, false);
        if (r.ms !== undefined) times.set(JSON.stringify(t), [...(times.get(JSON.stringify(t)) ?? []), r.ms]);
      }
    }
    webgpuAttentionTuning.forwardTiles = undefined;
    for (const [t, ms] of times) {
      const sorted = [...ms].sort((a, b) => a - b);
      console.log(`ab ${causal ? 'causal' : 'full'} median ${sorted[Math.floor(sorted.length / 2)].toFixed(3)} ms ` +
        `(${ms.map(x => x.toFixed(3)).join(', ')}) ${t}`);
    }
  }
}

/** Median, minimum and maximum of a list of times. */
function stats(ms: number[]): { median: number; min: number; max: number } {
  const sorted = [...ms].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted[sorted.length - 1] };
}

/**
 * A [1, 1, n/blockSize, n/blockSize] block mask with about `live` of its blocks live, from a fixed
 * seed (every run and every mode the same mask), and the share actually live.
 */
function randomBlockMask(n: number, blockSize: number, live: number): { blockMask: tf.Tensor4D; liveShare: number } {
  const nb = n / blockSize;
  const values = new Int32Array(nb * nb);
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (let i = 0; i < values.length; i++) values[i] = rand() < live ? 1 : 0;
  return {
    blockMask: tf.tensor4d(values, [1, 1, nb, nb], 'int32'),
    liveShare: values.reduce((a, b) => a + b, 0) / values.length,
  };
}

interface RoundCandidate {
  name: string; options: FlashAttentionOptions; schedule: ForwardSchedule; tiles?: Tiles; d: number; pass: Row['pass'];
}

/**
 * Times each candidate once per round under its schedule and tiles, each round in a rotated order
 * (so that the machine's drift falls on every candidate alike): per candidate its rounds' total
 * and enqueue ms. Leaves the tuning at the last candidate's: callers restore it.
 */
async function interleavedRounds(label: string, n: number, candidates: RoundCandidate[], rounds: number,
  budgetMs: (c: RoundCandidate) => number): Promise<Array<Array<{ total: number; enqueue: number }>>> {
  const times = candidates.map(() => [] as Array<{ total: number; enqueue: number }>);
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < candidates.length; i++) {
      const index = (i + round) % candidates.length;
      const x = candidates[index];
      webgpuAttentionTuning.forwardSchedule = x.schedule;
      webgpuAttentionTuning.forwardTiles = x.tiles;
      const r = await measure({ impl: 'flash', pass: x.pass, n, d: x.d, causal: x.options.causal === true,
        note: `${label} round ${round}: ${x.name}` }, flash(x.options), budgetMs(x), false, false);
      times[index].push({ total: r.ms ?? NaN, enqueue: r.enqueueMs ?? NaN });
    }
    console.log(`${label} round ${round + 1}/${rounds} done`);
  }
  return times;
}

/**
 * `--ab-schedule`: the forward's schedules at N = 4096, D = 64, B = 1, H = 12, in 7 interleaved
 * rounds (each round in a rotated order), medians with min–max. Causal: the old schedule (one
 * query block per workgroup, heaviest first, 192×32 4×4) with and without the edge-tile mask,
 * against paired blocks with each candidate tile; block-sparse (10 % live blocks of 64): the tile
 * list against the mask-bits walk, each with and without the edge-tile mask, and two other tiles
 * for the new one; causal at D = 128, old against paired. The dense forwards (D = 64 and 128) run
 * in every round, so speedups are medians of same-round ratios. Before timing, every D = 64
 * variant's output is compared with the old schedule's. Results also in $OUT/webgpu_ab_schedule.json.
 */
async function abSchedule(limit: number, threads: number): Promise<void> {
  const n = quick ? 256 : 4096, d = 64, c = benchConfig(n, d);
  const G = (t: Tiles): Tiles => ({ ...t, rowsFromGlobal: true });
  const OLD: ForwardSchedule = { pairBlocks: 'never', halvePairs: 'never', maskEdgeTilesOnly: false, sparseFromBits: false };
  const NEW: ForwardSchedule = { ...webgpuAttentionTuning.forwardSchedule };
  const paired = (t?: Tiles) => ({ schedule: { ...NEW, pairBlocks: 'banded' as const }, tiles: t });
  const { blockMask } = randomBlockMask(n, 64, 0.1);
  const sparse = { blockSparse: { blockMask, blockSize: 64 } };
  interface Variant { name: string; options: FlashAttentionOptions; schedule: ForwardSchedule; tiles?: Tiles; d?: number }
  const variants: Variant[] = [
    { name: 'full (default)', options: {}, schedule: NEW },
    { name: 'D=128 full (default)', options: {}, schedule: NEW, d: 128 },
    { name: 'D=128 causal old: one block per workgroup', options: { causal: true }, schedule: OLD, d: 128 },
    { name: 'D=128 causal paired, default tiles', options: { causal: true }, ...paired(), d: 128 },
    { name: 'causal old: one block per workgroup, heaviest first, default tiles (192x32 4x4 on the H100)', options: { causal: true }, schedule: OLD },
    { name: 'causal old + edge-tile mask', options: { causal: true }, schedule: { ...OLD, maskEdgeTilesOnly: true } },
    { name: 'causal paired, default tiles', options: { causal: true }, ...paired() },
    ...[G(T(96, 32, 4, 4)), G(T(96, 16, 4, 2)), G(T(96, 16, 8, 2)), G(T(128, 16, 8, 2)), G(T(128, 32, 4, 4)),
      G(T(64, 16, 4, 2)), G(T(192, 32, 4, 4))]
      .filter(t => threadsOf(t).WG <= threads && forwardWorkgroupBytes(c, t, true) <= limit)
      .map(t => ({ name: `causal paired ${t.rows}x${t.cols} ${t.rowsPerThread}x${t.colsPerThread}`,
        options: { causal: true }, ...paired(t) })),
    { name: 'sparse old: tile list, mask everywhere', options: sparse, schedule: OLD },
    { name: 'sparse tile list + edge-tile mask', options: sparse, schedule: { ...OLD, maskEdgeTilesOnly: true } },
    { name: 'sparse mask bits, mask everywhere', options: sparse, schedule: { ...OLD, sparseFromBits: true } },
    { name: 'sparse new: mask bits + edge-tile mask', options: sparse, schedule: { ...NEW } },
    ...[G(T(64, 32, 4, 4)), G(T(64, 16, 8, 2))].map(t => ({
      name: `sparse new, ${t.rows}x${t.cols} ${t.rowsPerThread}x${t.colsPerThread}`, options: sparse, schedule: { ...NEW }, tiles: t,
    })),
  ];
  // Each variant's output against the old schedule's on the same inputs (max |diff| / max |old|).
  const [q, k, v] = [21, 22, 23].map(seed => tf.randomNormal([1, H, n, d], 0, 1, 'float32', seed));
  const reference = new Map<boolean, tf.Tensor>();
  for (const options of [{ causal: true }, sparse]) {
    webgpuAttentionTuning.forwardSchedule = OLD;
    reference.set('causal' in options, flashAttention(q, k, v, options));
  }
  for (const variant of variants.filter(x => x.d === undefined && Object.keys(x.options).length > 0)) {
    webgpuAttentionTuning.forwardSchedule = variant.schedule;
    webgpuAttentionTuning.forwardTiles = variant.tiles;
    const diff = tf.tidy(() => {
      const old = reference.get(variant.options.causal === true) as tf.Tensor;
      return tf.div(tf.max(tf.abs(tf.sub(flashAttention(q, k, v, variant.options), old))), tf.max(tf.abs(old)));
    });
    console.log(`ab-schedule check ${variant.name}: max|this−old|/max|old| ${(await diff.data())[0].toExponential(2)}`);
    diff.dispose();
  }
  tf.dispose([q, k, v, ...reference.values()]);

  const rounds = quick ? 2 : 7;
  const times = (await interleavedRounds('ab-schedule', n, variants.map(v => ({ ...v, d: v.d ?? d, pass: 'fwd' as const })),
    rounds, () => 400)).map(ts => ts.map(t => t.total));
  webgpuAttentionTuning.forwardSchedule = NEW;
  webgpuAttentionTuning.forwardTiles = undefined;
  blockMask.dispose();
  const lines = variants.map((v, i) => {
    const t = stats(times[i]);
    const full = times[v.d === 128 ? 1 : 0];
    const speedup = stats(times[i].map((x, r) => full[r] / x)).median;
    return `ab-schedule ${v.name}: median ${t.median.toFixed(3)} ms (min ${t.min.toFixed(3)}, max ${t.max.toFixed(3)}); ` +
      `full/this median of rounds ${speedup.toFixed(2)}x; all ${times[i].map(x => x.toFixed(3)).join(' ')}`;
  });
  console.log(`\nab-schedule summary (N=${n} D=${d} unless named, H=${H}, fwd, ${rounds} rounds; speedup against the ` +
    `full forward of the same D; targets: causal >= 1.7x, sparse >= 5x)`);
  for (const line of lines) console.log(line);
  const out = process.env.OUT;
  if (out) {
    fs.writeFileSync(path.join(out, 'webgpu_ab_schedule.json'),
      JSON.stringify(variants.map((v, i) => ({ ...v, options: Object.keys(v.options), ms: times[i] })), null, 1));
  }
}

/**
 * `--ab-targets`: the candidates for issue 3's two ratio targets at N = 4096, B = 1, H = 12, in
 * interleaved rounds (rotated order each round), medians with min–max and the host's enqueue time
 * per call. Causal: the default schedule (halved pairs: two workgroups per pair of blocks i and
 * n−1−i, half the key walk each, partials merged; mask on edge tiles) against the old one (one
 * block per workgroup, heaviest first), at D = 64 and 128 (and whole pairs at 128); block-sparse
 * (blocks of 64, ~10 % live): the default against the mask on every tile; dense forward (and
 * forward+backward) in every round, so ratios are medians of same-round ratios.
 * Every candidate's output is first compared with the default's. JSON in $OUT/webgpu_ab_targets.json.
 */
async function abTargets(): Promise<void> {
  const n = quick ? 256 : 4096;
  const BLOCKS: ForwardSchedule = { pairBlocks: 'never', halvePairs: 'never', maskEdgeTilesOnly: false, sparseFromBits: false };
  const DEFAULT: ForwardSchedule = { ...webgpuAttentionTuning.forwardSchedule };
  const { blockMask } = randomBlockMask(n, 64, 0.1);
  const sparse = { blockSparse: { blockMask, blockSize: 64 } };
  const causal = { causal: true };
  interface Variant {
    name: string; options: FlashAttentionOptions; schedule: ForwardSchedule; tiles?: Tiles; d: number;
    pass: Row['pass']; base: string;
  }
  const v = (name: string, d: number, options: FlashAttentionOptions, schedule: ForwardSchedule, tiles?: Tiles,
    pass: Row['pass'] = 'fwd'): Variant => ({ name, options, schedule, tiles, d, pass, base: `full ${pass} D=${d}` });
  const variants: Variant[] = [
    v('full fwd D=64', 64, {}, DEFAULT),
    v('full fwd+bwd D=64', 64, {}, DEFAULT, undefined, 'fwd+bwd'),
    v('full fwd D=128', 128, {}, DEFAULT),
    v('causal default D=64', 64, causal, DEFAULT),
    v('causal blocks (old default) D=64', 64, causal, BLOCKS),
    v('causal default D=128', 128, causal, DEFAULT),
    v('causal halved pairs D=128', 128, causal, { ...DEFAULT, halvePairs: 'always' }),
    v('causal blocks (old default) D=128', 128, causal, BLOCKS),
    v('sparse fwd default D=64', 64, sparse, DEFAULT),
    v('sparse fwd old (mask everywhere) D=64', 64, sparse, BLOCKS),
    v('sparse fwd+bwd default D=64', 64, sparse, DEFAULT, undefined, 'fwd+bwd'),
  ];
  // Each forward candidate's output against the default schedule's on the same inputs.
  for (const d of [64, 128]) {
    const [q, k, vv] = [21, 22, 23].map(s => tf.randomNormal([1, H, n, d], 0, 1, 'float32', s));
    for (const options of [causal, sparse]) {
      webgpuAttentionTuning.forwardSchedule = DEFAULT;
      webgpuAttentionTuning.forwardTiles = undefined;
      const reference = flashAttention(q, k, vv, options);
      for (const x of variants.filter(y => y.d === d && y.pass === 'fwd' && y.options === options)) {
        webgpuAttentionTuning.forwardSchedule = x.schedule;
        webgpuAttentionTuning.forwardTiles = x.tiles;
        const diff = tf.tidy(() => tf.div(tf.max(tf.abs(tf.sub(flashAttention(q, k, vv, options), reference))),
          tf.max(tf.abs(reference))));
        console.log(`ab-targets check ${x.name}: max|this−default|/max|default| ${(await diff.data())[0].toExponential(2)}`);
        diff.dispose();
      }
      reference.dispose();
    }
    tf.dispose([q, k, vv]);
  }
  const rounds = quick ? 2 : 5;
  const times = await interleavedRounds('ab-targets', n, variants, rounds, x => (x.pass === 'fwd' ? 300 : 400));
  webgpuAttentionTuning.forwardSchedule = DEFAULT;
  webgpuAttentionTuning.forwardTiles = undefined;
  blockMask.dispose();
  console.log(`\nab-targets summary (N=${n}, H=${H}, ${rounds} rounds; ratio = median over rounds of the same round's ` +
    'full time (same pass and D) over this one; targets: causal >= 1.7x, sparse >= 5x)');
  variants.forEach((x, i) => {
    const total = stats(times[i].map(t => t.total));
    const base = times[variants.findIndex(y => y.name.startsWith(x.base))];
    const ratio = stats(times[i].map((t, r) => base[r].total / t.total)).median;
    console.log(`ab-targets ${x.name}: median ${total.median.toFixed(3)} ms (min ${total.min.toFixed(3)}, max ` +
      `${total.max.toFixed(3)}; enqueue ${stats(times[i].map(t => t.enqueue)).median.toFixed(3)}); ratio ${ratio.toFixed(2)}x; ` +
      `all ${times[i].map(t => t.total.toFixed(3)).join(' ')}`);
  });
  const out = process.env.OUT;
  if (out) {
    fs.writeFileSync(path.join(out, 'webgpu_ab_targets.json'),
      JSON.stringify(variants.map((x, i) => ({ ...x, options: Object.keys(x.options), times: times[i] })), null, 1));
  }
}

/**
 * `--split-check`: the problem at N = 16384 under a 2 MiB binding limit (one head's q and k are
 * 4 MiB, so every unit is split along rows and keys) against the unsplit kernel: max relative
 * difference of output and gradients, and the time each takes.
 */
async function splitCheck(): Promise<void> {
  const n = 16384, d = 64;
  for (const causal of [false, true]) {
    const [q, k, v, dy] = [9, 10, 11, 12].map(seed => tf.randomNormal([1, H, n, d], 0, 1, 'float32', seed));
    const run = () => tf.tidy(() => {
      const f = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttention(a, b, c, { causal });
      return [f(q, k, v), ...tf.grads(f)([q, k, v], dy)];
    });
    const whole = run();
    webgpuAttentionTuning.maxBindingBytes = 2 * 2 ** 20;
    try {
      const split = run();
      const names = ['out', 'dq', 'dk', 'dv'];
      const errs = await Promise.all(names.map(async (_, i) => {
        const diff = tf.tidy(() => tf.div(tf.max(tf.abs(tf.sub(split[i], whole[i]))), tf.max(tf.abs(whole[i]))));
        const value = (await diff.data())[0];
        diff.dispose();
        return value;
      }));
      console.log(`split-check N=${n} ${causal ? 'causal' : 'full'} (2 MiB limit): max|split−whole|/max|whole| ` +
        names.map((name, i) => `${name} ${errs[i].toExponential(2)}`).join(', '));
      tf.dispose(split);
      for (const pass of ['fwd', 'fwd+bwd'] as const) {
        await measure({ impl: 'flash', pass, n, d, causal, note: 'split: 2 MiB binding limit' }, flash({ causal }), 300, false);
      }
    } finally {
      webgpuAttentionTuning.maxBindingBytes = undefined;
    }
    for (const pass of ['fwd', 'fwd+bwd'] as const) {
      await measure({ impl: 'flash', pass, n, d, causal, note: 'whole' }, flash({ causal }), 300, false);
    }
    tf.dispose([q, k, v, dy, ...whole]);
  }
}

/** Max |flash − naive| relative to max |naive| for output and gradients (sanity on this GPU). */
async function crossCheck(n: number, d: number, causal: boolean): Promise<void> {
  const [q, k, v, dy] = [5, 6, 7, 8].map(seed => tf.randomNormal([1, H, n, d], 0, 1, 'float32', seed));
  const nv = naive(causal, n);
  const both = [flash({ causal }), nv.f].map(f => tf.tidy(() => {
    const out = f(q, k, v);
    const grads = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => f(a, b, c))([q, k, v], dy);
    return [out, ...grads];
  }));
  const names = ['out', 'dq', 'dk', 'dv'];
  const errs = await Promise.all(names.map(async (_, i) => {
    const diff = tf.tidy(() => tf.div(tf.max(tf.abs(tf.sub(both[0][i], both[1][i]))), tf.max(tf.abs(both[1][i]))));
    const value = (await diff.data())[0];
    diff.dispose();
    return value;
  }));
  console.log(`cross-check N=${n} D=${d} ${causal ? 'causal' : 'full'}: max|flash−naive|/max|naive| ` +
    names.map((name, i) => `${name} ${errs[i].toExponential(2)}`).join(', '));
  tf.dispose([q, k, v, dy, ...both.flat()]);
  nv.dispose();
}

async function blockSparse(d: number, live: number): Promise<void> {
  const n = 4096, bs = 64;
  const { blockMask, liveShare } = randomBlockMask(n, bs, live);
  for (const pass of ['fwd', 'fwd+bwd'] as const) {
    await measure({ impl: 'flash', pass, n, d, causal: false, note: `block-sparse ${(liveShare * 100).toFixed(1)}% live, block ${bs}` },
      flash({ blockSparse: { blockMask, blockSize: bs } }), 300);
  }
  blockMask.dispose();
}

/** The headline measurements with the kernel's default tile choice (no tuning), and naive for scale. */
async function final(): Promise<void> {
  await crossCheck(1024, 64, false);
  await crossCheck(1024, 64, true);
  for (const d of [64, 128]) {
    for (const pass of ['fwd', 'fwd+bwd'] as const) {
      for (const causal of [false, true]) await measure({ impl: 'flash', pass, n: 4096, d, causal }, flash({ causal }), 300);
    }
    await blockSparse(d, 0.1);
  }
  for (const causal of [false, true]) {
    await measure({ impl: 'flash', pass: 'fwd', n: 16384, d: 64, causal }, flash({ causal }), 300);
    await measure({ impl: 'flash', pass: 'fwd+bwd', n: 16384, d: 64, causal }, flash({ causal }), 300);
  }
  const nv = naive(false, 4096);
  await measure({ impl: 'naive', pass: 'fwd', n: 4096, d: 64, causal: false }, nv.f, 300);
  nv.dispose();
  await measure({ impl: 'flash', pass: 'fwd+bwd', n: 65536, d: 64, causal: true }, flash({ causal: true }), 1, false);
  console.log('\nsummary');
  for (const r of rows) console.log(format(r));
}

async function main(): Promise<void> {
  const { description, device } = await initDawn({ swiftShaderFallback: true });
  const limit = device.limits.maxComputeWorkgroupStorageSize;
  console.log(`adapter: ${description}; subgroups ${device.features.has('subgroups')}; workgroup memory ${limit} B; ` +
    `max binding ${device.limits.maxStorageBufferBindingSize} B`);
  if (process.argv.includes('--ab-targets')) {
    await abTargets();
    if (process.argv.includes('--final')) await final();
    return;
  }
  if (process.argv.includes('--ab-schedule')) {
    await abSchedule(limit, device.limits.maxComputeInvocationsPerWorkgroup);
    if (process.argv.includes('--final')) await final();
    return;
  }
  if (process.argv.includes('--final')) {
    await final();
    return;
  }
  if (process.argv.includes('--ab') || process.argv.includes('--split-check')) {
    if (process.argv.includes('--ab')) await abRounds(device.limits.maxComputeInvocationsPerWorkgroup);
    if (process.argv.includes('--split-check')) await splitCheck();
    return;
  }
  const causalSweep = process.argv.includes('--sweep-causal');
  if (process.argv.includes('--sweep') || causalSweep) {
    await crossCheck(1024, 64, false);
    await sweep(limit, device.limits.maxComputeInvocationsPerWorkgroup, causalSweep);
    const out = process.env.OUT;
    if (out) fs.writeFileSync(path.join(out, 'webgpu_sweep.json'), JSON.stringify({ adapter: description, rows }, null, 1));
    return;
  }
  const dims = quick ? [64] : [64, 128];
  const sizes = quick ? [128] : [512, 1024, 2048, 4096, 8192, 16384];
  const checkN = quick ? 128 : 1024;
  await crossCheck(checkN, 64, false);
  await crossCheck(checkN, 64, true);
  for (const d of dims) {
    if (!quick) await tune(d, limit, device.limits.maxComputeInvocationsPerWorkgroup);
    for (const n of sizes) {
      for (const causal of [false, true]) {
        for (const pass of ['fwd', 'fwd+bwd'] as const) {
          await measure({ impl: 'flash', pass, n, d, causal }, flash({ causal }), 300);
          if (n <= 4096) {
            const nv = naive(causal, n);
            await measure({ impl: 'naive', pass, n, d, causal }, nv.f, 300);
            nv.dispose();
          }
        }
      }
    }
    if (!quick) {
      await blockSparse(d, 0.1);
      for (const pass of ['fwd', 'fwd+bwd'] as const) {
        await measure({ impl: 'flash', pass, n: 65536, d, causal: true }, flash({ causal: true }), 1, false);
      }
    }
  }
  if (!quick) {
    const nv = naive(false, 8192);
    await measure({ impl: 'naive', pass: 'fwd', n: 8192, d: 64, causal: false, note: 'naive at 8192' }, nv.f, 100, false);
    nv.dispose();
  }
  console.log('\nsummary');
  for (const r of rows) console.log(format(r));
  const out = process.env.OUT;
  if (out) fs.writeFileSync(path.join(out, 'webgpu_bench.json'), JSON.stringify({ adapter: description, rows }, null, 1));
}

main().catch(e => { console.error(e); process.exit(1); });
