// The fallback for backends without a FlashAttention kernel (wasm, tensorflow, ...): the same
// semantics written with tfjs ops, differentiated by tfjs' autograd. It materializes the
// [B, Hq, Nq, Nk] scores, so its memory is quadratic in the sequence length.
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D, Tensor4D } from '@tensorflow/tfjs-core';
import { AttentionConfig, AttentionTensors, queryOffset } from './config';
import { dropoutKeep, dropoutThreshold } from './dropout';

/** BSHD ↔ BHSD: the same transposition both ways. */
function swapLayout(c: AttentionConfig, t: Tensor): Tensor4D {
  return (c.layout === 'BHSD' ? t : tf.transpose(t, [0, 2, 1, 3])) as Tensor4D;
}

/** Repeats each KV head for the query heads of its group (query head h reads KV head h / group). */
function expandHeads(c: AttentionConfig, t: Tensor4D): Tensor4D {
  const group = c.headsQ / c.headsKV;
  if (group === 1) return t;
  // A gather (not a rank-5 tile, whose gradient tfjs lacks) so that the composite is differentiable.
  const heads = Array.from({ length: c.headsQ }, (_, h) => Math.floor(h / group));
  return tf.gather(t, tf.tensor1d(heads, 'int32'), 1);
}

/** [Nq, Nk] matrix of `f(i + seqK − seqQ, j)`. */
function positionMatrix(c: AttentionConfig, f: (pos: number, j: number) => number, dtype: 'float32' | 'bool'): Tensor {
  const values = new Float32Array(c.seqQ * c.seqK);
  const offset = queryOffset(c);
  for (let i = 0; i < c.seqQ; i++) {
    for (let j = 0; j < c.seqK; j++) values[i * c.seqK + j] = f(i + offset, j);
  }
  return tf.cast(tf.tensor(values, [c.seqQ, c.seqK], 'float32'), dtype);
}

function windowVisible(c: AttentionConfig): Tensor | null {
  if (c.windowLeft < 0 && c.windowRight < 0) return null;
  return positionMatrix(c, (pos, j) =>
    Number((c.windowLeft < 0 || j >= pos - c.windowLeft) && (c.windowRight < 0 || j <= pos + c.windowRight)), 'bool');
}

function blockVisible(c: AttentionConfig, blockMask: Tensor): Tensor {
  const rows = tf.tensor1d(Array.from({ length: c.seqQ }, (_, i) => Math.floor(i / c.blockSize)), 'int32');
  const cols = tf.tensor1d(Array.from({ length: c.seqK }, (_, j) => Math.floor(j / c.blockSize)), 'int32');
  return tf.notEqual(tf.gather(tf.gather(blockMask, rows, 2), cols, 3), 0);
}

/** The keep-and-rescale factors of dropout, drawn by the same keep function as the kernels. */
function dropoutScale(c: AttentionConfig): Tensor {
  const threshold = dropoutThreshold(c.dropoutRate);
  const kept = 1 / (1 - c.dropoutRate);
  const values = new Float32Array(c.batch * c.headsQ * c.seqQ * c.seqK);
  let n = 0;
  for (let b = 0; b < c.batch; b++) {
    for (let h = 0; h < c.headsQ; h++) {
      for (let i = 0; i < c.seqQ; i++) {
        for (let j = 0; j < c.seqK; j++) values[n++] = dropoutKeep(threshold, c.dropoutSeed, b, h, i, j) ? kept : 0;
      }
    }
  }
  return tf.tensor4d(values, [c.batch, c.headsQ, c.seqQ, c.seqK]);
}

export function compositeAttention(c: AttentionConfig, t: AttentionTensors): [Tensor4D, Tensor3D] {
  return tf.tidy(() => {
    const q = swapLayout(c, t.q);
    const k = expandHeads(c, swapLayout(c, t.k));
    const v = expandHeads(c, swapLayout(c, t.v));
    let s: Tensor = tf.mul(tf.matMul(q, k, false, true), c.scale);
    if (c.softcap > 0) s = tf.mul(tf.tanh(tf.div(s, c.softcap)), c.softcap);
    if (t.bias) s = tf.add(s, t.bias);
    if (t.alibiSlopes) {
      const distance = positionMatrix(c, (pos, j) => -Math.abs(pos - j), 'float32');
      s = tf.add(s, tf.mul(tf.reshape(t.alibiSlopes, [c.alibiShape[0], c.headsQ, 1, 1]), distance));
    }
    const hidden: Tensor[] = [];
    const window = windowVisible(c);
    if (window) hidden.push(window);
    if (t.mask) hidden.push(tf.notEqual(t.mask, 0));
    if (t.keyLengths) {
      const keys = tf.reshape(tf.range(0, c.seqK, 1, 'int32'), [1, 1, 1, c.seqK]);
      hidden.push(tf.less(keys, tf.reshape(t.keyLengths, [c.batch, 1, 1, 1])));
    }
    if (t.blockMask) hidden.push(blockVisible(c, t.blockMask));
    const visible = hidden.reduce((a, b) => tf.logicalAnd(a, b), tf.ones(s.shape, 'bool'));
    s = tf.where(visible, s, tf.fill(s.shape, -Infinity));

    const rowMax = tf.max(s, -1, true);
    const shift = tf.where(tf.isInf(rowMax), tf.zerosLike(rowMax), rowMax);
    const p = tf.exp(tf.sub(s, shift));
    const rowSum = tf.sum(p, -1, true);
    // A row with a visible finite score has rowSum ≥ 1 (its max contributes exp(0)); an empty row
    // (max −Infinity) has 0. Clamping to 1 and selecting −Infinity by `empty` keep log(0) and 0/0 out
    // of the graph, whose gradients would be NaN; comparisons (divNoNan's Equal) have no gradient.
    const empty = tf.isInf(tf.minimum(rowMax, 0));
    const rowSumSafe = tf.maximum(rowSum, 1);
    const lse = tf.squeeze(tf.where(empty, tf.fill(rowMax.shape, -Infinity), tf.add(tf.log(rowSumSafe), shift)), [3]) as Tensor3D;
    let probs: Tensor = tf.div(p, rowSumSafe);
    if (c.dropoutRate > 0) probs = tf.mul(probs, dropoutScale(c));
    const out = tf.matMul(probs as Tensor4D, v);
    return [swapLayout(c, out), lse];
  });
}
