// SPEC §2's bad inputs, each answered by an Error naming the argument with expected and actual, and
// nothing leaked; and the composite fallback (no kernel on the backend) against the float64 reference.
import '@tensorflow/tfjs-backend-cpu';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's CommonJS build registers no op gradients (sum, mul, ...); tfjs-layers' does.
import '@tensorflow/tfjs-layers';
import { FlashAttention, FlashAttentionGrad, flashAttention } from '../src';
import type { FlashAttentionOptions } from '../src';
import { normalizeAttention } from '../src/config';
import { compositeAttention } from '../src/composite';
import { CASES, caseData } from './cases';
import type { AttentionCase, CaseData } from './cases';
import { caseTensors, toTensor } from './case_tensors';
import { assertComparison, compareForward, compareGrad, compareLse, maxAbs } from './compare';
import { referenceForward, referenceGrads } from './reference';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('bad input throws an Error naming the argument, expected and actual, and leaks nothing', () => {
  // B=2, Hq=4, Hkv=2, Nq=3, Nk=5, D=8, Dv=6 in BHSD.
  type Inputs = { q: tf.Tensor; k: tf.Tensor; v: tf.Tensor };
  type BadCase = [string, (x: Inputs) => [tf.Tensor, tf.Tensor, tf.Tensor, FlashAttentionOptions?], RegExp];
  const made: tf.Tensor[] = [];
  const keep = <T extends tf.Tensor>(t: T): T => { made.push(t); return t; };
  const f32 = (shape: number[]) => keep(tf.zeros(shape));
  const i32 = (shape: number[]) => keep(tf.zeros(shape, 'int32'));
  const bool = (shape: number[]) => keep(tf.zeros(shape, 'bool'));
  let inputs: Inputs;
  beforeAll(() => {
    inputs = { q: f32([2, 4, 3, 8]), k: f32([2, 2, 5, 8]), v: f32([2, 2, 5, 6]) };
  });
  afterAll(() => tf.dispose(made));

  const cases: BadCase[] = [
    ['q of rank 3', x => [f32([4, 3, 8]), x.k, x.v], /q must be rank 4 .*got shape \[4, 3, 8\]/],
    ['k of rank 5', x => [x.q, f32([2, 2, 5, 8, 1]), x.v], /k must be rank 4 .*got shape \[2, 2, 5, 8, 1\]/],
    ['v of rank 2', x => [x.q, x.k, f32([5, 6])], /v must be rank 4 .*got shape \[5, 6\]/],
    ['q not a tensor', x => [[1, 2] as unknown as tf.Tensor, x.k, x.v], /q must be a tf\.Tensor, got object/],
    ['batch mismatch', x => [x.q, f32([3, 2, 5, 8]), x.v], /batch sizes differ: q \[2, 4, 3, 8\], k \[3, 2, 5, 8\]/],
    ['head size mismatch', x => [x.q, f32([2, 2, 5, 7]), x.v], /head size of k \(7\) must equal head size of q \(8\)/],
    ['Nk mismatch between k and v', x => [x.q, x.k, f32([2, 2, 4, 6])], /k and v must have the same sequence length, got 5 and 4/],
    ['KV heads mismatch between k and v', x => [x.q, x.k, f32([2, 1, 5, 6])], /k and v must have the same number of heads, got 2 and 1/],
    ['Hq % Hkv ≠ 0', x => [f32([2, 3, 3, 8]), x.k, x.v], /query heads \(3\) must be a multiple of key\/value heads \(2\)/],
    ['int32 q', x => [i32([2, 4, 3, 8]), x.k, x.v], /q must have dtype float32, got int32/],
    ['bool k', x => [x.q, bool([2, 2, 5, 8]), x.v], /k must have dtype float32, got bool/],
    ['int32 v', x => [x.q, x.k, i32([2, 2, 5, 6])], /v must have dtype float32, got int32/],
    ['head size 257', () => [f32([1, 1, 2, 257]), f32([1, 1, 2, 257]), f32([1, 1, 2, 4])], /unsupported head size 257 of q\/k: expected 1 to 256/],
    ['head size 0', () => [f32([1, 1, 2, 0]), f32([1, 1, 2, 0]), f32([1, 1, 2, 4])], /unsupported head size 0 of q\/k: expected 1 to 256/],
    ['value head size 300', () => [f32([1, 1, 2, 4]), f32([1, 1, 2, 4]), f32([1, 1, 2, 300])], /unsupported head size 300 of v: expected 1 to 256/],
    ['bias not broadcastable', x => [x.q, x.k, x.v, { bias: f32([2, 5]) }],
      /bias of shape \[2, 5\] is not broadcastable to \[batch, headsQ, seqQ, seqK\] \[2, 4, 3, 5\]/],
    ['bias of rank 5', x => [x.q, x.k, x.v, { bias: f32([1, 2, 4, 3, 5]) }], /bias must have rank ≤ 4, got shape \[1, 2, 4, 3, 5\]/],
    ['int32 bias', x => [x.q, x.k, x.v, { bias: i32([3, 5]) }], /bias must have dtype float32, got int32/],
    ['mask not broadcastable', x => [x.q, x.k, x.v, { mask: bool([2, 2, 3, 5]) }],
      /mask of shape \[2, 2, 3, 5\] is not broadcastable to \[batch, headsQ, seqQ, seqK\] \[2, 4, 3, 5\]/],
    ['float mask', x => [x.q, x.k, x.v, { mask: f32([3, 5]) }], /mask must have dtype bool or int32, got float32/],
    ['blockMask of the wrong shape', x => [x.q, x.k, x.v, { blockSparse: { blockMask: i32([1, 1, 1, 1]), blockSize: 2 } }],
      /blockSparse\.blockMask must have shape \[2 or 1, 4 or 1, 2, 3\] for blockSize 2, got \[1, 1, 1, 1\]/],
    ['blockMask of rank 2', x => [x.q, x.k, x.v, { blockSparse: { blockMask: i32([2, 3]), blockSize: 2 } }],
      /blockSparse\.blockMask must have shape \[2 or 1, 4 or 1, 2, 3\] for blockSize 2, got \[2, 3\]/],
    ['float blockMask', x => [x.q, x.k, x.v, { blockSparse: { blockMask: f32([1, 1, 2, 3]), blockSize: 2 } }],
      /blockSparse\.blockMask must have dtype bool or int32, got float32/],
    ['blockSize 0', x => [x.q, x.k, x.v, { blockSparse: { blockMask: i32([1, 1, 2, 3]), blockSize: 0 } }],
      /blockSparse\.blockSize must be an integer ≥ 1, got 0/],
    ['blockSize 1.5', x => [x.q, x.k, x.v, { blockSparse: { blockMask: i32([1, 1, 2, 3]), blockSize: 1.5 } }],
      /blockSparse\.blockSize must be an integer ≥ 1, got 1\.5/],
    ['dropout rate 1', x => [x.q, x.k, x.v, { dropout: { rate: 1, seed: 0 } }], /dropout\.rate must be in \[0, 1\), got 1/],
    ['dropout rate −0.1', x => [x.q, x.k, x.v, { dropout: { rate: -0.1, seed: 0 } }], /dropout\.rate must be in \[0, 1\), got -0\.1/],
    ['dropout rate NaN', x => [x.q, x.k, x.v, { dropout: { rate: NaN, seed: 0 } }], /dropout\.rate must be in \[0, 1\), got NaN/],
    ['dropout seed −1', x => [x.q, x.k, x.v, { dropout: { rate: 0.1, seed: -1 } }], /dropout\.seed must be an integer in \[0, 2\^32\), got -1/],
    ['dropout seed 0.5', x => [x.q, x.k, x.v, { dropout: { rate: 0.1, seed: 0.5 } }], /dropout\.seed must be an integer in \[0, 2\^32\), got 0\.5/],
    ['softcap 0', x => [x.q, x.k, x.v, { softcap: 0 }], /softcap must be a number > 0, got 0/],
    ['softcap −2', x => [x.q, x.k, x.v, { softcap: -2 }], /softcap must be a number > 0, got -2/],
    ['softcap Infinity', x => [x.q, x.k, x.v, { softcap: Infinity }], /softcap must be a number > 0, got Infinity/],
    ['windowSize with −2', x => [x.q, x.k, x.v, { windowSize: [-2, 0] }], /windowSize must be \[left, right\] .*got \[-2,0\]/],
    ['windowSize of length 1', x => [x.q, x.k, x.v, { windowSize: [3] as unknown as [number, number] }], /windowSize must be \[left, right\] .*got \[3\]/],
    ['windowSize not integer', x => [x.q, x.k, x.v, { windowSize: [1.5, 2] }], /windowSize must be \[left, right\] .*got \[1\.5,2\]/],
    ['keyLengths of the wrong length', x => [x.q, x.k, x.v, { keyLengths: i32([3]) }],
      /keyLengths must have shape \[2\] \(one length per batch\), got \[3\]/],
    ['keyLengths of rank 2', x => [x.q, x.k, x.v, { keyLengths: i32([2, 1]) }],
      /keyLengths must have shape \[2\] \(one length per batch\), got \[2, 1\]/],
    ['float keyLengths', x => [x.q, x.k, x.v, { keyLengths: f32([2]) }], /keyLengths must have dtype int32, got float32/],
    ['alibiSlopes [Hkv]', x => [x.q, x.k, x.v, { alibiSlopes: f32([2]) }], /alibiSlopes must have shape \[4\] or \[2, 4\], got \[2\]/],
    ['alibiSlopes [3, Hq]', x => [x.q, x.k, x.v, { alibiSlopes: f32([3, 4]) }], /alibiSlopes must have shape \[4\] or \[2, 4\], got \[3, 4\]/],
    ['int32 alibiSlopes', x => [x.q, x.k, x.v, { alibiSlopes: i32([4]) }], /alibiSlopes must have dtype float32, got int32/],
    ['unknown option', x => [x.q, x.k, x.v, { casual: true } as FlashAttentionOptions], /unknown option 'casual'/],
    ['bad layout', x => [x.q, x.k, x.v, { layout: 'BHDS' as 'BHSD' }], /layout must be 'BHSD' or 'BSHD', got 'BHDS'/],
    ['BSHD reads heads from axis 2', x => [x.q, x.k, x.v, { layout: 'BSHD' }], /query heads \(3\) must be a multiple of key\/value heads \(5\)/],
    ['bad precision', x => [x.q, x.k, x.v, { precision: 'int8' as 'float32' }], /precision must be 'float32' or 'float16', got 'int8'/],
    ['scale NaN', x => [x.q, x.k, x.v, { scale: NaN }], /scale must be a finite number, got NaN/],
    ['causal not boolean', x => [x.q, x.k, x.v, { causal: 1 as unknown as boolean }], /causal must be a boolean, got 1/],
    ['returnLse not boolean', x => [x.q, x.k, x.v, { returnLse: 'yes' as unknown as boolean }], /returnLse must be a boolean, got yes/],
  ];

  test.each(cases)('%s', (_name, build, message) => {
    const args = build(inputs);
    const before = tf.memory().numTensors;
    expect(() => flashAttention(...args)).toThrow(message);
    expect(() => flashAttention(...args)).toThrow(Error);
    expect(tf.memory().numTensors).toBe(before);
  });
});

/** The composite's output, lse and (for grad cases) gradients of Σ dO ∘ O + Σ dLse ∘ lse. */
function compositeResults(c: AttentionCase, data: CaseData): { output: Float32Array; lse: Float32Array; grads: Float32Array[] } {
  const t = caseTensors(c, data);
  const run = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, bias?: tf.Tensor) => {
    const { config, tensors } = normalizeAttention(q, k, v, bias ? { ...t.options, bias } : t.options);
    return compositeAttention(config, tensors);
  };
  const [output, lse] = run(t.q, t.k, t.v);
  const result = { output: output.dataSync() as Float32Array, lse: lse.dataSync() as Float32Array, grads: [] as Float32Array[] };
  tf.dispose([output, lse]);
  if (c.grad) {
    const dOutput = toTensor(data.dOutput), dLse = toTensor(data.dLse);
    const xs = t.options.bias ? [t.q, t.k, t.v, t.options.bias] : [t.q, t.k, t.v];
    const grads = tf.grads((...x: tf.Tensor[]) => {
      const [o, l] = run(x[0], x[1], x[2], x[3]);
      return tf.add(tf.sum(tf.mul(o, dOutput)), tf.sum(tf.mul(l, dLse)));
    })(xs);
    result.grads = grads.map(g => g.dataSync() as Float32Array);
    tf.dispose([...grads, dOutput, dLse]);
  }
  tf.dispose(t.all);
  return result;
}

function checkAgainstReference(label: string, c: AttentionCase, data: CaseData,
  got: { output: Float32Array; lse: Float32Array; grads: Float32Array[] }): void {
  const ref = referenceForward(c, data);
  const outputShape = c.layout === 'BSHD' ? [c.b, c.nq, c.hq, c.dv] : [c.b, c.hq, c.nq, c.dv];
  assertComparison(compareForward(`${label} output`, got.output, ref.output, outputShape, maxAbs(data.v.values)));
  assertComparison(compareLse(`${label} lse`, got.lse, ref.lse, [c.b, c.hq, c.nq]));
  if (!c.grad) return;
  const refGrads = referenceGrads(c, data);
  const expected = [refGrads.dq, refGrads.dk, refGrads.dv, refGrads.dbias];
  const shapes = [data.q.shape, data.k.shape, data.v.shape, data.bias?.shape ?? []];
  got.grads.forEach((g, n) => {
    const e = expected[n];
    if (!e) throw new Error(`${label}: no reference gradient ${n}`);
    assertComparison(compareGrad(`${label} ${['dq', 'dk', 'dv', 'dbias'][n]}`, g, e, shapes[n]));
  });
}

describe('composite fallback', () => {
  test.each(CASES.map(c => [c.name, c] as const))('composite equals the float64 reference: %s', (_name, c) => {
    const data = caseData(c);
    const before = tf.memory().numTensors;
    const got = compositeResults(c, data);
    expect(tf.memory().numTensors).toBe(before);
    checkAgainstReference(`${c.name} (composite)`, c, data, got);
  });

  test('a backend without the kernel warns once and runs the composite', async () => {
    const name = 'nokernel';
    tf.registerBackend(name, () => new MathBackendCPU());
    // Every cpu kernel except ours, so that the composite's ops run there.
    for (const kernel of tf.getKernelsForBackend('cpu')) {
      if (kernel.kernelName !== FlashAttention && kernel.kernelName !== FlashAttentionGrad) {
        tf.registerKernel({ ...kernel, backendName: name });
      }
    }
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      await tf.setBackend(name);
      expect(tf.getKernel(FlashAttention, name)).toBeUndefined();
      const c = CASES.find(x => x.name === 'everything');
      if (!c) throw new Error('no case everything');
      const data = caseData(c);
      const before = tf.memory().numTensors;
      checkAgainstReference(`${c.name} (on '${name}')`, c, data, compositeOnBackend(c, data));
      compositeOnBackend(c, data);
      expect(tf.memory().numTensors).toBe(before);
      const ours = warn.mock.calls.filter(args => String(args[0]).startsWith('tfjs-flash-attention'));
      expect(ours).toHaveLength(1);
      expect(String(ours[0][0])).toMatch(/no FlashAttention kernel for the 'nokernel' backend.*composite.*O\(Nq·Nk\)/s);
    } finally {
      warn.mockRestore();
      await tf.setBackend('cpu');
      tf.removeBackend(name);
    }
  });
});

/** flashAttention itself (the op's dispatch, not compositeAttention) with its gradients. */
function compositeOnBackend(c: AttentionCase, data: CaseData): { output: Float32Array; lse: Float32Array; grads: Float32Array[] } {
  const t = caseTensors(c, data);
  const dOutput = toTensor(data.dOutput), dLse = toTensor(data.dLse);
  const { output, lse } = flashAttention(t.q, t.k, t.v, { ...t.options, returnLse: true });
  const xs = t.options.bias ? [t.q, t.k, t.v, t.options.bias] : [t.q, t.k, t.v];
  const grads = tf.grads((...x: tf.Tensor[]) => {
    const r = flashAttention(x[0], x[1], x[2], { ...t.options, bias: x[3] ?? t.options.bias, returnLse: true });
    return tf.add(tf.sum(tf.mul(r.output, dOutput)), tf.sum(tf.mul(r.lse, dLse)));
  })(xs);
  const result = {
    output: output.dataSync() as Float32Array, lse: lse.dataSync() as Float32Array,
    grads: grads.map(g => g.dataSync() as Float32Array),
  };
  tf.dispose([output, lse, ...grads, dOutput, dLse, ...t.all]);
  return result;
}
