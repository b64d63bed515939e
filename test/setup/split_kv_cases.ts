// The split-KV (flash-decoding) tests shared by the cpu and webgpu-in-Node test files: the shared
// case list forced through the split path, and decode shapes (Nq ∈ {1, 4} against long key
// sequences) that the shape rule sends there by itself. Decode shapes are kept small in D and heads
// so that SwiftShader runs them in seconds.
import type { AttentionCase } from '../cases';
import { CASES } from '../cases';

/** Forced range counts for the shared case list: 3 ranges cut a 17-key case mid-tile, 64 leaves most ranges empty. */
export const FORCED_SPLITS = [3, 64];

/** Decode shapes; `grad` ones also check the (one-pass) backward against the reference. */
export const DECODE_CASES: AttentionCase[] = [
  { name: 'decode Nq=1 Nk=1000 causal keyLengths', b: 2, hq: 2, hkv: 1, nq: 1, nk: 1000, d: 8, dv: 8,
    causal: true, keyLengths: [1000, 517], grad: true },
  { name: 'decode Nq=4 Nk=3000 BSHD causal', b: 1, hq: 2, hkv: 2, nq: 4, nk: 3000, d: 4, dv: 4,
    layout: 'BSHD', causal: true, grad: true },
  { name: 'decode Nq=4 Nk=2048 window alibi dropout', b: 1, hq: 2, hkv: 1, nq: 4, nk: 2048, d: 4, dv: 4,
    windowSize: [700, 0], alibi: [2], dropout: { rate: 0.25, seed: 99 }, grad: true },
  { name: 'decode Nq=1 Nk=16384', b: 1, hq: 1, hkv: 1, nq: 1, nk: 16384, d: 4, dv: 4, grad: false },
  { name: 'decode Nq=4 Nk=65536 causal', b: 1, hq: 1, hkv: 1, nq: 4, nk: 65536, d: 4, dv: 4, causal: true, grad: false },
  { name: 'decode Nq=1 Nk=65536 keyLengths', b: 1, hq: 2, hkv: 1, nq: 1, nk: 65536, d: 4, dv: 4, keyLengths: [40000], grad: false },
];

export { CASES };
