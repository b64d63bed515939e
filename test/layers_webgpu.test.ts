// The layers on the webgpu backend in Node (Dawn: a real GPU, else SwiftShader): a tiny GPT-2
// trains with model.fit, its gradients equal the naive-attention model's, nothing leaks across
// steps, and MultiHeadAttention equals Keras' formula. Tiny shapes: SwiftShader is slow.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D } from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import * as tfl from '@tensorflow/tfjs-layers';
import { FlashAttention, MultiHeadAttention, gpt2 } from '../src/index';
import type { Gpt2Options } from '../src/index';
import { initDawnWebGPU } from './setup/webgpu_node';
import { kerasMultiHeadAttention, maxAbsDiffAsync } from './layers_reference';
import { addToEveryBatch } from '../src/layers/row_ops';

const VOCAB = 17;
const TINY: Gpt2Options = { vocabSize: VOCAB, contextLength: 8, numLayers: 1, channels: 16, numHeads: 2, dropout: 0 };

beforeAll(async () => {
  const gpu = await initDawnWebGPU();
  const kernel = tf.getKernel(FlashAttention, 'webgpu') ? 'fused kernel' : 'composite fallback';
  console.log(`layers on webgpu: ${gpu.description}${gpu.software ? ' (software)' : ''}, FlashAttention: ${kernel}`);
}, 120000);

function tokenBatch(batch: number, seq: number, seed: number): { ids: Tensor; targets: Tensor } {
  return tf.tidy(() => {
    const ids = tf.cast(tf.floor(tf.randomUniform([batch, seq + 1], 0, VOCAB, 'float32', seed)), 'int32');
    const next = tf.reshape(tf.slice(ids, [0, 1], [batch, seq]), [batch * seq]);
    return { ids: tf.slice(ids, [0, 0], [batch, seq]), targets: tf.reshape(tf.oneHot(next, VOCAB), [batch, seq, VOCAB]) };
  });
}

const crossEntropy = (yTrue: Tensor, yPred: Tensor) => tf.losses.softmaxCrossEntropy(yTrue, yPred);

test('a tiny GPT-2 trains on webgpu; gradients equal the naive model\'s', async () => {
  expect(tf.getBackend()).toBe('webgpu');
  const flash = gpt2({ ...TINY, attention: 'flash', name: 'flash' });
  const naive = gpt2({ ...TINY, attention: 'naive', name: 'naive' });
  naive.setWeights(flash.getWeights());
  const { ids, targets } = tokenBatch(2, 8, 3);

  const gradsOf = (model: tfl.LayersModel) => {
    const variables = model.trainableWeights.map(w => w.read() as tf.Variable);
    const { value, grads } = tf.variableGrads(
      () => crossEntropy(targets, model.apply(ids, { training: false }) as Tensor) as tf.Scalar, variables);
    value.dispose();
    return variables.map(v => grads[v.name]);
  };
  const flashGrads = gradsOf(flash);
  const naiveGrads = gradsOf(naive);
  for (let i = 0; i < flashGrads.length; i++) {
    const zeros = tf.zerosLike(naiveGrads[i]);
    const scale = Math.max(1e-12, await maxAbsDiffAsync(naiveGrads[i], zeros));
    zeros.dispose();
    expect(await maxAbsDiffAsync(flashGrads[i], naiveGrads[i]) / scale).toBeLessThan(1e-4);
  }
  tf.dispose([...flashGrads, ...naiveGrads]);

  flash.compile({ optimizer: tf.train.adam(0.02), loss: crossEntropy });
  const first = await flash.fit(ids, targets, { epochs: 1, batchSize: 2, verbose: 0 });
  const counts: number[] = [];
  let last = first;
  for (let step = 0; step < 6; step++) {
    last = await flash.fit(ids, targets, { epochs: 1, batchSize: 2, verbose: 0 });
    counts.push(tf.memory().numTensors);
  }
  expect(new Set(counts).size).toBe(1);
  expect(last.history.loss[0] as number).toBeLessThan(first.history.loss[0] as number);
  tf.dispose([ids, targets]);
  flash.dispose();
  naive.dispose();
}, 300000);

test('MultiHeadAttention equals Keras\' formula on webgpu (mask, causal, Tq ≠ Tk)', async () => {
  const layer = new MultiHeadAttention({ numHeads: 2, keyDim: 4 });
  const query = tf.randomNormal([2, 5, 8], 0, 1, 'float32', 1) as Tensor3D;
  const value = tf.randomNormal([2, 7, 6], 0, 1, 'float32', 2) as Tensor3D;
  const mask = tf.tidy(() => tf.logicalOr(tf.greater(tf.randomUniform([2, 5, 7], 0, 1, 'float32', 3), 0.5),
    tf.concat([tf.ones([2, 5, 1], 'bool'), tf.zeros([2, 5, 6], 'bool')], 2)));
  const out = layer.apply([query, value], { attentionMask: mask, useCausalMask: true }) as Tensor;
  const byName = Object.fromEntries(layer.weights.map(w => [w.originalName.split('/').slice(1).join('/'), w.read()]));
  const expected = kerasMultiHeadAttention(query, value, value, {
    queryKernel: byName['query/kernel'], queryBias: byName['query/bias'], keyKernel: byName['key/kernel'],
    keyBias: byName['key/bias'], valueKernel: byName['value/kernel'], valueBias: byName['value/bias'],
    outputKernel: byName['attention_output/kernel'], outputBias: byName['attention_output/bias'],
  }, { attentionMask: mask, useCausalMask: true });
  expect(await maxAbsDiffAsync(out, expected)).toBeLessThan(1e-5);
  tf.dispose([query, value, mask, out, expected]);
  layer.dispose();
}, 300000);

test('row ops run where one row of the summed tensor holds more than 65535 workgroups of columns', async () => {
  // At GPT-2 small's 4096-token context the position table's gradient sums [batch, 4096·768]
  // over the batch: a single product of that width exceeded the dispatch limit on the H100.
  // [2, 1, 2.2 M] has as many columns (T·C) past the limit, with fewer elements for SwiftShader.
  const [batch, seq, channels] = [2, 1, 2_200_000];
  const before = tf.memory().numTensors;
  const values = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed));
  const x = tf.tensor3d(values(batch * seq * channels, 1), [batch, seq, channels]);
  const table = tf.tensor2d(values(seq * channels, 2), [seq, channels]);
  const dyValues = values(batch * seq * channels, 3);
  const dy = tf.tensor3d(dyValues, [batch, seq, channels]);
  const [, dTable] = tf.grads((a: Tensor, b: Tensor) => addToEveryBatch(a as Tensor3D, b as tf.Tensor2D))([x, table], dy);
  const got = await dTable.data();
  let worst = 0;
  for (let j = 0; j < seq * channels; j++) worst = Math.max(worst, Math.abs(got[j] - (dyValues[j] + dyValues[seq * channels + j])));
  expect(worst).toBeLessThan(1e-6);
  tf.dispose([x, table, dy, dTable]);
  expect(tf.memory().numTensors).toBe(before);
});
