// Option validation: the op turns the user's tensors and options into one plain AttentionConfig
// before any kernel runs. Every backend, every program generator and every program cache key reads
// this object and nothing else, so an option is interpreted in exactly one place.
import type { NamedAttrMap, Tensor } from '@tensorflow/tfjs-core';

export type Layout = 'BHSD' | 'BSHD';
export type Precision = 'float32' | 'float16';

/** What the user may pass to `flashAttention`. */
export interface FlashAttentionOptions {
  scale?: number;
  causal?: boolean;
  windowSize?: [number, number];
  bias?: Tensor;
  mask?: Tensor;
  keyLengths?: Tensor;
  alibiSlopes?: Tensor;
  softcap?: number;
  dropout?: { rate: number; seed: number };
  blockSparse?: { blockMask: Tensor; blockSize: number };
  returnLse?: boolean;
  layout?: Layout;
  precision?: Precision;
}

/**
 * The normalized attention problem. A plain object of numbers, booleans and strings so that it can
 * travel as tfjs kernel attributes and be hashed into program cache keys as is.
 *
 * Shapes of optional tensors are kept left-padded to rank 4 ([B, Hq, Nq, Nk] order for bias, mask
 * and blockMask); an empty array means the tensor was not given.
 */
export type AttentionConfig = {
  batch: number;
  headsQ: number;
  headsKV: number;
  seqQ: number;
  seqK: number;
  headDim: number;
  headDimV: number;
  layout: Layout;
  scale: number;
  /** Visible keys of query i: i + seqK − seqQ − windowLeft ≤ j ≤ i + seqK − seqQ + windowRight;
   * −1 is unbounded. `causal` is folded in as windowRight = 0. */
  windowLeft: number;
  windowRight: number;
  /** 0: no softcap. */
  softcap: number;
  /** 0: no dropout. */
  dropoutRate: number;
  dropoutSeed: number;
  biasShape: number[];
  maskShape: number[];
  /** [B or 1, Hq]. */
  alibiShape: number[];
  hasKeyLengths: boolean;
  blockMaskShape: number[];
  /** 0: not block-sparse. */
  blockSize: number;
  precision: Precision;
};

/** Largest D and Dv the kernels are built for. */
export const MAX_HEAD_DIM = 256;

function fail(message: string): never {
  throw new Error(`flashAttention: ${message}`);
}

function describeShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

function checkRank4(name: string, t: Tensor, layout: Layout): void {
  if (!isTensor(t)) fail(`${name} must be a tf.Tensor, got ${typeof t}`);
  if (t.rank !== 4) {
    const order = layout === 'BHSD' ? '[batch, heads, seq, dim]' : '[batch, seq, heads, dim]';
    fail(`${name} must be rank 4 ${order} for layout '${layout}', got shape ${describeShape(t.shape)}`);
  }
  if (t.dtype !== 'float32') fail(`${name} must have dtype float32, got ${t.dtype}`);
}

function isTensor(t: unknown): t is Tensor {
  return typeof t === 'object' && t !== null && 'shape' in t && 'dtype' in t && 'dataId' in t;
}

function isFiniteNumber(x: unknown): x is number {
  return typeof x === 'number' && Number.isFinite(x);
}

/** Left-pads `shape` to rank 4 and checks that each dim is 1 or the target's. */
function broadcastShape(name: string, t: Tensor, target: readonly number[], targetName: string): number[] {
  if (!isTensor(t)) fail(`${name} must be a tf.Tensor, got ${typeof t}`);
  if (t.rank > 4) fail(`${name} must have rank ≤ 4, got shape ${describeShape(t.shape)}`);
  const padded: number[] = [...new Array<number>(4 - t.rank).fill(1), ...t.shape];
  padded.forEach((dim, axis) => {
    if (dim !== 1 && dim !== target[axis]) {
      fail(`${name} of shape ${describeShape(t.shape)} is not broadcastable to ` +
        `${targetName} ${describeShape(target)}`);
    }
  });
  return padded;
}

export interface AttentionTensors {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  bias?: Tensor;
  mask?: Tensor;
  keyLengths?: Tensor;
  alibiSlopes?: Tensor;
  blockMask?: Tensor;
}

const KNOWN_OPTIONS: ReadonlySet<string> = new Set([
  'scale', 'causal', 'windowSize', 'bias', 'mask', 'keyLengths', 'alibiSlopes', 'softcap', 'dropout',
  'blockSparse', 'returnLse', 'layout', 'precision',
]);

/**
 * Validates every argument of `flashAttention` and returns the normalized config with the tensors
 * it uses. Throws before anything is allocated, so a bad call leaks nothing.
 */
export function normalizeAttention(q: Tensor, k: Tensor, v: Tensor, options: FlashAttentionOptions = {}):
    { config: AttentionConfig; tensors: AttentionTensors; returnLse: boolean } {
  if (typeof options !== 'object' || options === null) fail(`options must be an object, got ${options}`);
  for (const key of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(key)) fail(`unknown option '${key}'`);
  }
  const layout = options.layout ?? 'BHSD';
  if (layout !== 'BHSD' && layout !== 'BSHD') fail(`layout must be 'BHSD' or 'BSHD', got '${layout}'`);
  checkRank4('q', q, layout);
  checkRank4('k', k, layout);
  checkRank4('v', v, layout);

  const dims = (t: Tensor) => {
    const [b, x, y, d] = t.shape as number[];
    return layout === 'BHSD' ? { b, h: x, s: y, d } : { b, h: y, s: x, d };
  };
  const qd = dims(q), kd = dims(k), vd = dims(v);
  const shapes = `q ${describeShape(q.shape)}, k ${describeShape(k.shape)}, v ${describeShape(v.shape)}`;
  if (kd.b !== qd.b || vd.b !== qd.b) fail(`batch sizes differ: ${shapes}`);
  if (kd.d !== qd.d) fail(`head size of k (${kd.d}) must equal head size of q (${qd.d}): ${shapes}`);
  if (vd.s !== kd.s) fail(`k and v must have the same sequence length, got ${kd.s} and ${vd.s}: ${shapes}`);
  if (vd.h !== kd.h) fail(`k and v must have the same number of heads, got ${kd.h} and ${vd.h}: ${shapes}`);
  if (qd.h % kd.h !== 0) {
    fail(`query heads (${qd.h}) must be a multiple of key/value heads (${kd.h}): ${shapes}`);
  }
  for (const [name, size] of [['q', qd.s], ['k', kd.s]] as const) {
    if (size < 1) fail(`${name} must have at least one position, got shape ${describeShape((name === 'q' ? q : k).shape)}`);
  }
  if (qd.b < 1 || kd.h < 1) fail(`batch and heads must be ≥ 1: ${shapes}`);
  for (const [name, size] of [['q/k', qd.d], ['v', vd.d]] as const) {
    if (size < 1 || size > MAX_HEAD_DIM) {
      fail(`unsupported head size ${size} of ${name}: expected 1 to ${MAX_HEAD_DIM}`);
    }
  }

  const scale = options.scale ?? 1 / Math.sqrt(qd.d);
  if (!isFiniteNumber(scale)) fail(`scale must be a finite number, got ${options.scale}`);

  let [windowLeft, windowRight] = [-1, -1];
  if (options.windowSize !== undefined) {
    const w = options.windowSize;
    if (!Array.isArray(w) || w.length !== 2 || !w.every(x => Number.isInteger(x) && x >= -1)) {
      fail(`windowSize must be [left, right] with integers ≥ −1 (−1 = unbounded), got ${JSON.stringify(w)}`);
    }
    [windowLeft, windowRight] = w;
  }
  if (options.causal !== undefined && typeof options.causal !== 'boolean') {
    fail(`causal must be a boolean, got ${options.causal}`);
  }
  if (options.causal) windowRight = windowRight === -1 ? 0 : Math.min(windowRight, 0);

  const softcap = options.softcap ?? 0;
  if (options.softcap !== undefined && !(isFiniteNumber(softcap) && softcap > 0)) {
    fail(`softcap must be a number > 0, got ${options.softcap}`);
  }

  let dropoutRate = 0, dropoutSeed = 0;
  if (options.dropout !== undefined) {
    const { rate, seed } = options.dropout;
    if (!(isFiniteNumber(rate) && rate >= 0 && rate < 1)) fail(`dropout.rate must be in [0, 1), got ${rate}`);
    if (!(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32)) {
      fail(`dropout.seed must be an integer in [0, 2^32), got ${seed}`);
    }
    [dropoutRate, dropoutSeed] = [rate, seed];
  }

  const scoresShape = [qd.b, qd.h, qd.s, kd.s];
  const scoresName = '[batch, headsQ, seqQ, seqK]';
  const tensors: AttentionTensors = { q, k, v };
  let biasShape: number[] = [];
  if (options.bias !== undefined) {
    biasShape = broadcastShape('bias', options.bias, scoresShape, scoresName);
    if (options.bias.dtype !== 'float32') fail(`bias must have dtype float32, got ${options.bias.dtype}`);
    tensors.bias = options.bias;
  }
  let maskShape: number[] = [];
  if (options.mask !== undefined) {
    maskShape = broadcastShape('mask', options.mask, scoresShape, scoresName);
    if (options.mask.dtype !== 'bool' && options.mask.dtype !== 'int32') {
      fail(`mask must have dtype bool or int32, got ${options.mask.dtype}`);
    }
    tensors.mask = options.mask;
  }
  const keyLengths = options.keyLengths;
  if (keyLengths !== undefined) {
    if (!isTensor(keyLengths)) fail(`keyLengths must be a tf.Tensor, got ${typeof keyLengths}`);
    if (keyLengths.rank !== 1 || keyLengths.shape[0] !== qd.b) {
      fail(`keyLengths must have shape [${qd.b}] (one length per batch), got ${describeShape(keyLengths.shape)}`);
    }
    if (keyLengths.dtype !== 'int32') fail(`keyLengths must have dtype int32, got ${keyLengths.dtype}`);
    tensors.keyLengths = keyLengths;
  }
  let alibiShape: number[] = [];
  const slopes = options.alibiSlopes;
  if (slopes !== undefined) {
    if (!isTensor(slopes)) fail(`alibiSlopes must be a tf.Tensor, got ${typeof slopes}`);
    const ok = (slopes.rank === 1 && slopes.shape[0] === qd.h) ||
      (slopes.rank === 2 && slopes.shape[1] === qd.h && (slopes.shape[0] === qd.b || slopes.shape[0] === 1));
    if (!ok) fail(`alibiSlopes must have shape [${qd.h}] or [${qd.b}, ${qd.h}], got ${describeShape(slopes.shape)}`);
    if (slopes.dtype !== 'float32') fail(`alibiSlopes must have dtype float32, got ${slopes.dtype}`);
    alibiShape = slopes.rank === 1 ? [1, qd.h] : [...slopes.shape];
    tensors.alibiSlopes = slopes;
  }
  let blockMaskShape: number[] = [];
  let blockSize = 0;
  if (options.blockSparse !== undefined) {
    const { blockMask, blockSize: size } = options.blockSparse;
    if (!(Number.isInteger(size) && size >= 1)) fail(`blockSparse.blockSize must be an integer ≥ 1, got ${size}`);
    if (!isTensor(blockMask)) fail(`blockSparse.blockMask must be a tf.Tensor, got ${typeof blockMask}`);
    const nbq = Math.ceil(qd.s / size), nbk = Math.ceil(kd.s / size);
    const expected = `[${qd.b} or 1, ${qd.h} or 1, ${nbq}, ${nbk}]`;
    const s = blockMask.shape;
    if (blockMask.rank !== 4 || (s[0] !== 1 && s[0] !== qd.b) || (s[1] !== 1 && s[1] !== qd.h) ||
        s[2] !== nbq || s[3] !== nbk) {
      fail(`blockSparse.blockMask must have shape ${expected} for blockSize ${size}, got ${describeShape(s)}`);
    }
    if (blockMask.dtype !== 'bool' && blockMask.dtype !== 'int32') {
      fail(`blockSparse.blockMask must have dtype bool or int32, got ${blockMask.dtype}`);
    }
    blockMaskShape = [...s];
    blockSize = size;
    tensors.blockMask = blockMask;
  }

  const returnLse = options.returnLse ?? false;
  if (typeof returnLse !== 'boolean') fail(`returnLse must be a boolean, got ${returnLse}`);
  const precision = options.precision ?? 'float32';
  if (precision !== 'float32' && precision !== 'float16') {
    fail(`precision must be 'float32' or 'float16', got '${precision}'`);
  }

  const config: AttentionConfig = {
    batch: qd.b, headsQ: qd.h, headsKV: kd.h, seqQ: qd.s, seqK: kd.s, headDim: qd.d, headDimV: vd.d,
    layout, scale, windowLeft, windowRight, softcap, dropoutRate, dropoutSeed,
    biasShape, maskShape, alibiShape, hasKeyLengths: keyLengths !== undefined, blockMaskShape, blockSize,
    precision,
  };
  return { config, tensors, returnLse };
}

/** Shape of the output tensor in the config's layout. */
export function outputShape(c: AttentionConfig): [number, number, number, number] {
  return c.layout === 'BHSD' ? [c.batch, c.headsQ, c.seqQ, c.headDimV] : [c.batch, c.seqQ, c.headsQ, c.headDimV];
}

/** Element strides of a [batch, heads, seq, dim] view of a tensor stored in the config's layout. */
export function layoutStrides(c: AttentionConfig, heads: number, seq: number, dim: number):
    { batch: number; head: number; seq: number } {
  return c.layout === 'BHSD'
    ? { batch: heads * seq * dim, head: seq * dim, seq: dim }
    : { batch: seq * heads * dim, head: dim, seq: heads * dim };
}

/** Offset of query row i relative to key positions (bottom-right alignment). */
export function queryOffset(c: AttentionConfig): number {
  return c.seqK - c.seqQ;
}

const NUMBER_FIELDS = [
  'batch', 'headsQ', 'headsKV', 'seqQ', 'seqK', 'headDim', 'headDimV', 'scale', 'windowLeft', 'windowRight',
  'softcap', 'dropoutRate', 'dropoutSeed', 'blockSize',
] as const;
const SHAPE_FIELDS = ['biasShape', 'maskShape', 'alibiShape', 'blockMaskShape'] as const;

function isAttentionConfig(attrs: unknown): attrs is AttentionConfig {
  if (typeof attrs !== 'object' || attrs === null) return false;
  const a = attrs as Record<string, unknown>;
  return NUMBER_FIELDS.every(name => typeof a[name] === 'number') &&
    SHAPE_FIELDS.every(name => Array.isArray(a[name])) &&
    typeof a.hasKeyLengths === 'boolean' && (a.layout === 'BHSD' || a.layout === 'BSHD') &&
    (a.precision === 'float32' || a.precision === 'float16');
}

/** The kernels' attrs are the AttentionConfig the op built; anything else is a caller's bug. */
export function attentionConfig(attrs: NamedAttrMap | undefined): AttentionConfig {
  if (!isAttentionConfig(attrs)) throw new Error('flashAttention: kernel attributes are not an AttentionConfig');
  return attrs;
}
