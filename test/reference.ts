// The float64 reference every backend's kernels are tested against. It is written straight from
// SPEC §2 (one score at a time, whole rows, no tiling, no online softmax) so that it shares no
// algorithm with the kernels: per (b, h, i, j)
//
//   raw = scale · q_i · k_j ;  s = softcap ? c·tanh(raw / c) : raw ;  s += bias ;  s −= slope·|i + Nk − Nq − j|
//   j is hidden if outside causal/window, mask == 0, j ≥ keyLengths[b], blockMask == 0, or s == −Infinity
//   lse_i = log Σ_visible exp(s_ij) ;  P_ij = exp(s_ij − lse_i) ;  O_i = Σ_visible P_ij · Z_ij · v_j
//
// with Z_ij = keep(seed, b, h, i, j) / (1 − rate). A row with no visible key has O = 0, lse = −Infinity
// and zero gradients. Gradients are those of loss = Σ dO ∘ O + Σ dLse ∘ lse, derived by hand with the
// textbook softmax Jacobian (not with the kernels' rowsum(dO ∘ O) shortcut), and checked here
// against central finite differences of the same float64 code.
import type { AttentionCase, CaseData } from './cases';
import { dropoutKeep, dropoutThreshold } from '../src/dropout';

/** The float inputs a gradient exists for. */
export type GradTensorName = 'q' | 'k' | 'v' | 'bias';

/** A case's inputs in float64, rounded once to the float32 values the kernels see. */
export interface Inputs64 {
  c: AttentionCase;
  q: Float64Array; k: Float64Array; v: Float64Array;
  bias?: Float64Array;
  mask?: Int32Array; keyLengths?: Int32Array; alibiSlopes?: Float64Array; blockMask?: Int32Array;
  /** Element strides of bias, mask and blockMask over (b, h, i, j), 0 along broadcast axes. */
  biasStrides: number[]; maskStrides: number[]; blockStrides: number[];
  /** Dropout factor Z[b, h, i, j] (0 or 1/(1−rate)), all 1 without dropout. */
  dropScale: Float64Array;
}

export interface ReferenceForward {
  /** In the case's layout: [B, Hq, Nq, Dv] (BHSD) or [B, Nq, Hq, Dv] (BSHD). */
  output: Float64Array;
  /** [B, Hq, Nq]. */
  lse: Float64Array;
}

export interface ReferenceGrads {
  dq: Float64Array; dk: Float64Array; dv: Float64Array;
  /** In the case's own bias shape, when there is a bias. */
  dbias?: Float64Array;
}

const toFloat32 = (values: number[]) => Float64Array.from(values, Math.fround);

export function prepareInputs(c: AttentionCase, data: CaseData): Inputs64 {
  const inputs: Inputs64 = {
    c,
    q: toFloat32(data.q.values), k: toFloat32(data.k.values), v: toFloat32(data.v.values),
    dropScale: new Float64Array(c.b * c.hq * c.nq * c.nk).fill(1),
    biasStrides: broadcastStrides(c.bias ?? []), maskStrides: broadcastStrides(c.mask ?? []), blockStrides: [],
  };
  if (c.blockSparse) {
    const { blockSize, broadcast } = c.blockSparse;
    inputs.blockStrides = broadcastStrides(
      [broadcast ? 1 : c.b, broadcast ? 1 : c.hq, Math.ceil(c.nq / blockSize), Math.ceil(c.nk / blockSize)]);
  }
  if (data.bias) inputs.bias = toFloat32(data.bias.values);
  if (data.mask) inputs.mask = Int32Array.from(data.mask.values);
  if (data.keyLengths) inputs.keyLengths = Int32Array.from(data.keyLengths.values);
  if (data.alibiSlopes) inputs.alibiSlopes = toFloat32(data.alibiSlopes.values);
  if (data.blockMask) inputs.blockMask = Int32Array.from(data.blockMask.values);
  if (c.dropout && c.dropout.rate > 0) {
    const threshold = dropoutThreshold(c.dropout.rate);
    const kept = 1 / (1 - c.dropout.rate);
    let n = 0;
    for (let b = 0; b < c.b; b++) {
      for (let h = 0; h < c.hq; h++) {
        for (let i = 0; i < c.nq; i++) {
          for (let j = 0; j < c.nk; j++) inputs.dropScale[n++] = dropoutKeep(threshold, c.dropout.seed, b, h, i, j) ? kept : 0;
        }
      }
    }
  }
  return inputs;
}

/** Flat index of element (b, h, n, d) of a q/k/v/output tensor stored in the case's layout. */
function at(c: AttentionCase, heads: number, seq: number, dim: number, b: number, h: number, n: number, d: number): number {
  return c.layout === 'BSHD' ? ((b * seq + n) * heads + h) * dim + d : ((b * heads + h) * seq + n) * dim + d;
}

/** Strides over (b, h, i, j) of a tensor of `shape` (rank ≤ 4) broadcast to [B, Hq, Nq, Nk]. */
function broadcastStrides(shape: number[]): number[] {
  const padded = [...new Array<number>(4 - shape.length).fill(1), ...shape];
  const strides = [0, 0, 0, 0];
  let stride = 1;
  for (let axis = 3; axis >= 0; axis--) {
    strides[axis] = padded[axis] === 1 ? 0 : stride;
    stride *= padded[axis];
  }
  return strides;
}

function broadcastIndex(strides: number[], b: number, h: number, i: number, j: number): number {
  return b * strides[0] + h * strides[1] + i * strides[2] + j * strides[3];
}

/** One query row's visible keys with their pre-softcap scores `raw` and final scores `s`. */
interface Row { keys: number[]; raw: number[]; s: number[] }

function isVisibleKey(x: Inputs64, b: number, h: number, i: number, j: number): boolean {
  const c = x.c;
  const pos = i + c.nk - c.nq;
  if (c.causal && j > pos) return false;
  if (c.windowSize) {
    const [left, right] = c.windowSize;
    if (left >= 0 && j < pos - left) return false;
    if (right >= 0 && j > pos + right) return false;
  }
  if (x.mask && x.mask[broadcastIndex(x.maskStrides, b, h, i, j)] === 0) return false;
  if (x.keyLengths && j >= x.keyLengths[b]) return false;
  if (x.blockMask && c.blockSparse) {
    const size = c.blockSparse.blockSize;
    if (x.blockMask[broadcastIndex(x.blockStrides, b, h, Math.floor(i / size), Math.floor(j / size))] === 0) return false;
  }
  return true;
}

function scaleOf(c: AttentionCase): number {
  return c.scale ?? 1 / Math.sqrt(c.d);
}

function kvHead(c: AttentionCase, h: number): number {
  return Math.floor(h / (c.hq / c.hkv));
}

function slope(x: Inputs64, b: number, h: number): number {
  const c = x.c;
  if (!x.alibiSlopes || !c.alibi) return 0;
  return c.alibi.length === 1 ? x.alibiSlopes[h] : x.alibiSlopes[(c.alibi[0] === 1 ? 0 : b) * c.hq + h];
}

function scoreRow(x: Inputs64, b: number, h: number, i: number): Row {
  const c = x.c;
  const hk = kvHead(c, h);
  const scale = scaleOf(c);
  const pos = i + c.nk - c.nq;
  const row: Row = { keys: [], raw: [], s: [] };
  for (let j = 0; j < c.nk; j++) {
    if (!isVisibleKey(x, b, h, i, j)) continue;
    let dot = 0;
    for (let d = 0; d < c.d; d++) dot += x.q[at(c, c.hq, c.nq, c.d, b, h, i, d)] * x.k[at(c, c.hkv, c.nk, c.d, b, hk, j, d)];
    const raw = scale * dot;
    let s = c.softcap ? c.softcap * Math.tanh(raw / c.softcap) : raw;
    if (x.bias) s += x.bias[broadcastIndex(x.biasStrides, b, h, i, j)];
    s -= slope(x, b, h) * Math.abs(pos - j);
    if (s === -Infinity) continue;
    row.keys.push(j);
    row.raw.push(raw);
    row.s.push(s);
  }
  return row;
}

/**
 * Softmax probabilities of a non-empty row and its lse, as plain math gives them: a NaN score makes
 * everything NaN; a +Infinity score makes P = ∞/∞ = NaN but lse = log Σ exp(s) = +Infinity (the
 * max-shifted form would say NaN there).
 */
function softmaxRow(s: number[]): { p: number[]; lse: number } {
  const max = s.reduce((m, x) => Math.max(m, x), -Infinity);
  const e = s.map(x => Math.exp(x - max));
  const sum = e.reduce((a, x) => a + x, 0);
  return { p: e.map(x => x / sum), lse: max === Infinity ? Infinity : max + Math.log(sum) };
}

function forEachRow(c: AttentionCase, f: (b: number, h: number, i: number) => void): void {
  for (let b = 0; b < c.b; b++) for (let h = 0; h < c.hq; h++) for (let i = 0; i < c.nq; i++) f(b, h, i);
}

export function referenceForward64(x: Inputs64): ReferenceForward {
  const c = x.c;
  const output = new Float64Array(c.b * c.hq * c.nq * c.dv);
  const lse = new Float64Array(c.b * c.hq * c.nq).fill(-Infinity);
  forEachRow(c, (b, h, i) => {
    const row = scoreRow(x, b, h, i);
    if (row.keys.length === 0) return;
    const hk = kvHead(c, h);
    const { p, lse: rowLse } = softmaxRow(row.s);
    lse[(b * c.hq + h) * c.nq + i] = rowLse;
    const dropBase = ((b * c.hq + h) * c.nq + i) * c.nk;
    for (let d = 0; d < c.dv; d++) {
      let sum = 0;
      row.keys.forEach((j, n) => { sum += p[n] * x.dropScale[dropBase + j] * x.v[at(c, c.hkv, c.nk, c.dv, b, hk, j, d)]; });
      output[at(c, c.hq, c.nq, c.dv, b, h, i, d)] = sum;
    }
  });
  return { output, lse };
}

/**
 * Analytic gradients of loss = Σ dOutput ∘ output + Σ dLse ∘ lse. dOutput is in the case's output
 * layout, dLse is [B, Hq, Nq].
 */
export function referenceGrads64(x: Inputs64, dOutput: ArrayLike<number>, dLse: ArrayLike<number>): ReferenceGrads {
  const c = x.c;
  const grads: ReferenceGrads = {
    dq: new Float64Array(x.q.length), dk: new Float64Array(x.k.length), dv: new Float64Array(x.v.length),
  };
  if (x.bias) grads.dbias = new Float64Array(x.bias.length);
  const scale = scaleOf(c);
  forEachRow(c, (b, h, i) => {
    const row = scoreRow(x, b, h, i);
    if (row.keys.length === 0) return;
    const hk = kvHead(c, h);
    const { p } = softmaxRow(row.s);
    const dropBase = ((b * c.hq + h) * c.nq + i) * c.nk;
    const dO = Array.from({ length: c.dv }, (_, d) => Math.fround(dOutput[at(c, c.hq, c.nq, c.dv, b, h, i, d)]));
    const rowDLse = Math.fround(dLse[(b * c.hq + h) * c.nq + i]);
    // ∂loss/∂P_ij through the output: Z_ij · dO_i · v_j.
    const dP = row.keys.map(j => {
      let dot = 0;
      for (let d = 0; d < c.dv; d++) dot += dO[d] * x.v[at(c, c.hkv, c.nk, c.dv, b, hk, j, d)];
      return x.dropScale[dropBase + j] * dot;
    });
    // Softmax Jacobian ∂P_ik/∂s_ij = P_ik (δ_kj − P_ij), and ∂lse_i/∂s_ij = P_ij.
    const pdP = p.reduce((a, pk, n) => a + pk * dP[n], 0);
    row.keys.forEach((j, n) => {
      const dS = p[n] * (dP[n] - pdP) + rowDLse * p[n];
      if (grads.dbias) grads.dbias[broadcastIndex(x.biasStrides, b, h, i, j)] += dS;
      const tanh = c.softcap ? Math.tanh(row.raw[n] / c.softcap) : 0;
      const dRaw = c.softcap ? dS * (1 - tanh * tanh) : dS;
      for (let d = 0; d < c.d; d++) {
        const qi = at(c, c.hq, c.nq, c.d, b, h, i, d), kj = at(c, c.hkv, c.nk, c.d, b, hk, j, d);
        grads.dq[qi] += scale * dRaw * x.k[kj];
        grads.dk[kj] += scale * dRaw * x.q[qi];
      }
      const weight = p[n] * x.dropScale[dropBase + j];
      for (let d = 0; d < c.dv; d++) grads.dv[at(c, c.hkv, c.nk, c.dv, b, hk, j, d)] += weight * dO[d];
    });
  });
  return grads;
}

export function referenceForward(c: AttentionCase, data: CaseData): ReferenceForward {
  return referenceForward64(prepareInputs(c, data));
}

export function referenceGrads(c: AttentionCase, data: CaseData,
  dOutput: ArrayLike<number> = data.dOutput.values, dLse: ArrayLike<number> = data.dLse.values): ReferenceGrads {
  return referenceGrads64(prepareInputs(c, data), dOutput, dLse);
}

/** loss = Σ dO ∘ O + Σ dLse ∘ lse over rows with a visible key (an empty row's lse is the constant −Infinity). */
export function referenceLoss64(x: Inputs64, dOutput: ArrayLike<number>, dLse: ArrayLike<number>): number {
  const { output, lse } = referenceForward64(x);
  let loss = 0;
  output.forEach((o, n) => { loss += Math.fround(dOutput[n]) * o; });
  lse.forEach((l, n) => { if (l !== -Infinity) loss += Math.fround(dLse[n]) * l; });
  return loss;
}

export interface FiniteDifferenceResult {
  tensor: GradTensorName;
  /** Flat indices that were perturbed and the central difference at each. */
  indices: number[];
  values: number[];
}

/**
 * Central finite differences (f(x+ε) − f(x−ε)) / 2ε of `referenceLoss64` with respect to about
 * `perTensor` evenly spread entries of each of q, k, v and bias, all in float64: the check that
 * `referenceGrads64` is the derivative of `referenceForward64`. ε = 1e-6 leaves truncation (~ε²)
 * and rounding (~1e-16/ε) errors both near 1e-10 relative.
 */
export function finiteDifferenceGrads64(x: Inputs64, dOutput: ArrayLike<number>, dLse: ArrayLike<number>,
  eps = 1e-6, perTensor = Infinity): FiniteDifferenceResult[] {
  const results: FiniteDifferenceResult[] = [];
  for (const tensor of ['q', 'k', 'v', 'bias'] as const) {
    const values = x[tensor];
    if (!values) continue;
    const result: FiniteDifferenceResult = { tensor, indices: [], values: [] };
    // An odd stride walks through every head, row and column phase of the tensor.
    const stride = Math.max(1, Math.ceil(values.length / perTensor)) | 1;
    for (let n = 0; n < values.length; n += stride) {
      const original = values[n];
      if (!Number.isFinite(original)) continue;
      values[n] = original + eps;
      const plus = referenceLoss64(x, dOutput, dLse);
      values[n] = original - eps;
      const minus = referenceLoss64(x, dOutput, dLse);
      values[n] = original;
      result.indices.push(n);
      result.values.push((plus - minus) / (2 * eps));
    }
    results.push(result);
  }
  return results;
}
