// Turns a case's plain data into tensors and flashAttention options, in Node and in the page.
import * as tf from '@tensorflow/tfjs-core';
import type { FlashAttentionOptions } from '../src/config';
import type { AttentionCase, CaseData, TensorData } from './cases';

export function toTensor(t: TensorData): tf.Tensor {
  return tf.tensor(t.dtype === 'float32' ? Float32Array.from(t.values) : Int32Array.from(t.values), t.shape, t.dtype);
}

export interface CaseTensors {
  q: tf.Tensor; k: tf.Tensor; v: tf.Tensor;
  options: FlashAttentionOptions;
  /** Every tensor made here, to dispose together. */
  all: tf.Tensor[];
}

export function caseTensors(c: AttentionCase, data: CaseData): CaseTensors {
  const all: tf.Tensor[] = [];
  const make = (t: TensorData) => { const x = toTensor(t); all.push(x); return x; };
  const options: FlashAttentionOptions = {};
  if (c.layout) options.layout = c.layout;
  if (c.scale !== undefined) options.scale = c.scale;
  if (c.causal) options.causal = true;
  if (c.windowSize) options.windowSize = c.windowSize;
  if (data.bias) options.bias = make(data.bias);
  if (data.mask) options.mask = make(data.mask);
  if (data.keyLengths) options.keyLengths = make(data.keyLengths);
  if (data.alibiSlopes) options.alibiSlopes = make(data.alibiSlopes);
  if (c.softcap !== undefined) options.softcap = c.softcap;
  if (c.dropout) options.dropout = c.dropout;
  if (data.blockMask && c.blockSparse) options.blockSparse = { blockMask: make(data.blockMask), blockSize: c.blockSparse.blockSize };
  return { q: make(data.q), k: make(data.k), v: make(data.v), options, all };
}
