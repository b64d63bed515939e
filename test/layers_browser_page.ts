// Page entry for test/layers_webgl.test.ts: the bench harness (faSetup picks the backend) plus a
// check that trains a tiny GPT-2 through the layers on whatever backend the page runs.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor } from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { expose } from './browser/harness';
import { FlashAttention, gpt2 } from '../src/index';
import type { Gpt2Options } from '../src/index';

const VOCAB = 17;
const TINY: Gpt2Options = { vocabSize: VOCAB, contextLength: 8, numLayers: 1, channels: 16, numHeads: 2, dropout: 0 };

export interface Gpt2Check {
  backend: string;
  fusedKernel: boolean;
  /** Per trainable weight: max |flash − naive| / max |naive| of the loss gradient. */
  gradientDiffs: number[];
  logitsDiff: number;
  losses: number[];
  tensorCounts: number[];
}

const crossEntropy = (yTrue: Tensor, yPred: Tensor) => tf.losses.softmaxCrossEntropy(yTrue, yPred);

async function maxAbs(t: Tensor): Promise<number> {
  const m = tf.max(tf.abs(t));
  const [value] = await m.data();
  m.dispose();
  return value;
}

async function gpt2Check(): Promise<Gpt2Check> {
  const flash = gpt2({ ...TINY, attention: 'flash', name: 'flash' });
  const naive = gpt2({ ...TINY, attention: 'naive', name: 'naive' });
  naive.setWeights(flash.getWeights());
  const { ids, targets } = tf.tidy(() => {
    const all = tf.cast(tf.floor(tf.randomUniform([2, 9], 0, VOCAB, 'float32', 3)), 'int32');
    const next = tf.reshape(tf.slice(all, [0, 1], [2, 8]), [16]);
    return { ids: tf.slice(all, [0, 0], [2, 8]), targets: tf.reshape(tf.oneHot(next, VOCAB), [2, 8, VOCAB]) };
  });
  const logitsDiffTensor = tf.tidy(() => tf.sub(flash.predict(ids) as Tensor, naive.predict(ids) as Tensor));
  const logitsDiff = await maxAbs(logitsDiffTensor);
  logitsDiffTensor.dispose();

  const gradsOf = (model: tfl.LayersModel) => {
    const variables = model.trainableWeights.map(w => w.read() as tf.Variable);
    const { value, grads } = tf.variableGrads(
      () => crossEntropy(targets, model.apply(ids, { training: false }) as Tensor) as tf.Scalar, variables);
    value.dispose();
    return variables.map(v => grads[v.name]);
  };
  const flashGrads = gradsOf(flash);
  const naiveGrads = gradsOf(naive);
  const gradientDiffs: number[] = [];
  for (let i = 0; i < flashGrads.length; i++) {
    const diff = tf.sub(flashGrads[i], naiveGrads[i]);
    gradientDiffs.push(await maxAbs(diff) / Math.max(1e-12, await maxAbs(naiveGrads[i])));
    diff.dispose();
  }
  tf.dispose([...flashGrads, ...naiveGrads]);

  flash.compile({ optimizer: tf.train.adam(0.02), loss: crossEntropy });
  const losses: number[] = [];
  const tensorCounts: number[] = [];
  for (let step = 0; step < 7; step++) {
    const history = await flash.fit(ids, targets, { epochs: 1, batchSize: 2, verbose: 0 });
    losses.push(history.history.loss[0] as number);
    tensorCounts.push(tf.memory().numTensors);
  }
  tf.dispose([ids, targets]);
  flash.dispose();
  naive.dispose();
  return {
    backend: tf.getBackend(), fusedKernel: tf.getKernel(FlashAttention, tf.getBackend()) !== undefined,
    gradientDiffs, logitsDiff, losses, tensorCounts,
  };
}

expose('layersGpt2Check', gpt2Check);
