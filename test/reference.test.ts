// Checks the float64 reference itself, independently of any backend: its analytic gradients
// against central finite differences of its own forward, and a few closed-form values.
import { CASES, caseData } from './cases';
import type { AttentionCase } from './cases';
import { formatIndex } from './compare';
import { finiteDifferenceGrads64, prepareInputs, referenceForward, referenceGrads64 } from './reference';

/** Small cases covering every option that changes the gradient's formula or its reduction. */
const FD_CASES = [
  'plain', 'D=7 Dv=5', 'Nq<Nk', 'GQA 4:2', 'MQA 3:1', 'BSHD', 'causal Nq>Nk (empty rows)', 'window+causal',
  'bias broadcast rows', 'bias per head', 'mask int32 fully masked rows', 'keyLengths zero', 'alibi [B,H]',
  'softcap', 'dropout', 'block sparse broadcast causal', 'everything',
];

function byName(name: string): AttentionCase {
  const c = CASES.find(x => x.name === name);
  if (!c) throw new Error(`no case '${name}'`);
  return c;
}

describe('float64 reference', () => {
  test.each(FD_CASES)('analytic gradients equal central finite differences: %s', name => {
    const c = byName(name);
    const data = caseData(c);
    const x = prepareInputs(c, data);
    const analytic = referenceGrads64(x, data.dOutput.values, data.dLse.values);
    const grads = { q: analytic.dq, k: analytic.dk, v: analytic.dv, bias: analytic.dbias };
    const shapes = { q: data.q.shape, k: data.k.shape, v: data.v.shape, bias: data.bias?.shape ?? [] };
    // About 60 entries of each tensor keep this quick; an odd stride still visits every head and row.
    for (const fd of finiteDifferenceGrads64(x, data.dOutput.values, data.dLse.values, 1e-6, 60)) {
      const full = grads[fd.tensor];
      if (!full) throw new Error(`${name}: no analytic gradient for ${fd.tensor}`);
      let worst = 0, worstError = -1;
      fd.indices.forEach((n, m) => {
        const error = Math.abs(full[n] - fd.values[m]);
        if (error > worstError) { worstError = error; worst = m; }
      });
      const size = Math.max(...fd.values.map(Math.abs), 1e-30);
      const n = fd.indices[worst];
      if (worstError > 1e-6 * size) {
        throw new Error(`${name} d${fd.tensor}${formatIndex(n, shapes[fd.tensor])}: analytic ${full[n]}, ` +
          `finite difference ${fd.values[worst]} (error ${worstError.toExponential(2)} > 1e-6·${size.toPrecision(3)})`);
      }
    }
  });

  test('a row with no visible key: output 0, lse −Infinity, zero gradients', () => {
    const c = byName('causal Nq>Nk (empty rows)');
    const data = caseData(c);
    const { output, lse } = referenceForward(c, data);
    const x = prepareInputs(c, data);
    const { dq } = referenceGrads64(x, data.dOutput.values, data.dLse.values);
    // Query row i sees keys j ≤ i + Nk − Nq = i − 16, so rows 0..15 are empty.
    for (let h = 0; h < c.hq; h++) {
      for (let i = 0; i < c.nq; i++) {
        const empty = i < c.nq - c.nk;
        expect(lse[h * c.nq + i] === -Infinity).toBe(empty);
        if (!empty) continue;
        for (let d = 0; d < c.dv; d++) expect(output[(h * c.nq + i) * c.dv + d]).toBe(0);
        for (let d = 0; d < c.d; d++) expect(dq[(h * c.nq + i) * c.d + d]).toBe(0);
      }
    }
  });

  test('closed form: equal scores average v, lse = log(n)', () => {
    const c: AttentionCase = { name: 'closed form', b: 1, hq: 1, hkv: 1, nq: 1, nk: 4, d: 2, dv: 1, grad: true };
    const data = caseData(c);
    data.q.values = [0, 0];
    data.v.values = [1, 2, 3, 10];
    const { output, lse } = referenceForward(c, data);
    expect(output[0]).toBeCloseTo(4, 12);
    expect(lse[0]).toBeCloseTo(Math.log(4), 12);
  });
});
