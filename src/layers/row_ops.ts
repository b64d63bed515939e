// Ops of the GPT-2 layers written with their own gradients, so that the sums over rows that those
// gradients need run as one matrix product instead of tfjs' Sum over axis 0 (see `columnSums`).
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor1D, Tensor2D, Tensor3D } from '@tensorflow/tfjs-core';

/**
 * Sums over the rows of x [rows, C], computed as ones [1, rows] · x. The gradients of this file's
 * broadcast adds (a bias or a table added to every row) need such sums; written as tfjs' Sum over
 * axis 0, tfjs-webgpu transposes x and runs one workgroup per column with a barrier tree, which
 * SwiftShader ran about 7× slower than this product (measured at [1024, 256]).
 */
export function columnSums(x: Tensor2D): Tensor1D {
  const [rows, cols] = x.shape;
  return tf.reshape(tf.matMul(tf.ones([1, rows]), x), [cols]);
}

/**
 * Means over the last axis of x [..., C], kept as [..., 1], computed as x [rows, C] · (1/C) [C, 1]:
 * tfjs-webgpu's Mean runs one workgroup per row with a barrier tree, which SwiftShader ran
 * slower than this product.
 */
export function rowMeans(x: Tensor): Tensor {
  const channels = x.shape[x.shape.length - 1];
  const rows = tf.reshape(x, [-1, channels]) as Tensor2D;
  // Made on the CPU like tf.ones: an upload, not one more kernel to dispatch.
  const average = tf.tensor2d(new Float32Array(channels).fill(1 / channels), [channels, 1]);
  return tf.reshape(tf.matMul(rows, average), [...x.shape.slice(0, -1), 1]);
}

const affineWithBias = tf.customGrad((...args: Array<Tensor | tf.GradSaveFunc>) => {
  const [x, kernel, bias, save] = args as [Tensor2D, Tensor2D, Tensor1D, tf.GradSaveFunc];
  save([x, kernel]);
  return {
    value: tf.add(tf.matMul(x, kernel), bias),
    gradFunc: (dy: Tensor, [xs, ks]: Tensor[]) => {
      const d = dy as Tensor2D;
      return [tf.matMul(d, ks, false, true), tf.matMul(xs, d, true, false), columnSums(d)];
    },
  };
});

/** x [N, Cin] · kernel [Cin, Cout] (+ bias [Cout]), the bias gradient by `columnSums`. */
export function affine(x: Tensor2D, kernel: Tensor, bias: Tensor | null): Tensor2D {
  if (bias === null) return tf.matMul(x, kernel as Tensor2D);
  return affineWithBias(x, kernel, bias) as Tensor2D;
}

/**
 * x [B, T, C] + table [T, C]; the table's gradient adds the B slices of dy. Not `columnSums`: as one
 * product [1, B] · [B, T·C] its T·C columns exceed WebGPU's 65535 workgroups per dimension from
 * T·C ≈ 2.1 M (GPT-2 small at 4096 tokens), and B is a handful of elementwise adds.
 */
export const addToEveryBatch = tf.customGrad((...args: Array<Tensor | tf.GradSaveFunc>) => {
  const [x, table] = args as [Tensor3D, Tensor2D];
  return {
    value: tf.add(x, table),
    gradFunc: (dy: Tensor) => [dy, x.shape[0] === 1 ? tf.squeeze(dy, [0]) : tf.addN(tf.unstack(dy))],
  };
});
