// WebGL benchmark page: flash attention (this package's webgl kernels) against naive tfjs webgl
// attention (matMul → softmax → matMul) in the same page on the same inputs, forward and
// forward+backward, B=1, H=12, D=64 (SPEC §6's reference shape): milliseconds (best of `reps`,
// alternating flash and naive), TFLOP/s (forward 4·B·H·N²·D FLOPs, forward+backward 3.5× that) and
// the peak texture memory each needed beyond its inputs (sampled after every WebGL program).
//
// Bundle: npx esbuild bench/webgl.ts --bundle --format=iife --outfile=.benchbuild/webgl.js
// Run:    HASH=quick node bench/webgl_serve.mjs .benchbuild/webgl.js /usr/bin/chromium \
//           --use-angle=swiftshader --enable-unsafe-swiftshader          (SwiftShader, N = 256, 512)
//         on the GPU machine: see bench/RESULTS.md (Chromium from ../shared/gpu/pack-chromium.sh).
// The page runs on load and POSTs each result line to /result, then DONE; `#quick` picks small sizes
// and `#swiftshader` the sizes measured on SwiftShader.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-webgl';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import { flashAttention } from '../src/index';
import { setWebGLBlockKeys } from '../kernels/webgl/flash_attention';

export interface BenchConfig {
  seqs: number[];
  heads: number;
  headDim: number;
  /** Forward+backward only up to this N. */
  maxBackwardSeq: number;
  /** Naive attention beyond this N runs last, as it may exhaust GPU memory and lose the context. */
  naiveUpTo: number;
  /** Key block sizes to time flash with (forward and forward+backward) at N = sweepSeq. */
  blockSweep: number[];
  sweepSeq: number;
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

/** Times flash and naive on the same inputs, alternating repetitions so that drift hits both alike. */
async function measurePair(n: number, pass: BenchRow['pass'], impls: Array<BenchRow['impl']>,
  config: BenchConfig): Promise<BenchRow[]> {
  const shape: [number, number, number, number] = [1, config.heads, n, config.headDim];
  const [q, k, v, dy] = [1, 2, 3, 4].map(seed => tf.randomNormal(shape, 0, 1, 'float32', seed) as tf.Tensor4D);
  const once = async (impl: BenchRow['impl']) => {
    const attend = impl === 'flash'
      ? (a: tf.Tensor4D, b: tf.Tensor4D, c: tf.Tensor4D) => flashAttention(a, b, c)
      : naiveAttention;
    // tidy: naive attention's intermediates (scores, softmax) must not outlive the call.
    const outs = pass === 'forward'
      ? [tf.tidy(() => attend(q, k, v))]
      : tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
        tf.sum(tf.mul(attend(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D), dy)))([q, k, v]);
    const total = tf.tidy(() => outs.map(o => tf.sum(o)).reduce((a, b) => tf.add(a, b)));
    await total.data();
    tf.dispose([...outs, total]);
  };
  const flops = 4 * config.heads * n * n * config.headDim * (pass === 'forward' ? 1 : 3.5);
  const rows: BenchRow[] = [];
  const times = new Map<BenchRow['impl'], number[]>();
  const peaks = new Map<BenchRow['impl'], number>();
  try {
    const sums = [q, k, v, dy].map(t => tf.sum(t));
    await Promise.all(sums.map(t => t.data()));
    tf.dispose(sums);
    const live = [...impls];
    for (const impl of impls) {
      try {
        peaks.set(impl, (await withPeak(() => once(impl))).peak);
        times.set(impl, []);
      } catch (error) {
        rows.push({ n, pass, impl, error: String(error).slice(0, 200) });
        live.splice(live.indexOf(impl), 1);
      }
    }
    for (let r = 0; r < config.reps; r++) {
      for (const impl of live) {
        const t0 = performance.now();
        await once(impl);
        times.get(impl)?.push(performance.now() - t0);
      }
    }
    for (const impl of live) {
      const ts = (times.get(impl) ?? []).sort((a, b) => a - b);
      const ms = ts[0];
      rows.push({ n, pass, impl, ms: +ms.toFixed(2), tflops: +(flops / ms / 1e9).toFixed(4),
        peakMiB: +((peaks.get(impl) ?? 0) / 2 ** 20).toFixed(1) });
    }
  } catch (error) {
    rows.push({ n, pass, impl: impls[0], error: String(error).slice(0, 200) });
  } finally {
    tf.dispose([q, k, v, dy]);
  }
  return rows;
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
  // The comparisons that matter first; then flash alone where naive cannot run; naive at the sizes
  // where it may exhaust GPU memory (and lose the context) last.
  const plan: Array<[BenchRow['pass'], number, Array<BenchRow['impl']>]> = [];
  const passes = (n: number) => (n <= config.maxBackwardSeq ? ['forward', 'forward+backward'] as const : ['forward'] as const);
  const risky = (n: number) => !naiveFits(n, config) || n > config.naiveUpTo;
  for (const n of config.seqs) for (const pass of passes(n)) plan.push([pass, n, risky(n) ? ['flash'] : ['flash', 'naive']]);
  const sweepAt = plan.findIndex(([, n]) => n > config.sweepSeq);
  const sweep: typeof plan = config.blockSweep.flatMap(keys =>
    (['forward', 'forward+backward'] as const).map(pass => [pass, -keys, ['flash']] as [BenchRow['pass'], number, Array<BenchRow['impl']>]));
  plan.splice(sweepAt < 0 ? plan.length : sweepAt, 0, ...sweep);
  for (const n of config.seqs) {
    if (!risky(n)) continue;
    for (const pass of passes(n)) {
      plan.push([pass, n, naiveFits(n, config) ? ['naive'] : []]);
    }
  }
  for (const [pass, n, impls] of plan) {
    if ((performance.now() - start) / 1000 > config.budgetSeconds) {
      await report(`# budget of ${config.budgetSeconds} s spent: stopped before N=${n} ${pass} ${impls.join('+')}`);
      return rows;
    }
    // A negative N in the plan is a block-size sweep entry: flash at N = sweepSeq with -n keys per block.
    if (n < 0) setWebGLBlockKeys(-n);
    const measured = impls.length ? await measurePair(n < 0 ? config.sweepSeq : n, pass, impls, config)
      : [{ n, pass, impl: 'naive' as const, error: 'scores [1, H, N, N] exceed MAX_TEXTURE_SIZE²: not run' }];
    if (n < 0) setWebGLBlockKeys(1024);
    for (const row of measured) {
      const labeled = n < 0 ? { ...row, blockKeys: -n } : row;
      rows.push(labeled);
      await report(JSON.stringify(labeled));
    }
  }
  return rows;
}

const DEFAULT: BenchConfig = {
  seqs: [256, 512, 1024, 2048, 4096, 8192, 16384], heads: 12, headDim: 64, maxBackwardSeq: 16384, naiveUpTo: 4096,
  blockSweep: [256, 512], sweepSeq: 4096, reps: 3, budgetSeconds: 420,
};
const QUICK: BenchConfig = { ...DEFAULT, seqs: [256, 512], maxBackwardSeq: 256, blockSweep: [128], sweepSeq: 512, reps: 2 };

async function post(line: string): Promise<void> {
  await fetch('/result', { method: 'POST', body: line });
}

const SWIFTSHADER: BenchConfig = { ...DEFAULT, seqs: [256, 512, 1024], maxBackwardSeq: 512, blockSweep: [256], sweepSeq: 1024 };
const config = location.hash.includes('quick') ? QUICK : location.hash.includes('swiftshader') ? SWIFTSHADER : DEFAULT;
bench(config, post).catch(error => post(`# error: ${String(error)}`)).finally(() => post('DONE'));
