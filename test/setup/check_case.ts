// Compares a backend's CaseResult with the float64 reference, with SPEC §3's rules (test/compare.ts):
// forward within tol·max|v|, lse within tol·max(1, max|lse|), gradients within 1e-4 relative, and
// the tensor count unchanged.
import type { AttentionCase, CaseData } from '../cases';
import { Comparison, compareForward, compareGrad, compareLse, maxAbs } from '../compare';
import { referenceForward, referenceGrads } from '../reference';
import type { CaseResult } from './run_case';

export function checkCase(c: AttentionCase, data: CaseData, got: CaseResult, forwardTolerance: number): Comparison[] {
  const label = (tensor: string) => `${c.name} [${got.backend}] ${tensor}`;
  const outputShape = c.layout === 'BSHD' ? [c.b, c.nq, c.hq, c.dv] : [c.b, c.hq, c.nq, c.dv];
  const ref = referenceForward(c, data);
  const results = [
    compareForward(label('output'), got.output, ref.output, outputShape, maxAbs(data.v.values), forwardTolerance),
    compareLse(label('lse'), got.lse, ref.lse, [c.b, c.hq, c.nq], forwardTolerance),
  ];
  if (c.grad) {
    const refGrads = referenceGrads(c, data);
    const pairs: Array<[string, Float32Array | undefined, Float64Array | undefined, number[]]> = [
      ['dq', got.dq, refGrads.dq, data.q.shape],
      ['dk', got.dk, refGrads.dk, data.k.shape],
      ['dv', got.dv, refGrads.dv, data.v.shape],
    ];
    if (data.bias) pairs.push(['dbias', got.dbias, refGrads.dbias, data.bias.shape]);
    for (const [name, actual, expected, shape] of pairs) {
      results.push(actual && expected
        ? compareGrad(label(name), actual, expected, shape)
        : { ok: false, maxError: Infinity, bound: 0, message: `${label(name)}: missing (got ${!!actual}, reference ${!!expected})` });
    }
  }
  if (got.tensorsAfter !== got.tensorsBefore) {
    results.push({
      ok: false, maxError: Infinity, bound: 0,
      message: `${label('memory')}: ${got.tensorsAfter - got.tensorsBefore} tensor(s) leaked ` +
        `(${got.tensorsBefore} before, ${got.tensorsAfter} after)`,
    });
  }
  return results;
}

/** The failures' messages, one per line; empty when everything passed. */
export function failures(results: Comparison[]): string {
  return results.filter(r => !r.ok).map(r => r.message).join('\n');
}
