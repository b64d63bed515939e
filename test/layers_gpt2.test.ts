// CausalSelfAttention and the GPT-2 builder on cpu: flash equals naive attention (outputs and
// gradients), training lowers the loss, nothing leaks across fit steps, save/load round-trips.
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D } from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { CausalSelfAttention, FlashAttention, gpt2, gpt2Config, LayerNorm } from '../src/index';
import type { Gpt2Options } from '../src/index';
import { maxAbsDiff } from './layers_reference';
import { addToEveryBatch, affine, columnSums, rowMeans } from '../src/layers/row_ops';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const VOCAB = 23;
const TINY: Gpt2Options = { preset: 'tiny', vocabSize: VOCAB, contextLength: 12, numLayers: 2, channels: 16, numHeads: 2, dropout: 0 };

function tokenBatch(batch: number, seq: number, seed: number): { ids: Tensor; targets: Tensor } {
  return tf.tidy(() => {
    const ids = tf.cast(tf.floor(tf.randomUniform([batch, seq + 1], 0, VOCAB, 'float32', seed)), 'int32');
    return {
      ids: tf.slice(ids, [0, 0], [batch, seq]),
      targets: tf.reshape(tf.oneHot(tf.reshape(tf.slice(ids, [0, 1], [batch, seq]), [batch * seq]), VOCAB), [batch, seq, VOCAB]),
    };
  });
}

function lossOf(model: tfl.LayersModel, ids: Tensor, targets: Tensor): tf.Scalar {
  const logits = model.apply(ids, { training: false }) as Tensor;
  return tf.losses.softmaxCrossEntropy(targets, logits) as tf.Scalar;
}

function relativeDiff(a: Tensor, b: Tensor): number {
  return tf.tidy(() => maxAbsDiff(a, b) / Math.max(1e-12, tf.max(tf.abs(b)).dataSync()[0]));
}

/** Both models with the flash model's weights. */
function flashAndNaive(options: Gpt2Options): [tfl.LayersModel, tfl.LayersModel] {
  const flash = gpt2({ ...options, attention: 'flash', name: 'flash' });
  const naive = gpt2({ ...options, attention: 'naive', name: 'naive' });
  naive.setWeights(flash.getWeights());
  return [flash, naive];
}

describe('CausalSelfAttention', () => {
  it('has GPT-2 weights and equals the naive attention path, also with Tq not a tile multiple', () => {
    const flash = new CausalSelfAttention({ numHeads: 3, name: 'attn' });
    const naive = new CausalSelfAttention({ numHeads: 3, attention: 'naive' });
    const x = tf.randomNormal([2, 11, 12], 0, 1, 'float32', 1) as Tensor3D;
    const a = flash.apply(x) as Tensor;
    tf.dispose(naive.apply(x) as Tensor);
    expect(flash.weights.map(w => [w.originalName, w.shape])).toEqual([
      ['attn/c_attn/kernel', [12, 36]], ['attn/c_attn/bias', [36]],
      ['attn/c_proj/kernel', [12, 12]], ['attn/c_proj/bias', [12]],
    ]);
    const values = flash.getWeights().map((w, i) => tf.randomNormal(w.shape, 0, 0.3, 'float32', 10 + i));
    flash.setWeights(values);
    naive.setWeights(values);
    const before = tf.memory().numTensors;
    const out = flash.apply(x) as Tensor;
    const expected = naive.apply(x) as Tensor;
    expect(maxAbsDiff(out, expected)).toBeLessThan(1e-5);
    tf.dispose([out, expected]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x, a, ...values]);
    flash.dispose();
    naive.dispose();
  });
});

describe('gpt2', () => {
  it('has presets from tiny to GPT-2 small, options override, bad options rejected', () => {
    // Building GPT-2 small's 124M weights takes minutes on cpu, so its preset is checked as config;
    // the builder itself is exercised on the tiny sizes below.
    expect(gpt2Config({ preset: 'small' })).toMatchObject(
      { numLayers: 12, channels: 768, numHeads: 12, contextLength: 1024, vocabSize: 50257, mlpHiddenSize: 3072, tiedEmbeddings: true });
    expect(gpt2Config({ preset: 'tiny' })).toMatchObject({ numLayers: 2, channels: 64, numHeads: 2, contextLength: 64 });
    expect(gpt2Config({ preset: 'small', numLayers: 3, attention: 'naive' })).toMatchObject({ numLayers: 3, channels: 768, attention: 'naive' });
    const model = gpt2({ ...TINY, numLayers: 3, numHeads: 4, name: 'm' });
    const shapes = Object.fromEntries(model.weights.map(w => [w.originalName, w.shape]));
    expect(shapes['m_wte/embeddings']).toEqual([VOCAB, 16]);
    expect(shapes['m_wpe/embeddings']).toEqual([12, 16]);
    expect(shapes['m_h2_attn/c_attn/kernel']).toEqual([16, 48]);
    expect(shapes['m_h2_mlp/c_fc/kernel']).toEqual([16, 64]);
    expect(shapes['m_lm_head/embeddings']).toBeUndefined();
    expect(model.layers.filter(l => l instanceof CausalSelfAttention).map(l => (l as CausalSelfAttention).numHeads)).toEqual([4, 4, 4]);
    model.dispose();
    expect(() => gpt2({ preset: 'huge' })).toThrow(/unknown preset 'huge'/);
    expect(() => gpt2({ ...TINY, numHeads: 3 })).toThrow(/multiple of numHeads/);
  });

  it('flash and naive models agree: logits to 1e-5, gradients of every weight to 1e-4', () => {
    // The comparison is with the fused cpu kernel, not the composite fallback.
    expect(tf.getKernel(FlashAttention, 'cpu')).toBeDefined();
    const [flash, naive] = flashAndNaive(TINY);
    const { ids, targets } = tokenBatch(3, 12, 5);
    const logitsFlash = flash.predict(ids) as Tensor;
    const logitsNaive = naive.predict(ids) as Tensor;
    expect(logitsFlash.shape).toEqual([3, 12, VOCAB]);
    expect(maxAbsDiff(logitsFlash, logitsNaive)).toBeLessThan(1e-5);

    const gradsOf = (model: tfl.LayersModel) => {
      const variables = model.trainableWeights.map(w => w.read() as tf.Variable);
      const { value, grads } = tf.variableGrads(() => lossOf(model, ids, targets), variables);
      value.dispose();
      return variables.map(v => grads[v.name]);
    };
    const flashList = gradsOf(flash);
    const naiveList = gradsOf(naive);
    expect(flashList).toHaveLength(flash.trainableWeights.length);
    flashList.forEach((g, i) => {
      expect(g.shape).toEqual(naiveList[i].shape);
      expect(relativeDiff(g, naiveList[i])).toBeLessThan(1e-4);
    });
    // The attention weights really receive gradient through the fused kernel.
    const attnIndex = flash.trainableWeights.findIndex(w => w.originalName.endsWith('h0_attn/c_attn/kernel'));
    expect(tf.max(tf.abs(flashList[attnIndex])).dataSync()[0]).toBeGreaterThan(0);
    tf.dispose([ids, targets, logitsFlash, logitsNaive, ...flashList, ...naiveList]);
    flash.dispose();
    naive.dispose();
  });

  it('trains with model.fit (dropout on) without leaking tensors across steps', async () => {
    const model = gpt2({ ...TINY, dropout: 0.1, seed: 7 });
    model.compile({ optimizer: tf.train.adam(0.01), loss: (yTrue: Tensor, yPred: Tensor) => tf.losses.softmaxCrossEntropy(yTrue, yPred) });
    const { ids, targets } = tokenBatch(4, 12, 9);
    const first = await model.fit(ids, targets, { epochs: 1, batchSize: 4, verbose: 0 });
    const counts: number[] = [];
    let last = first;
    for (let step = 0; step < 12; step++) {
      last = await model.fit(ids, targets, { epochs: 1, batchSize: 4, verbose: 0 });
      counts.push(tf.memory().numTensors);
    }
    expect(new Set(counts).size).toBe(1);
    expect((last.history.loss[0] as number)).toBeLessThan(first.history.loss[0] as number);
    tf.dispose([ids, targets]);
    model.dispose();
  });

  it('trains with optimizer.minimize, untied head', () => {
    const model = gpt2({ ...TINY, tiedEmbeddings: false });
    const { ids, targets } = tokenBatch(2, 10, 11);
    const optimizer = tf.train.adam(0.01);
    const losses: number[] = [];
    for (let step = 0; step < 10; step++) {
      const loss = optimizer.minimize(() => lossOf(model, ids, targets), true);
      losses.push(loss!.dataSync()[0]);
      loss!.dispose();
    }
    expect(losses[losses.length - 1]).toBeLessThan(losses[0] * 0.9);
    tf.dispose([ids, targets]);
    optimizer.dispose();
    model.dispose();
  });

  for (const tiedEmbeddings of [true, false]) {
    it(`round-trips model.save / tf.loadLayersModel (tiedEmbeddings: ${tiedEmbeddings})`, async () => {
      const model = gpt2({ ...TINY, tiedEmbeddings, attention: 'naive' });
      let saved: tf.io.ModelArtifacts | null = null;
      await model.save(tf.io.withSaveHandler(async artifacts => {
        saved = artifacts;
        return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
      }));
      expect(saved).not.toBeNull();
      const loaded = await tfl.loadLayersModel(tf.io.fromMemory(saved!));
      expect(loaded.weights.length).toBe(model.weights.length);
      const attn = loaded.layers.find(l => l instanceof CausalSelfAttention) as CausalSelfAttention;
      expect(attn.attention).toBe('naive');
      const { ids } = tokenBatch(2, 12, 13);
      const a = model.predict(ids) as Tensor;
      const b = loaded.predict(ids) as Tensor;
      expect(maxAbsDiff(a, b)).toBe(0);
      tf.dispose([ids, a, b]);
      model.dispose();
      loaded.dispose();
    });
  }
});

describe('LayerNorm', () => {
  it('equals tfjs-layers\' LayerNormalization (outputs and gradients) with the same weight names', () => {
    const ours = new LayerNorm({ epsilon: 1e-5, name: 'ln' });
    const theirs = tfl.layers.layerNormalization({ epsilon: 1e-5, name: 'ln_tfjs' });
    const x = tf.randomNormal([2, 5, 8], 1, 2, 'float32', 3) as Tensor3D;
    tf.dispose([ours.apply(x) as Tensor, theirs.apply(x) as Tensor]);
    expect(ours.weights.map(w => [w.originalName, w.shape])).toEqual([['ln/gamma', [8]], ['ln/beta', [8]]]);
    const values = [tf.randomNormal([8], 1, 0.5, 'float32', 4), tf.randomNormal([8], 0, 0.5, 'float32', 5)];
    ours.setWeights(values);
    theirs.setWeights(values);
    const dy = tf.randomNormal([2, 5, 8], 0, 1, 'float32', 6);
    const gradsOf = (layer: tfl.layers.Layer) => {
      const variables = layer.trainableWeights.map(w => w.read() as tf.Variable);
      const f = (input: Tensor) => tf.sum(tf.mul(layer.apply(input) as Tensor, dy)) as tf.Scalar;
      const { value, grads } = tf.variableGrads(() => f(x), variables);
      value.dispose();
      return [tf.grad(f)(x), ...variables.map(v => grads[v.name])];
    };
    const before = tf.memory().numTensors;
    const out = ours.apply(x) as Tensor;
    const expected = theirs.apply(x) as Tensor;
    expect(maxAbsDiff(out, expected)).toBeLessThan(1e-5);
    const oursGrads = gradsOf(ours);
    const theirGrads = gradsOf(theirs);
    oursGrads.forEach((g, i) => expect(relativeDiff(g, theirGrads[i])).toBeLessThan(1e-5));
    tf.dispose([out, expected, ...oursGrads, ...theirGrads]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x, dy, ...values]);
    ours.dispose();
    theirs.dispose();
  });

  it('keeps a GPT-2 training step free of Tile (whose tfjs gradient runs a Slice and an Add per row)', async () => {
    const model = gpt2(TINY);
    const { ids, targets } = tokenBatch(4, 12, 17);
    const variables = model.trainableWeights.map(w => w.read() as tf.Variable);
    const profile = await tf.profile(() => {
      const { value, grads } = tf.variableGrads(() => lossOf(model, ids, targets), variables);
      tf.dispose([value, ...Object.values(grads)]);
    });
    const names = profile.kernels.map(k => k.name);
    expect(names).not.toContain('Tile');
    // 48 rows per LayerNorm: the per-row Tile gradient alone would add over 1,000 kernels.
    expect(names.length).toBeLessThan(800);
    tf.dispose([ids, targets]);
    model.dispose();
  });
});

describe('row ops (own gradients, sums over rows as products)', () => {
  it('equal the plain tfjs ops, values and gradients of every input', () => {
    const x = tf.randomNormal([6, 5], 0, 1, 'float32', 11) as tf.Tensor2D;
    const w = tf.randomNormal([5, 7], 0, 1, 'float32', 12) as tf.Tensor2D;
    const b = tf.randomNormal([7], 0, 1, 'float32', 13);
    const x3 = tf.randomNormal([3, 4, 5], 0, 1, 'float32', 14);
    const table = tf.randomNormal([4, 5], 0, 1, 'float32', 15);
    const dy = tf.randomNormal([6, 7], 0, 1, 'float32', 16);
    const dy3 = tf.randomNormal([3, 4, 5], 0, 1, 'float32', 17);
    const dm = tf.randomNormal([3, 4, 1], 0, 1, 'float32', 18);
    const before = tf.memory().numTensors;
    const pairs: Array<[Tensor[], Tensor[]]> = [
      [tf.grads((p, q, r) => tf.sum(tf.mul(affine(p as tf.Tensor2D, q, r), dy)))([x, w, b]),
        tf.grads((p, q, r) => tf.sum(tf.mul(tf.add(tf.matMul(p as tf.Tensor2D, q as tf.Tensor2D), r), dy)))([x, w, b])],
      [tf.grads((p, q) => tf.sum(tf.mul(affine(p as tf.Tensor2D, q, null), dy)))([x, w]),
        tf.grads((p, q) => tf.sum(tf.mul(tf.matMul(p as tf.Tensor2D, q as tf.Tensor2D), dy)))([x, w])],
      [tf.grads((p, q) => tf.sum(tf.mul(addToEveryBatch(p, q), dy3)))([x3, table]),
        tf.grads((p, q) => tf.sum(tf.mul(tf.add(p, q), dy3)))([x3, table])],
      [tf.grads(p => tf.sum(tf.mul(rowMeans(p), dm)))([x3]), tf.grads(p => tf.sum(tf.mul(tf.mean(p, -1, true), dm)))([x3])],
      [tf.tidy(() => [affine(x, w, b), addToEveryBatch(x3, table), rowMeans(x3), columnSums(x)]),
        tf.tidy(() => [tf.add(tf.matMul(x, w), b), tf.add(x3, table), tf.mean(x3, -1, true), tf.sum(x, 0)])],
    ];
    for (const [ours, plain] of pairs) {
      ours.forEach((g, i) => {
        expect(g.shape).toEqual(plain[i].shape);
        expect(relativeDiff(g, plain[i])).toBeLessThan(1e-5);
      });
    }
    tf.dispose(pairs.flat(2));
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x, w, b, x3, table, dy, dy3, dm]);
  });
});
