// One GPT-2 training step (forward, backward, Adam) timed for flash attention, naive attention and
// the identity-on-V ablation (`gpt2_ablation.ts`), on the best backend Node has
// (`../examples/gpt2/backend.ts`). Random token ids: the data does not change the work.
//
//   node gpt2_step.mjs [--preset small] [--configs 1024x4:10,2048x2,4096x1,1024x1,2048x1,2048x4]
//     [--rounds 4] [--profile 1024x4] [--longest flash:8192,naive:8192,flash:16384] [--cap-s 420]
//     [--layers N] [--vocab N] [--backend auto|webgpu|cpu]
//
// The first three default configurations hold the tokens per step fixed (4096), so the work outside
// attention is the same and only attention's quadratic cost grows with context: that is where the
// flash/naive margin must grow. Each configuration (context × batch; `:R` sets its rounds) runs in
// a process of its own, because tfjs' webgpu backend keeps freed buffers in a pool sized for what
// ran before (after naive attention at 4 × 2048 the next model in the same process ran out of
// device memory). Inside it the flash model, the same
// model with attention ablated to identity, and the naive model (same weights) each take one
// warm-up step, then `rounds` rounds of one step each, in an order that rotates every round, so
// that slow drift of the machine hits the three alike. The attention share of a step is computed
// per round from that round's flash and identity steps (paired), and summarized by the median and
// a 95 % interval of the mean; the same for the naive model and for the flash/naive speed ratio.
// `--longest` probes single configurations (warm-up + one step) to find where each model still runs.
// Every process stops starting steps when the time cap (`--cap-s`, whole run) would be passed.
//
// One JSON line per configuration on stdout and in $OUT/gpt2_step.jsonl (the device tool), then a
// summary table on stdout and in $OUT/gpt2_summary.md. On WebGPU a configuration runs inside error
// scopes, so a buffer over the device's limits is reported, not missed. tf.profile lists our fused
// FlashAttention kernels with 0 ms (tfjs' timer does not see their dispatches): the ablation, not the
// profile, measures attention.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { isBackendRequest, selectBackend } from '../examples/gpt2/backend';
import { Trainer } from '../examples/gpt2/training';
import { gpt2, gpt2Config } from '../src/index';
import { ablateAttention } from './gpt2_ablation';

type Variant = 'flash' | 'identity' | 'naive';
const VARIANTS: readonly Variant[] = ['flash', 'identity', 'naive'];

function isVariant(s: string): s is Variant {
  return (VARIANTS as readonly string[]).includes(s);
}

interface KernelTime {
  name: string;
  ms: number;
  calls: number;
}

interface Profile {
  /** Kernels one step launched (tf.profile; our fused kernels count once each). */
  kernels: number;
  /** Sum of the GPU times tfjs' timer reports (our fused kernels report 0). */
  timedKernelMs: number;
  /** Wall time of the profiled step (the timer's queries slow it down). */
  stepMs: number;
  /** Most bytes of live tensors during the step (tfjs' accounting, not device memory). */
  peakBytes: number;
  top: KernelTime[];
}

interface VariantResult {
  stepMs: number[];
  error?: string;
  profile?: Profile;
}

interface ConfigResult {
  context: number;
  batch: number;
  preset: string;
  layers: number;
  vocab: number;
  backend: string;
  device: string;
  rounds: number;
  /** Bytes the webgpu backend had allocated on the device after the rounds (pool included). */
  allocatedBytes?: number;
  variants: Partial<Record<Variant, VariantResult>>;
  stoppedByCap?: boolean;
  error?: string;
}

interface Options {
  preset: string;
  layers?: number;
  vocab: number;
  rounds: number;
  deadline: number;
}

function parseConfig(s: string): { context: number; batch: number } {
  const m = /^(\d+)x(\d+)$/.exec(s.trim());
  if (!m) throw new Error(`configuration ${s}: expected CONTEXTxBATCH, e.g. 1024x4`);
  return { context: Number(m[1]), batch: Number(m[2]) };
}

function randomBatch(batch: number, context: number, vocab: number): { x: tf.Tensor2D; y: tf.Tensor2D } {
  const ids = () => tf.tensor2d(Int32Array.from({ length: batch * context }, () => Math.floor(Math.random() * vocab)),
    [batch, context], 'int32');
  return { x: ids(), y: ids() };
}

/** Profiles one step: kernel count, timed GPU milliseconds and the top 10 kernels by time. */
async function profileStep(step: () => Promise<unknown>): Promise<Profile> {
  const started = performance.now();
  const info = await tf.profile(async () => { await step(); });
  const stepMs = performance.now() - started;
  const byName = new Map<string, KernelTime>();
  let timed = 0;
  for (const kernel of info.kernels) {
    const ms = typeof kernel.kernelTimeMs === 'number' ? kernel.kernelTimeMs : 0;
    timed += ms;
    const entry = byName.get(kernel.name) ?? { name: kernel.name, ms: 0, calls: 0 };
    entry.ms += ms;
    entry.calls += 1;
    byName.set(kernel.name, entry);
  }
  const round1 = (x: number) => Math.round(x * 10) / 10;
  return {
    kernels: info.kernels.length, timedKernelMs: round1(timed), stepMs: round1(stepMs), peakBytes: info.peakBytes,
    top: [...byName.values()].sort((a, b) => b.ms - a.ms).slice(0, 10).map(k => ({ ...k, ms: round1(k.ms) })),
  };
}

/** Runs `body` inside WebGPU validation and out-of-memory error scopes; the first GPU error, if any. */
async function gpuErrors(body: () => Promise<void>): Promise<string | undefined> {
  if (tf.getBackend() !== 'webgpu') {
    await body();
    return undefined;
  }
  const { device } = tf.backend() as WebGPUBackend;
  device.pushErrorScope('validation');
  device.pushErrorScope('out-of-memory');
  let thrown: unknown;
  try {
    await body();
  } catch (error) {
    thrown = error;
  }
  const outOfMemory = await device.popErrorScope();
  const invalid = await device.popErrorScope();
  if (outOfMemory) return `WebGPU out of memory: ${outOfMemory.message.split('\n')[0]}`;
  if (invalid) return `WebGPU validation error: ${invalid.message.split('\n')[0]}`;
  if (thrown !== undefined) return thrown instanceof Error ? thrown.message : String(thrown);
  return undefined;
}

function allocatedBytes(): number | undefined {
  const info: tf.MemoryInfo & { numBytesAllocatedInGPU?: number } = tf.memory();
  return info.numBytesAllocatedInGPU;
}

/** One configuration, all variants interleaved, in this process. */
async function measureConfig(context: number, batch: number, variants: Variant[], profile: boolean,
  options: Options, device: string): Promise<ConfigResult> {
  const base = { preset: options.preset, vocabSize: options.vocab, contextLength: context, numLayers: options.layers, dropout: 0 };
  const result: ConfigResult = {
    context, batch, preset: options.preset, layers: gpt2Config(base).numLayers, vocab: options.vocab,
    backend: tf.getBackend(), device, rounds: 0, variants: {},
  };
  const models: Partial<Record<'flash' | 'naive', { model: LayersModel; trainer: Trainer }>> = {};
  const data = randomBatch(batch, context, options.vocab);
  const backendName = tf.getBackend();
  const make = (attention: 'flash' | 'naive') => {
    const model = gpt2({ ...base, attention, name: attention });
    if (models.flash) model.setWeights(models.flash.model.getWeights());
    // A small learning rate: the steps do Adam's full work while the weights stay sane for all rounds.
    models[attention] = { model, trainer: new Trainer(model, options.vocab, 1e-5) };
  };
  const stepOf = (variant: Variant) => async (): Promise<number> => {
    const entry = models[variant === 'naive' ? 'naive' : 'flash'];
    if (!entry) throw new Error(`no ${variant} model`);
    const ablation = variant === 'identity' ? ablateAttention(backendName) : undefined;
    try {
      const step = await entry.trainer.step(data);
      if (!Number.isFinite(step.loss)) throw new Error(`loss is ${step.loss}`);
      return step.milliseconds;
    } finally {
      ablation?.restore();
    }
  };
  const live = new Set<Variant>();
  const estimateMs = new Map<Variant, number>();
  const fits = (variant: Variant) => Date.now() + (estimateMs.get(variant) ?? 0) < options.deadline;
  try {
    // Warm-up (compiles the programs), flash first: a naive failure must not keep flash from running.
    for (const variant of variants) {
      const attention = variant === 'naive' ? 'naive' : 'flash';
      const entry: VariantResult = { stepMs: [] };
      result.variants[variant] = entry;
      if (Date.now() > options.deadline) {
        entry.error = 'not run: time cap';
        result.stoppedByCap = true;
        continue;
      }
      let warm = 0;
      entry.error = await gpuErrors(async () => {
        if (!models[attention]) make(attention);
        warm = await stepOf(variant)();
      });
      if (entry.error) {
        if (attention === 'naive' && models.naive) {
          models.naive.trainer.dispose();
          models.naive.model.dispose();
          delete models.naive;
        }
        continue;
      }
      estimateMs.set(variant, warm);
      live.add(variant);
    }
    for (let round = 0; round < options.rounds && live.size > 0; round++) {
      const order = variants.map((_, i) => variants[(i + round) % variants.length]).filter(v => live.has(v));
      if (Date.now() + order.reduce((ms, v) => ms + (estimateMs.get(v) ?? 0), 0) > options.deadline) {
        result.stoppedByCap = true;
        break;
      }
      for (const variant of order) {
        const entry = result.variants[variant];
        if (!entry) continue;
        const error = await gpuErrors(async () => {
          const ms = await stepOf(variant)();
          entry.stepMs.push(Math.round(ms * 10) / 10);
          estimateMs.set(variant, ms);
        });
        if (error) {
          entry.error = error;
          live.delete(variant);
        }
      }
      result.rounds = round + 1;
    }
    if (profile) {
      for (const variant of ['flash', 'naive'] as const) {
        const entry = result.variants[variant];
        if (!entry || !live.has(variant) || !fits(variant)) continue;
        entry.profile = await profileStep(stepOf(variant));
      }
    }
    result.allocatedBytes = allocatedBytes();
  } catch (error) {
    result.error = error instanceof Error ? error.message : String(error);
  } finally {
    tf.dispose([data.x, data.y]);
    for (const entry of Object.values(models)) {
      entry.trainer.dispose();
      entry.model.dispose();
    }
  }
  return result;
}

// ---- statistics over rounds ----

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Two-sided 97.5 % quantile of Student's t for n − 1 degrees of freedom (n ≥ 2). */
function tQuantile(n: number): number {
  const table = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23];
  return n - 2 < table.length ? table[n - 2] : 1.96 + 2.5 / (n - 1);
}

interface Summary {
  n: number;
  median: number;
  mean: number;
  /** 95 % interval of the mean (t-distribution over the paired rounds); equal to mean when n < 2. */
  low: number;
  high: number;
}

function summarize(xs: number[]): Summary | undefined {
  if (xs.length === 0) return undefined;
  const n = xs.length;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const sd = n > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : 0;
  const half = n > 1 ? tQuantile(n) * sd / Math.sqrt(n) : 0;
  return { n, median: median(xs), mean, low: mean - half, high: mean + half };
}

/** Per-round values f(a_i, b_i) over the rounds both variants ran. */
function paired(a: number[] | undefined, b: number[] | undefined, f: (x: number, y: number) => number): number[] {
  if (!a || !b) return [];
  const n = Math.min(a.length, b.length);
  return Array.from({ length: n }, (_, i) => f(a[i], b[i]));
}

function pct(s: Summary | undefined): string {
  if (!s) return '—';
  const p = (x: number) => `${(100 * x).toFixed(1)}`;
  return s.n > 1 ? `${p(s.median)} % (mean ${p(s.mean)}, 95 % CI ${p(s.low)} … ${p(s.high)}; n=${s.n})` : `${p(s.median)} % (n=1)`;
}

function shareVerdict(s: Summary | undefined): string {
  if (!s || s.n < 2) return 'not resolved';
  if (s.high <= 0.05) return '≤ 5 % shown';
  if (s.low > 0.05) return '> 5 % (refuted)';
  return 'not resolved (CI straddles 5 %)';
}

function stepCell(v: VariantResult | undefined, tokens: number): string {
  if (!v) return '—';
  if (v.stepMs.length === 0) return v.error ? `fails: ${v.error.slice(0, 80)}` : '—';
  const m = median(v.stepMs);
  return `${m.toFixed(0)} [${Math.min(...v.stepMs).toFixed(0)}–${Math.max(...v.stepMs).toFixed(0)}] (${Math.round(tokens / (m / 1000))})`;
}

function summaryMarkdown(results: ConfigResult[]): string {
  const lines: string[] = [];
  const r0 = results[0];
  if (r0) lines.push(`device: ${r0.device}; backend ${r0.backend}; preset ${r0.preset} (${r0.layers} layers, vocab ${r0.vocab})`, '');
  lines.push('| context × batch | rounds | flash ms [min–max] (tok/s) | identity ms | naive ms | flash/naive speed (paired) | attention share, flash | attention share, naive |');
  lines.push('|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    const tokens = r.context * r.batch;
    const { flash, identity, naive } = r.variants;
    const shareFlash = summarize(paired(flash?.stepMs, identity?.stepMs, (f, i) => 1 - i / f));
    const shareNaive = summarize(paired(naive?.stepMs, identity?.stepMs, (n, i) => 1 - i / n));
    const speed = summarize(paired(flash?.stepMs, naive?.stepMs, (f, n) => n / f));
    const speedCell = speed ? `${speed.median.toFixed(2)}× (CI ${speed.low.toFixed(2)}–${speed.high.toFixed(2)})` : '—';
    lines.push(`| ${r.context} × ${r.batch} | ${r.rounds}${r.stoppedByCap ? ' (cap)' : ''} | ${stepCell(flash, tokens)} | ` +
      `${stepCell(identity, tokens)} | ${stepCell(naive, tokens)} | ${speedCell} | ${pct(shareFlash)}: ${shareVerdict(shareFlash)} | ` +
      `${pct(shareNaive)} |${r.error ? ` error: ${r.error}` : ''}`);
  }
  for (const r of results) {
    for (const variant of ['flash', 'naive'] as const) {
      const p = r.variants[variant]?.profile;
      if (!p) continue;
      lines.push('', `profile, ${variant}, ${r.context} × ${r.batch}: ${p.kernels} kernels, timed GPU ${p.timedKernelMs} ms ` +
        `of a ${p.stepMs} ms profiled step, peak ${(p.peakBytes / 2 ** 30).toFixed(1)} GiB of live tensors`);
      lines.push('', '| kernel | ms | calls |', '|---|---|---|');
      for (const k of p.top) lines.push(`| ${k.name} | ${k.ms} | ${k.calls} |`);
    }
  }
  return lines.join('\n') + '\n';
}

// ---- driver ----

function out(file: string, text: string): void {
  if (process.env.OUT) fs.appendFileSync(path.join(process.env.OUT, file), text);
}

interface Job {
  config: string;
  variants: Variant[];
  rounds: number;
  profile: boolean;
}

/** Runs one configuration in a child process (this script with --one) and returns its result line. */
function runChild(job: Job, passThrough: string[], deadline: number): ConfigResult | undefined {
  const args = [process.argv[1], '--one', job.config, '--variants', job.variants.join(','), '--rounds', String(job.rounds),
    '--deadline', String(deadline), ...(job.profile ? ['--profile-this'] : []), ...passThrough];
  // Grace after the deadline: a step already started may finish, then the child reports.
  const timeout = Math.max(1000, deadline - Date.now() + 60_000);
  const child = spawnSync(process.execPath, args, { encoding: 'utf8', timeout, maxBuffer: 64 * 2 ** 20 });
  process.stderr.write(child.stderr ?? '');
  const line = (child.stdout ?? '').split('\n').find(l => l.startsWith('{'));
  if (line) return JSON.parse(line) as ConfigResult;
  const { context, batch } = parseConfig(job.config);
  return {
    context, batch, preset: '', layers: 0, vocab: 0, backend: '', device: '', rounds: 0, variants: {},
    error: child.error ? `child: ${child.error.message}` : `child exited with ${child.status ?? child.signal} and no result`,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      preset: { type: 'string', default: 'small' },
      layers: { type: 'string' },
      vocab: { type: 'string' },
      configs: { type: 'string', default: '1024x4:10,2048x2,4096x1,1024x1,2048x1,2048x4' },
      rounds: { type: 'string', default: '4' },
      profile: { type: 'string', default: '1024x4' },
      longest: { type: 'string', default: 'flash:8192,naive:8192,flash:16384' },
      variants: { type: 'string', default: VARIANTS.join(',') },
      'cap-s': { type: 'string', default: '420' },
      backend: { type: 'string', default: 'auto' },
      one: { type: 'string' },
      'profile-this': { type: 'boolean', default: false },
      deadline: { type: 'string' },
    },
  });
  if (!isBackendRequest(values.backend)) throw new Error(`--backend must be auto, webgpu or cpu, got ${values.backend}`);
  const variants = values.variants.split(',');
  const bad = variants.find(v => !isVariant(v));
  if (bad !== undefined) throw new Error(`unknown variant ${bad}: flash, identity or naive`);
  const passThrough = ['--preset', values.preset, '--backend', values.backend,
    ...(values.layers ? ['--layers', values.layers] : []), ...(values.vocab ? ['--vocab', values.vocab] : [])];

  if (values.one !== undefined) {
    const { context, batch } = parseConfig(values.one);
    const backend = await selectBackend(values.backend);
    const options: Options = {
      preset: values.preset,
      layers: values.layers === undefined ? undefined : Number(values.layers),
      vocab: values.vocab === undefined ? gpt2Config({ preset: values.preset }).vocabSize : Number(values.vocab),
      rounds: Number(values.rounds),
      deadline: Number(values.deadline ?? Date.now() + 3600_000),
    };
    const result = await measureConfig(context, batch, variants.filter(isVariant), values['profile-this'],
      options, backend.description);
    console.log(JSON.stringify(result));
    return;
  }

  const started = Date.now();
  const deadline = started + Number(values['cap-s']) * 1000;
  // CONTEXTxBATCH[:ROUNDS]: more rounds where the answer needs more precision.
  const jobs: Job[] = values.configs.split(',').filter(s => s).map(spec => {
    const [config, rounds] = spec.split(':');
    return { config, variants: variants.filter(isVariant), rounds: Number(rounds ?? values.rounds), profile: config === values.profile };
  });
  for (const probe of values.longest.split(',').filter(s => s)) {
    const [variant, context] = probe.split(':');
    if (!isVariant(variant) || !/^\d+$/.test(context ?? '')) throw new Error(`--longest ${probe}: expected VARIANT:CONTEXT`);
    jobs.push({ config: `${context}x1`, variants: [variant], rounds: 1, profile: false });
  }
  const results: ConfigResult[] = [];
  const probes: ConfigResult[] = [];
  for (const job of jobs) {
    if (Date.now() > deadline - 15_000) {
      console.error(`time cap: skipped ${job.variants.join(',')} at ${job.config}`);
      continue;
    }
    const result = runChild(job, passThrough, deadline);
    if (!result) continue;
    const line = JSON.stringify({ job: job.config, ...result });
    console.log(line);
    out('gpt2_step.jsonl', line + '\n');
    (job.rounds === 1 && job.variants.length === 1 ? probes : results).push(result);
  }
  let summary = summaryMarkdown(results);
  if (probes.length > 0) {
    summary += '\nlongest-context probes (warm-up + 1 step, batch 1):\n\n';
    for (const p of probes) {
      for (const [variant, v] of Object.entries(p.variants)) {
        const ok = v && v.stepMs.length > 0;
        summary += `- ${variant} at ${p.context}: ${ok ? `runs, ${median(v.stepMs).toFixed(0)} ms/step` : `fails: ${v?.error ?? p.error ?? 'no result'}`}\n`;
      }
      if (Object.keys(p.variants).length === 0) summary += `- ${p.context}: ${p.error ?? 'no result'}\n`;
    }
  }
  summary += `\nwall time of the whole run: ${((Date.now() - started) / 1000).toFixed(0)} s (cap ${values['cap-s']} s)\n`;
  console.log('\n' + summary);
  out('gpt2_summary.md', summary);
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
