import * as tf from '@tensorflow/tfjs-core';

/** mulberry32: a tiny seeded PRNG, so batches (and runs) are reproducible. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Batch {
  /** int32 [batch, context]: input tokens. */
  x: tf.Tensor2D;
  /** int32 [batch, context]: the next token at each position. */
  y: tf.Tensor2D;
}

/**
 * Next-token batches from one token stream: random windows of context + 1 tokens, the last
 * `validationFraction` of the text held out for validation.
 */
export class TokenDataset {
  readonly train: Int32Array;
  readonly validation: Int32Array;
  private readonly random: () => number;

  constructor(tokens: ArrayLike<number>, validationFraction = 0.05, seed = 1) {
    const all = Int32Array.from(tokens);
    const cut = Math.floor(all.length * (1 - validationFraction));
    this.train = all.subarray(0, cut);
    this.validation = all.subarray(cut);
    this.random = seededRandom(seed);
  }

  /** Windows at random places of the training split. */
  batch(batchSize: number, context: number): Batch {
    const room = this.room(this.train, context, 'training');
    return windows(this.train, context, Array.from({ length: batchSize }, () => Math.floor(this.random() * room)));
  }

  /** `index`-th of `count` batches of windows spread evenly over the validation split: the same every call. */
  validationBatch(index: number, count: number, batchSize: number, context: number): Batch {
    const room = this.room(this.validation, context, 'validation');
    const total = count * batchSize;
    return windows(this.validation, context,
      Array.from({ length: batchSize }, (_, b) => Math.floor(((index * batchSize + b) * room) / total)));
  }

  private room(source: Int32Array, context: number, split: string): number {
    if (source.length < context + 1) {
      throw new Error(`the ${split} split has ${source.length} tokens, fewer than context + 1 = ${context + 1}`);
    }
    return source.length - context;
  }
}

function windows(source: Int32Array, context: number, starts: number[]): Batch {
  const x = new Int32Array(starts.length * context);
  const y = new Int32Array(starts.length * context);
  starts.forEach((start, b) => {
    x.set(source.subarray(start, start + context), b * context);
    y.set(source.subarray(start + 1, start + 1 + context), b * context);
  });
  return {
    x: tf.tensor2d(x, [starts.length, context], 'int32'),
    y: tf.tensor2d(y, [starts.length, context], 'int32'),
  };
}
