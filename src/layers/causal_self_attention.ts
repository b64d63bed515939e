// GPT-2's attention block as a tfjs-layers layer: one fused projection c_attn [C, 3C] to q, k, v,
// causal attention over the heads, the output projection c_proj [C, C], attention dropout on the
// probabilities and residual dropout on the output. The [B, T, 3C] projection reshapes to
// [B, T, 3, H, D], whose q, k and v parts are already in the op's BSHD layout: no transposes.
//
// `attention: 'naive'` computes the same function the way plain tfjs code does (matMul → causal
// mask → softmax → matMul, with the [B, H, T, T] scores in memory), for comparisons.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D, Tensor4D } from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type { LayerArgs } from '@tensorflow/tfjs-layers/dist/engine/topology';
import type { Kwargs } from '@tensorflow/tfjs-layers/dist/types';
import { flashAttention } from '../flash_attention';
import { DropoutSeeds, checkSeed } from './dropout_seeds';
import { affine } from './row_ops';
import { Initializer, KerasIdentifier, getInitializer, serializeObject } from './keras_objects';

export type AttentionImplementation = 'flash' | 'naive';

export interface CausalSelfAttentionArgs extends LayerArgs {
  numHeads: number;
  /** Dropout on the attention probabilities (training only). */
  attentionDropout?: number;
  /** Dropout on the block's output, before the residual add (training only). */
  residualDropout?: number;
  useBias?: boolean;
  /** c_attn's kernel; GPT-2 uses normal(0, 0.02). */
  kernelInitializer?: KerasIdentifier<Initializer> | null;
  /** c_proj's kernel; GPT-2 scales it by 1/sqrt(2 · layers). Defaults to kernelInitializer. */
  projectionInitializer?: KerasIdentifier<Initializer> | null;
  biasInitializer?: KerasIdentifier<Initializer> | null;
  attention?: AttentionImplementation;
  /** Seed of the fused attention dropout (see MultiHeadAttention). Random if absent. */
  seed?: number | null;
}

const NAME = 'CausalSelfAttention';

function fail(message: string): never {
  throw new Error(`${NAME}: ${message}`);
}

function checkRate(name: string, rate: number | undefined): number {
  const r = rate ?? 0;
  if (!(typeof r === 'number' && r >= 0 && r < 1)) fail(`${name} must be a rate in [0, 1), got ${rate}`);
  return r;
}

export const GPT2_INITIALIZER = { className: 'RandomNormal', config: { mean: 0, stddev: 0.02 } };

export class CausalSelfAttention extends tfl.layers.Layer {
  static className = NAME;

  readonly numHeads: number;
  readonly attentionDropout: number;
  readonly residualDropout: number;
  readonly useBias: boolean;
  readonly attention: AttentionImplementation;
  readonly seed: number | null;
  private readonly kernelInitializer: Initializer;
  private readonly projectionInitializer: Initializer;
  private readonly biasInitializer: Initializer;
  private readonly seeds: DropoutSeeds;
  private weightsOf: { attnKernel: tfl.LayerVariable; attnBias: tfl.LayerVariable | null;
    projKernel: tfl.LayerVariable; projBias: tfl.LayerVariable | null } | null = null;

  constructor(args: CausalSelfAttentionArgs) {
    const { numHeads, attentionDropout, residualDropout, useBias, kernelInitializer, projectionInitializer,
      biasInitializer, attention, seed, ...base } = args;
    super(base);
    if (!(Number.isInteger(numHeads) && numHeads >= 1)) fail(`numHeads must be an integer ≥ 1, got ${numHeads}`);
    this.numHeads = numHeads;
    this.attentionDropout = checkRate('attentionDropout', attentionDropout);
    this.residualDropout = checkRate('residualDropout', residualDropout);
    this.useBias = useBias ?? true;
    this.attention = attention ?? 'flash';
    if (this.attention !== 'flash' && this.attention !== 'naive') {
      fail(`attention must be 'flash' or 'naive', got '${attention}'`);
    }
    this.seed = checkSeed(NAME, seed);
    this.seeds = new DropoutSeeds(this.seed);
    this.kernelInitializer = getInitializer(kernelInitializer, GPT2_INITIALIZER);
    this.projectionInitializer = getInitializer(projectionInitializer, this.kernelInitializer);
    this.biasInitializer = getInitializer(biasInitializer, 'zeros');
  }

  override build(inputShape: tfl.Shape | tfl.Shape[]): void {
    const channels = this.channels(inputShape);
    const bias = (name: string, size: number) => this.useBias
      ? this.addWeight(`${name}/bias`, [size], 'float32', this.biasInitializer) : null;
    this.weightsOf = {
      attnKernel: this.addWeight('c_attn/kernel', [channels, 3 * channels], 'float32', this.kernelInitializer),
      attnBias: bias('c_attn', 3 * channels),
      projKernel: this.addWeight('c_proj/kernel', [channels, channels], 'float32', this.projectionInitializer),
      projBias: bias('c_proj', channels),
    };
    this.built = true;
  }

  private channels(inputShape: tfl.Shape | tfl.Shape[]): number {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tfl.Shape;
    const channels = shape[2];
    if (shape.length !== 3 || channels === null) {
      fail(`input must be [batch, seq, channels] with known channels, got [${shape.join(', ')}]`);
    }
    if (channels % this.numHeads !== 0) fail(`channels (${channels}) must be a multiple of numHeads (${this.numHeads})`);
    return channels;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    this.channels(inputShape);
    return (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tfl.Shape;
  }

  override call(inputs: Tensor | Tensor[], kwargs: Kwargs): Tensor {
    return tf.tidy(() => {
      if (this.weightsOf === null) fail('called before being built');
      const w = this.weightsOf;
      const x = (Array.isArray(inputs) ? inputs[0] : inputs) as Tensor3D;
      const training = kwargs.training === true;
      const [batch, seq, channels] = x.shape;
      const heads = this.numHeads, headDim = channels / heads;
      const qkv = affine(tf.reshape(x, [batch * seq, channels]), w.attnKernel.read(), w.attnBias?.read() ?? null);
      const [q, k, v] = tf.split(tf.reshape(qkv, [batch, seq, 3, heads, headDim]), 3, 2)
        .map(t => tf.reshape(t, [batch, seq, heads, headDim]) as Tensor4D);
      const attended = this.attention === 'flash'
        ? flashAttention(q, k, v, {
          layout: 'BSHD', causal: true,
          dropout: training && this.attentionDropout > 0 ? { rate: this.attentionDropout, seed: this.seeds.next() } : undefined,
        })
        : this.naiveAttention(q, k, v, training);
      let y: Tensor = affine(tf.reshape(attended, [batch * seq, channels]), w.projKernel.read(), w.projBias?.read() ?? null);
      if (training && this.residualDropout > 0) y = tf.dropout(y, this.residualDropout);
      return tf.reshape(y, [batch, seq, channels]);
    });
  }

  /**
   * Attention as plain tfjs code writes it: [B, H, T, T] scores plus a [T, T] causal mask of 0 and
   * −Infinity (broadcast, so it costs one add and no gradient), softmax, dropout, · V.
   */
  private naiveAttention(q: Tensor4D, k: Tensor4D, v: Tensor4D, training: boolean): Tensor4D {
    const [, seq, , headDim] = q.shape;
    const toHeads = (t: Tensor4D) => tf.transpose(t, [0, 2, 1, 3]);
    const scores = tf.mul(tf.matMul(toHeads(q), toHeads(k), false, true), 1 / Math.sqrt(headDim));
    const future = tf.less(tf.reshape(tf.range(0, seq, 1, 'int32'), [seq, 1]), tf.range(0, seq, 1, 'int32'));
    const mask = tf.where(future, tf.fill([seq, seq], -Infinity), tf.zeros([seq, seq]));
    let probs = tf.softmax(tf.add(scores, mask), -1);
    if (training && this.attentionDropout > 0) probs = tf.dropout(probs, this.attentionDropout);
    return tf.transpose(tf.matMul(probs, toHeads(v)), [0, 2, 1, 3]);
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {
      ...super.getConfig(),
      numHeads: this.numHeads,
      attentionDropout: this.attentionDropout,
      residualDropout: this.residualDropout,
      useBias: this.useBias,
      kernelInitializer: serializeObject(this.kernelInitializer),
      projectionInitializer: serializeObject(this.projectionInitializer),
      biasInitializer: serializeObject(this.biasInitializer),
      attention: this.attention,
      seed: this.seed,
    };
  }
}

tf.serialization.registerClass(CausalSelfAttention);
