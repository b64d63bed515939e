// The training loop shared by the Node CLI and the browser page: next-token cross-entropy, Adam,
// per-step timing (a step ends when its loss is read back, so GPU work is included), sampling.
import * as tf from '@tensorflow/tfjs-core';
import type { NamedTensor } from '@tensorflow/tfjs-core/dist/tensor_types';
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

/**
 * Adam with tfjs' AdamOptimizer's update and defaults, a learning rate that can change between
 * steps, and fewer kernels per step: the bias corrections are folded into the step size and
 * epsilon (w −= lr·√c2/c1 · m / (√v + ε·√c2), with c = 1 − βᵗ, which is tfjs' lr · (m/c1) / (√(v/c2) + ε)),
 * and its four scalars are made once per step. tfjs' version runs 14 kernels and uploads 6 scalars
 * per variable; this one runs 12 and uploads none, which matters where a step is bound by kernel
 * dispatch (GPT-2 small: 148 variables).
 */
export class ScheduledAdam extends tf.Optimizer {
  static readonly className = 'ScheduledAdam';
  private readonly moments = new Map<string, { m: tf.Variable; v: tf.Variable }>();
  private step = 0;

  constructor(private learningRate: number, private readonly beta1 = 0.9, private readonly beta2 = 0.999,
    private readonly epsilon = tf.backend().epsilon()) {
    super();
  }

  setLearningRate(learningRate: number): void {
    this.learningRate = learningRate;
  }

  applyGradients(variableGradients: tf.NamedTensorMap | NamedTensor[]): void {
    const gradients: Array<[string, tf.Tensor]> = Array.isArray(variableGradients)
      ? variableGradients.map(g => [g.name, g.tensor]) : Object.entries(variableGradients);
    this.step++;
    const c1 = 1 - this.beta1 ** this.step;
    const c2 = 1 - this.beta2 ** this.step;
    tf.tidy(() => {
      const keep1 = tf.scalar(1 - this.beta1);
      const keep2 = tf.scalar(1 - this.beta2);
      const stepSize = tf.scalar(-this.learningRate * Math.sqrt(c2) / c1);
      const epsilon = tf.scalar(this.epsilon * Math.sqrt(c2));
      for (const [name, gradient] of gradients) {
        const value = tf.engine().registeredVariables[name];
        let state = this.moments.get(name);
        if (!state) {
          state = { m: tf.variable(tf.zerosLike(value), false), v: tf.variable(tf.zerosLike(value), false) };
          this.moments.set(name, state);
        }
        const m = tf.add(state.m, tf.mul(tf.sub(gradient, state.m), keep1));
        const v = tf.add(state.v, tf.mul(tf.sub(tf.square(gradient), state.v), keep2));
        state.m.assign(m);
        state.v.assign(v);
        value.assign(tf.add(value, tf.mul(stepSize, tf.div(m, tf.add(tf.sqrt(v), epsilon)))));
      }
    });
    this.incrementIterations();
  }

  override dispose(): void {
    for (const { m, v } of this.moments.values()) tf.dispose([m, v]);
    this.moments.clear();
    super.dispose();
  }

  getConfig(): tf.serialization.ConfigDict {
    return { learningRate: this.learningRate, beta1: this.beta1, beta2: this.beta2, epsilon: this.epsilon };
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

/**
 * Tokens/s of each trainer over `count` steps after `warmup` steps, the trainers taking turns on
 * the same fresh batch each round, so that a machine whose load changes slows them alike.
 */
export async function measureTokensPerSecond(trainers: Trainer[], dataset: TokenDataset, batchSize: number,
  context: number, warmup: number, count: number): Promise<number[]> {
  const tokens = trainers.map(() => 0);
  const milliseconds = trainers.map(() => 0);
  for (let i = 0; i < warmup + count; i++) {
    const batch = dataset.batch(batchSize, context);
    try {
      for (const [t, trainer] of trainers.entries()) {
        const result = await trainer.step(batch);
        if (i >= warmup) {
          tokens[t] += result.tokens;
          milliseconds[t] += result.milliseconds;
        }
      }
    } finally {
      tf.dispose([batch.x, batch.y]);
    }
  }
  return tokens.map((n, t) => n / (milliseconds[t] / 1000));
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
    decoder.dispose();
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
