// Comparison of a backend's float32 results with the float64 reference, shared by every backend's
// tests (Node and in-page runners), so that "passes" means the same thing everywhere. Tolerances
// are SPEC §3's:
//   forward:   max |got − ref| ≤ tol · max|v|   (tol 2e-5 on cpu/webgpu, 1e-3 on WebGL float32 textures)
//   gradients: ‖got − ref‖∞ / ‖ref‖∞ ≤ 1e-4
// Non-finite values are compared by position: NaN where the reference has NaN, the same ±Infinity
// where it has ±Infinity, and nowhere else.

export const FORWARD_TOLERANCE = 2e-5;
export const GRAD_TOLERANCE = 1e-4;
/** Guards the gradient ratio when the reference gradient is all zeros (e.g. every row empty). */
const TINY = 1e-30;

export interface Comparison {
  ok: boolean;
  /** Largest |got − ref| over positions where both are finite. */
  maxError: number;
  /** The largest error allowed. */
  bound: number;
  /** Empty when ok; else what differs, naming the case, the tensor, the index, got and expected. */
  message: string;
}

/** Multi-dimensional index of flat index `n` in `shape`, e.g. "[0, 1, 3, 2]". */
export function formatIndex(n: number, shape: readonly number[]): string {
  const coords: number[] = [];
  for (let axis = shape.length - 1; axis >= 0; axis--) {
    coords.unshift(n % shape[axis]);
    n = Math.floor(n / shape[axis]);
  }
  return `[${coords.join(', ')}]`;
}

/** Largest finite |x|, 0 when there is none. */
export function maxAbs(values: ArrayLike<number>): number {
  let max = 0;
  for (let n = 0; n < values.length; n++) {
    const a = Math.abs(values[n]);
    if (Number.isFinite(a) && a > max) max = a;
  }
  return max;
}

const sameNonFinite = (got: number, expected: number) =>
  Number.isNaN(expected) ? Number.isNaN(got) : Number.isFinite(expected) ? Number.isFinite(got) : got === expected;

/**
 * Checks |got − expected| ≤ bound at every finite position and identical NaN/±Infinity positions.
 * `label` names the case and tensor in the message.
 */
export function compareWithBound(label: string, got: ArrayLike<number>, expected: ArrayLike<number>,
  shape: readonly number[], bound: number, boundText: string): Comparison {
  if (got.length !== expected.length) {
    return { ok: false, maxError: Infinity, bound, message: `${label}: got ${got.length} values, expected ${expected.length}` };
  }
  let maxError = 0, worst = -1;
  const nonFinite: string[] = [];
  let nonFiniteCount = 0;
  for (let n = 0; n < expected.length; n++) {
    if (!sameNonFinite(got[n], expected[n])) {
      nonFiniteCount++;
      if (nonFinite.length < 5) nonFinite.push(`${formatIndex(n, shape)}: got ${got[n]}, expected ${expected[n]}`);
      continue;
    }
    if (!Number.isFinite(expected[n])) continue;
    const error = Math.abs(got[n] - expected[n]);
    if (error > maxError || worst < 0) { maxError = error; worst = n; }
  }
  const problems: string[] = [];
  if (nonFiniteCount > 0) {
    problems.push(`${nonFiniteCount} non-finite mismatch(es), e.g. ${nonFinite.join('; ')}`);
  }
  if (maxError > bound) {
    problems.push(`max abs error ${maxError.toExponential(3)} > ${boundText} = ${bound.toExponential(3)} at ` +
      `${formatIndex(worst, shape)}: got ${got[worst]}, expected ${expected[worst]}`);
  }
  return { ok: problems.length === 0, maxError, bound, message: problems.length ? `${label}: ${problems.join('; ')}` : '' };
}

/** SPEC's forward rule: max abs error ≤ tol · max|v| (v: the value tensor's finite entries). */
export function compareForward(label: string, got: ArrayLike<number>, expected: ArrayLike<number>,
  shape: readonly number[], maxAbsV: number, tol = FORWARD_TOLERANCE): Comparison {
  return compareWithBound(label, got, expected, shape, tol * maxAbsV, `${tol}·max|v| (${maxAbsV.toPrecision(4)})`);
}

/**
 * lse is not bounded by |v|: its error is compared relative to the size of the scores it comes
 * from, tol · max(1, max|lse_ref|), with the forward tolerance.
 */
export function compareLse(label: string, got: ArrayLike<number>, expected: ArrayLike<number>,
  shape: readonly number[], tol = FORWARD_TOLERANCE): Comparison {
  const size = Math.max(1, maxAbs(expected));
  return compareWithBound(label, got, expected, shape, tol * size, `${tol}·max(1, max|lse|) (${size.toPrecision(4)})`);
}

/** SPEC's gradient rule: ‖got − ref‖∞ ≤ tol · ‖ref‖∞. */
export function compareGrad(label: string, got: ArrayLike<number>, expected: ArrayLike<number>,
  shape: readonly number[], tol = GRAD_TOLERANCE): Comparison {
  const size = Math.max(maxAbs(expected), TINY);
  return compareWithBound(label, got, expected, shape, tol * size, `${tol}·‖ref‖∞ (${size.toPrecision(4)})`);
}

/** Throws with the comparison's message when it failed (for jest and in-page runners alike). */
export function assertComparison(result: Comparison): void {
  if (!result.ok) throw new Error(result.message);
}
