// WebGL benchmark page: flash attention (this package's webgl kernels) against naive tfjs webgl
// attention (matMul → softmax → matMul) in the same page on the same inputs, forward and
// forward+backward, B=1, H=12, D=64 (SPEC §6's reference shape): milliseconds per call (median of
// interleaved rounds; see measureSet), flash's speed-up over naive (median of the rounds' ratios),
// TFLOP/s (forward 4·B·H·N²·D FLOPs, forward+backward 3.5× that) and the peak texture memory each
// needed beyond its inputs (sampled after every WebGL program). Flash variants (tuning candidates,
// VARIANTS) run in the same rounds.
//
// Bundle: npx esbuild bench/webgl.ts --bundle --format=iife --outfile=.benchbuild/webgl.js
// Run:    HASH=quick node bench/webgl_serve.mjs .benchbuild/webgl.js /usr/bin/chromium \
//           --use-angle=swiftshader --enable-unsafe-swiftshader          (SwiftShader, N = 256)
//         on the GPU machine: see bench/RESULTS.md (Chromium from ../shared/gpu/pack-chromium.sh).
// The page runs on load and POSTs each result line to /result, then DONE; `#quick` picks small sizes,
// `#swiftshader` the sizes measured on SwiftShader, `#profile=N` only the per-program times at N;
// no hash is the GPU run (DEFAULT below). webgl_serve.mjs prints the rows as a markdown table at the
// end and writes JSON and markdown to $OUT when that is set.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-webgl';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import { flashAttention } from '../src/index';
import { setWebGLForwardPlan } from '../kernels/webgl/flash_attention';
import { setWebGLTogetherKeys } from '../kernels/webgl/flash_attention_grad';

export interface BenchConfig {
  seqs: number[];
  heads: number;
  headDim: number;
  /** Forward+backward only up to this N. */
  maxBackwardSeq: number;
  /** Naive attention beyond this N runs last, as it may exhaust GPU memory and lose the context. */
  naiveUpTo: number;
  /** Flash variants timed beside the default up to this N (they are A/B candidates, see VARIANTS). */
  variantsUpTo: number;
  variants: string[];
  /** Interleaved rounds per (N, pass); the median round is reported. */
  rounds: number;
  /** Rounds from this N on (large N: seconds per round, little noise). */
  bigSeq: number;
  bigRounds: number;
  /**
   * Each timed sample queues calls back to back until about this many milliseconds of work (from the
   * warm-up call's time), then waits once: the readback's fence polling (setTimeout-scheduled, a few
   * ms per wait) would otherwise dominate small N.
   */
  sampleMs: number;
  /** Stop starting new measurements after this many seconds. */
  budgetSeconds: number;
  /** Per-program times at these N after the comparisons, before the risky naive sizes. */
  profileSeqs: number[];
  flags?: Record<string, number | boolean>;
}

export interface BenchRow {
  n: number;
  pass: 'forward' | 'forward+backward';
  /** 'naive', 'flash' (the defaults) or a flash variant's name. */
  impl: string;
  /** Median over rounds of the per-call time, and the fastest and slowest rounds. */
  ms?: number;
  msMin?: number;
  msMax?: number;
  /** Median over rounds of the host (JavaScript) time per call spent queueing the work. */
  hostMs?: number;
  /** Median over rounds of naive's time / this one's in the same round (flash and variants). */
  speedup?: number;
  rounds?: number;
  callsPerSample?: number;
  tflops?: number;
  peakMiB?: number;
  error?: string;
}

function naiveAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D): tf.Tensor4D {
  const scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(q.shape[3]));
  return tf.matMul(tf.softmax(scores), v);
}

/**
 * Flash variants that the bench can time beside the default: each sets the kernels' tuning knobs for
 * its calls and restores the defaults afterwards.
 */
const VARIANTS: Record<string, (on: boolean) => void> = {
  'weights pass': on => setWebGLForwardPlan(on ? { fuseWeights: false } : {}),
  'two-pass stats': on => setWebGLForwardPlan(on ? { onePassStats: false } : {}),
  'GPU plan': on => setWebGLForwardPlan(on ? { fuseWeights: true, onePassStats: true } : {}),
  'per-block backward': on => setWebGLTogetherKeys(on ? 0 : undefined),
};

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

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/**
 * Times naive, flash and flash variants on the same inputs in interleaved rounds (the order rotating
 * from round to round, so that drift and the GPU's clocks hit all alike) and reports medians. q, k, v
 * and dy are packed textures, as the outputs of the projections' matMuls that feed attention in a
 * model are (unpacked inputs would add a pack program per input and call to both sides).
 */
async function measureSet(n: number, pass: BenchRow['pass'], impls: string[], config: BenchConfig): Promise<BenchRow[]> {
  const shape: [number, number, number, number] = [1, config.heads, n, config.headDim];
  const [q, k, v, dy] = [1, 2, 3, 4].map(seed => tf.tidy(() =>
    tf.add(tf.randomNormal(shape, 0, 1, 'float32', seed), tf.zeros(shape)) as tf.Tensor4D));
  const call = (impl: string): tf.Tensor[] => {
    const attend = impl === 'naive' ? naiveAttention
      : (a: tf.Tensor4D, b: tf.Tensor4D, c: tf.Tensor4D) => flashAttention(a, b, c);
    VARIANTS[impl]?.(true);
    try {
      // tidy: naive attention's intermediates (scores, softmax) must not outlive the call.
      return pass === 'forward'
        ? [tf.tidy(() => attend(q, k, v))]
        : tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
          tf.sum(tf.mul(attend(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D), dy)))([q, k, v]);
    } finally {
      VARIANTS[impl]?.(false);
    }
  };
  /**
   * Milliseconds per call of `calls` calls queued back to back, waited for once at the end, and of
   * those the time JavaScript took to queue them (tfjs' and the kernels' host work).
   */
  const sample = async (impl: string, calls: number) => {
    const t0 = performance.now();
    let outs: tf.Tensor[] = [];
    for (let c = 0; c < calls; c++) {
      tf.dispose(outs);
      outs = call(impl);
    }
    const queued = performance.now();
    const total = tf.tidy(() => outs.map(o => tf.sum(o)).reduce((a, b) => tf.add(a, b)));
    await total.data();
    const ms = (performance.now() - t0) / calls;
    tf.dispose([...outs, total]);
    return { ms, hostMs: (queued - t0) / calls };
  };
  /** A WebGL error (e.g. a texture over the driver's allocation limit) makes the results meaningless. */
  const checkGL = () => {
    const gl = webgl().gpgpu.gl;
    const error = gl.getError();
    if (error !== gl.NO_ERROR) throw new Error(`WebGL error 0x${error.toString(16)} (results invalid)`);
  };
  const flops = 4 * config.heads * n * n * config.headDim * (pass === 'forward' ? 1 : 3.5);
  const rows: BenchRow[] = [];
  const times = new Map<string, number[]>();
  const hostTimes = new Map<string, number[]>();
  const peaks = new Map<string, number>();
  try {
    const sums = [q, k, v, dy].map(t => tf.sum(t));
    await Promise.all(sums.map(t => t.data()));
    tf.dispose(sums);
    const live: string[] = [];
    let slowest = 0;
    for (const impl of impls) {
      try {
        checkGL();
        peaks.set(impl, (await withPeak(() => sample(impl, 1))).peak);
        slowest = Math.max(slowest, (await sample(impl, 1)).ms);
        checkGL();
        times.set(impl, []);
        hostTimes.set(impl, []);
        live.push(impl);
      } catch (error) {
        rows.push({ n, pass, impl, error: String(error).slice(0, 200) });
      }
    }
    const calls = Math.max(1, Math.min(16, Math.round(config.sampleMs / slowest)));
    const rounds = n >= config.bigSeq ? config.bigRounds : config.rounds;
    for (let r = 0; r < rounds; r++) {
      for (let m = 0; m < live.length; m++) {
        const impl = live[(m + r) % live.length];
        const { ms, hostMs } = await sample(impl, calls);
        times.get(impl)?.push(ms);
        hostTimes.get(impl)?.push(hostMs);
      }
    }
    const naive = times.get('naive');
    for (const impl of live) {
      const ts = times.get(impl) ?? [];
      const ms = median(ts);
      rows.push({
        n, pass, impl, ms: +ms.toFixed(3), msMin: +Math.min(...ts).toFixed(3), msMax: +Math.max(...ts).toFixed(3),
        speedup: naive && impl !== 'naive' ? +median(ts.map((t, r) => naive[r] / t)).toFixed(3) : undefined,
        hostMs: +median(hostTimes.get(impl) ?? []).toFixed(3),
        rounds, callsPerSample: calls, tflops: +(flops / ms / 1e9).toPrecision(3),
        peakMiB: +((peaks.get(impl) ?? 0) / 2 ** 20).toFixed(1),
      });
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
  type Entry = [BenchRow['pass'], number, string[]];
  const plan: Entry[] = [];
  const passes = (n: number) => (n <= config.maxBackwardSeq ? ['forward', 'forward+backward'] as const : ['forward'] as const);
  const risky = (n: number) => !naiveFits(n, config) || n > config.naiveUpTo;
  for (const n of config.seqs) {
    for (const pass of passes(n)) {
      const variants = n <= config.variantsUpTo ? config.variants : [];
      plan.push([pass, n, ['flash', ...variants, ...(risky(n) ? [] : ['naive'])]]);
    }
  }
  const last: Entry[] = [];
  for (const n of config.seqs) {
    if (!risky(n)) continue;
    for (const pass of passes(n)) last.push([pass, n, naiveFits(n, config) ? ['naive'] : []]);
  }
  const inBudget = () => (performance.now() - start) / 1000 <= config.budgetSeconds;
  await measurePlan(plan, config, inBudget, rows, report);
  // The profile goes before the risky naive sizes, which may lose the context.
  for (const n of config.profileSeqs) if (inBudget()) await profile(n, config, report);
  await measurePlan(last, config, inBudget, rows, report);
  return rows;
}

async function measurePlan(plan: Array<[BenchRow['pass'], number, string[]]>, config: BenchConfig,
  inBudget: () => boolean, rows: BenchRow[], report: (line: string) => Promise<void>): Promise<void> {
  for (const [pass, n, impls] of plan) {
    if (!inBudget()) {
      await report(`# budget of ${config.budgetSeconds} s spent: stopped before N=${n} ${pass} ${impls.join('+')}`);
      return;
    }
    const measured = impls.length ? await measureSet(n, pass, impls, config)
      : [{ n, pass, impl: 'naive', error: 'scores [1, H, N, N] exceed MAX_TEXTURE_SIZE²: not run' }];
    for (const row of measured) {
      rows.push(row);
      await report(JSON.stringify(row));
    }
  }
}

/**
 * Waits until the GPU has written `x`'s texture, by reading one texel of it back (gl.finish() does
 * not wait in Chromium's command buffer).
 */
function waitFor(backend: MathBackendWebGL, x: tf.TensorInfo, fb: WebGLFramebuffer, texel: Float32Array): void {
  const texture = backend.texData.get(x.dataId).texture?.texture;
  if (!texture) return;
  const gl = backend.gpgpu.gl;
  const bound = gl.getParameter(gl.FRAMEBUFFER_BINDING);
  gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
  gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, texture, 0);
  gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.FLOAT, texel);
  gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, null, 0);
  gl.bindFramebuffer(gl.FRAMEBUFFER, bound);
}

/**
 * Milliseconds per program kind for one flash forward and one forward+backward at N (after a
 * warm-up call that compiles), waiting for each program's output before the next starts: this
 * serializes the GPU and is for finding where time goes, not for speeds.
 */
async function profile(n: number, config: BenchConfig, report: (line: string) => Promise<void>): Promise<void> {
  await tf.setBackend('webgl');
  await tf.ready();
  const backend = webgl();
  const fb = backend.gpgpu.gl.createFramebuffer();
  const texel = new Float32Array(4);
  const shape: [number, number, number, number] = [1, config.heads, n, config.headDim];
  const [q, k, v, dy] = [1, 2, 3, 4].map(seed => tf.randomNormal(shape, 0, 1, 'float32', seed) as tf.Tensor4D);
  const loss = (attend: typeof naiveAttention) => (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
    tf.sum(tf.mul(attend(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D), dy));
  const flash = (a: tf.Tensor4D, b: tf.Tensor4D, c: tf.Tensor4D) => flashAttention(a, b, c);
  // Naive too, for its draw count and where its time goes.
  const passes: Array<[string, () => tf.Tensor[]]> = [
    ['forward', () => [flash(q, k, v)]],
    ...Object.entries(VARIANTS).map(([name, set]): [string, () => tf.Tensor[]] => [`${name} forward`, () => {
      set(true);
      try {
        return [flash(q, k, v)];
      } finally {
        set(false);
      }
    }]),
    ['forward+backward', () => tf.grads(loss(flash))([q, k, v])],
    ['naive forward', () => [tf.tidy(() => naiveAttention(q, k, v))]],
    ['naive forward+backward', () => tf.grads(loss(naiveAttention))([q, k, v])],
  ];
  for (const [pass, f] of passes) {
    const run = async () => {
      const outs = f();
      await Promise.all(outs.map(o => o.data()));
      tf.dispose(outs);
    };
    await run();
    const plain = performance.now();
    await run();
    const plainMs = performance.now() - plain;
    const times = new Map<string, { ms: number; draws: number }>();
    const original = backend.runWebGLProgram;
    backend.runWebGLProgram = function (...args: Parameters<typeof original>) {
      const [program] = args;
      const kind = `${program.constructor.name}(${program.variableNames.join(',')}) -> [${program.outputShape.join(',')}]`;
      const t0 = performance.now();
      const out = original.apply(this, args);
      waitFor(backend, out, fb, texel);
      const entry = times.get(kind) ?? { ms: 0, draws: 0 };
      times.set(kind, { ms: entry.ms + performance.now() - t0, draws: entry.draws + 1 });
      return out;
    };
    const t0 = performance.now();
    try {
      await run();
    } finally {
      backend.runWebGLProgram = original;
    }
    const draws = [...times.values()].reduce((sum, t) => sum + t.draws, 0);
    await report(`# profile N=${n} ${pass}: ${plainMs.toFixed(0)} ms unprofiled, ` +
      `${(performance.now() - t0).toFixed(0)} ms profiled, ${draws} draws; per program kind (inputs -> output shape):`);
    for (const [kind, { ms, draws }] of [...times].sort((a, b) => b[1].ms - a[1].ms)) {
      await report(`#   ${ms.toFixed(1)} ms, ${draws} draws: ${kind}`);
    }
    // Each product over a head dimension (q·k; P̃·V; in the backward also dO·v, dS·K, dSᵀ·Q, P̃ᵀ·dO)
    // is 2·H·N²·D FLOPs in all: its rate is what a fragment-shader matrix product reaches here. In
    // the forwards, naive's two matMuls are the same products.
    const productFlops = 2 * config.heads * n * n * config.headDim;
    const products: Array<[string, string]> = pass.endsWith('backward') ? [] : [['q·k (scores)', '(Q,K) ->'],
      ['P̃·V (accumulate)', '(Weights,V,'], ['exp(s − lse)·V (fused accumulate)', '(Scores,V,'],
      ['naive q·kᵀ matMul', `(matrixA,matrixB) -> [${config.heads},${n},${n}]`],
      ['naive P·V matMul', `(matrixA,matrixB) -> [${config.heads},${n},${config.headDim}]`]];
    for (const [name, part] of products) {
      const ms = [...times].filter(([kind]) => kind.includes(part)).reduce((sum, [, t]) => sum + t.ms, 0);
      if (ms > 0) await report(`#   ${name}: ${(productFlops / ms / 1e9).toPrecision(3)} TFLOP/s`);
    }
  }
  tf.dispose([q, k, v, dy]);
}

/**
 * The GPU run (H100): N = 256 … 4096 forward and forward+backward, naive, flash and the flash variants
 * (up to N = 1024) in interleaved rounds (15 rounds below N = 2048, 5 from there); stops starting
 * measurements after 240 s (about 1 min expected). `#profile=N` gives the per-program times.
 */
const DEFAULT: BenchConfig = {
  seqs: [256, 512, 1024, 2048, 4096], heads: 12, headDim: 64, maxBackwardSeq: 4096, naiveUpTo: 4096,
  variantsUpTo: 1024, variants: ['per-block backward'], rounds: 15, bigSeq: 2048, bigRounds: 5, sampleMs: 60,
  budgetSeconds: 240, profileSeqs: [],
};
const QUICK: BenchConfig = { ...DEFAULT, seqs: [256], maxBackwardSeq: 256, rounds: 3, profileSeqs: [] };
const SWIFTSHADER: BenchConfig = { ...DEFAULT, seqs: [256, 512, 1024], maxBackwardSeq: 512, variants: ['GPU plan', 'per-block backward'],
  rounds: 5, bigSeq: 1024, bigRounds: 3, sampleMs: 0, budgetSeconds: 900, profileSeqs: [] };

async function post(line: string): Promise<void> {
  await fetch('/result', { method: 'POST', body: line });
}

// #profile=N: per-program times at N; #quick, #swiftshader: smaller sweeps; nothing: the GPU run.
const profileSeq = /profile=(\d+)/.exec(location.hash);
const config = location.hash.includes('quick') ? QUICK : location.hash.includes('swiftshader') ? SWIFTSHADER : DEFAULT;
async function main(): Promise<void> {
  if (profileSeq) return profile(Number(profileSeq[1]), config, post);
  await bench(config, post);
}
main().catch(error => post(`# error: ${String(error)}`)).finally(() => post('DONE'));
