// Page entry of the webgl kernel tests (test/webgl_kernels.test.ts): the shared harness plus
// functions that look at texture memory and run cases with kernel-specific settings.
import * as tf from '@tensorflow/tfjs-core';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import { encodeFloats, expose } from './browser/harness';
import { flashAttention } from '../src/index';
import { CASES, caseData } from './cases';
import type { AttentionCase } from './cases';
import { caseTensors } from './case_tensors';
import { runCase } from './setup/run_case';

function webglBackend(): MathBackendWebGL {
  return tf.backend() as MathBackendWebGL;
}

export interface MemoryProbe {
  /** Bytes of textures in use right after the op's outputs exist (inputs and outputs included). */
  inUseAfter: number;
  /** Growth of the texture manager's allocation (in use + pooled) during the op: its peak working set. */
  allocatedGrowth: number;
  /** Bytes of the inputs and outputs themselves. */
  ioBytes: number;
  outputFinite: boolean;
  tensorsBefore: number;
  tensorsAfter: number;
}

/**
 * Runs forward (and backward when `grad`) on random data of the given shape and reports how much
 * texture memory the op needed beyond its inputs and outputs.
 */
async function memoryProbe(shape: { b: number; h: number; n: number; d: number }, grad: boolean): Promise<MemoryProbe> {
  const tensorsBefore = tf.memory().numTensors;
  const { b, h, n, d } = shape;
  const q = tf.randomNormal([b, h, n, d], 0, 1, 'float32', 1);
  const k = tf.randomNormal([b, h, n, d], 0, 1, 'float32', 2);
  const v = tf.randomNormal([b, h, n, d], 0, 1, 'float32', 3);
  // Materialize the inputs on the GPU before measuring.
  await Promise.all([q, k, v].map(t => tf.add(t, 0).data()));
  const manager = webglBackend().getTextureManager();
  const allocatedBefore = manager.numBytesAllocated;
  let outputs: tf.Tensor[];
  if (grad) {
    const f = (a: tf.Tensor, c: tf.Tensor, e: tf.Tensor) => tf.sum(flashAttention(a, c, e));
    outputs = tf.grads(f)([q, k, v]);
  } else {
    const r = flashAttention(q, k, v, { returnLse: true });
    outputs = [r.output, r.lse];
  }
  const values = await Promise.all(outputs.map(t => t.data()));
  const inUseAfter = webglBackend().memory().numBytesInGPU;
  const allocatedGrowth = manager.numBytesAllocated - allocatedBefore;
  const ioBytes = 4 * [q, k, v, ...outputs].reduce((s, t) => s + t.size, 0);
  const outputFinite = values.every(vs => Array.from(vs).every(Number.isFinite));
  tf.dispose([q, k, v, ...outputs]);
  return { inUseAfter, allocatedGrowth, ioBytes, outputFinite, tensorsBefore, tensorsAfter: tf.memory().numTensors };
}

/** A case of the shared list with its sizes overridden (e.g. longer sequences). */
async function runScaledCase(name: string, overrides: Partial<AttentionCase>) {
  const base = CASES.find(c => c.name === name);
  if (!base) throw new Error(`no case ${name}`);
  const c = { ...base, ...overrides, name: `${name} ${JSON.stringify(overrides)}` };
  const r = await runCase(c, caseData(c));
  const optional = (x?: Float32Array) => (x ? encodeFloats(x) : undefined);
  return {
    case: c, output: encodeFloats(r.output), lse: encodeFloats(r.lse), dq: optional(r.dq), dk: optional(r.dk),
    dv: optional(r.dv), dbias: optional(r.dbias), tensorsBefore: r.tensorsBefore, tensorsAfter: r.tensorsAfter,
  };
}

/** Whether an error thrown inside the kernel leaves no tensor behind. */
async function errorLeaves(): Promise<{ threw: boolean; tensorsBefore: number; tensorsAfter: number }> {
  const c = CASES[0];
  const tensorsBefore = tf.memory().numTensors;
  const t = caseTensors(c, caseData(c));
  let threw = false;
  try {
    flashAttention(t.q, t.k, t.v, { ...t.options, softcap: -1 });
  } catch {
    threw = true;
  }
  tf.dispose(t.all);
  return { threw, tensorsBefore, tensorsAfter: tf.memory().numTensors };
}

expose('faWebglMemoryProbe', memoryProbe);
expose('faWebglRunScaledCase', runScaledCase);
expose('faWebglErrorLeaves', errorLeaves);
expose('faWebglKernels', () => ({
  forward: tf.getKernel('FlashAttention', 'webgl') !== undefined,
  grad: tf.getKernel('FlashAttentionGrad', 'webgl') !== undefined,
}));
