// The cpu kernels against the float64 reference on the shared case list (forward, lse and
// gradients), plus what the case list cannot show: finite differences of the float32 kernel itself,
// the exact dropout mask, training through the op and gradients of only one of its two outputs.
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's CommonJS build registers no op gradients (sum, mul, ...); tfjs-layers' does.
import '@tensorflow/tfjs-layers';
import { flashAttention } from '../src';
import type { FlashAttentionOptions } from '../src';
import { CASES, caseData } from './cases';
import type { AttentionCase, CaseData } from './cases';
import { caseTensors, toTensor } from './case_tensors';
import { assertComparison, compareForward, compareGrad, compareLse, maxAbs } from './compare';
import { referenceForward, referenceGrads } from './reference';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function byName(name: string): AttentionCase {
  const c = CASES.find(x => x.name === name);
  if (!c) throw new Error(`no case '${name}'`);
  return c;
}

const outputShapeOf = (c: AttentionCase) => c.layout === 'BSHD' ? [c.b, c.nq, c.hq, c.dv] : [c.b, c.hq, c.nq, c.dv];

/** q, k, v (and bias when present), the tensors gradients are taken for. */
function gradInputs(t: ReturnType<typeof caseTensors>): tf.Tensor[] {
  return t.options.bias ? [t.q, t.k, t.v, t.options.bias] : [t.q, t.k, t.v];
}

function withInputs(options: FlashAttentionOptions, xs: tf.Tensor[]): FlashAttentionOptions {
  return xs[3] ? { ...options, bias: xs[3] } : options;
}

/** Gradients of Σ dOutput ∘ output + Σ dLse ∘ lse; either upstream may be left out (that output unused). */
function kernelGrads(c: AttentionCase, data: CaseData, use: { output: boolean; lse: boolean }): Float32Array[] {
  const t = caseTensors(c, data);
  const dOutput = toTensor(data.dOutput), dLse = toTensor(data.dLse);
  const f = (...xs: tf.Tensor[]) => {
    const terms: tf.Tensor[] = [];
    if (use.lse) {
      const { output, lse } = flashAttention(xs[0], xs[1], xs[2], { ...withInputs(t.options, xs), returnLse: true });
      if (use.output) terms.push(tf.sum(tf.mul(output, dOutput)));
      // An empty row's lse is −Infinity; its product with dLse makes the loss's value infinite,
      // but its gradient stays dLse, which the kernel must turn into zero gradients for that row.
      terms.push(tf.sum(tf.mul(lse, dLse)));
    } else {
      terms.push(tf.sum(tf.mul(flashAttention(xs[0], xs[1], xs[2], withInputs(t.options, xs)), dOutput)));
    }
    return tf.addN(terms);
  };
  const grads = tf.grads(f)(gradInputs(t));
  const values = grads.map(g => g.dataSync() as Float32Array);
  tf.dispose([...grads, ...t.all, dOutput, dLse]);
  return values;
}

function checkGrads(label: string, c: AttentionCase, data: CaseData, got: Float32Array[],
  dOutput: ArrayLike<number>, dLse: ArrayLike<number>): void {
  const ref = referenceGrads(c, data, dOutput, dLse);
  assertComparison(compareGrad(`${label} dq`, got[0], ref.dq, data.q.shape));
  assertComparison(compareGrad(`${label} dk`, got[1], ref.dk, data.k.shape));
  assertComparison(compareGrad(`${label} dv`, got[2], ref.dv, data.v.shape));
  if (data.bias) {
    if (!ref.dbias || !got[3]) throw new Error(`${label}: dbias missing`);
    assertComparison(compareGrad(`${label} dbias`, got[3], ref.dbias, data.bias.shape));
  }
}

describe.each(CASES.map(c => [c.name, c] as const))('cpu case %s', (_name, c) => {
  test('forward: output and lse equal the float64 reference; no tensor leaked', () => {
    const data = caseData(c);
    const ref = referenceForward(c, data);
    const before = tf.memory().numTensors;
    const t = caseTensors(c, data);
    const { output, lse } = flashAttention(t.q, t.k, t.v, { ...t.options, returnLse: true });
    expect(output.shape).toEqual(outputShapeOf(c));
    expect(lse.shape).toEqual([c.b, c.hq, c.nq]);
    const got = { output: output.dataSync(), lse: lse.dataSync() };
    tf.dispose([output, lse, ...t.all]);
    expect(tf.memory().numTensors).toBe(before);
    assertComparison(compareForward(`${c.name} output`, got.output, ref.output, outputShapeOf(c), maxAbs(data.v.values)));
    assertComparison(compareLse(`${c.name} lse`, got.lse, ref.lse, [c.b, c.hq, c.nq]));
  });

  if (c.grad) test('gradients of q, k, v (and bias) equal the float64 reference; no tensor leaked', () => {
    const data = caseData(c);
    const before = tf.memory().numTensors;
    const got = kernelGrads(c, data, { output: true, lse: true });
    expect(tf.memory().numTensors).toBe(before);
    checkGrads(c.name, c, data, got, data.dOutput.values, data.dLse.values);
  });
});

describe('cpu kernel', () => {
  test('gradients when only lse or only the output is used', () => {
    for (const name of ['everything', 'mask int32 fully masked rows']) {
      const c = byName(name);
      const data = caseData(c);
      const zerosOutput = new Array<number>(data.dOutput.values.length).fill(0);
      const zerosLse = new Array<number>(data.dLse.values.length).fill(0);
      const before = tf.memory().numTensors;
      const onlyLse = kernelGrads(c, data, { output: false, lse: true });
      const onlyOutput = kernelGrads(c, data, { output: true, lse: false });
      expect(tf.memory().numTensors).toBe(before);
      checkGrads(`${name} (only lse used)`, c, data, onlyLse, zerosOutput, data.dLse.values);
      checkGrads(`${name} (only output used)`, c, data, onlyOutput, data.dOutput.values, zerosLse);
    }
  });

  test('float32 kernel gradients equal central finite differences of the float32 kernel', () => {
    // A tiny case with GQA, Nq ≠ Nk, causal, bias and softcap. The loss is summed in float64 from
    // the kernel's float32 output and lse, whose relative rounding (~1e-7) divided by the step 2ε
    // gives ~1e-5 noise at ε = 1e-2, and truncation (ε²·f'''/6) is of the same order: measured
    // 3.1e-5·‖g‖∞ (dq), so 5e-4 leaves float32 room while a wrong formula is off by far more.
    const c: AttentionCase = {
      name: 'finite differences', b: 1, hq: 2, hkv: 1, nq: 3, nk: 4, d: 3, dv: 2, causal: true, bias: [2, 3, 4], softcap: 2, grad: true,
    };
    const data = caseData(c);
    const [dq, dk, dv, dbias] = kernelGrads(c, data, { output: true, lse: true });
    const analytic: Record<string, Float32Array> = { q: dq, k: dk, v: dv, bias: dbias };
    const loss = (d: CaseData) => {
      const t = caseTensors(c, d);
      const { output, lse } = flashAttention(t.q, t.k, t.v, { ...t.options, returnLse: true });
      const o = output.dataSync(), l = lse.dataSync();
      tf.dispose([output, lse, ...t.all]);
      let sum = 0;
      o.forEach((x, n) => { sum += x * Math.fround(data.dOutput.values[n]); });
      l.forEach((x, n) => { sum += x * Math.fround(data.dLse.values[n]); });
      return sum;
    };
    const eps = 1e-2;
    for (const tensor of ['q', 'k', 'v', 'bias'] as const) {
      const values = data[tensor]?.values;
      if (!values) throw new Error(`no ${tensor}`);
      const fd = values.map((x, n) => {
        const plus = Math.fround(x + eps), minus = Math.fround(x - eps);
        values[n] = plus;
        const lossPlus = loss(data);
        values[n] = minus;
        const lossMinus = loss(data);
        values[n] = x;
        return (lossPlus - lossMinus) / (plus - minus);
      });
      assertComparison(compareGrad(`finite differences d${tensor}`, analytic[tensor], fd, data[tensor]?.shape ?? [], 5e-4));
    }
  });

  test('dropout keeps exactly the entries dropoutKeep keeps, scaled by 1/(1 − rate)', () => {
    // q = 0 makes every visible score equal, so P = 1/Nk; v = identity makes output[..., i, d] the
    // dropout factor of key d for row i, times 1/Nk.
    const nk = 16, rate = 0.3, seed = 99;
    const c: AttentionCase = { name: 'dropout mask', b: 2, hq: 2, hkv: 1, nq: 5, nk, d: 1, dv: nk, dropout: { rate, seed }, grad: false };
    const data = caseData(c);
    data.q.values.fill(0);
    data.v.values = data.v.values.map((_, n) => (Math.floor(n / nk) % nk === n % nk ? 1 : 0));
    const t = caseTensors(c, data);
    const output = flashAttention(t.q, t.k, t.v, t.options);
    const got = output.dataSync();
    tf.dispose([output, ...t.all]);
    const ref = referenceForward(c, data).output;
    let kept = 0, mismatches = 0;
    got.forEach((x, n) => {
      const factor = x * nk * (1 - rate);
      const refKeep = Math.round(ref[n] * nk * (1 - rate));
      if (Math.abs(factor - refKeep) > 1e-5) mismatches++;
      kept += refKeep;
    });
    expect(mismatches).toBe(0);
    // The mask is neither all kept nor all dropped, and keeps about 1 − rate.
    expect(kept / got.length).toBeGreaterThan(0.55);
    expect(kept / got.length).toBeLessThan(0.85);
  });

  test('changing the dropout seed changes the output', () => {
    const c = byName('dropout');
    const data = caseData(c);
    const t = caseTensors(c, data);
    const a = flashAttention(t.q, t.k, t.v, t.options);
    const b = flashAttention(t.q, t.k, t.v, { ...t.options, dropout: { rate: 0.3, seed: 1235 } });
    const difference = tf.max(tf.abs(tf.sub(a, b)));
    expect(difference.dataSync()[0]).toBeGreaterThan(1e-2);
    tf.dispose([a, b, difference, ...t.all]);
  });

  test('an SGD step through flashAttention moves q, k, v by −lr · the reference gradient', () => {
    const c = byName('causal');
    const data = caseData(c);
    const t = caseTensors(c, data);
    const before = tf.memory().numTensors;
    const vars = [tf.variable(t.q), tf.variable(t.k), tf.variable(t.v)];
    const dOutput = toTensor(data.dOutput);
    const lr = 0.1;
    const optimizer = tf.train.sgd(lr);
    optimizer.minimize(() => tf.sum(tf.mul(flashAttention(vars[0], vars[1], vars[2], t.options), dOutput)));
    const ref = referenceGrads(c, data, data.dOutput.values, new Array<number>(data.dLse.values.length).fill(0));
    [ref.dq, ref.dk, ref.dv].forEach((grad, n) => {
      const moved = tf.sub(vars[n], [t.q, t.k, t.v][n]);
      const step = Float64Array.from(moved.dataSync(), x => -x / lr);
      moved.dispose();
      expect(maxAbs(step)).toBeGreaterThan(0);
      // The new values are rounded to float32 (|x| ≲ 3: ≤ 2.4e-7 absolute), which dividing the step
      // by lr magnifies; 1e-6/lr absolute covers that rounding.
      assertComparison(compareGrad(`sgd step ${['q', 'k', 'v'][n]}`, step, grad, [grad.length], 1e-4 + 1e-6 / (lr * maxAbs(grad))));
    });
    optimizer.dispose();
    tf.dispose([...vars, dOutput]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(t.all);
  });
});
