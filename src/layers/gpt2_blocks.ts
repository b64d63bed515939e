// The GPT-2 layers tfjs-layers lacks: a token embedding that also serves as the tied output head,
// learned position embeddings, and the MLP with GPT-2's tanh-approximated GELU.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor2D, Tensor3D } from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type { LayerArgs } from '@tensorflow/tfjs-layers/dist/engine/topology';
import type { Kwargs } from '@tensorflow/tfjs-layers/dist/types';
import { GPT2_INITIALIZER } from './causal_self_attention';
import { addToEveryBatch, affine } from './row_ops';
import { Initializer, KerasIdentifier, getInitializer, serializeObject } from './keras_objects';

function firstShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
  return (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tfl.Shape;
}

function firstInput(inputs: Tensor | Tensor[]): Tensor {
  return Array.isArray(inputs) ? inputs[0] : inputs;
}

function checkPositiveInteger(owner: string, name: string, value: unknown): number {
  if (!(Number.isInteger(value) && (value as number) >= 1)) {
    throw new Error(`${owner}: ${name} must be an integer ≥ 1, got ${value}`);
  }
  return value as number;
}

export interface TokenEmbeddingArgs extends LayerArgs {
  vocabSize: number;
  channels: number;
  embeddingsInitializer?: KerasIdentifier<Initializer> | null;
}

/**
 * Token ids [B, T] → vectors [B, T, C]; and, applied to vectors [B, T, C], logits [B, T, vocab]
 * through the same matrix (GPT-2's tied output head). Using one layer twice in the model graph is
 * how the two uses share one weight, which then serializes once.
 */
export class TokenEmbedding extends tfl.layers.Layer {
  static className = 'TokenEmbedding';
  readonly vocabSize: number;
  readonly channels: number;
  private readonly embeddingsInitializer: Initializer;
  private embeddings: tfl.LayerVariable | null = null;

  constructor(args: TokenEmbeddingArgs) {
    const { vocabSize, channels, embeddingsInitializer, ...base } = args;
    super(base);
    this.vocabSize = checkPositiveInteger('TokenEmbedding', 'vocabSize', vocabSize);
    this.channels = checkPositiveInteger('TokenEmbedding', 'channels', channels);
    this.embeddingsInitializer = getInitializer(embeddingsInitializer, GPT2_INITIALIZER);
  }

  override build(): void {
    this.embeddings = this.addWeight('embeddings', [this.vocabSize, this.channels], 'float32', this.embeddingsInitializer);
    this.built = true;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const shape = firstShape(inputShape);
    if (shape.length === 2) return [...shape, this.channels];
    if (shape.length === 3 && shape[2] === this.channels) return [shape[0], shape[1], this.vocabSize];
    throw new Error(`TokenEmbedding: expects token ids [batch, seq] or vectors [batch, seq, ${this.channels}], ` +
      `got [${shape.join(', ')}]`);
  }

  override call(inputs: Tensor | Tensor[]): Tensor {
    return tf.tidy(() => {
      if (this.embeddings === null) throw new Error('TokenEmbedding: called before being built');
      const x = firstInput(inputs);
      const table = this.embeddings.read() as Tensor2D;
      if (x.rank === 2) return tf.gather(table, tf.cast(x, 'int32'));
      const [batch, seq, channels] = (x as Tensor3D).shape;
      const logits = tf.matMul(tf.reshape(x, [batch * seq, channels]), table, false, true);
      return tf.reshape(logits, [batch, seq, this.vocabSize]);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {
      ...super.getConfig(), vocabSize: this.vocabSize, channels: this.channels,
      embeddingsInitializer: serializeObject(this.embeddingsInitializer),
    };
  }
}

export interface PositionEmbeddingArgs extends LayerArgs {
  contextLength: number;
  embeddingsInitializer?: KerasIdentifier<Initializer> | null;
}

/** Adds a learned vector per position: [B, T, C] + table[0:T]. */
export class PositionEmbedding extends tfl.layers.Layer {
  static className = 'PositionEmbedding';
  readonly contextLength: number;
  private readonly embeddingsInitializer: Initializer;
  private embeddings: tfl.LayerVariable | null = null;

  constructor(args: PositionEmbeddingArgs) {
    const { contextLength, embeddingsInitializer, ...base } = args;
    super(base);
    this.contextLength = checkPositiveInteger('PositionEmbedding', 'contextLength', contextLength);
    // GPT-2 initializes position embeddings with half the spread of the token embeddings.
    this.embeddingsInitializer = getInitializer(embeddingsInitializer, { className: 'RandomNormal', config: { mean: 0, stddev: 0.01 } });
  }

  override build(inputShape: tfl.Shape | tfl.Shape[]): void {
    const channels = firstShape(inputShape)[2];
    if (typeof channels !== 'number') throw new Error('PositionEmbedding: input must be [batch, seq, channels]');
    this.embeddings = this.addWeight('embeddings', [this.contextLength, channels], 'float32', this.embeddingsInitializer);
    this.built = true;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return firstShape(inputShape);
  }

  override call(inputs: Tensor | Tensor[]): Tensor {
    return tf.tidy(() => {
      if (this.embeddings === null) throw new Error('PositionEmbedding: called before being built');
      const x = firstInput(inputs) as Tensor3D;
      const [, seq, channels] = x.shape;
      if (seq > this.contextLength) {
        throw new Error(`PositionEmbedding: sequence length ${seq} exceeds the context length ${this.contextLength}`);
      }
      return addToEveryBatch(x, tf.slice(this.embeddings.read(), [0, 0], [seq, channels]));
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {
      ...super.getConfig(), contextLength: this.contextLength,
      embeddingsInitializer: serializeObject(this.embeddingsInitializer),
    };
  }
}

export interface Gpt2MlpArgs extends LayerArgs {
  /** Hidden width; GPT-2 uses 4 · channels. */
  hiddenSize: number;
  residualDropout?: number;
  kernelInitializer?: KerasIdentifier<Initializer> | null;
  projectionInitializer?: KerasIdentifier<Initializer> | null;
}

/** GELU with GPT-2's tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
export function geluTanh(x: Tensor): Tensor {
  return tf.tidy(() => {
    const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3))));
    return tf.mul(tf.mul(0.5, x), tf.add(1, tf.tanh(inner)));
  });
}

/** c_fc [C, hidden] → GELU (tanh) → c_proj [hidden, C] → residual dropout. */
export class Gpt2Mlp extends tfl.layers.Layer {
  static className = 'Gpt2Mlp';
  readonly hiddenSize: number;
  readonly residualDropout: number;
  private readonly kernelInitializer: Initializer;
  private readonly projectionInitializer: Initializer;
  private weightsOf: { fcKernel: tfl.LayerVariable; fcBias: tfl.LayerVariable;
    projKernel: tfl.LayerVariable; projBias: tfl.LayerVariable } | null = null;

  constructor(args: Gpt2MlpArgs) {
    const { hiddenSize, residualDropout, kernelInitializer, projectionInitializer, ...base } = args;
    super(base);
    this.hiddenSize = checkPositiveInteger('Gpt2Mlp', 'hiddenSize', hiddenSize);
    this.residualDropout = residualDropout ?? 0;
    if (!(this.residualDropout >= 0 && this.residualDropout < 1)) {
      throw new Error(`Gpt2Mlp: residualDropout must be a rate in [0, 1), got ${residualDropout}`);
    }
    this.kernelInitializer = getInitializer(kernelInitializer, GPT2_INITIALIZER);
    this.projectionInitializer = getInitializer(projectionInitializer, this.kernelInitializer);
  }

  override build(inputShape: tfl.Shape | tfl.Shape[]): void {
    const channels = firstShape(inputShape)[2];
    if (typeof channels !== 'number') throw new Error('Gpt2Mlp: input must be [batch, seq, channels]');
    const zeros = getInitializer('zeros', 'zeros');
    this.weightsOf = {
      fcKernel: this.addWeight('c_fc/kernel', [channels, this.hiddenSize], 'float32', this.kernelInitializer),
      fcBias: this.addWeight('c_fc/bias', [this.hiddenSize], 'float32', zeros),
      projKernel: this.addWeight('c_proj/kernel', [this.hiddenSize, channels], 'float32', this.projectionInitializer),
      projBias: this.addWeight('c_proj/bias', [channels], 'float32', zeros),
    };
    this.built = true;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return firstShape(inputShape);
  }

  override call(inputs: Tensor | Tensor[], kwargs: Kwargs): Tensor {
    return tf.tidy(() => {
      if (this.weightsOf === null) throw new Error('Gpt2Mlp: called before being built');
      const w = this.weightsOf;
      const x = firstInput(inputs) as Tensor3D;
      const [batch, seq, channels] = x.shape;
      const hidden = geluTanh(affine(tf.reshape(x, [batch * seq, channels]), w.fcKernel.read(), w.fcBias.read()));
      let y: Tensor = affine(hidden as Tensor2D, w.projKernel.read(), w.projBias.read());
      if (kwargs.training === true && this.residualDropout > 0) y = tf.dropout(y, this.residualDropout);
      return tf.reshape(y, [batch, seq, channels]);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {
      ...super.getConfig(), hiddenSize: this.hiddenSize, residualDropout: this.residualDropout,
      kernelInitializer: serializeObject(this.kernelInitializer),
      projectionInitializer: serializeObject(this.projectionInitializer),
    };
  }
}

tf.serialization.registerClass(TokenEmbedding);
tf.serialization.registerClass(PositionEmbedding);
tf.serialization.registerClass(Gpt2Mlp);
