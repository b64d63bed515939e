// Kernel-specific tests of the webgl FlashAttention kernels in headless Chromium (SwiftShader),
// beyond the shared case list that test/browser.test.ts runs on webgl: memory linear in N (no
// Nq × Nk texture), sequences whose score matrix exceeds MAX_TEXTURE_SIZE², half-float render
// targets, the dropout mask bit for bit, and no leaked tensors or textures.
import * as path from 'path';
import type { BackendInfo } from './browser/harness';
import { BenchPage, decodeFloats, openPage } from './browser/page';
import type { AttentionCase } from './cases';
import { CASES, caseData } from './cases';
import { checkCase, failures } from './setup/check_case';
import type { CaseResult } from './setup/run_case';
import { compareForward, compareGrad, compareLse, maxAbs } from './compare';
import { referenceForward, referenceGrads } from './reference';

const ENTRY = path.join(__dirname, 'webgl_kernels_page.ts');

interface ScaledResult {
  case: AttentionCase; backend: string; output: string; lse: string;
  dq?: string; dk?: string; dv?: string; dbias?: string; tensorsBefore: number; tensorsAfter: number;
}

function decode(r: ScaledResult): CaseResult {
  const optional = (x?: string) => (x === undefined ? undefined : decodeFloats(x));
  return {
    backend: r.backend, output: decodeFloats(r.output), lse: decodeFloats(r.lse), dq: optional(r.dq),
    dk: optional(r.dk), dv: optional(r.dv), dbias: optional(r.dbias), tensorsBefore: r.tensorsBefore,
    tensorsAfter: r.tensorsAfter,
  };
}

async function scaledCase(page: BenchPage, name: string, overrides: Partial<AttentionCase>, tolerance: number): Promise<string> {
  const r = await page.runInPage<ScaledResult>('faWebglRunScaledCase', [name, overrides]);
  expect(r.backend).toBe('webgl');
  return failures(checkCase(r.case, caseData(r.case), decode(r), tolerance));
}

/**
 * Half-float render targets (WEBGL_FORCE_F16_TEXTURES), measured on SwiftShader over the cases
 * below: forward max error 1.5e-3·max|v|, lse 1.2e-3·max(1, |lse|), gradients 3e-3·‖ref‖∞ (q, k,
 * v themselves are rounded to half precision on upload, 2⁻¹¹ relative). The documented tolerances
 * leave a margin of about 3×. A row without visible keys keeps output 0 and zero gradients; its lse,
 * −Infinity with float32 textures, is −60000 here (infinities do not survive half-float textures).
 */
const HALF_FLOAT = { forward: 5e-3, lse: 5e-3, grad: 1e-2, emptyLseBelow: -30000 };

function halfFloatFailures(r: ScaledResult): string {
  const c = r.case, data = caseData(c), got = decode(r);
  const ref = referenceForward(c, data);
  const empty = Array.from(ref.lse, x => x === -Infinity);
  const lseGot = Array.from(got.lse, (x, n) => (empty[n] && x <= HALF_FLOAT.emptyLseBelow ? -Infinity : x));
  const shape = [c.b, c.hq, c.nq];
  const results = [
    compareForward(`${c.name} output`, got.output, ref.output, [got.output.length], maxAbs(data.v.values), HALF_FLOAT.forward),
    compareLse(`${c.name} lse`, lseGot, ref.lse, shape, HALF_FLOAT.lse),
  ];
  if (c.grad) {
    const grads = referenceGrads(c, data);
    for (const name of ['dq', 'dk', 'dv', 'dbias'] as const) {
      const expected = grads[name], values = got[name];
      if (expected && values) results.push(compareGrad(`${c.name} ${name}`, values, expected, [values.length], HALF_FLOAT.grad));
    }
  }
  const finite = [got.output, got.dq, got.dk, got.dv, got.dbias].every(x => !x || x.every(Number.isFinite));
  return [finite ? '' : `${c.name}: non-finite values`, ...results.filter(x => !x.ok).map(x => x.message)].filter(x => x).join('\n');
}

interface MemoryProbe {
  peak: number; largestOutput: number[]; leakedBytes: number; allFinite: boolean; tensorsBefore: number; tensorsAfter: number;
}

async function withPage(flags: Record<string, number | boolean>, body: (page: BenchPage) => Promise<void>): Promise<void> {
  const page = await openPage({ entry: ENTRY });
  try {
    const info = await page.runInPage<BackendInfo>('faSetup', [{ backend: 'webgl', flags }]);
    expect(info.backend).toBe('webgl');
    const kernels = await page.runInPage<{ forward: boolean; grad: boolean }>('faWebglKernels');
    expect(kernels).toMatchObject({ forward: true, grad: true });
    await body(page);
  } finally {
    await page.close();
  }
}

/** The forward plan GPUs get by default (kernels/webgl/flash_attention.ts); {} is this machine's. */
const GPU_PLAN = { fuseWeights: true, onePassStats: true };
const PLANS = [['default', {}], ['GPU', GPU_PLAN]] as const;

describe('webgl kernels in headless Chromium', () => {
  test('memory is linear in N: no Nq × Nk texture forward or backward, nothing leaked', async () => {
    await withPage({}, async page => {
      const d = 16;
      for (const grad of [false, true]) {
        const [small, large] = [2048, 4096];
        const probes: MemoryProbe[] = [];
        for (const n of [small, large]) {
          const probe = await page.runInPage<MemoryProbe>('faWebglMemoryProbe', [1, 1, n, d, grad]);
          expect(probe.allFinite).toBe(true);
          expect(probe.tensorsAfter).toBe(probe.tensorsBefore);
          expect(probe.leakedBytes).toBe(0);
          // No program output as large as one head's score matrix.
          expect(probe.largestOutput.reduce((a, b) => a * b, 1)).toBeLessThan(n * n);
          probes.push(probe);
        }
        // Doubling N at most doubles the working set (quadratic would quadruple it), which stays
        // below the size of a single head's float32 score matrix.
        expect(probes[1].peak / probes[0].peak).toBeLessThan(2.3);
        expect(probes[1].peak).toBeLessThan(4 * large * large);
      }
    });
  }, 300000);

  // Here (SwiftShader) the forward runs the CPU-rasterizer plan by default (weights pass, two-sweep
  // block stats); GPUs fuse the weights into accumulate and sweep once: the texture-limit and
  // half-float tests run both plans.
  test.each(PLANS)('sequences whose score matrix exceeds MAX_TEXTURE_SIZE² (WEBGL_MAX_TEXTURE_SIZE = 128), %s plan', async (_, plan) => {
    await withPage({ WEBGL_MAX_TEXTURE_SIZE: 128 }, async page => {
      await page.runInPage('faWebglSetForwardPlan', [plan]);
      // e.g. 300 × 300 scores = 90000 > 128² = 16384 texels, while q, k, v (≤ 6240 values) still fit
      // and get squarified textures (the texelFetch addressing's general path).
      expect(await scaledCase(page, 'plain', { nq: 300, nk: 300, hq: 2, hkv: 1 }, 1e-3)).toBe('');
      expect(await scaledCase(page, 'block sparse', { nq: 200, nk: 180 }, 1e-3)).toBe('');
      expect(await scaledCase(page, 'BSHD', { nq: 130, nk: 140, causal: true }, 1e-3)).toBe('');
      expect(await scaledCase(page, 'dropout', { nq: 150, nk: 170, grad: false }, 1e-3)).toBe('');
    });
  }, 300000);

  test.each(PLANS)('half-float render targets: finite, no overflow, within the documented tolerance, %s plan', async (_, plan) => {
    await withPage({ WEBGL_FORCE_F16_TEXTURES: true }, async page => {
      await page.runInPage('faWebglSetForwardPlan', [plan]);
      expect((await page.runInPage<{ float32Rendering: boolean }>('faWebglKernels')).float32Rendering).toBe(false);
      const cases: Array<[string, Partial<AttentionCase>]> = [
        ['plain', {}], ['N=129 D=64', {}], ['GQA 4:2', {}], ['BSHD', {}], ['causal Nq>Nk (empty rows)', {}],
        ['bias full', {}], ['dropout', {}], ['block sparse', {}],
        ['causal', { nq: 300, nk: 300, grad: false }],
      ];
      for (const [name, overrides] of cases) {
        const r = await page.runInPage<ScaledResult>('faWebglRunScaledCase', [name, overrides]);
        expect(halfFloatFailures(r)).toBe('');
        expect(r.tensorsAfter).toBe(r.tensorsBefore);
      }
      // Scores up to about ±200: exp(s) would overflow half floats (and float32) without
      // max-subtraction. Everything stays finite; the error is that of q and k rounded to half
      // precision (|s|·2⁻¹¹ ≈ 0.1 in the scores), measured 2.7e-2·max|v| here.
      const r = await page.runInPage<ScaledResult>('faWebglRunScaledCase', ['plain', { scale: 30 }]);
      const got = decode(r), ref = referenceForward(r.case, caseData(r.case));
      expect([got.output, got.lse, got.dq, got.dk, got.dv].every(x => x?.every(Number.isFinite))).toBe(true);
      expect(compareForward('scale 30', got.output, ref.output, [got.output.length], maxAbs(caseData(r.case).v.values), 0.1).message).toBe('');
    });
  }, 300000);

  test('inputs made on the GPU (split and reshaped from a packed matMul output) give the same results', async () => {
    await withPage({}, async page => {
      const r = await page.runInPage<{ output: number; grads: number }>('faWebglDerivedInputs');
      expect(r.output).toBeLessThan(1e-6);
      expect(r.grads).toBeLessThan(1e-5);
    });
  }, 120000);

  test('with WEBGL_PACK off (tfjs ops unpacked) the kernels still match the reference', async () => {
    await withPage({ WEBGL_PACK: false }, async page => {
      expect(await scaledCase(page, 'everything', {}, 1e-3)).toBe('');
      expect(await scaledCase(page, 'plain', { nq: 300, nk: 280 }, 1e-3)).toBe('');
    });
  }, 120000);

  test('many small key blocks (64 keys), with whole blocks outside the window skipped', async () => {
    await withPage({}, async page => {
      await page.runInPage('faWebglSetBlockKeys', [64]);
      // Rows see keys 220–299 only: blocks 64–127 and 128–191 are skipped, block 0 still runs.
      expect(await scaledCase(page, 'window', { nq: 50, nk: 300, windowSize: [30, 0] }, 1e-3)).toBe('');
      expect(await scaledCase(page, 'block sparse', { nq: 200, nk: 180 }, 1e-3)).toBe('');
      expect(await scaledCase(page, 'GQA 4:2', { nq: 130, nk: 150, layout: 'BSHD' }, 1e-3)).toBe('');
    });
  }, 120000);

  test('the GPUs\' forward plan (weights fused into accumulate, one-sweep block stats): the case list, with gradients', async () => {
    await withPage({}, async page => {
      await page.runInPage('faWebglSetForwardPlan', [GPU_PLAN]);
      const failed: string[] = [];
      for (const c of CASES) failed.push(await scaledCase(page, c.name, {}, 1e-3));
      // Several blocks, some skipped whole by the causal mask.
      await page.runInPage('faWebglSetBlockKeys', [64]);
      failed.push(await scaledCase(page, 'causal', { nq: 200, nk: 300 }, 1e-3));
      failed.push(await scaledCase(page, 'GQA 4:2', { nq: 130, nk: 150, layout: 'BSHD' }, 1e-3));
      expect(failed.filter(x => x).join('\n')).toBe('');
    });
  }, 300000);

  test('backward with one key block per draw (the chained path of longer sequences): the case list, with gradients', async () => {
    await withPage({}, async page => {
      // The case list's short sequences otherwise run dQ, dK and dV once over both key blocks.
      await page.runInPage('faWebglSetTogetherKeys', [0]);
      const failed: string[] = [];
      for (const c of CASES.filter(x => x.grad)) failed.push(await scaledCase(page, c.name, {}, 1e-3));
      expect(failed.filter(x => x).join('\n')).toBe('');
    });
  }, 300000);

  test('the dropout mask is bit-exact with src/dropout.ts', async () => {
    await withPage({}, async page => {
      for (const [rate, seed] of [[0.3, 1234], [0.5, 4294967295], [0.9, 7]]) {
        const r = await page.runInPage<{ mismatches: number; kept: number; total: number }>(
          'faWebglDropoutMismatches', [2, 3, 9, 40, rate, seed]);
        expect(r.mismatches).toBe(0);
        expect(Math.abs(r.kept / r.total - (1 - rate))).toBeLessThan(0.1);
      }
    });
  }, 120000);
});
