// The webgl kernel's split-KV path (kernels/webgl/flash_attention_split.ts) in headless Chromium
// (SwiftShader): the shared case list forced through it (forward, lse and gradients against the
// float64 reference; the backward is the one-pass one, fed the split forward's output and lse),
// decode shapes (Nq ∈ {1, 4}, Nk up to 65536) that the rule splits by itself, against the reference
// and against the one-pass kernel, and no leaked tensors.
import * as path from 'path';
import type { BackendInfo, EncodedCaseResult } from './browser/harness';
import { BenchPage, decodeFloats, openPage } from './browser/page';
import type { AttentionCase } from './cases';
import { caseData } from './cases';
import { checkCase, failures } from './setup/check_case';
import type { CaseResult } from './setup/run_case';
import { CASES, DECODE_CASES } from './setup/split_kv_cases';
import { WEBGL_SPLIT_RULE } from '../src/split_kv';

const ENTRY = path.join(__dirname, 'split_kv_webgl_page.ts');
/** SPEC §3's WebGL float32 forward tolerance. */
const TOLERANCE = 1e-3;

let page: BenchPage;

function decode(r: EncodedCaseResult): CaseResult {
  const optional = (x?: string) => (x === undefined ? undefined : decodeFloats(x));
  return {
    backend: r.backend, output: decodeFloats(r.output), lse: decodeFloats(r.lse), dq: optional(r.dq),
    dk: optional(r.dk), dv: optional(r.dv), dbias: optional(r.dbias), tensorsBefore: r.tensorsBefore,
    tensorsAfter: r.tensorsAfter,
  };
}

async function check(c: AttentionCase): Promise<string> {
  const result = decode(await page.runInPage<EncodedCaseResult>('faRunCase', [c]));
  expect(result.backend).toBe('webgl');
  return failures(checkCase(c, caseData(c), result, TOLERANCE));
}

beforeAll(async () => {
  page = await openPage({ entry: ENTRY });
  const info = await page.runInPage<BackendInfo>('faSetup', [{ backend: 'webgl' }]);
  expect(info.backend).toBe('webgl');
}, 120000);

afterAll(async () => {
  await page?.close();
});

afterEach(async () => {
  await page.runInPage('faSplitForce', [null]);
});

describe('webgl, keys forced into 3 ranges', () => {
  for (const c of CASES) {
    test(`case ${c.name}`, async () => {
      await page.runInPage('faSplitForce', [3]);
      const plan = await page.runInPage<{ splits: number }>('faSplitPlan', [c]);
      // Ranges hold an even number of keys: 2 keys or fewer make one range (the one-pass kernel).
      if (c.nk > 2) expect(plan.splits).toBeGreaterThan(1); else expect(plan.splits).toBe(1);
      expect(await check(c)).toBe('');
    });
  }
});

describe('webgl, keys forced into ranges of 2 keys (most ranges empty under masks)', () => {
  for (const c of CASES.filter(x => x.causal || x.windowSize || x.keyLengths || x.mask || x.blockSparse || x.dropout)) {
    test(`case ${c.name} (forward)`, async () => {
      await page.runInPage('faSplitForce', [64]);
      expect(await check({ ...c, grad: false })).toBe('');
    });
  }
});

describe('webgl decode shapes (split by the rule)', () => {
  for (const c of DECODE_CASES) {
    test(c.name, async () => {
      // Shorter decode shapes stay on the one-pass kernel by the webgl rule: forced into ranges here.
      if (c.nk < WEBGL_SPLIT_RULE.MIN_KEYS) await page.runInPage('faSplitForce', [4]);
      const plan = await page.runInPage<{ splits: number; programs: number }>('faSplitPlan', [c]);
      expect(plan.splits).toBeGreaterThan(1);
      // scores, stats, weights, accumulate, merge, merge lse (+ the BSHD layout), whatever Nk.
      expect(plan.programs).toBeLessThanOrEqual(c.layout === 'BSHD' ? 7 : 6);
      expect(await check(c)).toBe('');
      const r = await page.runInPage<{ output: number; lse: number; vmax: number; lseMax: number; nan: boolean;
        leakedBytes: number }>('faSplitVsOnePass', [c]);
      expect(r.nan).toBe(false);
      expect(r.leakedBytes).toBe(0);
      expect(r.output).toBeLessThanOrEqual(TOLERANCE * r.vmax);
      expect(r.lse).toBeLessThanOrEqual(TOLERANCE * r.lseMax);
    }, 120000);
  }
});

describe('webgl split path: dropout', () => {
  // v = identity reads the mask out of the output, so Nk = Dv ≤ 256: the ranges are forced.
  test('the dropout mask is bit-exact with src/dropout.ts (keys forced into ranges)', async () => {
    for (const [force, nq, nk, rate, seed] of [[5, 3, 40, 0.3, 1234], [5, 4, 37, 0.5, 4294967295], [16, 1, 250, 0.9, 7]]) {
      await page.runInPage('faSplitForce', [force]);
      const r = await page.runInPage<{ splits: number; mismatches: number; kept: number; total: number }>(
        'faSplitDropoutMismatches', [2, 2, nq, nk, rate, seed]);
      expect(r.splits).toBeGreaterThan(1);
      expect(r.mismatches).toBe(0);
      expect(Math.abs(r.kept / r.total - (1 - (rate as number)))).toBeLessThan(0.1);
    }
  }, 120000);
});

describe('webgl split path with half-float render targets', () => {
  test('decode shapes stay finite and within the half-float tolerance of the webgl kernel tests (5e-3)', async () => {
    const half = await openPage({ entry: ENTRY });
    try {
      await half.runInPage('faSetup', [{ backend: 'webgl', flags: { WEBGL_FORCE_F16_TEXTURES: true } }]);
      for (const name of ['decode Nq=4 Nk=2048 window alibi dropout', 'decode Nq=1 Nk=16384']) {
        const c = { ...DECODE_CASES.find(x => x.name === name) as AttentionCase, grad: false };
        expect((await half.runInPage<{ splits: number }>('faSplitPlan', [c])).splits).toBeGreaterThan(1);
        const result = decode(await half.runInPage<EncodedCaseResult>('faRunCase', [c]));
        expect(result.output.every(Number.isFinite)).toBe(true);
        expect(failures(checkCase(c, caseData(c), result, 5e-3))).toBe('');
      }
    } finally {
      await half.close();
    }
  }, 120000);
});
