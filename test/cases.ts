// The one case list every backend's kernels are tested on (cpu in Node, webgpu in Node through
// Dawn, webgl and webgpu in headless Chromium). A case is plain JSON so it can be sent to a page;
// `caseData` expands it into deterministic input values (seeded), the same wherever it runs.
import type { Layout } from '../src/config';

export interface AttentionCase {
  name: string;
  b: number; hq: number; hkv: number; nq: number; nk: number; d: number; dv: number;
  layout?: Layout;
  scale?: number;
  causal?: boolean;
  windowSize?: [number, number];
  /** Shape of an additive float bias; a few entries are −Infinity when `biasNegInf`. */
  bias?: number[];
  biasNegInf?: boolean;
  /** Shape of a mask; about a third of entries hidden. `maskRowsHidden` hides these query rows entirely. */
  mask?: number[];
  maskDtype?: 'bool' | 'int32';
  maskRowsHidden?: number[];
  keyLengths?: number[];
  /** Shape of the slopes: [Hq] or [B, Hq]. */
  alibi?: number[];
  softcap?: number;
  dropout?: { rate: number; seed: number };
  /** Block-sparse attention with about half the blocks live; blockMask's batch/head dims are 1 when `broadcast`. */
  blockSparse?: { blockSize: number; broadcast?: boolean };
  /** Non-finite inputs: which tensor, which flat index, which value. */
  poison?: { tensor: 'q' | 'k' | 'v'; index: number; value: number };
  /** Whether gradients are checked for this case (all but the largest and poisoned ones). */
  grad: boolean;
}

export interface TensorData {
  shape: number[];
  dtype: 'float32' | 'int32' | 'bool';
  values: number[];
}

export interface CaseData {
  q: TensorData; k: TensorData; v: TensorData;
  bias?: TensorData; mask?: TensorData; keyLengths?: TensorData; alibiSlopes?: TensorData; blockMask?: TensorData;
  /** Upstream gradients of the output and lse used by gradient checks. */
  dOutput: TensorData; dLse: TensorData;
}

const base = { b: 1, hq: 2, hkv: 2, nq: 17, nk: 17, d: 8, dv: 8, grad: true };

export const CASES: AttentionCase[] = [
  { ...base, name: 'plain' },
  { ...base, name: 'N=1', nq: 1, nk: 1 },
  { ...base, name: 'N=129 D=64', nq: 129, nk: 129, d: 64, dv: 64, hq: 1, hkv: 1 },
  { ...base, name: 'D=1', d: 1, dv: 1 },
  { ...base, name: 'D=7 Dv=5', d: 7, dv: 5 },
  { ...base, name: 'D=80', d: 80, dv: 80, nq: 33, nk: 33, hq: 1, hkv: 1 },
  { ...base, name: 'Nq<Nk', nq: 5, nk: 37 },
  { ...base, name: 'Nq>Nk', nq: 37, nk: 5 },
  { ...base, name: 'GQA 4:2', hq: 4, hkv: 2 },
  { ...base, name: 'MQA 3:1', hq: 3, hkv: 1, b: 2 },
  { ...base, name: 'BSHD', layout: 'BSHD', hq: 4, hkv: 2, b: 2, nq: 9, nk: 13, d: 6, dv: 10 },
  { ...base, name: 'scale', scale: 0.3 },
  { ...base, name: 'causal', causal: true },
  { ...base, name: 'causal Nq<Nk', causal: true, nq: 7, nk: 23 },
  { ...base, name: 'causal Nq>Nk (empty rows)', causal: true, nq: 23, nk: 7 },
  { ...base, name: 'window', windowSize: [4, 2] },
  { ...base, name: 'window+causal', windowSize: [3, -1], causal: true },
  { ...base, name: 'bias full', bias: [1, 2, 17, 17] },
  { ...base, name: 'bias broadcast rows', bias: [17], b: 2 },
  { ...base, name: 'bias per head', bias: [2, 1, 1], hq: 2, biasNegInf: true },
  { ...base, name: 'bias per batch -inf', bias: [2, 1, 17, 17], b: 2, biasNegInf: true },
  { ...base, name: 'mask bool', mask: [1, 1, 17, 17], maskDtype: 'bool' },
  { ...base, name: 'mask int32 fully masked rows', mask: [2, 2, 17, 17], b: 2, maskDtype: 'int32', maskRowsHidden: [0, 5, 16] },
  { ...base, name: 'keyLengths', b: 3, keyLengths: [17, 4, 1] },
  { ...base, name: 'keyLengths zero', b: 2, keyLengths: [0, 9] },
  { ...base, name: 'alibi [H]', alibi: [2] },
  { ...base, name: 'alibi [B,H]', alibi: [2, 2], b: 2, causal: true },
  { ...base, name: 'softcap', softcap: 2 },
  { ...base, name: 'dropout', dropout: { rate: 0.3, seed: 1234 } },
  { ...base, name: 'block sparse', nq: 40, nk: 36, blockSparse: { blockSize: 8 } },
  { ...base, name: 'block sparse broadcast causal', nq: 33, nk: 33, causal: true, blockSparse: { blockSize: 16, broadcast: true } },
  {
    ...base, name: 'everything', b: 2, hq: 4, hkv: 2, nq: 19, nk: 23, d: 7, dv: 9, layout: 'BSHD', causal: true,
    windowSize: [9, 0], bias: [2, 1, 19, 23], mask: [1, 4, 1, 23], maskDtype: 'bool', keyLengths: [20, 23],
    alibi: [4], softcap: 3, dropout: { rate: 0.2, seed: 7 }, blockSparse: { blockSize: 8 }, scale: 0.5,
  },
  { ...base, name: 'NaN in q', poison: { tensor: 'q', index: 8 * 3, value: NaN }, grad: false },
  { ...base, name: 'Inf in k', poison: { tensor: 'k', index: 8 * 5 + 1, value: Infinity }, grad: false },
  { ...base, name: 'NaN in v', poison: { tensor: 'v', index: 8 * 2, value: NaN }, grad: false },
];

/** mulberry32: a small seeded PRNG so every runtime builds the same inputs. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hashName(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

function size(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function caseData(c: AttentionCase): CaseData {
  const random = rng(hashName(c.name));
  const normal = () => (random() + random() + random() - 1.5) * 2;
  const floats = (shape: number[]): TensorData => ({ shape, dtype: 'float32', values: Array.from({ length: size(shape) }, normal) });
  const layout = c.layout ?? 'BHSD';
  const shape4 = (h: number, n: number, d: number) => layout === 'BHSD' ? [c.b, h, n, d] : [c.b, n, h, d];
  const data: CaseData = {
    q: floats(shape4(c.hq, c.nq, c.d)),
    k: floats(shape4(c.hkv, c.nk, c.d)),
    v: floats(shape4(c.hkv, c.nk, c.dv)),
    dOutput: floats(shape4(c.hq, c.nq, c.dv)),
    dLse: floats([c.b, c.hq, c.nq]),
  };
  if (c.poison) data[c.poison.tensor].values[c.poison.index] = c.poison.value;
  if (c.bias) {
    data.bias = floats(c.bias);
    if (c.biasNegInf) data.bias.values = data.bias.values.map(x => (x > 1.2 ? -Infinity : x));
  }
  if (c.mask) {
    const values = Array.from({ length: size(c.mask) }, () => (random() < 0.33 ? 0 : 1));
    const [, , rows, cols] = [...new Array<number>(4 - c.mask.length).fill(1), ...c.mask];
    for (const row of c.maskRowsHidden ?? []) {
      for (let n = 0; n < values.length; n++) if (Math.floor(n / cols) % rows === row) values[n] = 0;
    }
    data.mask = { shape: c.mask, dtype: c.maskDtype ?? 'bool', values };
  }
  if (c.keyLengths) data.keyLengths = { shape: [c.b], dtype: 'int32', values: c.keyLengths };
  if (c.alibi) data.alibiSlopes = { shape: c.alibi, dtype: 'float32', values: Array.from({ length: size(c.alibi) }, () => 0.05 + random() * 0.5) };
  if (c.blockSparse) {
    const { blockSize, broadcast } = c.blockSparse;
    const shape = [broadcast ? 1 : c.b, broadcast ? 1 : c.hq, Math.ceil(c.nq / blockSize), Math.ceil(c.nk / blockSize)];
    data.blockMask = { shape, dtype: 'int32', values: Array.from({ length: size(shape) }, () => (random() < 0.5 ? 1 : 0)) };
  }
  return data;
}
