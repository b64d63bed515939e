// WebGL benchmark page: flash attention (this package's webgl kernels) against naive tfjs webgl
// attention (matMul → softmax → matMul) in the same page, forward and forward+backward, reporting
// milliseconds, TFLOP/s (SPEC §6: forward 4·B·H·N²·D FLOPs, forward+backward 3.5× that) and the peak
// texture memory each needed beyond its inputs.
//
// Bundled with esbuild; runs by itself on load (for ../shared/gpu's Chromium runner) unless the URL
// hash says `manual`, in which case Node drives it through `faWebglBench(config)` (bench/webgl_local.ts).
// Results are POSTed to /result line by line as they come, then `DONE`.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-webgl';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import { flashAttention } from '../src/index';

export interface BenchConfig {
  seqs: number[];
  heads: number;
  headDim: number;
  /** Forward+backward only up to this N (the backward is the slow part). */
  maxBackwardSeq: number;
  reps: number;
  /** Stop starting new measurements after this many seconds. */
  budgetSeconds: number;
  flags?: Record<string, number | boolean>;
}

export interface BenchRow {
  n: number;
  pass: 'forward' | 'forward+backward';
  impl: 'flash' | 'naive';
  ms?: number;
  tflops?: number;
  peakMiB?: number;
  error?: string;
}

function naiveAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D): tf.Tensor4D {
  const scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(q.shape[3]));
  return tf.matMul(tf.softmax(scores), v);
}

function webgl(): MathBackendWebGL {
  return tf.backend() as MathBackendWebGL;
}

/** Peak bytes of textures in use while `f` runs, sampled after every program tfjs runs. */
async function withPeak<T>(f: () => Promise<T>): Promise<{ value: T; peak: number }> {
  const backend = webgl();
  const manager = backend.getTextureManager();
  const inUse = () => manager.numBytesAllocated - manager.numBytesFree;
  const base = inUse();
  let peak = 0;
  const original = backend.runWebGLProgram;
  backend.runWebGLProgram = function (...args: Parameters<typeof original>) {
    const out = original.apply(this, args);
    peak = Math.max(peak, inUse() - base);
    return out;
  };
  try {
    const value = await f();
    return { value, peak };
  } finally {
    backend.runWebGLProgram = original;
  }
}

async function measure(n: number, pass: BenchRow['pass'], impl: BenchRow['impl'], config: BenchConfig): Promise<BenchRow> {
  const shape: [number, number, number, number] = [1, config.heads, n, config.headDim];
  const [q, k, v, dy] = [1, 2, 3, 4].map(seed => tf.randomNormal(shape, 0, 1, 'float32', seed) as tf.Tensor4D);
  const attend = impl === 'flash'
    ? (a: tf.Tensor4D, b: tf.Tensor4D, c: tf.Tensor4D) => flashAttention(a, b, c)
    : naiveAttention;
  const once = async () => {
    const outs = pass === 'forward'
      ? [attend(q, k, v)]
      : tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
        tf.sum(tf.mul(attend(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D), dy)))([q, k, v]);
    const total = tf.tidy(() => outs.map(o => tf.sum(o)).reduce((a, b) => tf.add(a, b)));
    await total.data();
    tf.dispose([...outs, total]);
  };
  try {
    await Promise.all([q, k, v, dy].map(t => tf.sum(t).data()));
    const { peak } = await withPeak(once);
    const times: number[] = [];
    for (let r = 0; r < config.reps; r++) {
      const t0 = performance.now();
      await once();
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    const ms = times[Math.floor(times.length / 2)];
    const flops = 4 * config.heads * n * n * config.headDim * (pass === 'forward' ? 1 : 3.5);
    return { n, pass, impl, ms: +ms.toFixed(2), tflops: +(flops / ms / 1e9).toFixed(4), peakMiB: +(peak / 2 ** 20).toFixed(1) };
  } catch (error) {
    return { n, pass, impl, error: String(error).slice(0, 200) };
  } finally {
    tf.dispose([q, k, v, dy]);
  }
}

/** Whether naive attention's [1, H, N, N] scores can exist as one texture at all. */
function naiveFits(n: number, config: BenchConfig): boolean {
  const max = tf.env().getNumber('WEBGL_MAX_TEXTURE_SIZE');
  return config.heads * n * n <= max * max;
}

async function bench(config: BenchConfig, report: (line: string) => Promise<void>): Promise<BenchRow[]> {
  for (const [name, value] of Object.entries(config.flags ?? {})) tf.env().set(name, value);
  await tf.setBackend('webgl');
  await tf.ready();
  const gl = document.createElement('canvas').getContext('webgl2');
  const debug = gl?.getExtension('WEBGL_debug_renderer_info');
  const renderer = gl && debug ? gl.getParameter(debug.UNMASKED_RENDERER_WEBGL) : 'unknown';
  await report(`# renderer: ${renderer}; MAX_TEXTURE_SIZE ${tf.env().getNumber('WEBGL_MAX_TEXTURE_SIZE')}; ` +
    `config ${JSON.stringify(config)}`);
  const start = performance.now();
  const rows: BenchRow[] = [];
  for (const pass of ['forward', 'forward+backward'] as const) {
    for (const n of config.seqs) {
      if (pass !== 'forward' && n > config.maxBackwardSeq) continue;
      for (const impl of ['naive', 'flash'] as const) {
        if ((performance.now() - start) / 1000 > config.budgetSeconds) {
          await report(`# budget of ${config.budgetSeconds} s spent: stopped before N=${n} ${pass} ${impl}`);
          return rows;
        }
        const row = impl === 'naive' && !naiveFits(n, config)
          ? { n, pass, impl, error: 'scores [1, H, N, N] exceed MAX_TEXTURE_SIZE²: not run' }
          : await measure(n, pass, impl, config);
        rows.push(row);
        await report(JSON.stringify(row));
      }
    }
  }
  return rows;
}

const DEFAULT: BenchConfig = {
  seqs: [256, 512, 1024, 2048, 4096, 8192, 16384], heads: 12, headDim: 64, maxBackwardSeq: 4096, reps: 3,
  budgetSeconds: 400,
};
const QUICK: BenchConfig = { ...DEFAULT, seqs: [256, 512], maxBackwardSeq: 256, reps: 2 };

async function post(line: string): Promise<void> {
  await fetch('/result', { method: 'POST', body: line });
}

Object.assign(window, {
  faWebglBench: (config: BenchConfig) => bench(config, async line => { console.log(line); }),
});

if (!location.hash.includes('manual')) {
  const config = location.hash.includes('quick') ? QUICK : DEFAULT;
  bench(config, post).catch(error => post(`# error: ${String(error)}`)).finally(() => post('DONE'));
}
