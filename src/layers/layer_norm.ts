// Layer normalization over the last axis, as GPT-2 uses it: (x − mean) / √(var + ε) · gamma + beta,
// with the weights tfjs-layers' LayerNormalization has (`gamma` and `beta`, [C]).
//
// tfjs-layers' own LayerNormalization tiles its statistics, gamma and beta to the input's full
// shape before calling batchNormalization, and tfjs 4.22's Tile gradient adds one slice of dy per
// repetition: one Slice and one Add kernel per row of the input, thousands per training step
// (each a GPU dispatch). Here every op broadcasts, and the gradient is written out (`layerNorm`).
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor2D } from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type { LayerArgs } from '@tensorflow/tfjs-layers/dist/engine/topology';
import { Initializer, KerasIdentifier, getInitializer, serializeObject } from './keras_objects';
import { columnSums, rowMeans } from './row_ops';

export interface LayerNormArgs extends LayerArgs {
  /** Added to the variance; GPT-2 uses 1e-5. */
  epsilon?: number;
  gammaInitializer?: KerasIdentifier<Initializer> | null;
  betaInitializer?: KerasIdentifier<Initializer> | null;
}

const NAME = 'LayerNorm';

/**
 * y = n · gamma + beta with n = (x − mean) · r, r = 1/√(var + ε), over the last axis, with the
 * closed-form gradient dx = r · (g − mean(g) − n · mean(g · n)), g = dy · gamma: fewer kernels
 * than tfjs' autograd runs back through the forward ops, and gamma's and beta's sums over rows as
 * matrix products (`columnSums`).
 */
function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, epsilon: number): Tensor {
  const op = tf.customGrad((...args: Array<Tensor | tf.GradSaveFunc>) => {
    const [input, g, b, save] = args as [Tensor, Tensor, Tensor, tf.GradSaveFunc];
    const centered = tf.sub(input, rowMeans(input));
    const r = tf.rsqrt(tf.add(rowMeans(tf.square(centered)), epsilon));
    const n = tf.mul(centered, r);
    save([n, r, g]);
    return {
      value: tf.add(tf.mul(n, g), b),
      gradFunc: (dy: Tensor, [ns, rs, gs]: Tensor[]) => {
        const channels = ns.shape[ns.shape.length - 1];
        const rows = (m: Tensor) => tf.reshape(m, [-1, channels]) as Tensor2D;
        const dn = tf.mul(dy, gs);
        const dx = tf.mul(rs, tf.sub(tf.sub(dn, rowMeans(dn)), tf.mul(ns, rowMeans(tf.mul(dn, ns)))));
        return [dx, columnSums(rows(tf.mul(dy, ns))), columnSums(rows(dy))];
      },
    };
  });
  return op(x, gamma, beta);
}

export class LayerNorm extends tfl.layers.Layer {
  static className = NAME;
  readonly epsilon: number;
  private readonly gammaInitializer: Initializer;
  private readonly betaInitializer: Initializer;
  private weightsOf: { gamma: tfl.LayerVariable; beta: tfl.LayerVariable } | null = null;

  constructor(args: LayerNormArgs = {}) {
    const { epsilon, gammaInitializer, betaInitializer, ...base } = args;
    super(base);
    this.epsilon = epsilon ?? 1e-5;
    if (!(typeof this.epsilon === 'number' && this.epsilon > 0)) {
      throw new Error(`${NAME}: epsilon must be a positive number, got ${epsilon}`);
    }
    this.gammaInitializer = getInitializer(gammaInitializer, 'ones');
    this.betaInitializer = getInitializer(betaInitializer, 'zeros');
  }

  override build(inputShape: tfl.Shape | tfl.Shape[]): void {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tfl.Shape;
    const channels = shape[shape.length - 1];
    if (typeof channels !== 'number') {
      throw new Error(`${NAME}: the last axis of the input must be known, got [${shape.join(', ')}]`);
    }
    this.weightsOf = {
      gamma: this.addWeight('gamma', [channels], 'float32', this.gammaInitializer),
      beta: this.addWeight('beta', [channels], 'float32', this.betaInitializer),
    };
    this.built = true;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tfl.Shape;
  }

  override call(inputs: Tensor | Tensor[]): Tensor {
    return tf.tidy(() => {
      if (this.weightsOf === null) throw new Error(`${NAME}: called before being built`);
      const x = Array.isArray(inputs) ? inputs[0] : inputs;
      return layerNorm(x, this.weightsOf.gamma.read(), this.weightsOf.beta.read(), this.epsilon);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {
      ...super.getConfig(), epsilon: this.epsilon,
      gammaInitializer: serializeObject(this.gammaInitializer),
      betaInitializer: serializeObject(this.betaInitializer),
    };
  }
}

tf.serialization.registerClass(LayerNorm);
