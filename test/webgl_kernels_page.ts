// Page entry of the webgl kernel tests (test/webgl_kernels.test.ts): the shared harness plus
// functions that watch texture memory, check the dropout mask bit for bit, and run cases with
// overridden sizes.
import * as tf from '@tensorflow/tfjs-core';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import { encodeFloats, expose } from './browser/harness';
import { dropoutKeep, dropoutThreshold, flashAttention } from '../src/index';
import { CASES, caseData } from './cases';
import type { AttentionCase } from './cases';
import { runCase } from './setup/run_case';
import { setWebGLBlockKeys, setWebGLForwardPlan } from '../kernels/webgl/flash_attention';
import { setWebGLTogetherKeys } from '../kernels/webgl/flash_attention_grad';

function webgl(): MathBackendWebGL {
  return tf.backend() as MathBackendWebGL;
}

/** Bytes of textures in use now (the texture manager's allocation minus its free pool). */
function texturesInUse(): number {
  const manager = webgl().getTextureManager();
  return manager.numBytesAllocated - manager.numBytesFree;
}

/** Peak texture bytes in use beyond the starting point while `f` runs, sampled after every program. */
async function peakDuring<T>(f: () => Promise<T>): Promise<{ value: T; peak: number }> {
  const backend = webgl();
  const base = texturesInUse();
  let peak = 0;
  const original = backend.runWebGLProgram;
  backend.runWebGLProgram = function (...args: Parameters<typeof original>) {
    const out = original.apply(this, args);
    peak = Math.max(peak, texturesInUse() - base);
    return out;
  };
  try {
    return { value: await f(), peak };
  } finally {
    backend.runWebGLProgram = original;
  }
}

export interface MemoryProbe {
  /** Peak texture bytes in use during the op beyond its inputs (outputs and gradients included). */
  peak: number;
  /** Largest texture allocated in the op's programs, as [rows, columns] of its logical shape. */
  largestOutput: number[];
  /** Texture bytes in use after everything was disposed, minus before. */
  leakedBytes: number;
  allFinite: boolean;
  tensorsBefore: number;
  tensorsAfter: number;
}

/** Forward (or forward+backward) on seeded data of shape [b, h, n, d]: peak texture memory and leaks. */
async function memoryProbe(b: number, h: number, n: number, d: number, grad: boolean): Promise<MemoryProbe> {
  const tensorsBefore = tf.memory().numTensors;
  const shape = [b, h, n, d];
  const [q, k, v] = [1, 2, 3].map(seed => tf.randomNormal(shape, 0, 1, 'float32', seed));
  const sums = [q, k, v].map(t => tf.sum(t));
  await Promise.all(sums.map(t => t.data()));
  tf.dispose(sums);
  const before = texturesInUse();
  let largest = 0, largestOutput: number[] = [];
  const backend = webgl();
  const original = backend.runWebGLProgram;
  backend.runWebGLProgram = function (...args: Parameters<typeof original>) {
    const size = args[0].outputShape.reduce((x, y) => x * y, 1);
    if (size > largest) [largest, largestOutput] = [size, args[0].outputShape];
    return original.apply(this, args);
  };
  let outputs: tf.Tensor[] = [];
  let result: { value: Float32Array[]; peak: number };
  try {
    result = await peakDuring(async () => {
      outputs = grad
        ? tf.grads((x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) => tf.sum(flashAttention(x, y, z)))([q, k, v])
        : [flashAttention(q, k, v)];
      return Promise.all(outputs.map(t => t.data() as Promise<Float32Array>));
    });
  } finally {
    backend.runWebGLProgram = original;
  }
  const allFinite = result.value.every(values => values.every(Number.isFinite));
  tf.dispose([q, k, v, ...outputs]);
  const leakedBytes = texturesInUse() - before + 4 * 3 * b * h * n * d;
  return { peak: result.peak, largestOutput, leakedBytes, allFinite, tensorsBefore, tensorsAfter: tf.memory().numTensors };
}

/** A case of the shared list with fields overridden (e.g. longer sequences); the data follows the new name. */
async function runScaledCase(name: string, overrides: Partial<AttentionCase>) {
  const base = CASES.find(c => c.name === name);
  if (!base) throw new Error(`no case ${name}`);
  const c: AttentionCase = { ...base, ...overrides, name: `${name} ${JSON.stringify(overrides)}` };
  const r = await runCase(c, caseData(c));
  const optional = (x?: Float32Array) => (x ? encodeFloats(x) : undefined);
  return {
    case: c, backend: r.backend, output: encodeFloats(r.output), lse: encodeFloats(r.lse), dq: optional(r.dq),
    dk: optional(r.dk), dv: optional(r.dv), dbias: optional(r.dbias), tensorsBefore: r.tensorsBefore,
    tensorsAfter: r.tensorsAfter,
  };
}

/**
 * The dropout mask as the kernel applies it, against src/dropout.ts: with q = 0 every visible key
 * gets P = 1/Nk, and v = identity makes output[b, h, i, j] = P·Z_ij, zero exactly when dropped.
 * Returns the number of (b, h, i, j) where the kernel and dropoutKeep disagree, and how many kept.
 */
async function dropoutMismatches(b: number, h: number, nq: number, nk: number, rate: number, seed: number):
    Promise<{ mismatches: number; kept: number; total: number }> {
  const q = tf.zeros([b, h, nq, 4]);
  const k = tf.randomNormal([b, h, nk, 4], 0, 1, 'float32', 5);
  const v = tf.tidy(() => tf.tile(tf.reshape(tf.eye(nk), [1, 1, nk, nk]), [b, h, 1, 1]));
  const out = flashAttention(q, k, v, { dropout: { rate, seed } });
  const values = await out.data();
  tf.dispose([q, k, v, out]);
  const threshold = dropoutThreshold(rate);
  let mismatches = 0, kept = 0, n = 0;
  for (let bi = 0; bi < b; bi++) {
    for (let hi = 0; hi < h; hi++) {
      for (let i = 0; i < nq; i++) {
        for (let j = 0; j < nk; j++, n++) {
          const keep = dropoutKeep(threshold, seed, bi, hi, i, j);
          if (keep) kept++;
          if (keep !== (values[n] !== 0)) mismatches++;
        }
      }
    }
  }
  return { mismatches, kept, total: n };
}

/**
 * q, k, v as a model makes them: slices of one packed matMul output reshaped to BSHD (a texture whose
 * packed layout is not q's own, or a slice of a shared texture). Returns the largest difference from
 * the same values uploaded fresh from the CPU, for the output and the gradients.
 */
async function derivedInputs(): Promise<{ output: number; grads: number }> {
  const [b, t, h, d] = [2, 37, 3, 8];
  const x = tf.randomNormal([b * t, 16], 0, 1, 'float32', 11);
  const w = tf.randomNormal([16, 3 * h * d], 0, 0.3, 'float32', 12);
  const f = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => flashAttention(q, k, v, { layout: 'BSHD', causal: true });
  const loss = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.sum(tf.mul(f(q, k, v), f(q, k, v)));
  const derived = tf.tidy(() => tf.split(tf.matMul(x, w), 3, 1).map(part => tf.reshape(part, [b, t, h, d])));
  const fresh = await Promise.all(derived.map(async part => tf.tensor(await part.data(), part.shape)));
  const outputs = [derived, fresh].map(([q, k, v]) => f(q, k, v));
  const grads = [derived, fresh].map(([q, k, v]) => tf.grads(loss)([q, k, v]));
  const maxDiff = async (a: tf.Tensor[], c: tf.Tensor[]) => {
    let m = 0;
    for (let n = 0; n < a.length; n++) {
      const [u, z] = [await a[n].data(), await c[n].data()];
      for (let e = 0; e < u.length; e++) m = Math.max(m, Math.abs(u[e] - z[e]));
    }
    return m;
  };
  const result = { output: await maxDiff([outputs[0]], [outputs[1]]), grads: await maxDiff(grads[0], grads[1]) };
  tf.dispose([x, w, ...derived, ...fresh, ...outputs, ...grads.flat()]);
  return result;
}

expose('faWebglMemoryProbe', memoryProbe);
expose('faWebglSetBlockKeys', setWebGLBlockKeys);
expose('faWebglSetForwardPlan', setWebGLForwardPlan);
expose('faWebglSetTogetherKeys', setWebGLTogetherKeys);
expose('faWebglDerivedInputs', derivedInputs);
expose('faWebglRunScaledCase', runScaledCase);
expose('faWebglDropoutMismatches', dropoutMismatches);
expose('faWebglKernels', () => ({
  forward: tf.getKernel('FlashAttention', 'webgl') !== undefined,
  grad: tf.getKernel('FlashAttentionGrad', 'webgl') !== undefined,
  maxTextureSize: tf.env().getNumber('WEBGL_MAX_TEXTURE_SIZE'),
  float32Rendering: tf.env().getBool('WEBGL_RENDER_FLOAT32_ENABLED'),
}));
