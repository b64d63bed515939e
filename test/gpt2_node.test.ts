// The Node side of the GPT-2 example on tfjs' cpu backend: tokenizers, a short training run whose
// loss falls without leaking tensors, a checkpoint round trip, and the `npm start` CLI end to end
// (train, save, load, same sample).
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import * as tfl from '@tensorflow/tfjs-layers';
import { directoryHandler } from '../examples/gpt2/checkpoint';
import { readMobyDick } from '../examples/gpt2/corpus_node';
import { TokenDataset } from '../examples/gpt2/dataset';
import { buildModel } from '../examples/gpt2/model';
import { CharTokenizer, Gpt2Tokenizer, tokenizerFromSpec } from '../examples/gpt2/tokenizer';
import { languageModelLoss, ScheduledAdam, Trainer, validationLoss } from '../examples/gpt2/training';

const ROOT = path.join(__dirname, '..');

let text: string;
let tmp: string;

beforeAll(async () => {
  await tf.setBackend('cpu');
  text = readMobyDick();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gpt2-node-'));
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('the corpus is the whole book, paragraphs unwrapped', () => {
  expect(text.length).toBeGreaterThan(1_100_000);
  expect(text.startsWith('CHAPTER 1. Loomings.\nCall me Ishmael. Some years ago—never mind how long precisely—having little')).toBe(true);
});

test('the training loss equals tfjs\' softmaxCrossEntropy, value and gradients', () => {
  const model = buildModel({ preset: 'tiny', vocabSize: 11, context: 8, attention: 'flash', layers: 1, tiedEmbeddings: false });
  const ids = tf.tensor2d([[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 0, 1, 2, 3, 4, 5]], [2, 8], 'int32');
  const batch = { x: ids, y: tf.tensor2d([[2, 3, 4, 5, 6, 7, 8, 9], [10, 0, 1, 2, 3, 4, 5, 6]], [2, 8], 'int32') };
  const variables = model.trainableWeights.map(w => w.read() as tf.Variable);
  const plain = () => tf.tidy(() => {
    const logits = tf.reshape(model.apply(batch.x, { training: true }) as tf.Tensor, [16, 11]);
    return tf.losses.softmaxCrossEntropy(tf.oneHot(tf.reshape(batch.y, [16]), 11), logits) as tf.Scalar;
  });
  const before = tf.memory().numTensors;
  const ours = tf.variableGrads(() => languageModelLoss(model, batch, 11, true), variables);
  const theirs = tf.variableGrads(plain, variables);
  expect(Math.abs(ours.value.dataSync()[0] - theirs.value.dataSync()[0])).toBeLessThan(1e-5);
  for (const v of variables) {
    const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(ours.grads[v.name], theirs.grads[v.name]))).dataSync()[0] /
      Math.max(1e-12, tf.max(tf.abs(theirs.grads[v.name])).dataSync()[0]));
    expect(diff).toBeLessThan(1e-4);
  }
  tf.dispose([ours.value, theirs.value, ...Object.values(ours.grads), ...Object.values(theirs.grads)]);
  expect(tf.memory().numTensors).toBe(before);
  tf.dispose([batch.x, batch.y]);
  model.dispose();
});

test('ScheduledAdam makes the updates of tfjs\' AdamOptimizer, also when the learning rate changes', () => {
  const init = [tf.randomNormal([5, 3], 0, 1, 'float32', 21), tf.randomNormal([3], 0, 1, 'float32', 22)];
  const target = tf.randomNormal([4, 3], 0, 1, 'float32', 23);
  const input = tf.randomNormal([4, 5], 0, 1, 'float32', 24);
  const run = (optimizer: tf.Optimizer, setRate: (lr: number) => void) => {
    const [w, b] = init.map(t => tf.variable(t));
    for (const lr of [0.1, 0.05, 0.2]) {
      setRate(lr);
      optimizer.minimize(() => tf.mean(tf.square(tf.sub(tf.add(tf.matMul(input, w), b), target))) as tf.Scalar, false, [w, b]);
    }
    return [w, b];
  };
  const before = tf.memory().numTensors;
  const ours = new ScheduledAdam(0.1, 0.9, 0.95);
  const theirs = new (class extends tf.AdamOptimizer { set(lr: number) { this.learningRate = lr; } })(0.1, 0.9, 0.95);
  const a = run(ours, lr => ours.setLearningRate(lr));
  const b = run(theirs, lr => theirs.set(lr));
  a.forEach((v, i) => {
    const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(v, b[i]))).dataSync()[0]);
    expect(diff).toBeLessThan(1e-5);
    expect(tf.tidy(() => tf.max(tf.abs(tf.sub(v, init[i]))).dataSync()[0])).toBeGreaterThan(0.1);
  });
  ours.dispose();
  theirs.dispose();
  tf.dispose([...a, ...b]);
  expect(tf.memory().numTensors).toBe(before);
  tf.dispose([...init, target, input]);
});

test('tokenizers round-trip the text; compact GPT-2 BPE keeps GPT-2 tokenization', () => {
  const paragraph = text.slice(0, 2000);
  const chars = CharTokenizer.fromCorpus(text);
  expect(chars.vocabSize).toBeLessThan(100);
  expect(chars.decode(chars.encode(paragraph))).toBe(paragraph);
  expect(tokenizerFromSpec(chars.spec()).encode(paragraph)).toEqual(chars.encode(paragraph));

  const full = Gpt2Tokenizer.full();
  const compact = Gpt2Tokenizer.compactFor(text);
  expect(full.vocabSize).toBe(50257);
  expect(compact.vocabSize).toBeGreaterThan(10_000);
  expect(compact.vocabSize).toBeLessThan(20_000);
  const ids = compact.encode(paragraph);
  expect(ids.length).toBe(full.encode(paragraph).length);
  expect(Math.max(...ids)).toBeLessThan(compact.vocabSize);
  expect(compact.decode(ids)).toBe(paragraph);
  expect(tokenizerFromSpec(compact.spec()).encode(paragraph)).toEqual(ids);
});

test('a tiny GPT-2 learns characters on cpu, without leaking tensors, and survives a checkpoint', async () => {
  const tokenizer = CharTokenizer.fromCorpus(text);
  const dataset = new TokenDataset(tokenizer.encode(text.slice(0, 200_000)), 0.05, 7);
  const model = buildModel({ preset: 'tiny', vocabSize: tokenizer.vocabSize, context: 32, attention: 'flash' });
  const trainer = new Trainer(model, tokenizer.vocabSize, 1e-2);
  const lossBefore = await validationLoss(model, dataset, tokenizer.vocabSize, 8, 32, 2);
  const losses: number[] = [];
  const tensorsAfterStep: number[] = [];
  for (let step = 0; step < 15; step++) {
    const batch = dataset.batch(8, 32);
    losses.push((await trainer.step(batch)).loss);
    tf.dispose([batch.x, batch.y]);
    tensorsAfterStep.push(tf.memory().numTensors);
  }
  expect(losses.every(Number.isFinite)).toBe(true);
  // From a uniform guess (ln 83 ≈ 4.4 nats) to about the characters' unigram entropy (≈ 3.1)
  // within 15 steps; the same validation batches before and after.
  expect(lossBefore).toBeGreaterThan(4.2);
  const lossAfter = await validationLoss(model, dataset, tokenizer.vocabSize, 8, 32, 2);
  expect(lossAfter).toBeLessThan(lossBefore - 0.9);
  // The first step creates Adam's moment variables; after it, every step frees what it makes.
  expect(new Set(tensorsAfterStep.slice(1)).size).toBe(1);

  const dir = path.join(tmp, 'checkpoint');
  model.setUserDefinedMetadata({ tokenizer: tokenizer.spec() });
  await model.save(directoryHandler(dir));
  expect(fs.readdirSync(dir).sort()).toEqual(['model.json', 'weights.bin']);
  const loaded = await tfl.loadLayersModel(directoryHandler(dir));
  expect(loaded.getUserDefinedMetadata()).toEqual({ tokenizer: tokenizer.spec() });
  const x = dataset.validationBatch(0, 1, 2, 32).x;
  const before = model.predict(x) as tf.Tensor;
  const after = loaded.predict(x) as tf.Tensor;
  expect(after.shape).toEqual([2, 32, tokenizer.vocabSize]);
  expect(tf.max(tf.abs(tf.sub(before, after))).dataSync()[0]).toBe(0);
  tf.dispose([x, before, after]);
  trainer.dispose();
  model.dispose();
  loaded.dispose();
}, 120_000);

test('npm start trains, compares naive attention, saves, and --load reproduces the sample', () => {
  const dir = path.join(tmp, 'cli');
  const run = (...args: string[]) => execFileSync(process.execPath,
    ['scripts/run-ts.mjs', 'examples/gpt2/main.ts', '--backend', 'cpu', '--sample', '40', ...args],
    { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 100_000 });
  const trained = run('--steps', '3', '--context', '32', '--compare-steps', '1', '--save', dir);
  expect(trained).toMatch(/^backend: cpu \(requested\)$/m);
  expect(trained).toMatch(/^loss \d+\.\d+ → \d+\.\d+ in 3 steps/m);
  expect(trained).toMatch(/^ {2}naive attention: \d+ tokens\/s/m);
  expect(trained).toMatch(/^ {2}speed-up: \d+\.\d+×$/m);
  const sample = /\nsample:\n(.*)\n/.exec(trained)?.[1];
  expect(sample?.startsWith('Call me Ishmael.')).toBe(true);
  const loaded = run('--steps', '0', '--load', dir);
  expect(loaded).toContain(`model: gpt2 preset 'tiny' loaded from ${dir}`);
  expect(/\nsample:\n(.*)\n/.exec(loaded)?.[1]).toBe(sample);
}, 150_000);
