// Page entry of the webgl split-KV tests (test/split_kv_webgl.test.ts): the shared harness plus the
// split tuning knob, the plan the rule makes for a case, the number of programs a forward runs, and
// split-vs-one-pass comparisons of decode shapes done in the page.
import * as tf from '@tensorflow/tfjs-core';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import './browser/harness';
import { dropoutKeep, dropoutThreshold, flashAttention } from '../src/index';
import { normalizeAttention } from '../src/config';
import { splitKvTuning, webglSplitPlan } from '../src/split_kv';
import type { AttentionCase } from './cases';
import { caseData } from './cases';
import { caseTensors } from './case_tensors';
import { expose } from './browser/harness';

function setForce(splits: number | null): void {
  if (splits === null) delete splitKvTuning.force; else splitKvTuning.force = splits;
}

/** The rule's plan for a case's forward, and how many WebGL programs that forward runs. */
async function planOf(c: AttentionCase): Promise<{ splits: number; keys: number; programs: number }> {
  const t = caseTensors(c, caseData(c));
  const plan = webglSplitPlan(normalizeAttention(t.q, t.k, t.v, t.options).config,
    tf.env().getNumber('WEBGL_MAX_TEXTURE_SIZE'));
  const backend = tf.backend() as MathBackendWebGL;
  // The first call also uploads the inputs (tfjs runs upload programs); the second one is counted,
  // while the op runs (reading the packed output back runs one more program).
  const warm = flashAttention(t.q, t.k, t.v, t.options);
  await warm.data();
  warm.dispose();
  const original = backend.runWebGLProgram;
  let programs = 0;
  backend.runWebGLProgram = function (...args: Parameters<typeof original>) {
    programs++;
    return original.apply(this, args);
  };
  let out: tf.Tensor;
  try {
    out = flashAttention(t.q, t.k, t.v, t.options);
  } finally {
    backend.runWebGLProgram = original;
  }
  await out.data();
  tf.dispose([out, ...t.all]);
  return { ...plan, programs };
}

/**
 * Output and lse of a case through the split path (the rule's choice, or the forced count in
 * effect) and through the one-pass kernel (forced), in the page: the largest differences, the scales to judge them by, and whether
 * either has a NaN.
 */
async function splitVsOnePass(c: AttentionCase):
    Promise<{ output: number; lse: number; vmax: number; lseMax: number; nan: boolean; leakedBytes: number }> {
  const t = caseTensors(c, caseData(c));
  const manager = (tf.backend() as MathBackendWebGL).getTextureManager();
  const inUse = () => manager.numBytesAllocated - manager.numBytesFree;
  const current = splitKvTuning.force ?? null;
  const once = async (force: number | null) => {
    setForce(force);
    try {
      const { output, lse } = flashAttention(t.q, t.k, t.v, { ...t.options, returnLse: true });
      const values = [await output.data(), await lse.data()];
      tf.dispose([output, lse]);
      return values;
    } finally {
      setForce(current);
    }
  };
  try {
    // A first call uploads the inputs' textures (not the op's to free): counted from after it.
    await once(1);
    const before = inUse();
    const [split, one] = [await once(current), await once(1)];
    const leakedBytes = inUse() - before;
    const diff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
      let m = 0;
      for (let n = 0; n < a.length; n++) if (Number.isFinite(b[n])) m = Math.max(m, Math.abs(a[n] - b[n]));
      return m;
    };
    const largest = (xs: ArrayLike<number>) => {
      let m = 0;
      for (let n = 0; n < xs.length; n++) if (Number.isFinite(xs[n])) m = Math.max(m, Math.abs(xs[n]));
      return m;
    };
    return {
      output: diff(split[0], one[0]), lse: diff(split[1], one[1]), vmax: largest(await t.v.data()),
      lseMax: Math.max(1, largest(one[1])), nan: [...split, ...one].some(x => x.some(Number.isNaN)), leakedBytes,
    };
  } finally {
    tf.dispose(t.all);
  }
}

/**
 * The dropout mask as the split path applies it, against src/dropout.ts: with q = 0 every visible
 * key gets P = 1/Nk, and v = identity makes output[b, h, i, j] = P·Z_ij, zero exactly when dropped.
 * Returns the split count used and the number of (b, h, i, j) where kernel and dropoutKeep disagree.
 */
async function dropoutMismatches(b: number, h: number, nq: number, nk: number, rate: number, seed: number):
    Promise<{ splits: number; mismatches: number; kept: number; total: number }> {
  const q = tf.zeros([b, h, nq, 4]);
  const k = tf.randomNormal([b, h, nk, 4], 0, 1, 'float32', 5);
  const v = tf.tidy(() => tf.tile(tf.reshape(tf.eye(nk), [1, 1, nk, nk]), [b, h, 1, 1]));
  const options = { dropout: { rate, seed } };
  const { splits } = webglSplitPlan(normalizeAttention(q, k, v, options).config, tf.env().getNumber('WEBGL_MAX_TEXTURE_SIZE'));
  const out = flashAttention(q, k, v, options);
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
  return { splits, mismatches, kept, total: n };
}

expose('faSplitForce', setForce);
expose('faSplitDropoutMismatches', dropoutMismatches);
expose('faSplitPlan', planOf);
expose('faSplitVsOnePass', splitVsOnePass);
