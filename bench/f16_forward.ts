// The `precision: 'float16'` forward on the webgpu backend through Dawn (bench + GPU check):
//   1. correctness: every case of test/cases.ts, forward in float16 mode, on every f16 plan the
//      device has (subgroup matrices, forced also where the kernel would not choose them yet, f16
//      registers, and the f32-element plan CI tests), against the float64 reference;
//   2. numerics: max and RMS error against float64 at N = 1024 … 16384 (sampled rows), random normal
//      inputs and inputs with 1 % of entries ×10, float16 vs float32 mode;
//   3. a schedule sweep at N = 4096 (D = 64, 128): every candidate of SWEEP_TILES that fits is first
//      checked against the float32 kernel's output on the timed inputs, then the candidates and the
//      float32 kernel are timed interleaved in rounds (medians, host clock and GPU timestamps); then
//      TFLOP/s of float16 vs float32 mode, causal and not, N = 1024 … 65536, B = 1, H = 12, forward only,
//      with the sweep's fastest tiles (the table on the final defaults, forward+backward too, is
//      bench/f16_backward.ts `table`).
//   --variants also runs the case list (1.) with the matrix plan on VARIANT_CHECKS; --check-best
//   also runs it on the sweep's fastest correct tiles per head size;
//   --matrix-only checks the subgroup-matrix plan only; --sweep-only stops after the sweep;
//   --rounds R sets the sweep's rounds; --q-shared runs only the case list (1.) on the matrix plan,
//   with the default schedules and then with qShared forced on every case (Q_SHARED_CHECKS);
//   --small-n runs only the case list on the device's first plan (unless --skip-check) and then
//   smallN(): the float16 forward on its defaults against the float32 kernel where the host bounds
//   a call (N = 1024, 2048) and at N = 4096, host, enqueue and GPU time per call;
//   --pairing runs the case list (unless --skip-check) on the device's first plan with the default
//   block schedule and then with paired and with halved query blocks forced on every case, then
//   pairingAB(): the causal forward with one block per workgroup, whole pairs and halved pairs
//   (f16ForwardTuning.schedule) interleaved, N = 2048 … 8192, D = 64 and 128.
//
//   /work/shared/gpu/pack.sh bench/f16_forward.ts   then on the GPU machine:
//   bash .gpu/run.sh f16_forward.mjs [--quick] [--no-robustness] [--max-n N] [--skip-check] [--variants]
//     [--check-best] [--matrix-only] [--sweep-only] [--rounds R] [--q-shared] [--small-n] [--pairing]
// Results: tables on stdout, JSON in $OUT/f16_forward<-norobust>.json when OUT is set.
//
// Timing as bench/webgpu.ts: after a warm-up run (compilation), `iters` runs are queued back to back
// and timed with the host clock around queue.onSubmittedWorkDone(); inputs are random normal.
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { flashAttention } from '../src/index';
import { FlashAttentionOptions, normalizeAttention } from '../src/config';
import { range, wgslBindings } from '../kernels/webgpu/runtime';
import { auxLayout } from '../kernels/webgpu/aux';
import { F16Plan, f16Capabilities, f16Tuning, matrixPathFits, subgroupMatrixConfigs } from '../kernels/webgpu/f16_support';
import {
  f16ForwardTuning, F16Tiles, forwardF16Program, forwardF16WorkgroupBytes,
} from '../kernels/webgpu/attention_forward_f16';
import { initDawn } from '../src/node';
import { CASES, caseData } from '../test/cases';
import { caseTensors } from '../test/case_tensors';
import { maxAbs } from '../test/compare';
import { referenceForward } from '../test/reference';
import type { AttentionConfig } from '../src/config';
import { backend, settle, sizeBatch, steadyRunMs, timeMs } from './webgpu_timing';

const H = 12;
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const noRobustness = args.includes('--no-robustness');
const maxN = Number(args[args.indexOf('--max-n') + 1]) || 65536;
const matrixOnly = args.includes('--matrix-only');
const rounds = Number(args[args.indexOf('--rounds') + 1]) || (quick ? 5 : 7);
const log: string[] = [];
const say = (line: string) => { log.push(line); console.log(line); };

const withPlan = async <T>(plan: F16Plan | undefined, tiles: F16Tiles | undefined, body: () => Promise<T>): Promise<T> => {
  f16Tuning.plan = plan;
  f16ForwardTuning.tiles = tiles;
  try {
    return await body();
  } finally {
    f16Tuning.plan = undefined;
    f16ForwardTuning.tiles = undefined;
  }
};

/** The lines of a WGSL/validation message around its errors (warnings left out). */
function errorLines(message: string): string {
  const lines = message.split('\n');
  const keep = lines.flatMap((l, i) => (/error/i.test(l) ? lines.slice(i, i + 3) : []));
  return (keep.length ? keep : lines.slice(0, 6)).join(' | ').slice(0, 1500);
}

/**
 * Compiles the subgroup-matrix forward in both load syntaxes and keeps the first that compiles
 * (f16Tuning.templatedLoad); prints every error of each.
 */
async function probeMatrixSyntax(): Promise<boolean> {
  const device = backend().device;
  const c = benchConfig(256, 64);
  for (const templated of [false, true]) {
    f16Tuning.templatedLoad = templated;
    const spec = forwardF16Program(c, auxLayout(c, false), false, { matmul: 'subgroup-matrix', element: 'f16' },
      { groups: 4, keys: 32 }, true, { paired: false, halves: false });
    device.pushErrorScope('validation');
    const module = device.createShaderModule({ code: wgslBindings(spec) + spec.body() });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter(m => m.type === 'error').map(m => `${m.lineNum}:${m.linePos} ${m.message}`);
    const warnings = info.messages.filter(m => m.type !== 'error').length;
    let pipelineError = '';
    if (!errors.length) {
      try {
        await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      } catch (e) {
        pipelineError = (e as Error).message;
      }
    }
    const scope = await device.popErrorScope();
    say(`probe templatedLoad=${templated}: ${errors.length} errors, ${warnings} warnings` +
      `${errors.length ? `: ${errors.join(' || ').slice(0, 2000)}` : ''}${pipelineError ? `; pipeline: ${pipelineError.slice(0, 1500)}` : ''}` +
      `${scope ? `; scope: ${errorLines(scope.message)}` : ''}`);
    if (!errors.length && !pipelineError && !scope) return true;
  }
  f16Tuning.templatedLoad = undefined;
  return false;
}

/**
 * 1. The case list in float16 mode: worst output error / max|v| and lse error per plan (and tiles).
 * Forced tiles that do not fit a case's workgroup memory fall back to the defaults there
 * (forwardF16); those cases are listed as not forced.
 */
async function checkCases(plans: F16Plan[], tiles?: F16Tiles): Promise<Record<string, unknown>> {
  const report: Record<string, unknown> = {};
  for (const plan of plans) {
    const tol = plan.element === 'f32' ? 2e-5 : 4e-3;
    let worst = 0, worstName = '', worstLse = 0;
    const failed: string[] = [], notForced: string[] = [];
    const device = backend().device;
    const limit = device.limits.maxComputeWorkgroupStorageSize;
    device.pushErrorScope('validation');
    await withPlan(plan, tiles, async () => {
      for (const c of CASES) {
        const data = caseData(c);
        const t = caseTensors(c, data);
        if (tiles) {
          const { config } = normalizeAttention(t.q, t.k, t.v, { ...t.options, precision: 'float16' });
          if (forwardF16WorkgroupBytes(config, plan, tiles, device.features.has('subgroups')) > limit) notForced.push(c.name);
        }
        const { output, lse } = flashAttention(t.q, t.k, t.v, { ...t.options, precision: 'float16', returnLse: true });
        const [got, gotLse] = [await output.data(), await lse.data()];
        tf.dispose([output, lse, ...t.all]);
        const ref = referenceForward(c, data);
        const vmax = maxAbs(data.v.values);
        let err = 0, lseErr = 0;
        for (let n = 0; n < got.length; n++) {
          const e = Number.isNaN(ref.output[n]) ? (Number.isNaN(got[n]) ? 0 : Infinity) : Math.abs(got[n] - ref.output[n]);
          err = Math.max(err, e);
        }
        const lseScale = Math.max(1, maxAbs(ref.lse));
        for (let n = 0; n < gotLse.length; n++) {
          const r = ref.lse[n], x = gotLse[n];
          const same = (Number.isNaN(r) && Number.isNaN(x)) || r === x;
          lseErr = Math.max(lseErr, same ? 0 : Math.abs(x - r) / lseScale);
        }
        const rel = err / vmax;
        if (!(rel <= tol) || !(lseErr <= tol)) failed.push(`${c.name}: out ${rel.toExponential(2)} lse ${lseErr.toExponential(2)}`);
        if (rel > worst || Number.isNaN(rel)) { worst = rel; worstName = c.name; }
        worstLse = Math.max(worstLse, lseErr);
      }
    });
    const invalid = await device.popErrorScope();
    if (invalid) failed.unshift(`WebGPU validation error: ${errorLines(invalid.message)}`);
    const name = `${plan.matmul}/${plan.element}${tiles ? ` ${JSON.stringify(tiles)}` : ''}`;
    say(`cases ${name}: ${CASES.length} cases, worst output err ${worst.toExponential(2)}·max|v| (${worstName}), ` +
      `worst lse err ${worstLse.toExponential(2)}; tolerance ${tol}: ${failed.length ? `FAILED ${failed.join('; ')}` : 'all pass'}` +
      `${tiles ? `; tiles forced on ${CASES.length - notForced.length} cases${notForced.length ? `, not on (do not fit): ${notForced.join(', ')}` : ''}` : ''}`);
    report[name] = { worst, worstName, worstLse, failed, notForced };
  }
  return report;
}

/** mulberry32 + Box-Muller. */
function normals(n: number, seed: number, outliers: boolean): Float32Array {
  let a = seed >>> 0;
  const rand = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const x = Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
    out[i] = outliers && rand() < 0.01 ? 10 * x : x;
  }
  return out;
}

/** 2. Max and RMS error vs float64 on sampled rows (B = 1, 4 heads). */
async function numerics(): Promise<unknown[]> {
  const heads = 4, rowsPerHead = 48, results: unknown[] = [];
  const sizes = quick ? [1024] : [1024, 4096, 16384];
  for (const d of [64, 128]) {
    for (const n of sizes) {
      for (const outliers of [false, true]) {
        const [qa, ka, va] = [11, 12, 13].map(s => normals(heads * n * d, s + n + d, outliers));
        const [q, k, v] = [qa, ka, va].map(x => tf.tensor4d(x, [1, heads, n, d]));
        const scale = 1 / Math.sqrt(d);
        const vmax = maxAbs(va);
        const line: Record<string, unknown> = { d, n, outliers };
        for (const precision of ['float16', 'float32'] as const) {
          const out = flashAttention(q, k, v, { precision });
          const got = await out.data();
          out.dispose();
          let maxErr = 0, sq = 0, count = 0;
          for (let h = 0; h < heads; h++) {
            for (let s = 0; s < rowsPerHead; s++) {
              const i = Math.floor(((s + 0.5) / rowsPerHead) * n);
              const qo = (h * n + i) * d;
              const sc = new Float64Array(n);
              let mx = -Infinity;
              for (let j = 0; j < n; j++) {
                let dot = 0;
                const ko = (h * n + j) * d;
                for (let e = 0; e < d; e++) dot += qa[qo + e] * ka[ko + e];
                sc[j] = dot * scale;
                mx = Math.max(mx, sc[j]);
              }
              let sum = 0;
              for (let j = 0; j < n; j++) { sc[j] = Math.exp(sc[j] - mx); sum += sc[j]; }
              for (let e = 0; e < d; e++) {
                let o = 0;
                for (let j = 0; j < n; j++) o += sc[j] * va[(h * n + j) * d + e];
                const err = Math.abs(got[qo + e] - o / sum);
                maxErr = Math.max(maxErr, Number.isNaN(err) ? Infinity : err);
                sq += err * err;
                count++;
              }
            }
          }
          line[precision] = { maxErrOverMaxV: maxErr / vmax, rmsErr: Math.sqrt(sq / count), maxV: vmax };
        }
        tf.dispose([q, k, v]);
        results.push(line);
        const f = (p: string) => {
          const r = line[p] as { maxErrOverMaxV: number; rmsErr: number };
          return `${p} max ${r.maxErrOverMaxV.toExponential(2)}·max|v| rms ${r.rmsErr.toExponential(2)}`;
        };
        say(`numerics D=${d} N=${n} ${outliers ? 'outliers×10' : 'normal     '} max|v| ${vmax.toFixed(2)}: ${f('float16')} | ${f('float32')}`);
      }
    }
  }
  return results;
}

interface Row { precision: string; n: number; d: number; causal: boolean; note: string; ms?: number; tflops?: number; error?: string }
const rows: Row[] = [];

async function measure(row: Row, options: FlashAttentionOptions, budgetMs: number, quiet = false): Promise<Row> {
  const { n, d } = row;
  const [q, k, v] = [1, 2, 3].map(seed => tf.randomNormal([1, H, n, d], 0, 1, 'float32', seed));
  const device = backend().device;
  device.pushErrorScope('validation');
  try {
    row.ms = await timeMs(() => tf.tidy(() => { flashAttention(q, k, v, { ...options, causal: row.causal, precision: row.precision as 'float16' }); }), budgetMs, 2);
    row.tflops = (4 * H * n * n * d * (row.causal ? 0.5 : 1)) / (row.ms * 1e9);
  } catch (e) {
    row.error = (e as Error).message.slice(0, 300);
  }
  tf.dispose([q, k, v]);
  await settle();
  const invalid = await device.popErrorScope();
  if (invalid) row.error = `WebGPU validation error: ${errorLines(invalid.message)}`;
  if (!quiet) {
    rows.push(row);
    say(format(row));
  }
  return row;
}

function format(r: Row): string {
  return [r.precision.padEnd(8), `N=${r.n}`.padEnd(8), `D=${r.d}`.padEnd(6), (r.causal ? 'causal' : 'full').padEnd(7),
    r.error ? `FAILED ${r.error}` : `${r.ms?.toFixed(3).padStart(9)} ms ${r.tflops?.toFixed(2).padStart(6)} TFLOP/s`, r.note].join(' ');
}

function benchConfig(n: number, d: number): AttentionConfig {
  return {
    batch: 1, headsQ: H, headsKV: H, seqQ: n, seqK: n, headDim: d, headDimV: d, layout: 'BHSD', scale: 1 / Math.sqrt(d),
    windowLeft: -1, windowRight: -1, softcap: 0, dropoutRate: 0, dropoutSeed: 0, biasShape: [], maskShape: [],
    alibiShape: [], hasKeyLengths: false, blockMaskShape: [], blockSize: 0, precision: 'float16',
  };
}

/**
 * Sweep candidates per head size (those that fit the device's workgroup memory run), all with O
 * in subgroup-matrix accumulators (lazy rescale; the matrix plan needs ≥ 4 subgroups,
 * attention_forward_f16.ts): the previous defaults (8×32 at D = 64, 4×32 at D = 128), the
 * defaults (f16ForwardTiles) and the runners-up of the 19:41 UTC run: K/V staged through
 * registers ('batched', 'prefetch'), double-buffered K/V, Q operands reloaded from workgroup
 * memory (qShared).
 */
const m = (groups: number, keys: number, more: Partial<F16Tiles> = {}): F16Tiles =>
  ({ groups, keys, accumulator: 'matrices', ...more });
const SWEEP_TILES: Record<number, F16Tiles[]> = {
  64: [m(8, 32), m(4, 32, { stage: 'prefetch' }), m(8, 32, { doubleBuffer: true, stage: 'prefetch' }), m(4, 32),
    m(4, 32, { stage: 'batched' })],
  128: [m(4, 32), m(4, 32, { qShared: true }), m(4, 32, { stage: 'batched' }), m(4, 32, { stage: 'prefetch' }),
    m(4, 32, { qShared: true, stage: 'prefetch' })],
};

/** --variants: the case list also runs on these schedules besides the default ones. */
const VARIANT_CHECKS: F16Tiles[] = [
  m(8, 32, { doubleBuffer: true, stage: 'prefetch' }), m(4, 32, { qShared: true }),
  m(4, 16, { qShared: true, doubleBuffer: true, stage: 'prefetch' }),
];

/**
 * --q-shared: the default schedules (f16ForwardTiles: 4×32 with prefetched K/V for heads up to 64,
 * 4×32 for wider) with qShared forced on every case; by default only heads wider than 64 (D = 80 in
 * the case list) reload Q from workgroup memory.
 */
const Q_SHARED_CHECKS: F16Tiles[] = [m(4, 32, { qShared: true }), m(4, 32, { qShared: true, stage: 'prefetch' })];

/**
 * GPU time of each compute pass from timestamp queries (where the device has 'timestamp-query'):
 * while `active`, every compute pass begun on any command encoder gets begin/end timestamp writes.
 * Host clocks around onSubmittedWorkDone also count submission gaps and host stalls; these do not.
 */
class PassTimer {
  private readonly querySet: GPUQuerySet;
  private readonly resolved: GPUBuffer;
  private readonly readback: GPUBuffer;
  private next = 0;
  private active = false;

  constructor(private readonly device: GPUDevice, private readonly capacity: number) {
    this.querySet = device.createQuerySet({ type: 'timestamp', count: capacity });
    this.resolved = device.createBuffer({ size: 8 * capacity, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    this.readback = device.createBuffer({ size: 8 * capacity, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const proto = Object.getPrototypeOf(device.createCommandEncoder()) as GPUCommandEncoder;
    const original = proto.beginComputePass;
    const writes = (): GPUComputePassTimestampWrites | undefined => {
      if (!this.active || this.next + 2 > this.capacity) return undefined;
      this.next += 2;
      return { querySet: this.querySet, beginningOfPassWriteIndex: this.next - 2, endOfPassWriteIndex: this.next - 1 };
    };
    proto.beginComputePass = function (this: GPUCommandEncoder, descriptor?: GPUComputePassDescriptor) {
      const timestampWrites = writes();
      return original.call(this, timestampWrites ? { ...descriptor, timestampWrites } : descriptor);
    };
  }

  start(): void {
    this.next = 0;
    this.active = true;
  }

  /** Milliseconds of each pass since start() (after the GPU finished them). */
  async stop(): Promise<number[]> {
    this.active = false;
    if (this.next === 0) return [];
    const encoder = this.device.createCommandEncoder();
    encoder.resolveQuerySet(this.querySet, 0, this.next, this.resolved, 0);
    encoder.copyBufferToBuffer(this.resolved, 0, this.readback, 0, 8 * this.next);
    this.device.queue.submit([encoder.finish()]);
    await this.readback.mapAsync(GPUMapMode.READ, 0, 8 * this.next);
    const t = new BigUint64Array(this.readback.getMappedRange(0, 8 * this.next).slice(0));
    this.readback.unmap();
    return range(this.next / 2).map(i => Number(t[2 * i + 1] - t[2 * i]) / 1e6);
  }
}

let passTimer: PassTimer | undefined;
/** Per head size: each sweep entry's per-round times (the JSON report's `sweeps`). */
const sweeps: Record<number, unknown> = {};

const median = (x: number[]): number => [...x].sort((a, b) => a - b)[Math.floor(x.length / 2)];

/**
 * Milliseconds per call of `run`, host clock (as timeMs: a warm-up, the fastest of three calls sizes the batch,
 * then a batch of back-to-back calls, 2 to 50, about `budgetMs`) and, with a PassTimer, the median
 * GPU time of the batch's compute passes (one per call for these programs).
 */
async function timeBoth(run: () => void, budgetMs: number): Promise<{ host: number; gpu?: number; passes?: number }> {
  const { iters } = await sizeBatch(run, budgetMs, 2, 50);
  passTimer?.start();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) run();
  await settle();
  const host = (performance.now() - t0) / iters;
  const passes = await passTimer?.stop();
  return passes?.length ? { host, gpu: median(passes), passes: passes.length / iters } : { host };
}

/** Max |a − b| / max|v| over all elements (NaN counts as infinite). */
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>, vmax: number): number {
  let e = 0;
  for (let n = 0; n < a.length; n++) {
    const x = Math.abs(a[n] - b[n]);
    e = Math.max(e, Number.isNaN(x) ? Infinity : x);
  }
  return e / vmax;
}

/**
 * About a second of float32 forwards (N = 4096 or --max-n, D = 64) before timing: on the H100 the first
 * batches after light work (case checks, input set-up) read up to 5× slow on the GPU clock too,
 * float32 kernel alike (19:44 UTC run: 3.1 ms against 0.66–0.83 in later rounds), as the card
 * leaves its idle clocks.
 */
async function warmUp(): Promise<void> {
  const n = Math.min(4096, maxN);
  const [q, k, v] = [1, 2, 3].map(seed => tf.randomNormal([1, H, n, 64], 0, 1, 'float32', seed));
  const t0 = performance.now();
  while (performance.now() - t0 < 1000) {
    for (let i = 0; i < 4; i++) tf.tidy(() => { flashAttention(q, k, v); });
    await settle();
  }
  tf.dispose([q, k, v]);
}

/**
 * 3a. Every fitting candidate at N = 4096 on the same random normal inputs: its output against the
 * float32 kernel's (within 1e-7·max|v| of float64), then `rounds` interleaved rounds (the order
 * rotates each round) of all candidates and the float32 kernel (the card's noise reference: it
 * reads ~22 TFLOP/s when the card is steady). Per candidate: host and GPU-timestamp medians with
 * their range, and the median over rounds of the float32 kernel's time / the candidate's in the
 * same round. Returns the fastest candidate (by GPU median where timestamps exist) within
 * 2e-3·max|v|.
 */
async function sweep(d: number, plan: F16Plan, limit: number): Promise<F16Tiles | undefined> {
  const n = Math.min(4096, maxN);
  await warmUp();
  const candidates = (SWEEP_TILES[d] ?? []).filter(t => forwardF16WorkgroupBytes(benchConfig(n, d), plan, t, true) <= limit);
  const [q, k, v] = [1, 2, 3].map(seed => tf.randomNormal([1, H, n, d], 0, 1, 'float32', seed));
  const vmax = maxAbs(await v.data());
  const ref = await tf.tidy(() => flashAttention(q, k, v)).data();
  const errors = new Map<F16Tiles, number>();
  const device = backend().device;
  for (const t of candidates) {
    device.pushErrorScope('validation');
    const got = await withPlan(plan, t, async () => {
      const out = flashAttention(q, k, v, { precision: 'float16' });
      const data = await out.data();
      out.dispose();
      return data;
    });
    const invalid = await device.popErrorScope();
    errors.set(t, invalid ? Infinity : maxDiff(got, ref, vmax));
    if (invalid) say(`  ${JSON.stringify(t)}: WebGPU validation error: ${errorLines(invalid.message)}`);
  }
  const F32 = 'float32 kernel';
  const entries: Array<F16Tiles | typeof F32> = [...candidates.filter(t => errors.get(t) !== Infinity), F32];
  const host = new Map<F16Tiles | string, number[]>(entries.map(e => [e, []]));
  const gpu = new Map<F16Tiles | string, number[]>(entries.map(e => [e, []]));
  for (let round = 0; round < rounds; round++) {
    for (let x = 0; x < entries.length; x++) {
      const e = entries[(x + round) % entries.length];
      const precision = e === F32 ? 'float32' : 'float16';
      const call = () => tf.tidy(() => { flashAttention(q, k, v, { precision }); });
      const r = await withPlan(e === F32 ? undefined : plan, e === F32 ? undefined : e, () => timeBoth(call, 150));
      host.get(e)?.push(r.host);
      if (r.gpu !== undefined) gpu.get(e)?.push(r.gpu);
    }
  }
  tf.dispose([q, k, v]);
  const flops = 4 * H * n * n * d;
  const tflops = (ms: number) => (flops / (ms * 1e9)).toFixed(1);
  const spread = (ms: number[]) => {
    const s = [...ms].sort((a, b) => a - b);
    return ms.length ? `${tflops(median(ms)).padStart(5)} TFLOP/s (${median(ms).toFixed(3)} ms; rounds ${tflops(s[s.length - 1])}–${tflops(s[0])})` : 'n/a';
  };
  let best: { t: F16Tiles; ms: number } | undefined;
  say(`\nD=${d} N=${n} sweep, ${rounds} interleaved rounds (medians; error vs the float32 kernel / max|v|):`);
  for (const e of entries) {
    const h = host.get(e) ?? [], g = gpu.get(e) ?? [], f = host.get(F32) ?? [];
    const ratio = median(h.map((x, r) => f[r] / x));
    const err = e === F32 ? '' : ` err ${errors.get(e)?.toExponential(2)}`;
    say(`  ${(e === F32 ? F32 : JSON.stringify(e)).padEnd(84)} host ${spread(h)} gpu ${spread(g)} f32/this ${ratio.toFixed(2)}${err}`);
    const ms = g.length ? median(g) : median(h);
    if (e !== F32 && (errors.get(e) ?? Infinity) <= 2e-3 && (!best || ms < best.ms)) best = { t: e, ms };
  }
  say(`D=${d}: fastest correct tiles ${JSON.stringify(best)}`);
  sweeps[d] = entries.map(e => ({ entry: e, err: e === F32 ? undefined : errors.get(e), hostMs: host.get(e), gpuMs: gpu.get(e) }));
  return best?.t;
}

interface EntryTiming { host: number; enqueue: number; gpu?: number; passes?: number; iters: number }

/**
 * One entry of an interleaved round: a full garbage collection, 150 ms of untimed calls, a batch
 * sized to about 100 ms on the fastest of 3 timed calls (2 to 400 calls), then host ms per call (to
 * onSubmittedWorkDone), the host's time per call to queue the batch (`enqueue`), and the median
 * GPU time per compute pass from timestamps (the first 64 passes of the batch).
 */
async function timeEntry(run: () => void): Promise<EntryTiming> {
  const once = await steadyRunMs(run, 150);
  const iters = Math.max(2, Math.min(400, Math.round(100 / once)));
  passTimer?.start();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) run();
  const queued = performance.now();
  await settle();
  const host = (performance.now() - t0) / iters;
  const passes = await passTimer?.stop();
  return { host, enqueue: (queued - t0) / iters, iters, ...(passes?.length ? { gpu: median(passes), passes: passes.length } : {}) };
}

/** Random q, k, v of [1, H, n, d] per shape, keyed `n/d` (seeds 1–3, as every float16 bench). */
function inputsByShape(shapes: Array<{ n: number; d: number }>): Map<string, tf.Tensor[]> {
  return new Map(shapes.map(s => [`${s.n}/${s.d}`, [1, 2, 3].map(seed => tf.randomNormal([1, H, s.n, s.d], 0, 1, 'float32', seed))]));
}

/**
 * Times every entry with `time` in `rounds` interleaved rounds (the order rotates each round) after
 * two warm-ups, printing each sample under `name` padded to `width`; the samples per entry, in
 * round order.
 */
async function interleavedEntries<E>(entries: E[], name: (e: E) => string, width: number,
  time: (e: E) => Promise<EntryTiming>): Promise<Map<E, EntryTiming[]>> {
  const times = new Map(entries.map(e => [e, [] as EntryTiming[]]));
  await warmUp();
  await warmUp();
  for (let round = 0; round < rounds; round++) {
    for (let x = 0; x < entries.length; x++) {
      const e = entries[(x + round) % entries.length];
      const r = await time(e);
      times.get(e)?.push(r);
      say(`round ${round} ${name(e).padEnd(width)} host ${r.host.toFixed(3)} enqueue ${r.enqueue.toFixed(3)} gpu ${r.gpu?.toFixed(3) ?? 'n/a'} ms (${r.iters} calls)`);
    }
  }
  return times;
}

/**
 * --small-n: `rounds` interleaved rounds (the order rotates each round) of the float16 forward on its
 * default plan and tiles (no override) and the float32 kernel, B = 1, H = 12, at N = 1024 and 2048
 * (D = 64, 128, causal and not), where a call is bounded by host work rather than the GPU, and at
 * N = 4096 (D = 64, 128, full); each entry timed by timeEntry.
 */
async function smallN(): Promise<void> {
  // --max-n below 1024 (smoke tests on SwiftShader) runs that N alone.
  const small = [1024, 2048].filter(n => n <= maxN);
  const shapes = (small.length ? small : [maxN]).flatMap(n => [64, 128].flatMap(d => [false, true].map(causal => ({ n, d, causal }))))
    .concat(maxN >= 4096 ? [64, 128].map(d => ({ n: 4096, d, causal: false })) : []);
  const inputs = inputsByShape(shapes);
  const entries = shapes.flatMap(s => (['float16', 'float32'] as const).map(precision => ({ ...s, precision })));
  const name = (e: typeof entries[number]) => `${e.precision} N=${e.n} D=${e.d} ${e.causal ? 'causal' : 'full'}`;
  const times = await interleavedEntries(entries, name, 28, e => {
    const [q, k, v] = inputs.get(`${e.n}/${e.d}`) ?? [];
    return timeEntry(() => tf.tidy(() => { flashAttention(q, k, v, { causal: e.causal, precision: e.precision }); }));
  });
  for (const xs of inputs.values()) tf.dispose(xs);
  say(`\nsmall-n: medians over ${rounds} rounds, ms per call (TFLOP/s from host time; f16/f32 = time ratio in the same round, median):`);
  for (const e of entries) {
    const t = times.get(e) ?? [];
    const flops = 4 * H * e.n * e.n * e.d * (e.causal ? 0.5 : 1);
    const host = median(t.map(x => x.host));
    const other = times.get(entries.find(o => o.n === e.n && o.d === e.d && o.causal === e.causal && o.precision !== e.precision) ?? e) ?? [];
    const ratio = median(t.map((x, r) => (other[r] ? x.host / other[r].host : NaN)));
    const gpu = t.filter(x => x.gpu !== undefined).map(x => x.gpu ?? 0);
    say(`  ${name(e).padEnd(28)} host ${host.toFixed(3)} (${(flops / (host * 1e9)).toFixed(1)} TFLOP/s; rounds ${t.map(x => x.host.toFixed(3)).join(' ')}) ` +
      `enqueue ${median(t.map(x => x.enqueue)).toFixed(3)} gpu/pass ${gpu.length ? median(gpu).toFixed(3) : 'n/a'} ` +
      `calls ${t.map(x => x.iters).join(' ')} ${e.precision === 'float16' ? `f16/f32 ${ratio.toFixed(2)}` : ''}`);
  }
}

type PairSchedule = typeof f16ForwardTuning.schedule;

/** The float16 forward's block-pairing schedules (f16ForwardTuning.schedule) that --pairing compares. */
const PAIRINGS: Record<string, PairSchedule> = {
  'one block per workgroup': { pairBlocks: 'never', halvePairs: 'never' },
  'whole pairs': { pairBlocks: 'banded', halvePairs: 'never' },
  'halved pairs': { pairBlocks: 'banded', halvePairs: 'always' },
};

const withSchedule = async <T>(schedule: PairSchedule, body: () => Promise<T>): Promise<T> => {
  const saved = f16ForwardTuning.schedule;
  f16ForwardTuning.schedule = schedule;
  try {
    return await body();
  } finally {
    f16ForwardTuning.schedule = saved;
  }
};

/**
 * --pairing (b): the float16 causal forward (default plan and tiles) under each of PAIRINGS, and
 * the full forward of the same shape as a reference, B = 1, H = 12, N = 2048, 4096, 8192 (to
 * --max-n), D = 64 and 128, in `rounds` interleaved rounds (the order rotates each round) after
 * two seconds of warm-up; each entry timed by timeEntry. TFLOP/s count causal FLOPs as half.
 */
async function pairingAB(): Promise<Record<string, unknown>> {
  const sizes = [2048, 4096, 8192].filter(n => n <= maxN);
  const shapes = (sizes.length ? sizes : [maxN]).flatMap(n => [64, 128].map(d => ({ n, d })));
  const inputs = inputsByShape(shapes);
  const FULL = 'full (reference)';
  const entries = shapes.flatMap(s => [...Object.keys(PAIRINGS), FULL].map(schedule => ({ ...s, schedule })));
  const name = (e: typeof entries[number]) => `N=${e.n} D=${e.d} ${e.schedule === FULL ? FULL : `causal, ${e.schedule}`}`;
  const times = await interleavedEntries(entries, name, 44, e => {
    const [q, k, v] = inputs.get(`${e.n}/${e.d}`) ?? [];
    const causal = e.schedule !== FULL;
    const run = () => tf.tidy(() => { flashAttention(q, k, v, { causal, precision: 'float16' }); });
    return withSchedule(PAIRINGS[e.schedule] ?? f16ForwardTuning.schedule, () => timeEntry(run));
  });
  for (const xs of inputs.values()) tf.dispose(xs);
  say(`\npairing: medians over ${rounds} rounds, ms per call (TFLOP/s from host time, causal FLOPs halved; ` +
    'old/this = median over rounds of the one-block-per-workgroup time / this time in the same round):');
  const summary: unknown[] = [];
  for (const e of entries) {
    const t = times.get(e) ?? [];
    const flops = 4 * H * e.n * e.n * e.d * (e.schedule === FULL ? 1 : 0.5);
    const host = median(t.map(x => x.host));
    const old = times.get(entries.find(o => o.n === e.n && o.d === e.d && o.schedule === 'one block per workgroup') ?? e) ?? [];
    const ratio = median(t.map((x, r) => old[r].host / x.host));
    const gpu = t.filter(x => x.gpu !== undefined).map(x => x.gpu ?? 0);
    summary.push({ ...e, hostMs: t.map(x => x.host), gpuMs: t.map(x => x.gpu), iters: t.map(x => x.iters), medianMs: host, oldOverThis: ratio });
    say(`  ${name(e).padEnd(44)} host ${host.toFixed(3)} (${(flops / (host * 1e9)).toFixed(1)} TFLOP/s; rounds ` +
      `${t.map(x => x.host.toFixed(3)).join(' ')}) gpu/pass ${gpu.length ? median(gpu).toFixed(3) : 'n/a'} ` +
      `calls ${t.map(x => x.iters).join(' ')}${e.schedule === FULL ? '' : ` old/this ${ratio.toFixed(3)}`}`);
  }
  return { rounds, entries: summary };
}

async function main(): Promise<void> {
  const setup = await initDawn({ unsafeFeatures: true, disableRobustness: noRobustness, swiftShaderFallback: true });
  const device = setup.device;
  const caps = f16Capabilities(device);
  const limit = device.limits.maxComputeWorkgroupStorageSize;
  say(`adapter: ${setup.description}; robustness ${noRobustness ? 'OFF' : 'on'}; workgroup memory ${limit} B; ` +
    `capabilities ${JSON.stringify(caps)}; matrix path ${matrixPathFits(caps)}`);
  const listed = (info: unknown) => JSON.stringify((info as { subgroupMatrixConfigs?: unknown }).subgroupMatrixConfigs);
  const deviceInfo: unknown = (device as { adapterInfo?: unknown }).adapterInfo;
  say(`device features: ${[...device.features].join(', ')}`);
  say(`subgroupMatrixConfigs: kernels see ${JSON.stringify(subgroupMatrixConfigs(device))}; ` +
    `device.adapterInfo lists ${listed(deviceInfo ?? {})}; adapter.info lists ${listed(setup.adapter.info)}`);
  const report: Record<string, unknown> = { adapter: setup.description, robustness: !noRobustness, caps };
  if (device.features.has('timestamp-query')) passTimer = new PassTimer(device, 128);
  say(`GPU timestamps: ${passTimer ? 'on' : 'off (no timestamp-query)'}`);
  const plans: F16Plan[] = [];
  // Where the feature is on but no configuration is listed, try the plan anyway (labelled).
  const forceMatrix = !matrixPathFits(caps) && device.features.has('chromium-experimental-subgroup-matrix');
  if (forceMatrix) say('subgroup-matrix feature on but no f16 16x16x16 config visible: forcing the plan');
  if (matrixPathFits(caps) || forceMatrix) {
    if (await probeMatrixSyntax()) plans.push({ matmul: 'subgroup-matrix', element: 'f16' });
    else say('subgroup-matrix forward does not compile in either syntax: measuring the other plans');
  }
  if (!matrixOnly || !plans.length) {
    if (caps.shaderF16) plans.push({ matmul: 'registers', element: 'f16' });
    plans.push({ matmul: 'registers', element: 'f32' });
  }
  if (args.includes('--small-n')) {
    if (!args.includes('--skip-check')) report.cases = await checkCases([plans[0]]);
    await smallN();
    return finish(report);
  }
  if (args.includes('--pairing')) {
    // (a) The case list on the device's first plan: default schedule, then paired and halved
    // blocks forced on every case (pairBlocks 'always': unbanded problems pair too).
    if (!args.includes('--skip-check')) {
      report.cases = await checkCases([plans[0]]);
      for (const halvePairs of ['never', 'always'] as const) {
        say(`forced: pairBlocks 'always', halvePairs '${halvePairs}'`);
        const checked = await withSchedule({ pairBlocks: 'always', halvePairs }, () => checkCases([plans[0]]));
        report.cases = { ...(report.cases as object), [`pairBlocks always, halvePairs ${halvePairs}`]: checked };
      }
    }
    report.pairing = await pairingAB();
    return finish(report);
  }
  if (args.includes('--q-shared')) {
    if (plans[0].matmul !== 'subgroup-matrix') say('no subgroup-matrix plan: qShared does not apply here (a smoke test only)');
    report.cases = await checkCases([plans[0]]);
    for (const t of Q_SHARED_CHECKS) report.cases = { ...(report.cases as object), ...await checkCases([plans[0]], t) };
    return finish(report);
  }
  if (!args.includes('--skip-check')) {
    report.cases = await checkCases(plans);
    if (args.includes('--variants') && plans[0].matmul === 'subgroup-matrix') {
      for (const t of VARIANT_CHECKS) report.cases = { ...(report.cases as object), ...await checkCases([plans[0]], t) };
    }
    if (!noRobustness) report.numerics = await withPlan(plans[0], undefined, numerics);
  }
  const plan = plans[0];
  if (plan.matmul !== 'subgroup-matrix' && !args.includes('--all')) {
    say('no subgroup-matrix plan: timings skipped (--all times the first plan anyway)');
    return finish(report);
  }
  const best: Record<number, F16Tiles | undefined> = {};
  for (const d of [64, 128]) best[d] = await sweep(d, plan, limit);
  if (args.includes('--check-best')) {
    for (const d of [64, 128]) {
      const t = best[d];
      if (t) report.cases = { ...(report.cases as object), ...await checkCases([plan], t) };
    }
  }
  if (args.includes('--sweep-only')) return finish(report);
  const sizes = (quick ? [Math.min(4096, maxN)] : [1024, 2048, 4096, 8192, 16384, 32768, 65536]).filter(n => n <= maxN);
  await warmUp();
  for (const d of [64, 128]) {
    for (const n of sizes) {
      for (const causal of [false, true]) {
        const budget = n >= 32768 ? 1 : 250;
        await withPlan(plan, best[d], () => measure({ precision: 'float16', n, d, causal, note: `${plan.matmul}/${plan.element} tiles ${JSON.stringify(best[d])}` }, {}, budget));
        await measure({ precision: 'float32', n, d, causal, note: 'float32 kernel' }, {}, budget);
      }
    }
  }
  finish(report);
}

function finish(report: Record<string, unknown>): void {
  report.rows = rows;
  report.sweeps = sweeps;
  say('\nsummary');
  for (const r of rows) say(format(r));
  const out = process.env.OUT;
  if (out) {
    fs.writeFileSync(path.join(out, `f16_forward${noRobustness ? '-norobust' : ''}.json`), JSON.stringify(report, null, 1));
    fs.writeFileSync(path.join(out, `f16_forward${noRobustness ? '-norobust' : ''}.log`), log.join('\n') + '\n');
  }
}

main().then(() => process.exit(0), e => { console.error(e); process.exit(1); });
