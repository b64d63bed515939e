// The `precision: 'float16'` backward on a real GPU through Dawn in Node (robustness on, as a
// browser runs it): correctness on the GPU, gradient numerics and forward+backward speed, float16
// against float32, in one run.
//
//   /work/shared/gpu/pack.sh bench/f16_backward.ts   then on the GPU machine:
//   bash .gpu/run.sh f16_backward.mjs [check] [programs] [numerics] [bench] [table] [quick|lean|full|tiny] [scalar]
//     [repeats=R] [max-n=N] [until=S]
//   (none of the first five: all but table; `full`: N = 1024, 2048, 4096, 8192, 16384 instead of 1024, 4096, 16384,
//   `lean`: bench 4096 and 16384, numerics 1024 and 4096; `tiny`: bench and table N = 256, D = 64 only (a smoke
//   test); `scalar`: the check also runs the scalar f16 tiles)
//
//   check     the shared case list's gradients with precision 'float16' against the float64
//             reference, on the device's path (and the scalar f16 tiles with `scalar`) (max error relative
//             to max|ref| per tensor); a run with any non-finite or missing value fails loudly.
//   programs  each backward program alone, per tile/staging variant, at B=1 H=12 N=4096 D=64, every
//             variant checked on the GPU first; the fastest correct tiles then run the case list and
//             forward+backward against the defaults (see programs()).
//   numerics  dq, dk, dv max and RMS error (relative to max|ref| and RMS(ref)), H=1 D=64, random
//             normal inputs and the same with 1 % of q/k entries ×10: against float64 at N = 1024
//             (float32 kernel alongside), against the float32 kernel (itself within 1e-4 of float64)
//             at N = 2048 … 16384 (a float64 reference there costs minutes of device-machine CPU).
//   bench     ms and TFLOP/s, forward and forward+backward, float16 and float32, causal and not,
//             N = 1024 … 16384, D = 64 and 128 (FLOPs: forward 4·B·H·N²·D, halved when causal;
//             forward+backward 3.5×).
//   table     issue 8's item 5 on the final defaults (no tuning override): forward and forward+backward
//             TFLOP/s, float16 and float32, causal and not, N = 1024 … 65536 (up to max-n=N), D = 64 and
//             128, steady timing (steadyMs: medians of R repeats, default 5; 3 at N ≥ 32768), markdown
//             tables at the end; cells not started before until=S seconds are listed as not measured.
// Results: tables on stdout and JSON in $OUT/f16_backward.json (when OUT is set).
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import { flashAttention } from '../src/index';
import { FlashAttentionOptions, normalizeAttention, Precision } from '../src/config';
import { gradInputNames, packInputs } from '../src/inputs';
import { FlashAttentionGrad } from '../src/kernel_names';
import { initDawn } from '../src/node';
import {
  Dispatch, gpuBuffer, makeOutput, ProgramSpec, range, runPrograms, scratchBuffer, wgslBindings,
} from '../kernels/webgpu/runtime';
import { f16Tuning } from '../kernels/webgpu/f16_support';
import { dkdvF16Program, dkdvF16WorkgroupBytes } from '../kernels/webgpu/attention_backward_dkdv_f16';
import { dqF16Program, dqF16WorkgroupBytes } from '../kernels/webgpu/attention_backward_dq_f16';
import type { F16Mode } from '../kernels/webgpu/attention_backward_f16_matrix';
import { auxLayout } from '../kernels/webgpu/aux';
import {
  f16BackwardMode, f16BackwardPasses, hasF16SubgroupMatrix, webgpuF16BackwardTuning,
} from '../kernels/webgpu/attention_backward_f16';
import { planDispatches } from '../kernels/webgpu/flash_attention';
import { queryBlockGrid } from '../kernels/webgpu/attention_wgsl';
import { ROW_DOT_ROWS, rowDotProgram } from '../kernels/webgpu/row_dot';
import type { F16Tiles } from '../kernels/webgpu/attention_backward_dkdv_f16';
import { AttentionCase, CASES, CaseData, caseData } from '../test/cases';
import { caseTensors, toTensor } from '../test/case_tensors';
import { referenceGrads } from '../test/reference';
import { backend, settle, steadyRunMs, timeMs } from './webgpu_timing';

const H = 12;
const args = new Set(process.argv.slice(2));
const all = !['check', 'programs', 'numerics', 'bench', 'table'].some(a => args.has(a));
/** The number of a `name=value` argument, or `fallback`. */
const numberArg = (name: string, fallback: number): number => {
  const word = [...args].find(a => a.startsWith(`${name}=`));
  const value = word === undefined ? NaN : Number(word.slice(name.length + 1));
  if (word !== undefined && !(value > 0)) throw new Error(`${word}: expected a positive number`);
  return word === undefined ? fallback : value;
};
const quick = args.has('quick');
const results: Record<string, unknown> = {};
/** The float16 gradient tolerance of test/webgpu_f16_grad.test.ts (max error relative to max|ref| per tensor). */
const F16_TOLERANCE = 1e-2;
const MATRIX_MODE: F16Mode = { path: 'subgroupMatrix', element: 'f16' };

/** Runs `body` inside a validation error scope; a shader or pipeline error becomes a thrown Error. */
async function validated<T>(body: () => Promise<T>): Promise<T> {
  const device = backend().device;
  device.pushErrorScope('validation');
  let value: T | undefined, failure: unknown;
  try {
    value = await body();
  } catch (e) {
    failure = e;
  }
  await settle();
  const invalid = await device.popErrorScope();
  if (invalid) throw new Error(`WebGPU validation error: ${invalid.message.split('\n').filter(l => !/warning/.test(l)).slice(0, 12).join(' | ')}`);
  if (failure !== undefined || value === undefined) throw failure ?? new Error('no result');
  return value;
}

const flat = (x: tf.Tensor) => tf.reshape(x, [-1]);

/**
 * The FlashAttentionGrad kernel alone with precision 'float16', on the output and lse of the
 * float32 forward: the backward measured and checked apart from the float16 forward kernel.
 */
function backwardF16(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, options: FlashAttentionOptions, dOutput: tf.Tensor,
  dLse: tf.Tensor): tf.Tensor[] {
  const { output, lse } = flashAttention(q, k, v, { ...options, precision: 'float32', returnLse: true });
  const { config, tensors } = normalizeAttention(q, k, v, { ...options, precision: 'float16' });
  const inputs = packInputs(gradInputNames(config), { ...tensors, output, lse, dOutput, dLse });
  const grads = tf.engine().runKernel(FlashAttentionGrad, inputs, { ...config }) as tf.Tensor[];
  tf.dispose([output, lse]);
  return grads;
}

/** dq, dk, dv (and dbias) of the case's upstream gradients, from backwardF16. */
async function caseBackwardF16(c: AttentionCase, data: CaseData): Promise<Float32Array[]> {
  const t = caseTensors(c, data);
  const [dOutput, dLse] = [toTensor(data.dOutput), toTensor(data.dLse)];
  const grads = backwardF16(t.q, t.k, t.v, t.options, dOutput, dLse);
  const values = await Promise.all(grads.map(g => g.data() as Promise<Float32Array>));
  tf.dispose([...grads, dOutput, dLse, ...t.all]);
  return values;
}

/** dq, dk, dv (and dbias) of Σ dO∘O + Σ dLse∘lse, for the case's data. */
async function caseGrads(c: AttentionCase, data: CaseData, precision: Precision): Promise<Float32Array[]> {
  const t = caseTensors(c, data);
  const bias = t.options.bias;
  const dy = tf.tidy(() => tf.concat([flat(toTensor(data.dOutput)), flat(toTensor(data.dLse))]));
  const f = (...xs: tf.Tensor[]) => {
    const [q, k, v, b] = xs;
    const { output, lse } = flashAttention(q, k, v, { ...t.options, ...(b ? { bias: b } : {}), precision, returnLse: true });
    return tf.concat([flat(output), flat(lse)]);
  };
  const grads = tf.grads(f)(bias ? [t.q, t.k, t.v, bias] : [t.q, t.k, t.v], dy);
  const values = await Promise.all(grads.map(g => g.data() as Promise<Float32Array>));
  tf.dispose([...grads, dy, ...t.all]);
  return values;
}

interface Err { max: number; rms: number; nonFinite: number }

/** max|got − ref| / max|ref| and RMS(got − ref) / RMS(ref); non-finite values counted where ref is finite. */
function relError(got: ArrayLike<number>, ref: ArrayLike<number>): Err {
  let maxE = 0, maxR = 0, se = 0, sr = 0, nonFinite = 0;
  for (let n = 0; n < ref.length; n++) {
    if (!Number.isFinite(ref[n])) continue;
    if (!Number.isFinite(got[n])) { nonFinite++; continue; }
    const e = Math.abs(got[n] - ref[n]);
    maxE = Math.max(maxE, e);
    maxR = Math.max(maxR, Math.abs(ref[n]));
    se += e * e;
    sr += ref[n] * ref[n];
  }
  return { max: maxE / Math.max(maxR, 1e-30), rms: Math.sqrt(se / Math.max(sr, 1e-60)), nonFinite };
}

const fmt = (x: number) => x.toExponential(2);

async function check(): Promise<void> {
  const cases = CASES.filter(c => c.grad);
  const out: Record<string, unknown> = {};
  for (const scalar of args.has('scalar') ? [false, true] : [false]) {
    webgpuF16BackwardTuning.subgroupMatrix = !scalar;
    const mode = f16BackwardMode(backend().device);
    const label = `float16 ${mode ? `${mode.path}/${mode.element}` : 'none (float32 kernels)'}`;
    let worst = 0;
    const rows: Record<string, Record<string, Err>> = {};
    for (const c of cases) {
      const data = caseData(c);
      const ref = referenceGrads(c, data);
      const names = ['dq', 'dk', 'dv', 'dbias'] as const;
      try {
        const got = await validated(() => caseBackwardF16(c, data));
        rows[c.name] = {};
        got.forEach((g, i) => {
          const r = ref[names[i]];
          if (!r) return;
          const e = relError(g, r);
          rows[c.name][names[i]] = e;
          worst = Math.max(worst, e.nonFinite > 0 ? Infinity : e.max);
        });
        const line = Object.entries(rows[c.name]).map(([n, e]) => `${n} ${fmt(e.max)}${e.nonFinite ? ` (${e.nonFinite} non-finite!)` : ''}`);
        console.log(`check ${label.padEnd(32)} ${c.name.padEnd(32)} ${line.join('  ')}`);
      } catch (e) {
        worst = Infinity;
        console.log(`check ${label} ${c.name}: FAILED ${(e as Error).message.slice(0, 300)}`);
      }
    }
    console.log(`check ${label}: worst max relative gradient error over ${cases.length} cases: ${fmt(worst)}`);
    out[label] = { worst, rows };
  }
  webgpuF16BackwardTuning.subgroupMatrix = true;
  results.check = out;
}

/** Inputs of a numerics problem: caseData's seeded values, optionally 1 % of q and k entries ×10. */
function numericsData(c: AttentionCase, outliers: boolean): CaseData {
  const data = caseData(c);
  if (outliers) {
    let seed = 12345;
    const next = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed / 2 ** 32; };
    for (const t of [data.q, data.k]) t.values = t.values.map(x => (next() < 0.01 ? 10 * x : x));
  }
  return data;
}

async function numerics(): Promise<void> {
  const table: Array<Record<string, unknown>> = [];
  const sizes = quick ? [1024] : args.has('full') ? [1024, 2048, 4096, 8192, 16384]
    : args.has('lean') ? [1024, 4096] : [1024, 4096, 16384];
  for (const n of sizes) {
    for (const outliers of [false, true]) {
      const heads = 1;
      const c: AttentionCase = { name: `numerics N=${n}${outliers ? ' outliers' : ''}`, b: 1, hq: heads, hkv: heads,
        nq: n, nk: n, d: 64, dv: 64, grad: true };
      const data = numericsData(c, outliers);
      const f16 = await validated(() => caseBackwardF16(c, data));
      const f32 = await validated(() => caseGrads(c, data, 'float32'));
      const float64 = n <= 1024;
      const ref = float64 ? referenceGrads(c, data) : undefined;
      const names = ['dq', 'dk', 'dv'] as const;
      const row: Record<string, unknown> = { n, heads, outliers, reference: float64 ? 'float64' : 'float32 kernel' };
      names.forEach((name, i) => {
        row[`f16 ${name}`] = relError(f16[i], ref ? ref[name] : f32[i]);
        if (ref) row[`f32 ${name}`] = relError(f32[i], ref[name]);
      });
      table.push(row);
      const cells = names.map(name => {
        const e16 = row[`f16 ${name}`] as Err, e32 = row[`f32 ${name}`] as Err | undefined;
        return `${name} f16 max ${fmt(e16.max)} rms ${fmt(e16.rms)}` + (e32 ? ` (f32 max ${fmt(e32.max)} rms ${fmt(e32.rms)})` : '');
      });
      console.log(`numerics N=${n} H=${heads} D=64 ${outliers ? 'outliers' : 'normal  '} vs ${row.reference}: ${cells.join(' | ')}`);
    }
  }
  results.numerics = table;
}

interface Row { precision: Precision; pass: 'fwd' | 'fwd+bwd' | 'bwd'; n: number; d: number; causal: boolean; note?: string;
  ms?: number; tflops?: number; error?: string; samples?: number[]; iters?: number }

/** Milliseconds per call of `step` (`timeMs` with a budget, or steadyMs). */
type Timer = (step: () => void) => Promise<number>;

/** q, k, v and dO of a bench problem: random normal, made on the host (tf.randomNormal fills them in JS). */
const benchInputs = (n: number, d: number): tf.Tensor[] =>
  [1, 2, 3, 4].map(seed => tf.randomNormal([1, H, n, d], 0, 1, 'float32', seed));

/** Times one row; `inputs` (q, k, v, dO of the row's shape) are the caller's to dispose, else made here. */
async function measure(row: Row, budgetMs = 200, timer: Timer = step => timeMs(step, budgetMs, 2), inputs?: tf.Tensor[]):
    Promise<Row> {
  const { n, d } = row;
  const [q, k, v, dy] = inputs ?? benchInputs(n, d);
  const options: FlashAttentionOptions = { causal: row.causal, precision: row.precision };
  // The backward alone runs on the float32 forward's output and lse, made only for that pass.
  const made: tf.Tensor[] = [];
  const backwardStep = () => {
    const dLse = tf.zeros([1, H, n]);
    const { output, lse } = flashAttention(q, k, v, { causal: row.causal, returnLse: true });
    made.push(dLse, output, lse);
    const { config, tensors } = normalizeAttention(q, k, v, options);
    const gradInputs = packInputs(gradInputNames(config), { ...tensors, output, lse, dOutput: dy, dLse });
    return () => tf.tidy(() => { tf.engine().runKernel(FlashAttentionGrad, gradInputs, { ...config }); });
  };
  const step = row.pass === 'fwd'
    ? () => tf.tidy(() => { flashAttention(q, k, v, options); })
    : row.pass === 'bwd'
      ? backwardStep()
      : () => tf.tidy(() => {
        tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttention(a, b, c, options))([q, k, v], dy);
      });
  try {
    row.ms = await validated(() => timer(step));
    const fwd = 4 * H * n * n * d * (row.causal ? 0.5 : 1);
    row.tflops = (row.pass === 'fwd' ? fwd : row.pass === 'bwd' ? 2.5 * fwd : 3.5 * fwd) / (row.ms * 1e9);
  } catch (e) {
    row.error = (e as Error).message.slice(0, 600);
  }
  tf.dispose([...(inputs ? [] : [q, k, v, dy]), ...made]);
  console.log([row.precision.padEnd(8), row.pass.padEnd(8), `N=${n}`.padEnd(8), `D=${d}`.padEnd(6),
    (row.causal ? 'causal' : 'full').padEnd(7), row.error ? `FAILED ${row.error}` :
      `${row.ms?.toFixed(3).padStart(9)} ms ${row.tflops?.toFixed(2).padStart(6)} TFLOP/s`, row.note ?? ''].join(' '));
  return row;
}

/** One backward tile/staging variant: the tiles of both passes (webgpuF16BackwardTuning). */
interface Variant { name: string; dkdv: F16Tiles; dq: F16Tiles }

const tiles = (rows: number, cols: number, stage: F16Tiles['stage'], chains = false): F16Tiles => ({ rows, cols, stage, chains });
/**
 * The variants of programs(), the first being the one forward+backward is compared with (the first
 * version's tiles). The first run (2026-11-26 18:37 UTC) timed 64×32, 32×32, 64×16 and 128×16 with
 * loop, batched and prefetch staging and chains; these are the winner's neighbours, timed at 18:41
 * (64×16 prefetch with chains became the default).
 */
const VARIANTS: Variant[] = [
  ['64x32 loop', tiles(64, 32, 'loop')], ['64x16 prefetch', tiles(64, 16, 'prefetch')],
  ['64x16 prefetch chains', tiles(64, 16, 'prefetch', true)], ['32x16 prefetch', tiles(32, 16, 'prefetch')],
  ['128x16 prefetch chains', tiles(128, 16, 'prefetch', true)], ['64x16 batched', tiles(64, 16, 'batched')],
].map(([name, t]) => ({ name: name as string, dkdv: t as F16Tiles, dq: t as F16Tiles }));
/** At D = 128 (twice the accumulators and staging per strip): the first version against the new default. */
const WIDE_VARIANTS: Variant[] = VARIANTS.filter(v => ['64x32 loop', '64x16 prefetch', '64x16 batched'].includes(v.name));

function useVariant(v: Variant | undefined): void {
  webgpuF16BackwardTuning.dkdvTiles = v?.dkdv;
  webgpuF16BackwardTuning.dqTiles = v?.dq;
}

/** Cases every variant is checked on (the whole list runs for the winners): multi-tile walks, every staging corner. */
const VARIANT_CASES: AttentionCase[] = [
  ...['N=129 D=64', 'D=80', 'D=7 Dv=5', 'everything', 'block sparse', 'dropout'].map(n => {
    const c = CASES.find(x => x.name === n);
    if (!c) throw new Error(`no case ${n}`);
    return c;
  }),
  { name: 'N=300 GQA causal dropout', b: 1, hq: 4, hkv: 2, nq: 300, nk: 300, d: 64, dv: 64, grad: true, causal: true,
    dropout: { rate: 0.1, seed: 3 } },
];

/** Worst max relative error (per tensor, vs float64) of the backward alone over `cases`; Infinity on non-finite or failure. */
async function worstCaseError(cases: AttentionCase[], refs: Map<string, ReturnType<typeof referenceGrads>>,
  log: (line: string) => void): Promise<number> {
  let worst = 0;
  for (const c of cases) {
    const data = caseData(c);
    let ref = refs.get(c.name);
    if (!ref) { ref = referenceGrads(c, data); refs.set(c.name, ref); }
    try {
      const got = await validated(() => caseBackwardF16(c, data));
      const names = ['dq', 'dk', 'dv', 'dbias'] as const;
      const cells: string[] = [];
      got.forEach((g, i) => {
        const r = ref?.[names[i]];
        if (!r) return;
        const e = relError(g, r);
        worst = Math.max(worst, e.nonFinite > 0 ? Infinity : e.max);
        cells.push(`${names[i]} ${fmt(e.max)}${e.nonFinite ? ' NONFINITE' : ''}`);
      });
      log(`${c.name}: ${cells.join(' ')}`);
    } catch (e) {
      worst = Infinity;
      log(`${c.name}: FAILED ${(e as Error).message.slice(0, 300)}`);
    }
  }
  return worst;
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN; };

/**
 * Each backward program alone, per variant, at B=1 H=12 N=4096 D=64: `reps` dispatches of one
 * program back to back in one command buffer, host-timed from its submission to
 * onSubmittedWorkDone on an idle GPU (encoding is not inside the window), rounds interleaved in
 * rotating order, medians. Before timing, every variant is checked: VARIANT_CASES against float64,
 * and at the timed size against the float32 kernel's gradients. Then the fastest correct dK/dV and
 * dQ tiles run the whole case list, and forward+backward (tf.grads, float16) is timed against the
 * defaults, interleaved.
 */
async function programs(): Promise<void> {
  results.programs = { d64: await programsAt(64, VARIANTS, true), d128: await programsAt(128, WIDE_VARIANTS, false) };
}

/** programs() at head size d; `compare`: also the winners' case list and forward+backward. */
async function programsAt(d: number, variants: Variant[], compare: boolean): Promise<Record<string, unknown>> {
  const n = 4096;
  const device = backend().device;
  const limit = device.limits.maxComputeWorkgroupStorageSize;
  const [q, k, v, dy] = [1, 2, 3, 4].map(seed => tf.randomNormal([1, H, n, d], 0, 1, 'float32', seed));
  const dLse = tf.zeros([1, H, n]);
  const { output, lse } = flashAttention(q, k, v, { returnLse: true });
  const { config } = normalizeAttention(q, k, v, { precision: 'float16' });
  const f32Grads = await Promise.all(tf.tidy(() => tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
    flashAttention(a, b, c))([q, k, v], dy)).map(async g => { const x = await g.data(); g.dispose(); return x; }));
  const gradInputs = packInputs(gradInputNames(config), { q, k, v, output, lse, dOutput: dy, dLse });

  // The passes' buffers as the kernel binds them; the row statistics are written once by row_dot.
  const b = backend();
  const made = [makeOutput(b, [1, H, n, d]), makeOutput(b, [1, H, n, d]), makeOutput(b, [1, H, n, d])];
  const aux = auxLayout(config, true);
  const buffers: Record<string, GPUBuffer> = {
    q: gpuBuffer(b, q), k: gpuBuffer(b, k), v: gpuBuffer(b, v), out: gpuBuffer(b, output), dout: gpuBuffer(b, dy),
    lse: gpuBuffer(b, lse), dlse: gpuBuffer(b, dLse), dq: made[0].buffer, dk: made[1].buffer, dv: made[2].buffer,
    aux: scratchBuffer(device, aux.size * 4),
  };
  const pick = (names: string[]) => Object.fromEntries(names.map(x => [x, buffers[x]]));
  const rowDot = rowDotProgram(config, aux);
  const rowDotRun = { spec: rowDot, dispatches: planDispatches(b, config, pick(['out', 'dout', 'lse', 'dlse', 'aux']),
    (units, g) => [Math.ceil(n / ROW_DOT_ROWS), units * g.queryHeadsPerUnit, 1], g => g.queryHeadsPerUnit, rowDot.chunking) };
  runPrograms(b, [rowDotRun]);
  await settle();

  type Run = { spec: ProgramSpec; dispatches: Dispatch[] };
  const passRuns = (): { dkdv: Run; dq: Run } => {
    const f16 = f16BackwardPasses(device, config, aux);
    if (!f16) throw new Error('no float16 backward on this device');
    return {
      dkdv: { spec: f16.dkdv, dispatches: planDispatches(b, config, pick(['q', 'k', 'v', 'dout', 'dk', 'dv', 'aux']),
        (units, g) => [Math.ceil(n / f16.dkdvRows), units * g.kvHeadsPerUnit, 1], g => g.kvHeadsPerUnit, f16.dkdv.chunking) },
      dq: { spec: f16.dq, dispatches: planDispatches(b, config, pick(['q', 'k', 'v', 'dout', 'dq', 'aux']),
        (units, g) => queryBlockGrid(config, f16.dqRows, units * g.queryHeadsPerUnit), g => g.queryHeadsPerUnit, f16.dq.chunking) },
    };
  };
  const timeRun = async (run: Run, reps: number): Promise<number> => {
    await settle();
    const dispatches = range(reps).flatMap(() => run.dispatches);
    runPrograms(b, [{ spec: run.spec, dispatches }]);
    const t0 = performance.now();
    await device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / reps;
  };

  // Correctness of every variant, and its programs (those that do not fit are left out).
  const refs = new Map<string, ReturnType<typeof referenceGrads>>();
  const ok: Array<Variant & { runs: { dkdv: Run; dq: Run } }> = [];
  const checks: Record<string, unknown> = {};
  for (const variant of variants) {
    const fits = dkdvF16WorkgroupBytes(config, variant.dkdv, MATRIX_MODE) <= limit &&
      dqF16WorkgroupBytes(config, variant.dq, MATRIX_MODE) <= limit;
    if (!fits) { console.log(`variant ${variant.name}: does not fit ${limit} B of workgroup memory`); continue; }
    useVariant(variant);
    const cases = await worstCaseError(VARIANT_CASES, refs, line => console.log(`  ${variant.name.padEnd(22)} ${line}`));
    const big = await validated(async () => {
      const grads = tf.engine().runKernel(FlashAttentionGrad, gradInputs, { ...config }) as tf.Tensor[];
      const values = await Promise.all(grads.map(g => g.data()));
      tf.dispose(grads);
      return values;
    }).then(values => Math.max(...values.map((x, i) => { const e = relError(x, f32Grads[i]); return e.nonFinite ? Infinity : e.max; })),
      () => Infinity);
    const passes = cases <= F16_TOLERANCE && big <= F16_TOLERANCE;
    console.log(`variant ${variant.name}: cases worst ${fmt(cases)}, N=${n} vs float32 kernel ${fmt(big)} -> ${passes ? 'ok' : 'WRONG'}`);
    checks[variant.name] = { cases, big, passes };
    if (passes) ok.push({ ...variant, runs: passRuns() });
  }

  // Timing: rounds over (variant, program) in rotating order.
  const samples: Record<string, number[]> = {};
  const jobs = [{ name: 'row_dot', run: rowDotRun }, ...ok.flatMap(v => [
    { name: `dkdv ${v.name}`, run: v.runs.dkdv }, { name: `dq ${v.name}`, run: v.runs.dq }])];
  const reps = new Map<string, number>();
  for (const job of jobs) {
    const once = await timeRun(job.run, 1);
    reps.set(job.name, Math.max(3, Math.min(40, Math.ceil(60 / Math.max(once, 0.05)))));
  }
  const rounds = quick ? 3 : 7;
  for (let r = 0; r < rounds; r++) {
    for (let x = 0; x < jobs.length; x++) {
      const job = jobs[(x + r * 3) % jobs.length];
      (samples[job.name] ??= []).push(await timeRun(job.run, reps.get(job.name) ?? 3));
    }
  }
  const table = jobs.map(j => ({ name: j.name, ms: median(samples[j.name]), min: Math.min(...samples[j.name]),
    max: Math.max(...samples[j.name]) }));
  console.log(`\nprograms alone, B=1 H=${H} N=${n} D=${d}, ms per dispatch (median of ${rounds} interleaved rounds; min..max):`);
  for (const t of table) console.log(`  ${t.name.padEnd(32)} ${t.ms.toFixed(3)}  (${t.min.toFixed(3)}..${t.max.toFixed(3)})`);
  const best = (prefix: string) => ok.map(v => ({ v, ms: median(samples[`${prefix} ${v.name}`]) })).sort((a, c) => a.ms - c.ms)[0];
  const bestKv = best('dkdv'), bestQ = best('dq');
  const base = ok.find(v => v.name === variants[0].name);
  console.log(`fastest correct: dkdv ${bestKv?.v.name} ${bestKv?.ms.toFixed(3)} ms, dq ${bestQ?.v.name} ${bestQ?.ms.toFixed(3)} ms`);
  tf.dispose([q, k, v, dy, dLse, output, lse]);
  for (const m of made) b.disposeData(m.info.dataId);
  buffers.aux.destroy();

  const summary = { checks, table, samples, bestKv: bestKv && { name: bestKv.v.name, ms: bestKv.ms },
    bestQ: bestQ && { name: bestQ.v.name, ms: bestQ.ms } };
  if (!compare) return summary;

  // The winners together: the whole case list, then forward+backward against the defaults, interleaved.
  const winner: Variant | undefined = bestKv && bestQ ? { name: 'winner', dkdv: bestKv.v.dkdv, dq: bestQ.v.dq } : undefined;
  let winnerCases = NaN;
  if (winner) {
    useVariant(winner);
    winnerCases = await worstCaseError(CASES.filter(c => c.grad), refs, line => console.log(`  winner ${line}`));
    console.log(`winner (dkdv ${JSON.stringify(winner.dkdv)}, dq ${JSON.stringify(winner.dq)}): worst over the case list ${fmt(winnerCases)}`);
  }
  const e2e: Record<string, number[]> = {};
  const contenders: Array<Variant | undefined> = [undefined, ...(base ? [base] : []), ...(winner && winnerCases <= F16_TOLERANCE ? [winner] : [])];
  for (let r = 0; r < rounds; r++) {
    for (let x = 0; x < contenders.length; x++) {
      const v = contenders[(x + r) % contenders.length];
      useVariant(v);
      for (const pass of ['fwd', 'fwd+bwd'] as const) {
        const row = await measure({ precision: 'float16', pass, n, d, causal: false, note: v?.name ?? 'defaults' }, 150);
        if (row.ms !== undefined) (e2e[`${pass} ${v?.name ?? 'defaults'}`] ??= []).push(row.ms);
      }
    }
  }
  useVariant(undefined);
  console.log('\nforward and forward+backward, float16, medians:');
  const fwdFlops = 4 * H * n * n * d;
  for (const [name, xs] of Object.entries(e2e)) {
    const ms = median(xs);
    console.log(`  ${name.padEnd(24)} ${ms.toFixed(3)} ms  ${((name.startsWith('fwd+bwd') ? 3.5 : 1) * fwdFlops / (ms * 1e9)).toFixed(1)} TFLOP/s`);
  }
  return { ...summary, winnerCases, e2e };
}

async function bench(): Promise<void> {
  const rows: Row[] = [];
  const sizes = args.has('tiny') ? [256] : quick ? [4096] : args.has('full') ? [1024, 2048, 4096, 8192, 16384]
    : args.has('lean') ? [4096, 16384] : [1024, 4096, 16384];
  for (const d of quick || args.has('tiny') ? [64] : [64, 128]) {
    for (const causal of [false, true]) {
      for (const n of sizes) {
        for (const precision of ['float16', 'float32'] as const) {
          for (const pass of ['fwd', 'bwd', 'fwd+bwd'] as const) rows.push(await measure({ precision, pass, n, d, causal }));
        }
      }
    }
  }
  webgpuF16BackwardTuning.dkdvTiles = undefined;
  webgpuF16BackwardTuning.dqTiles = undefined;
  results.bench = rows;
  console.log('\nsummary (TFLOP/s: fwd 4·H·N²·D, bwd 2.5×, fwd+bwd 3.5×, halved when causal):');
  for (const r of rows.filter(x => x.pass === 'bwd' && x.precision === 'float16')) {
    const cell = (precision: Precision, pass: Row['pass']) => {
      const x = rows.find(y => y.precision === precision && y.pass === pass && y.n === r.n && y.d === r.d && y.causal === r.causal);
      return x?.tflops !== undefined ? `${x.tflops.toFixed(1)} (${x.ms?.toFixed(2)} ms)` : 'failed';
    };
    console.log(`N=${r.n} D=${r.d} ${r.causal ? 'causal' : 'full  '}: f16 fwd ${cell('float16', 'fwd')} bwd ${cell('float16', 'bwd')} ` +
      `fwd+bwd ${cell('float16', 'fwd+bwd')} | f32 fwd ${cell('float32', 'fwd')} bwd ${cell('float32', 'bwd')} fwd+bwd ${cell('float32', 'fwd+bwd')}`);
  }
}

/**
 * Median milliseconds per call of `step` over `repeats` batches: a full garbage collection, then
 * untimed calls for at least 300 ms (compilation, allocation; at least one), then the batches,
 * sized to about `budgetMs` (1 to 200 calls) on the fastest of 3 timed calls; every batch's time
 * per call goes to `samples`, the calls per batch to `batch.iters`. Leaner than webgpu_timing's
 * timeRepeated (which sizes every repeat anew) because a call is up to several seconds at N = 65536.
 * The collection comes before the untimed calls, not right before sizing: the calls right after it
 * are slow, presumably while the Dawn objects it freed are destroyed (Node with --expose-gc on
 * SwiftShader: 4.6–11 ms for the first call after collecting 15 000 forwards' garbage, 0.2–0.35 ms
 * without the collection). The table's first cell (float16 forward, N = 1024, D = 64, after the
 * process's 3 s of warm-up) ran batches of one call in both H100 runs at 20:38 and 20:47 UTC (every
 * sample a whole number of nanoseconds), so its sizing call took over 67 ms and its 1.17–1.22 ms
 * were one call's round trip (bench/RESULTS.md, float16 section, 21:06 UTC; with this sizing: 200
 * calls, 0.239 ms).
 */
async function steadyMs(step: () => void, budgetMs: number, repeats: number, samples: number[], batch: { iters?: number } = {}):
    Promise<number> {
  const once = await steadyRunMs(step, 300);
  const iters = Math.max(1, Math.min(200, Math.round(budgetMs / once)));
  batch.iters = iters;
  for (let r = 0; r < repeats; r++) {
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) step();
    await settle();
    samples.push((performance.now() - t0) / iters);
  }
  return median(samples);
}

/**
 * `ms` of float32 forwards at N = 4096: on the H100 the first batches after the GPU idled (process
 * start; seconds of host work making inputs) read 3–5× slow while the card leaves its idle clocks
 * (RESULTS: the 19:26 and 19:44 UTC runs, and the first table run at 20:38).
 */
async function warmUp(ms: number): Promise<void> {
  const n = args.has('tiny') ? 256 : 4096;
  const [q, k, v] = [1, 2, 3].map(seed => tf.randomNormal([1, H, n, 64], 0, 1, 'float32', seed));
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    for (let i = 0; i < 4; i++) tf.tidy(() => { flashAttention(q, k, v); });
    await settle();
  }
  tf.dispose([q, k, v]);
}

/** Issue 8's item 5 on the final defaults (see the header), cells in N order, markdown tables at the end. */
async function table(): Promise<void> {
  const repeats = numberArg('repeats', 5);
  const until = numberArg('until', Infinity);
  const maxN = numberArg('max-n', 65536);
  const sizes = args.has('tiny') ? [256] : [1024, 2048, 4096, 8192, 16384, 32768, 65536].filter(n => n <= maxN);
  const heads = args.has('tiny') ? [64] : [64, 128];
  webgpuF16BackwardTuning.dkdvTiles = undefined;
  webgpuF16BackwardTuning.dqTiles = undefined;
  console.log(`table: N ${sizes.join(', ')}, D ${heads.join(', ')}, ${repeats} repeats (3 at N >= 32768), ` +
    `backward mode ${JSON.stringify(f16BackwardMode(backend().device))}`);
  await warmUp(2000);
  const rows: Row[] = [];
  for (const n of sizes) {
    for (const d of heads) {
      // One set of inputs for the 8 cells of (N, D): at N = 65536 making a set takes seconds of JS.
      const inputs = benchInputs(n, d);
      await warmUp(1000);
      for (const causal of [false, true]) {
        for (const pass of ['fwd', 'fwd+bwd'] as const) {
          for (const precision of ['float16', 'float32'] as const) {
            const row: Row = { precision, pass, n, d, causal, samples: [] };
            if (performance.now() / 1000 > until) {
              row.error = `not measured (past until=${until} s)`;
              console.log(`${precision} ${pass} N=${n} D=${d} ${causal ? 'causal' : 'full'}: ${row.error}`);
              rows.push(row);
              continue;
            }
            rows.push(await measure(row, 0, async step => {
              const ms = await steadyMs(step, 100, n >= 32768 ? Math.min(3, repeats) : repeats, row.samples ?? [], row);
              row.note = `${row.iters} calls per batch, repeats ${row.samples?.map(x => x.toFixed(3)).join(' ')}`;
              return ms;
            }, inputs));
          }
        }
      }
      tf.dispose(inputs);
    }
  }
  results.table = rows;
  const cell = (precision: Precision, pass: Row['pass'], n: number, d: number, causal: boolean) =>
    rows.find(r => r.precision === precision && r.pass === pass && r.n === n && r.d === d && r.causal === causal);
  for (const pass of ['fwd', 'fwd+bwd'] as const) {
    const groups = heads.flatMap(d => [false, true].map(causal => ({ d, causal })));
    console.log(`\n${pass === 'fwd' ? 'forward' : 'forward+backward'}, TFLOP/s (f16 / f32 / speedup), B=1 H=${H}:\n`);
    console.log(`| N | ${groups.map(g => `D=${g.d} ${g.causal ? 'causal' : 'full'} f16 | f32 | ×`).join(' | ')} |`);
    console.log(`|---|${groups.map(() => '---|---|---').join('|')}|`);
    for (const n of sizes) {
      const cells = groups.map(({ d, causal }) => {
        const [a, b] = [cell('float16', pass, n, d, causal), cell('float32', pass, n, d, causal)];
        const f = (r?: Row) => (r?.tflops !== undefined ? r.tflops.toFixed(1) : r?.error?.startsWith('not measured') ? 'n/m' : 'FAILED');
        const x = a?.ms !== undefined && b?.ms !== undefined ? `${(b.ms / a.ms).toFixed(2)}×` : '–';
        return `${f(a)} | ${f(b)} | ${x}`;
      });
      console.log(`| ${n} | ${cells.join(' | ')} |`);
    }
  }
}

/** Errors of compiling `spec` (shader and pipeline), empty when it compiles. */
async function compileErrors(spec: ProgramSpec): Promise<string> {
  const device = backend().device;
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code: wgslBindings(spec) + spec.body() });
  const info = await module.getCompilationInfo();
  const errors = info.messages.filter(m => m.type === 'error').map(m => `${m.lineNum}:${m.linePos} ${m.message}`);
  let pipeline = '';
  if (!errors.length) {
    try {
      await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    } catch (e) {
      pipeline = (e as Error).message;
    }
  }
  const scope = await device.popErrorScope();
  return [errors.join(' || '), pipeline, scope ? scope.message : ''].filter(x => x).join(' ; ').slice(0, 3000);
}

/**
 * Compiles both subgroup-matrix programs in both load spellings (f16Tuning.templatedLoad, shared
 * with the forward) and keeps the first that compiles; prints every error.
 */
async function probeMatrixSyntax(): Promise<void> {
  const x = tf.zeros([1, 2, 40, 64]);
  const { config } = normalizeAttention(x, x, x, { causal: true, precision: 'float16' });
  x.dispose();
  const aux = auxLayout(config, true);
  for (const templated of [false, true]) {
    f16Tuning.templatedLoad = templated;
    const mode = { path: 'subgroupMatrix', element: 'f16' } as const;
    const errors = [await compileErrors(dkdvF16Program(config, aux, { rows: 64, cols: 32 }, mode)),
      await compileErrors(dqF16Program(config, aux, { rows: 64, cols: 32 }, mode))];
    console.log(`probe templatedLoad=${templated}: dkdv ${errors[0] || 'compiles'}; dq ${errors[1] || 'compiles'}`);
    if (!errors[0] && !errors[1]) return;
  }
  f16Tuning.templatedLoad = undefined;
}

async function main(): Promise<void> {
  // The subgroup-matrix programs are opt-in until this bench's check passes on a GPU.
  webgpuF16BackwardTuning.subgroupMatrix = true;
  const setup = await initDawn({ unsafeFeatures: true });
  const device = backend().device;
  const info = (device as unknown as { adapterInfo?: Record<string, unknown> }).adapterInfo ?? {};
  console.log(`adapter: ${setup.description}; features: ${[...device.features].sort().join(', ')}`);
  console.log(`subgroup sizes ${String(info.subgroupMinSize)}..${String(info.subgroupMaxSize)}; ` +
    `workgroup storage ${device.limits.maxComputeWorkgroupStorageSize} B; f16 subgroup matrices: ${hasF16SubgroupMatrix(device)}; ` +
    `backward mode: ${JSON.stringify(f16BackwardMode(device))}`);
  results.device = { description: setup.description, features: [...device.features], mode: f16BackwardMode(device) };
  if (hasF16SubgroupMatrix(device)) await probeMatrixSyntax();
  const t0 = performance.now();
  if (all || args.has('check')) await check();
  if (all || args.has('bench')) await bench();
  if (args.has('table')) await table();
  if (all || args.has('programs')) await programs();
  if (all || args.has('numerics')) await numerics();
  console.log(`total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const out = process.env.OUT;
  if (out) fs.writeFileSync(path.join(out, 'f16_backward.json'), JSON.stringify(results, null, 1));
}

main().then(() => process.exit(0), e => { console.error(e); process.exit(1); });
