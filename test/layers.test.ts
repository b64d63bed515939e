// MultiHeadAttention against Keras' formula written with plain tfjs ops (test/layers_reference.ts).
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D } from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { MultiHeadAttention, dropoutKeep, dropoutThreshold } from '../src/index';
import { MhaWeights, kerasMultiHeadAttention, maxAbsDiff } from './layers_reference';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function randomInputs(seed: number, shapes: number[][]): Tensor3D[] {
  return shapes.map((shape: number[], i) => tf.randomNormal(shape as [number, number, number], 0, 1, 'float32', seed + i) as Tensor3D);
}

function layerWeights(layer: MultiHeadAttention): MhaWeights {
  const byName = Object.fromEntries(layer.weights.map(w => [w.originalName.split('/').slice(1).join('/'), w.read()]));
  return {
    queryKernel: byName['query/kernel'], queryBias: byName['query/bias'],
    keyKernel: byName['key/kernel'], keyBias: byName['key/bias'],
    valueKernel: byName['value/kernel'], valueBias: byName['value/bias'],
    outputKernel: byName['attention_output/kernel'], outputBias: byName['attention_output/bias'],
  };
}

/** Random biases too (Keras initializes them to zero, which would hide bias bugs). */
function randomizeWeights(layer: MultiHeadAttention, seed: number): void {
  const values = layer.getWeights().map((w, i) => tf.randomNormal(w.shape, 0, 0.5, 'float32', seed + i));
  layer.setWeights(values);
  tf.dispose(values);
}

function randomMask(b: number, tq: number, tk: number, seed: number): Tensor {
  // Key 0 stays visible so that no row is fully masked (where Keras' −1e9 softmax differs by design).
  return tf.tidy(() => {
    const m = tf.greater(tf.randomUniform([b, tq, tk], 0, 1, 'float32', seed), 0.4);
    const first = tf.concat([tf.ones([b, tq, 1], 'bool'), tf.zeros([b, tq, tk - 1], 'bool')], 2);
    return tf.logicalOr(m, first);
  });
}

describe('MultiHeadAttention', () => {
  it('creates Keras weights: names, order and shapes', () => {
    const layer = new MultiHeadAttention({ numHeads: 3, keyDim: 4, valueDim: 5, outputShape: 7, name: 'mha' });
    const [q, v, k] = randomInputs(1, [[2, 6, 8], [2, 9, 10], [2, 9, 11]]);
    const out = layer.apply([q, v, k]) as Tensor;
    expect(out.shape).toEqual([2, 6, 7]);
    expect(layer.weights.map(w => [w.originalName, w.shape])).toEqual([
      ['mha/query/kernel', [8, 3, 4]], ['mha/query/bias', [3, 4]],
      ['mha/key/kernel', [11, 3, 4]], ['mha/key/bias', [3, 4]],
      ['mha/value/kernel', [10, 3, 5]], ['mha/value/bias', [3, 5]],
      ['mha/attention_output/kernel', [3, 5, 7]], ['mha/attention_output/bias', [7]],
    ]);
    tf.dispose([q, v, k, out]);
    layer.dispose();
  });

  const cases: { name: string; shapes: number[][]; args: Partial<ConstructorParameters<typeof MultiHeadAttention>[0]>;
    mask?: boolean; causal?: boolean }[] = [
    { name: 'self-attention', shapes: [[2, 7, 8], [2, 7, 8]], args: {} },
    { name: 'with a mask', shapes: [[2, 7, 8], [2, 7, 8]], args: {}, mask: true },
    { name: 'causal', shapes: [[2, 7, 8], [2, 7, 8]], args: {}, causal: true },
    { name: 'causal with a mask', shapes: [[2, 7, 8], [2, 7, 8]], args: {}, mask: true, causal: true },
    { name: 'cross-attention Tq < Tk, key ≠ value', shapes: [[2, 5, 8], [2, 9, 6], [2, 9, 10]], args: { valueDim: 3 } },
    { name: 'cross-attention Tq < Tk, causal (top-left) + mask', shapes: [[2, 5, 8], [2, 9, 6], [2, 9, 10]], args: {}, mask: true, causal: true },
    { name: 'cross-attention Tq > Tk, causal (top-left)', shapes: [[1, 9, 8], [1, 4, 6]], args: {}, causal: true },
    { name: 'useBias false, outputShape [2, 3]', shapes: [[2, 6, 8], [2, 6, 8]], args: { useBias: false, outputShape: [2, 3] }, mask: true },
  ];

  for (const c of cases) {
    it(`equals Keras' formula: ${c.name}`, () => {
      const before = tf.memory().numTensors;
      const layer = new MultiHeadAttention({ numHeads: 2, keyDim: 4, ...c.args });
      const inputs = randomInputs(10, c.shapes);
      const [query, value] = inputs;
      const key = inputs[2] ?? value;
      const mask = c.mask ? randomMask(query.shape[0], query.shape[1], value.shape[1], 3) : undefined;
      const kwargs = { attentionMask: mask, useCausalMask: c.causal };
      tf.dispose(layer.apply(inputs, kwargs) as Tensor);
      randomizeWeights(layer, 20);
      const out = layer.apply(inputs, kwargs) as Tensor;
      const expected = kerasMultiHeadAttention(query, value, key, layerWeights(layer), kwargs);
      expect(out.shape).toEqual(expected.shape);
      expect(maxAbsDiff(out, expected)).toBeLessThan(1e-5);
      tf.dispose([...inputs, out, expected]);
      if (mask) mask.dispose();
      layer.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  it('applies dropout only when training, with the documented keep function and seed', () => {
    const layer = new MultiHeadAttention({ numHeads: 2, keyDim: 4, dropout: 0.3, seed: 1234 });
    const [q, v] = randomInputs(30, [[1, 6, 8], [1, 6, 8]]);
    tf.dispose(layer.apply([q, v]) as Tensor);
    randomizeWeights(layer, 40);
    const weights = layerWeights(layer);
    const inference = layer.apply([q, v]) as Tensor;
    const plain = kerasMultiHeadAttention(q, v, v, weights);
    expect(maxAbsDiff(inference, plain)).toBeLessThan(1e-5);

    const trained = layer.apply([q, v], { training: true }) as Tensor;
    const threshold = dropoutThreshold(0.3);
    const scale = new Float32Array(2 * 6 * 6);
    let n = 0;
    for (let h = 0; h < 2; h++) {
      for (let i = 0; i < 6; i++) {
        for (let j = 0; j < 6; j++) scale[n++] = dropoutKeep(threshold, 1234, 0, h, i, j) ? 1 / 0.7 : 0;
      }
    }
    const dropoutScale = tf.tensor4d(scale, [1, 2, 6, 6]);
    const expected = kerasMultiHeadAttention(q, v, v, weights, { dropoutScale });
    expect(maxAbsDiff(trained, expected)).toBeLessThan(1e-5);
    expect(maxAbsDiff(trained, plain)).toBeGreaterThan(1e-3);
    // The next training call draws a different mask.
    const again = layer.apply([q, v], { training: true }) as Tensor;
    expect(maxAbsDiff(again, trained)).toBeGreaterThan(1e-4);
    tf.dispose([q, v, inference, plain, trained, dropoutScale, expected, again]);
    layer.dispose();
  });

  it('gives output 0 + bias for a fully masked row (Keras would average all values there)', () => {
    const layer = new MultiHeadAttention({ numHeads: 2, keyDim: 4 });
    const [q, v] = randomInputs(50, [[1, 3, 8], [1, 4, 8]]);
    tf.dispose(layer.apply([q, v]) as Tensor);
    randomizeWeights(layer, 60);
    const mask = tf.tensor3d([[[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]]], [1, 3, 4], 'bool');
    const out = layer.apply([q, v], { attentionMask: mask }) as Tensor;
    const row = tf.slice(out, [0, 1, 0], [1, 1, 8]);
    const bias = layerWeights(layer).outputBias as Tensor;
    expect(maxAbsDiff(tf.reshape(row, [8]), bias)).toBeLessThan(1e-6);
    expect(Array.from(out.dataSync()).every(Number.isFinite)).toBe(true);
    tf.dispose([q, v, mask, out, row]);
    layer.dispose();
  });

  it('rejects what flash attention cannot do, clearly', () => {
    expect(() => new MultiHeadAttention({ numHeads: 2, keyDim: 4, attentionAxes: [1, 2] }))
      .toThrow(/attentionAxes \[1,2\] is not supported/);
    expect(() => new MultiHeadAttention({ numHeads: 2, keyDim: 4, attentionAxes: 1 })).not.toThrow();
    const layer = new MultiHeadAttention({ numHeads: 2, keyDim: 4 });
    const [q, v] = randomInputs(70, [[1, 3, 8], [1, 4, 8]]);
    expect(() => layer.apply([q, v], { returnAttentionScores: true })).toThrow(/returnAttentionScores .*flash attention/);
    const q4 = tf.zeros([1, 2, 3, 8]);
    expect(() => new MultiHeadAttention({ numHeads: 2, keyDim: 4 }).apply([q4, q4])).toThrow(/rank 3/);
    tf.dispose([q, v, q4]);
  });

  it('runs in a functional model with a mask input and useCausalMask, and trains without leaks', async () => {
    const query = tfl.input({ shape: [6, 8] });
    const value = tfl.input({ shape: [6, 8] });
    const mask = tfl.input({ shape: [6, 6], dtype: 'bool' });
    const layer = new MultiHeadAttention({ numHeads: 2, keyDim: 4, name: 'mha' });
    const out = layer.apply([query, value], { attentionMask: mask, useCausalMask: true }) as tfl.SymbolicTensor;
    const model = tfl.model({ inputs: [query, value, mask], outputs: out });
    const [q, v] = randomInputs(80, [[3, 6, 8], [3, 6, 8]]);
    const m = randomMask(3, 6, 6, 81);
    const predicted = model.predict([q, v, m]) as Tensor;
    const expected = kerasMultiHeadAttention(q, v, v, layerWeights(layer), { attentionMask: m, useCausalMask: true });
    expect(maxAbsDiff(predicted, expected)).toBeLessThan(1e-5);

    model.compile({ optimizer: tf.train.adam(0.01), loss: 'meanSquaredError' });
    const target = tf.randomNormal([3, 6, 8], 0, 1, 'float32', 82);
    const losses: number[] = [];
    const counts: number[] = [];
    for (let step = 0; step < 8; step++) {
      const history = await model.fit([q, v, m], target, { epochs: 1, batchSize: 3, verbose: 0 });
      losses.push(history.history.loss[0] as number);
      counts.push(tf.memory().numTensors);
    }
    expect(losses[losses.length - 1]).toBeLessThan(losses[0]);
    // The first step creates the optimizer's slots; after it, no step leaves a tensor behind.
    expect(new Set(counts.slice(1)).size).toBe(1);
    tf.dispose([q, v, m, predicted, expected, target]);
    model.dispose();
  });
});
