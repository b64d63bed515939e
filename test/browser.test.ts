// The browser bench: headless Chromium (SwiftShader) runs tfjs' own matMul and every case of the
// shared list, forward and backward, on webgl and webgpu; Node compares with the float64
// reference. Tolerances (SPEC §3): forward 1e-3·max|v| on WebGL float32 textures, 2e-5·max|v| on
// WebGPU; gradients 1e-4 relative on both.
import type { BackendInfo, EncodedCaseResult, EncodedMatMul } from './browser/harness';
import { BenchPage, decodeFloats, openPage } from './browser/page';
import { CASES, caseData } from './cases';
import { checkCase, failures } from './setup/check_case';
import type { CaseResult } from './setup/run_case';

const FORWARD_TOLERANCE = { webgl: 1e-3, webgpu: 2e-5 } as const;

function decodeCase(r: EncodedCaseResult): CaseResult {
  const optional = (x?: string) => (x === undefined ? undefined : decodeFloats(x));
  return {
    backend: r.backend, output: decodeFloats(r.output), lse: decodeFloats(r.lse),
    dq: optional(r.dq), dk: optional(r.dk), dv: optional(r.dv), dbias: optional(r.dbias),
    tensorsBefore: r.tensorsBefore, tensorsAfter: r.tensorsAfter,
  };
}

describe.each(['webgl', 'webgpu'] as const)('%s in headless Chromium', backend => {
  let page: BenchPage;

  beforeAll(async () => {
    page = await openPage();
    const info = await page.runInPage<BackendInfo>('faSetup', [{ backend }]);
    console.log(`chromium ${info.backend}: ${info.adapter}; features: ${info.features.join(' ')}`);
  }, 120000);

  afterAll(async () => {
    await page?.close();
  });

  test(`tfjs ${backend} matMul runs in the page and matches float64`, async () => {
    const [m, k, n] = [33, 47, 29];
    const r = await page.runInPage<EncodedMatMul>('faMatMul', [m, k, n]);
    const [a, b, c] = [decodeFloats(r.a), decodeFloats(r.b), decodeFloats(r.values)];
    let maxError = 0;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let sum = 0;
        for (let p = 0; p < k; p++) sum += a[i * k + p] * b[p * n + j];
        maxError = Math.max(maxError, Math.abs(c[i * n + j] - sum));
      }
    }
    expect(maxError).toBeLessThan(1e-5 * k);
  });

  test(`the package's FlashAttention kernels are registered for ${backend} in the page`, async () => {
    expect(await page.runInPage('faKernels')).toEqual({ forward: true, grad: true });
  });

  for (const c of CASES) {
    const title = `case ${c.name}: forward${c.grad ? ' and gradients' : ''} match the float64 reference`;
    test(title, async () => {
      const result = decodeCase(await page.runInPage<EncodedCaseResult>('faRunCase', [c.name]));
      expect(result.backend).toBe(backend);
      expect(failures(checkCase(c, caseData(c), result, FORWARD_TOLERANCE[backend]))).toBe('');
    });
  }
});
