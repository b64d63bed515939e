// The training loop shared by the Node CLI and the browser page: next-token cross-entropy, Adam,
// per-step timing (a step ends when its loss is read back, so GPU work is included), sampling.
import * as tf from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { Gpt2Decoder } from '../../src/models/generate';
import type { Batch, TokenDataset } from './dataset';
import type { Tokenizer } from './tokenizer';

/**
 * Mean cross-entropy of logits [N, V] against one-hot targets [N, V], with its gradient
 * (softmax − target) / N written out. The sums over the vocabulary are products with a ones
 * column: tfjs-webgpu's Sum over the last axis runs one workgroup per row with a barrier tree,
 * which SwiftShader runs slower than the product (tf.losses.softmaxCrossEntropy needs two such sums).
 */
const meanCrossEntropy = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
  const [logits, targets, save] = args as [tf.Tensor2D, tf.Tensor2D, tf.GradSaveFunc];
  const [rows, vocab] = logits.shape;
  const ones = tf.ones([vocab, 1]);
  const max = tf.max(logits, -1, true);
  const exp = tf.exp(tf.sub(logits, max));
  const total = tf.matMul(exp, ones);
  const picked = tf.matMul(tf.mul(logits, targets), ones);
  save([exp, total, targets]);
  return {
    value: tf.mean(tf.sub(tf.add(tf.log(total), max), picked)),
    gradFunc: (dy: tf.Tensor, [e, t, y]: tf.Tensor[]) =>
      [tf.mul(tf.sub(tf.div(e, t), y), tf.div(dy, rows)), tf.zerosLike(y)],
  };
});

/** Mean next-token cross-entropy (nats) of the model's logits [B, T, V] against targets [B, T]. */
export function languageModelLoss(model: LayersModel, batch: Batch, vocabSize: number, training: boolean): tf.Scalar {
  return tf.tidy(() => {
    const logits = model.apply(batch.x, { training }) as tf.Tensor;
    const rows = batch.x.size;
    const targets = tf.oneHot(tf.reshape(batch.y, [rows]), vocabSize, 1, 0, 'float32');
    return meanCrossEntropy(tf.reshape(logits, [rows, vocabSize]), targets) as tf.Scalar;
  });
}

export interface StepResult {
  loss: number;
  milliseconds: number;
  tokens: number;
}

/** Adam whose learning rate can change between steps (tfjs keeps it in a protected field). */
class ScheduledAdam extends tf.AdamOptimizer {
  setLearningRate(learningRate: number): void {
    this.learningRate = learningRate;
  }
}

/**
 * Linear warm-up over `warmupSteps`, then cosine decay to a tenth of the peak as `progress` goes
 * from 0 to 1 (the share of the step or time budget spent).
 */
export function scheduledLearningRate(peak: number, step: number, warmupSteps: number, progress: number): number {
  const warmup = Math.min(1, (step + 1) / Math.max(1, warmupSteps));
  const decay = 0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, Math.max(0, progress))));
  return peak * warmup * decay;
}

export class Trainer {
  readonly optimizer: ScheduledAdam;
  private readonly variables: tf.Variable[];

  constructor(readonly model: LayersModel, readonly vocabSize: number, learningRate: number) {
    this.optimizer = new ScheduledAdam(learningRate, 0.9, 0.95);
    this.variables = model.trainableWeights.map(w => w.read() as tf.Variable);
  }

  setLearningRate(learningRate: number): void {
    this.optimizer.setLearningRate(learningRate);
  }

  async step(batch: Batch): Promise<StepResult> {
    const start = performance.now();
    const loss = this.optimizer.minimize(
      () => languageModelLoss(this.model, batch, this.vocabSize, true), true, this.variables);
    if (!loss) throw new Error('optimizer.minimize returned no loss');
    const [value] = await loss.data();
    loss.dispose();
    return { loss: value, milliseconds: performance.now() - start, tokens: batch.x.size };
  }

  dispose(): void {
    this.optimizer.dispose();
  }
}

/** Steps `count` times on fresh batches and returns tokens/s over the steps after `warmup`. */
export async function measureTokensPerSecond(trainer: Trainer, dataset: TokenDataset, batchSize: number,
  context: number, warmup: number, count: number): Promise<number> {
  let tokens = 0;
  let milliseconds = 0;
  for (let i = 0; i < warmup + count; i++) {
    const batch = dataset.batch(batchSize, context);
    try {
      const result = await trainer.step(batch);
      if (i >= warmup) {
        tokens += result.tokens;
        milliseconds += result.milliseconds;
      }
    } finally {
      tf.dispose([batch.x, batch.y]);
    }
  }
  return tokens / (milliseconds / 1000);
}

/** Mean loss over `batches` fixed batches of the validation split. */
export async function validationLoss(model: LayersModel, dataset: TokenDataset, vocabSize: number,
  batchSize: number, context: number, batches: number): Promise<number> {
  let total = 0;
  for (let i = 0; i < batches; i++) {
    const batch = dataset.validationBatch(i, batches, batchSize, context);
    const loss = languageModelLoss(model, batch, vocabSize, false);
    total += (await loss.data())[0];
    tf.dispose([batch.x, batch.y, loss]);
  }
  return total / batches;
}

export interface SampleOptions {
  context: number;
  temperature: number;
  /** Sample among the k most likely tokens only. */
  topK: number;
  random: () => number;
}

/**
 * Continues `prompt` by `count` tokens with the library's KV cache (src/models/generate.ts): one
 * pass over the prompt, then one position per new token, attending over the cached keys and
 * values. When the cache holds a full context, it starts over from the last half context.
 */
export async function generate(model: LayersModel, tokenizer: Tokenizer, prompt: string, count: number,
  options: SampleOptions): Promise<string> {
  const ids = tokenizer.encode(prompt);
  const decoder = new Gpt2Decoder(model);
  let cache = decoder.newCache(1, options.context);
  let input = ids.slice(-options.context);
  try {
    for (let n = 0; n < count; n++) {
      if (cache.lengths[0] + input.length > options.context) {
        cache.dispose();
        cache = decoder.newCache(1, options.context);
        input = ids.slice(-Math.ceil(options.context / 2));
      }
      const step = tf.tensor2d([input], [1, input.length], 'int32');
      const logits = decoder.forward(cache, step, [input.length]);
      const last = tf.tidy(() => {
        const v = logits.shape[2];
        return tf.reshape(tf.slice(logits, [0, input.length - 1, 0], [1, 1, v]), [v]);
      });
      tf.dispose([step, logits]);
      const values = await last.data();
      last.dispose();
      const next = sampleTopK(values, options);
      ids.push(next);
      input = [next];
    }
  } finally {
    cache.dispose();
  }
  return tokenizer.decode(ids);
}

function sampleTopK(logits: ArrayLike<number>, options: SampleOptions): number {
  const order = Array.from({ length: logits.length }, (_, i) => i)
    .sort((a, b) => logits[b] - logits[a])
    .slice(0, Math.max(1, options.topK));
  const max = logits[order[0]];
  const weights = order.map(i => Math.exp((logits[i] - max) / options.temperature));
  let r = options.random() * weights.reduce((a, b) => a + b, 0);
  for (let i = 0; i < order.length; i++) {
    r -= weights[i];
    if (r <= 0) return order[i];
  }
  return order[order.length - 1];
}
