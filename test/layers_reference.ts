// Keras' MultiHeadAttention written with plain tfjs ops from Keras' documentation, used only by the
// layer tests: einsum projections, query scaled by 1/sqrt(key_dim), dot-product scores, softmax with
// the mask applied as Keras' Softmax does (masked scores get −1e9 added), dropout on the
// probabilities, einsum back and the output projection.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D } from '@tensorflow/tfjs-core';

export interface MhaWeights {
  queryKernel: Tensor; queryBias?: Tensor;
  keyKernel: Tensor; keyBias?: Tensor;
  valueKernel: Tensor; valueBias?: Tensor;
  outputKernel: Tensor; outputBias?: Tensor;
}

/** einsum 'abc,cde->abde' (+ bias 'de'). */
function einsumDense(x: Tensor3D, kernel: Tensor, bias?: Tensor): Tensor {
  const [b, t, c] = x.shape;
  const [, h, d] = kernel.shape;
  let y = tf.reshape(tf.matMul(tf.reshape(x, [b * t, c]), tf.reshape(kernel, [c, h * d])), [b, t, h, d]);
  if (bias) y = tf.add(y, bias);
  return y;
}

/** Keras' `_compute_causal_mask`: band_part(ones((1, Tq, Tk)), -1, 0), i.e. j ≤ i. */
export function kerasCausalMask(seqQ: number, seqK: number): Tensor {
  const rows = tf.reshape(tf.range(0, seqQ, 1, 'int32'), [seqQ, 1]);
  const cols = tf.reshape(tf.range(0, seqK, 1, 'int32'), [1, seqK]);
  return tf.expandDims(tf.lessEqual(cols, rows), 0);
}

export function kerasMultiHeadAttention(query: Tensor3D, value: Tensor3D, key: Tensor3D, w: MhaWeights, options: {
  attentionMask?: Tensor; useCausalMask?: boolean; dropoutScale?: Tensor; } = {}): Tensor {
  return tf.tidy(() => {
    const keyDim = w.queryKernel.shape[2] as number;
    let q = einsumDense(query, w.queryKernel, w.queryBias);
    const k = einsumDense(key, w.keyKernel, w.keyBias);
    const v = einsumDense(value, w.valueKernel, w.valueBias);
    q = tf.mul(q, 1 / Math.sqrt(keyDim));
    // einsum 'aecd,abcd->acbe': [B, H, Tq, Tk]
    const scores = tf.matMul(tf.transpose(q, [0, 2, 1, 3]), tf.transpose(k, [0, 2, 1, 3]), false, true);
    let mask: Tensor | null = options.attentionMask ? tf.cast(options.attentionMask, 'bool') : null;
    if (options.useCausalMask) {
      const causal = kerasCausalMask(query.shape[1], value.shape[1]);
      mask = mask ? tf.logicalAnd(mask, causal) : causal;
    }
    let logits = scores;
    if (mask) logits = tf.add(scores, tf.mul(tf.sub(1, tf.cast(tf.expandDims(mask, 1), 'float32')), -1e9));
    let probs = tf.softmax(logits, -1);
    if (options.dropoutScale) probs = tf.mul(probs, options.dropoutScale);
    // einsum 'acbe,aecd->abcd': [B, Tq, H, Dv]
    const attended = tf.transpose(tf.matMul(probs, tf.transpose(v, [0, 2, 1, 3])), [0, 2, 1, 3]);
    const [b, t, h, dv] = attended.shape;
    const outShape = w.outputKernel.shape.slice(2);
    const units = outShape.reduce((x, y) => x * y, 1);
    let out = tf.matMul(tf.reshape(attended, [b * t, h * dv]), tf.reshape(w.outputKernel, [h * dv, units]));
    if (w.outputBias) out = tf.add(out, tf.reshape(w.outputBias, [units]));
    return tf.reshape(out, [b, t, ...outShape]);
  });
}

export function maxAbsDiff(a: Tensor, b: Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
}

/** maxAbsDiff for backends without synchronous reads (webgpu in Node). */
export async function maxAbsDiffAsync(a: Tensor, b: Tensor): Promise<number> {
  const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))));
  const [value] = await diff.data();
  diff.dispose();
  return value;
}
