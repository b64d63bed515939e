// Keras' MultiHeadAttention as a tfjs-layers layer running on flashAttention: the same config, call
// and weights (names, order, shapes), so that a converted Keras model loads and computes the same
// outputs, without ever materializing the [B, H, Tq, Tk] scores.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D } from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type { LayerArgs } from '@tensorflow/tfjs-layers/dist/engine/topology';
import type { Kwargs } from '@tensorflow/tfjs-layers/dist/types';
import { flashAttention } from '../flash_attention';
import type { FlashAttentionOptions } from '../config';
import { DropoutSeeds, checkSeed } from './dropout_seeds';
import {
  Constraint, Initializer, KerasIdentifier, Regularizer, getConstraint, getInitializer, getRegularizer,
  serializeObject,
} from './keras_objects';
// Converted Keras models that use this layer need Keras' functional-model loader.
import './keras_functional';

export interface MultiHeadAttentionArgs extends LayerArgs {
  numHeads: number;
  /** Size of each query/key head. */
  keyDim: number;
  /** Size of each value head; defaults to keyDim. */
  valueDim?: number | null;
  /** Dropout rate on the attention probabilities (training only). */
  dropout?: number;
  useBias?: boolean;
  /** Last dimension(s) of the output; defaults to the query's last dimension. */
  outputShape?: number | number[] | null;
  /** Only the sequence axis of [batch, seq, features] inputs: null, 1, -2, [1] or [-2]. */
  attentionAxes?: number | number[] | null;
  kernelInitializer?: KerasIdentifier<Initializer> | null;
  biasInitializer?: KerasIdentifier<Initializer> | null;
  kernelRegularizer?: KerasIdentifier<Regularizer> | null;
  biasRegularizer?: KerasIdentifier<Regularizer> | null;
  kernelConstraint?: KerasIdentifier<Constraint> | null;
  biasConstraint?: KerasIdentifier<Constraint> | null;
  /** Seed of the attention dropout: training call n uses a seed derived from (seed, n). Random if absent. */
  seed?: number | null;
}

/** Options of one call, as in Keras' `layer(query, value, key, attention_mask=…, use_causal_mask=…)`. */
export interface MultiHeadAttentionCallArgs {
  attentionMask?: Tensor | tfl.SymbolicTensor | null;
  useCausalMask?: boolean;
  training?: boolean;
  returnAttentionScores?: boolean;
}

const NAME = 'MultiHeadAttention';

function fail(message: string): never {
  throw new Error(`${NAME}: ${message}`);
}

function isSymbolic(x: unknown): x is tfl.SymbolicTensor {
  return x instanceof tfl.SymbolicTensor;
}

function checkPositiveInteger(name: string, value: unknown): number {
  if (!(Number.isInteger(value) && (value as number) >= 1)) fail(`${name} must be an integer ≥ 1, got ${value}`);
  return value as number;
}

/** Keras' keys that describe build shapes or features flash attention has no use for. */
const IGNORED_KERAS_KEYS = ['queryShape', 'keyShape', 'valueShape', 'flashAttention'] as const;

function checkAttentionAxes(axes: number | number[] | null | undefined): void {
  if (axes === null || axes === undefined) return;
  const list = Array.isArray(axes) ? axes : [axes];
  if (list.length !== 1 || (list[0] !== 1 && list[0] !== -2)) {
    fail(`attentionAxes ${JSON.stringify(axes)} is not supported: flash attention attends over the sequence ` +
      'axis of [batch, seq, features] inputs only (use null, 1 or [1])');
  }
}

function normalizeOutputShape(shape: number | number[] | null | undefined): number[] | null {
  if (shape === null || shape === undefined) return null;
  const list = Array.isArray(shape) ? shape : [shape];
  if (list.length === 0) fail('outputShape must not be empty');
  list.forEach(d => checkPositiveInteger('outputShape', d));
  return list;
}

/** [1, 1, Tq, Tk] boolean lower triangle: key j is visible to query i when j ≤ i. */
function topLeftCausalMask(seqQ: number, seqK: number): Tensor {
  const values = new Uint8Array(seqQ * seqK);
  for (let i = 0; i < seqQ; i++) values.fill(1, i * seqK, i * seqK + Math.min(i + 1, seqK));
  return tf.tensor(values, [1, 1, seqQ, seqK], 'bool');
}

export class MultiHeadAttention extends tfl.layers.Layer {
  static className = NAME;

  readonly numHeads: number;
  readonly keyDim: number;
  readonly valueDim: number;
  readonly dropout: number;
  readonly useBias: boolean;
  readonly outputShapeArg: number[] | null;
  readonly attentionAxes: number | number[] | null;
  readonly seed: number | null;
  private readonly kernelInitializer: Initializer;
  private readonly biasInitializer: Initializer;
  private readonly kernelRegularizer: Regularizer | null;
  private readonly biasRegularizer: Regularizer | null;
  private readonly kernelConstraint: Constraint | null;
  private readonly biasConstraint: Constraint | null;

  private kernels: Record<'query' | 'key' | 'value' | 'output', tfl.LayerVariable> | null = null;
  private biases: Record<'query' | 'key' | 'value' | 'output', tfl.LayerVariable> | null = null;
  private readonly seeds: DropoutSeeds;
  /** Call options of the layer's call in a model graph: tfjs' executor does not pass a node's own
   * keyword arguments when it runs the graph, so the layer keeps them. */
  private graphCallArgs: { useCausalMask: boolean } | null = null;

  constructor(args: MultiHeadAttentionArgs) {
    const { numHeads, keyDim, valueDim, dropout, useBias, outputShape, attentionAxes, kernelInitializer,
      biasInitializer, kernelRegularizer, biasRegularizer, kernelConstraint, biasConstraint, seed, ...rest } = args;
    const base: LayerArgs & Record<string, unknown> = { ...rest };
    for (const key of IGNORED_KERAS_KEYS) delete base[key];
    if (base.activityRegularizer !== undefined && base.activityRegularizer !== null) {
      fail('activityRegularizer is not supported (tfjs-layers does not run activity regularizers)');
    }
    delete base.activityRegularizer;
    super(base);
    this.numHeads = checkPositiveInteger('numHeads', numHeads);
    this.keyDim = checkPositiveInteger('keyDim', keyDim);
    this.valueDim = valueDim === null || valueDim === undefined ? this.keyDim : checkPositiveInteger('valueDim', valueDim);
    this.dropout = dropout ?? 0;
    if (!(typeof this.dropout === 'number' && this.dropout >= 0 && this.dropout < 1)) {
      fail(`dropout must be a rate in [0, 1), got ${dropout}`);
    }
    this.useBias = useBias ?? true;
    this.outputShapeArg = normalizeOutputShape(outputShape);
    checkAttentionAxes(attentionAxes);
    this.attentionAxes = attentionAxes ?? null;
    this.seed = checkSeed(NAME, seed);
    this.seeds = new DropoutSeeds(this.seed);
    this.kernelInitializer = getInitializer(kernelInitializer, 'glorotUniform');
    this.biasInitializer = getInitializer(biasInitializer, 'zeros');
    this.kernelRegularizer = getRegularizer(kernelRegularizer);
    this.biasRegularizer = getRegularizer(biasRegularizer);
    this.kernelConstraint = getConstraint(kernelConstraint);
    this.biasConstraint = getConstraint(biasConstraint);
  }

  /**
   * Keras' call: `apply([query, value, key?], {attentionMask, useCausalMask, training})`, with query
   * [B, Tq, Cq], value [B, Tk, Cv], key [B, Tk, Ck] (defaults to value) and a boolean attentionMask
   * [B, Tq, Tk] (true = attend). The mask travels as a fourth input so that model graphs carry it.
   */
  override apply(inputs: Tensor | Tensor[] | tfl.SymbolicTensor | tfl.SymbolicTensor[],
    kwargs: Kwargs = {}): Tensor | Tensor[] | tfl.SymbolicTensor | tfl.SymbolicTensor[] {
    const list = Array.isArray(inputs) ? [...inputs] : [inputs];
    if (list.length < 2 || list.length > 4) {
      fail(`expects [query, value], [query, value, key] or [query, value, key, attentionMask], got ${list.length} input(s)`);
    }
    const { attentionMask, ...options } = kwargs;
    if (options.returnAttentionScores) {
      fail('returnAttentionScores is not available: flash attention never forms the attention scores ' +
        '(that is what makes it fast and memory-light); use a plain attention implementation to inspect them');
    }
    if (list.length === 2) list.push(list[1]);
    if (attentionMask !== undefined && attentionMask !== null) {
      if (list.length === 4) fail('attentionMask given both as the fourth input and as an option');
      list.push(attentionMask);
    }
    const useCausalMask = options.useCausalMask;
    if (useCausalMask !== undefined && typeof useCausalMask !== 'boolean') {
      fail(`useCausalMask must be a boolean, got ${useCausalMask}`);
    }
    if (list.every(isSymbolic)) {
      const graphArgs = { useCausalMask: useCausalMask ?? false };
      if (this.graphCallArgs !== null && this.graphCallArgs.useCausalMask !== graphArgs.useCausalMask) {
        fail('a layer used more than once in a model must use the same useCausalMask each time');
      }
      this.graphCallArgs = graphArgs;
      return super.apply(list as tfl.SymbolicTensor[], options);
    }
    return super.apply(list as Tensor[], options);
  }

  override build(inputShape: tfl.Shape | tfl.Shape[]): void {
    const [query, value, key] = this.checkShapes(inputShape);
    const H = this.numHeads;
    const out = this.outputShapeArg ?? [query[2] as number];
    const kernel = (name: string, shape: number[]) => this.addWeight(`${name}/kernel`, shape, 'float32',
      this.kernelInitializer, this.kernelRegularizer ?? undefined, true, this.kernelConstraint ?? undefined);
    const bias = (name: string, shape: number[]) => this.addWeight(`${name}/bias`, shape, 'float32',
      this.biasInitializer, this.biasRegularizer ?? undefined, true, this.biasConstraint ?? undefined);
    // Keras' creation order, which is the order of `weights` and of saved weight files.
    const kq = kernel('query', [query[2] as number, H, this.keyDim]);
    const bq = this.useBias ? bias('query', [H, this.keyDim]) : null;
    const kk = kernel('key', [key[2] as number, H, this.keyDim]);
    const bk = this.useBias ? bias('key', [H, this.keyDim]) : null;
    const kv = kernel('value', [value[2] as number, H, this.valueDim]);
    const bv = this.useBias ? bias('value', [H, this.valueDim]) : null;
    const ko = kernel('attention_output', [H, this.valueDim, ...out]);
    const bo = this.useBias ? bias('attention_output', out) : null;
    this.kernels = { query: kq, key: kk, value: kv, output: ko };
    this.biases = bq && bk && bv && bo ? { query: bq, key: bk, value: bv, output: bo } : null;
    this.built = true;
  }

  private checkShapes(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape[] {
    const shapes = inputShape as tfl.Shape[];
    const [query, value, key, mask] = shapes;
    for (const [name, shape] of [['query', query], ['value', value], ['key', key]] as const) {
      if (shape.length !== 3) {
        fail(`${name} must have rank 3 [batch, seq, features], got shape [${shape.join(', ')}]` +
          ' (attention over other axes is not supported)');
      }
      if (shape[2] === null) fail(`the feature size of ${name} must be known, got shape [${shape.join(', ')}]`);
    }
    if (value[1] !== null && key[1] !== null && value[1] !== key[1]) {
      fail(`key and value must have the same sequence length, got key [${key.join(', ')}], value [${value.join(', ')}]`);
    }
    if (mask !== undefined) {
      const ok = mask.length === 3 && [query[1], value[1]].every((size, axis) =>
        size === null || mask[axis + 1] === null || mask[axis + 1] === size);
      if (!ok) {
        fail(`attentionMask must have shape [batch, ${query[1]}, ${value[1]}] (batch, query seq, key seq), ` +
          `got [${mask.join(', ')}]`);
      }
    }
    return shapes;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const [query] = this.checkShapes(inputShape);
    return [query[0], query[1], ...(this.outputShapeArg ?? [query[2]])];
  }

  override call(inputs: Tensor | Tensor[], kwargs: Kwargs): Tensor {
    return tf.tidy(() => {
      if (this.kernels === null) fail('called before being built');
      const [query, value, key, attentionMask] = inputs as Tensor3D[];
      const training = kwargs.training === true;
      const useCausalMask = (kwargs.useCausalMask as boolean | undefined) ?? this.graphCallArgs?.useCausalMask ?? false;
      const [batch, seqQ] = query.shape;
      const seqK = value.shape[1];
      const q = this.project(query, 'query', this.keyDim);
      const k = this.project(key, 'key', this.keyDim);
      const v = this.project(value, 'value', this.valueDim);
      const options: FlashAttentionOptions = { layout: 'BSHD' };
      const masks: Tensor[] = [];
      if (attentionMask) {
        const m = attentionMask.dtype === 'bool' ? attentionMask : tf.notEqual(attentionMask, 0);
        masks.push(tf.reshape(m, [attentionMask.shape[0], 1, seqQ, seqK]));
      }
      if (useCausalMask) {
        // Keras' causal mask is the lower triangle j ≤ i of [Tq, Tk], aligned top-left; the op's
        // `causal` is aligned bottom-right. They agree (and the op can skip blocks) when Tq = Tk.
        if (seqQ === seqK) options.causal = true;
        else masks.push(topLeftCausalMask(seqQ, seqK));
      }
      if (masks.length > 0) options.mask = masks.reduce((a, b) => tf.logicalAnd(a, b));
      if (training && this.dropout > 0) options.dropout = { rate: this.dropout, seed: this.seeds.next() };
      const attended = flashAttention(q, k, v, options); // [B, Tq, H, Dv]
      const outShape = this.kernels.output.shape.slice(2) as number[];
      const units = outShape.reduce((a, b) => a * b, 1);
      let out = tf.matMul(tf.reshape(attended, [batch * seqQ, this.numHeads * this.valueDim]),
        tf.reshape(this.kernels.output.read(), [this.numHeads * this.valueDim, units]));
      if (this.biases) out = tf.add(out, tf.reshape(this.biases.output.read(), [units]));
      return tf.reshape(out, [batch, seqQ, ...outShape]);
    });
  }

  /** Keras' EinsumDense 'abc,cde->abde': [B, T, C] → [B, T, H, D], already in BSHD order. */
  private project(x: Tensor3D, name: 'query' | 'key' | 'value', headDim: number): Tensor {
    if (this.kernels === null) fail('called before being built');
    const [batch, seq, features] = x.shape;
    const units = this.numHeads * headDim;
    let y = tf.matMul(tf.reshape(x, [batch * seq, features]), tf.reshape(this.kernels[name].read(), [features, units]));
    if (this.biases) y = tf.add(y, tf.reshape(this.biases[name].read(), [units]));
    return tf.reshape(y, [batch, seq, this.numHeads, headDim]);
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {
      ...super.getConfig(),
      numHeads: this.numHeads,
      keyDim: this.keyDim,
      valueDim: this.valueDim,
      dropout: this.dropout,
      useBias: this.useBias,
      outputShape: this.outputShapeArg,
      attentionAxes: this.attentionAxes,
      kernelInitializer: serializeObject(this.kernelInitializer),
      biasInitializer: serializeObject(this.biasInitializer),
      kernelRegularizer: serializeObject(this.kernelRegularizer),
      biasRegularizer: serializeObject(this.biasRegularizer),
      kernelConstraint: serializeObject(this.kernelConstraint),
      biasConstraint: serializeObject(this.biasConstraint),
      seed: this.seed,
    };
  }
}

tf.serialization.registerClass(MultiHeadAttention);
