// The `precision: 'float16'` backward on a real GPU through Dawn in Node (robustness on, as a
// browser runs it): correctness on the GPU, gradient numerics and forward+backward speed, float16
// against float32, in one run.
//
//   /work/shared/gpu/pack.sh bench/f16_backward.ts   then on the GPU machine:
//   bash .gpu/run.sh f16_backward.mjs [check] [sweep] [numerics] [bench] [quick|lean|full|tiny] [scalar]   (none of the
//   first four: all; `full`: N = 1024, 2048, 4096, 8192, 16384 instead of 1024, 4096, 16384, `lean`: bench 4096 and 16384, numerics 1024 and 4096; `tiny`: bench N = 256, D = 64 only (a smoke test); `scalar`: the
//   check also runs the scalar f16 tiles)
//
//   check     the shared case list's gradients with precision 'float16' against the float64
//             reference, on the device's path (and the scalar f16 tiles with `scalar`) (max error relative
//             to max|ref| per tensor); a run with any non-finite or missing value fails loudly.
//   sweep     backward tiles at B=1 H=12 N=4096 D=64 (forward+backward time).
//   numerics  dq, dk, dv max and RMS error (relative to max|ref| and RMS(ref)), H=1 D=64, random
//             normal inputs and the same with 1 % of q/k entries ×10: against float64 at N = 1024
//             (float32 kernel alongside), against the float32 kernel (itself within 1e-4 of float64)
//             at N = 2048 … 16384 (a float64 reference there costs minutes of device-machine CPU).
//   bench     ms and TFLOP/s, forward and forward+backward, float16 and float32, causal and not,
//             N = 1024 … 16384, D = 64 and 128 (FLOPs: forward 4·B·H·N²·D, halved when causal;
//             forward+backward 3.5×).
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
import { ProgramSpec, wgslBindings } from '../kernels/webgpu/runtime';
import { f16Tuning } from '../kernels/webgpu/f16_support';
import { dkdvF16Program } from '../kernels/webgpu/attention_backward_dkdv_f16';
import { dqF16Program } from '../kernels/webgpu/attention_backward_dq_f16';
import { auxLayout } from '../kernels/webgpu/aux';
import { f16BackwardMode, hasF16SubgroupMatrix, webgpuF16BackwardTuning } from '../kernels/webgpu/attention_backward_f16';
import type { F16Tiles } from '../kernels/webgpu/attention_backward_dkdv_f16';
import { AttentionCase, CASES, CaseData, caseData } from '../test/cases';
import { caseTensors, toTensor } from '../test/case_tensors';
import { referenceGrads } from '../test/reference';
import { backend, settle, timeMs } from './webgpu_timing';

const H = 12;
const args = new Set(process.argv.slice(2));
const all = !['check', 'sweep', 'numerics', 'bench'].some(a => args.has(a));
const quick = args.has('quick');
const results: Record<string, unknown> = {};

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
  ms?: number; tflops?: number; error?: string }

async function measure(row: Row, budgetMs = 200): Promise<Row> {
  const { n, d } = row;
  const [q, k, v, dy] = [1, 2, 3, 4].map(seed => tf.randomNormal([1, H, n, d], 0, 1, 'float32', seed));
  const options: FlashAttentionOptions = { causal: row.causal, precision: row.precision };
  const dLse = tf.zeros([1, H, n]);
  const { output, lse } = flashAttention(q, k, v, { causal: row.causal, returnLse: true });
  const { config, tensors } = normalizeAttention(q, k, v, options);
  const gradInputs = packInputs(gradInputNames(config), { ...tensors, output, lse, dOutput: dy, dLse });
  const step = row.pass === 'fwd'
    ? () => tf.tidy(() => { flashAttention(q, k, v, options); })
    : row.pass === 'bwd'
      ? () => tf.tidy(() => { tf.engine().runKernel(FlashAttentionGrad, gradInputs, { ...config }); })
      : () => tf.tidy(() => {
        tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttention(a, b, c, options))([q, k, v], dy);
      });
  try {
    row.ms = await validated(() => timeMs(step, budgetMs, 2));
    const fwd = 4 * H * n * n * d * (row.causal ? 0.5 : 1);
    row.tflops = (row.pass === 'fwd' ? fwd : row.pass === 'bwd' ? 2.5 * fwd : 3.5 * fwd) / (row.ms * 1e9);
  } catch (e) {
    row.error = (e as Error).message.slice(0, 600);
  }
  tf.dispose([q, k, v, dy, dLse, output, lse]);
  console.log([row.precision.padEnd(8), row.pass.padEnd(8), `N=${n}`.padEnd(8), `D=${d}`.padEnd(6),
    (row.causal ? 'causal' : 'full').padEnd(7), row.error ? `FAILED ${row.error}` :
      `${row.ms?.toFixed(3).padStart(9)} ms ${row.tflops?.toFixed(2).padStart(6)} TFLOP/s`, row.note ?? ''].join(' '));
  return row;
}

/** The sweep's fastest tiles, used by the bench at D=64. */
const best: { dkdv?: F16Tiles; dq?: F16Tiles } = {};

async function sweep(): Promise<void> {
  const candidates: F16Tiles[] = [{ rows: 64, cols: 32 }, { rows: 32, cols: 32 }, { rows: 64, cols: 16 },
    { rows: 128, cols: 16 }, { rows: 32, cols: 16 }];
  const limit = backend().device.limits.maxComputeWorkgroupStorageSize;
  const rows: Row[] = [];
  let bestKv: { t: F16Tiles; ms: number } | undefined;
  for (const t of candidates) {
    webgpuF16BackwardTuning.dkdvTiles = t;
    webgpuF16BackwardTuning.dqTiles = { rows: 64, cols: 32 };
    const r = await measure({ precision: 'float16', pass: 'bwd', n: 4096, d: 64, causal: false,
      note: `dkdv ${JSON.stringify(t)} dq 64x32 (limit ${limit} B)` }, 150);
    rows.push(r);
    if (r.ms !== undefined && (!bestKv || r.ms < bestKv.ms)) bestKv = { t, ms: r.ms };
  }
  webgpuF16BackwardTuning.dkdvTiles = bestKv?.t;
  let bestQ: { t: F16Tiles; ms: number } | undefined;
  for (const t of candidates) {
    webgpuF16BackwardTuning.dqTiles = t;
    const r = await measure({ precision: 'float16', pass: 'bwd', n: 4096, d: 64, causal: false,
      note: `dkdv ${JSON.stringify(bestKv?.t)} dq ${JSON.stringify(t)}` }, 150);
    rows.push(r);
    if (r.ms !== undefined && (!bestQ || r.ms < bestQ.ms)) bestQ = { t, ms: r.ms };
  }
  webgpuF16BackwardTuning.dkdvTiles = undefined;
  webgpuF16BackwardTuning.dqTiles = undefined;
  best.dkdv = bestKv?.t;
  best.dq = bestQ?.t;
  console.log(`sweep best: dkdv ${JSON.stringify(bestKv)}, dq ${JSON.stringify(bestQ)}`);
  results.sweep = { rows, bestKv, bestQ };
}

async function bench(): Promise<void> {
  const rows: Row[] = [];
  const sizes = args.has('tiny') ? [256] : quick ? [4096] : args.has('full') ? [1024, 2048, 4096, 8192, 16384]
    : args.has('lean') ? [4096, 16384] : [1024, 4096, 16384];
  for (const d of quick || args.has('tiny') ? [64] : [64, 128]) {
    // The sweep's best tiles (measured at D=64) where they fit this head size, else the defaults.
    webgpuF16BackwardTuning.dkdvTiles = d === 64 ? best.dkdv : undefined;
    webgpuF16BackwardTuning.dqTiles = d === 64 ? best.dq : undefined;
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
  if (all || args.has('sweep')) await sweep();
  if (all || args.has('numerics')) await numerics();
  console.log(`total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const out = process.env.OUT;
  if (out) fs.writeFileSync(path.join(out, 'f16_backward.json'), JSON.stringify(results, null, 1));
}

main().then(() => process.exit(0), e => { console.error(e); process.exit(1); });
