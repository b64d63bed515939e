// The webgpu backend in Node through Dawn: on a real GPU when the machine has one, else on
// SwiftShader. Every case of the shared list runs forward and backward and is compared with the
// float64 reference (SPEC §3: forward within 2e-5·max|v|, gradients within 1e-4 relative).
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
// Registers tfjs-core's op gradients (its Node bundle carries them): runCase's tf.grads goes through
// concat and reshape around the op.
import '@tensorflow/tfjs-layers';
import { FlashAttention, FlashAttentionGrad } from '../src/index';
import { CASES, caseData } from './cases';
import { checkCase, failures } from './setup/check_case';
import { runCase } from './setup/run_case';
import { DawnWebGPU, initDawnWebGPU } from './setup/webgpu_node';

/** [m, k] × [k, n] in float64. */
function matMul64(a: Float32Array, b: Float32Array, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      for (let j = 0; j < n; j++) out[i * n + j] += a[i * k + p] * b[p * n + j];
    }
  }
  return out;
}

// The kernels take a subgroup path where the device has `subgroups` and another where it does not:
// the case list runs on both devices (on an adapter without subgroups, both runs take the same path).
describe.each([true, false])('webgpu through Dawn, subgroups requested: %s', subgroups => {
  let gpu: DawnWebGPU;

  beforeAll(async () => {
    gpu = await initDawnWebGPU({ subgroups });
    console.log(`webgpu adapter: ${gpu.description}${gpu.software ? ' (software)' : ''}; ` +
      `subgroups: adapter ${gpu.adapterHasSubgroups}, device ${gpu.subgroups}; shader-f16: ${gpu.shaderF16}`);
  }, 120000);

  test('the device has subgroups exactly when requested and offered', () => {
    expect(gpu.subgroups).toBe(subgroups && gpu.adapterHasSubgroups);
  });

  test('tfjs webgpu matMul runs on Dawn and matches float64', async () => {
    expect(tf.getBackend()).toBe('webgpu');
    const [m, k, n] = [33, 47, 29];
    const a = tf.randomUniform([m, k], -1, 1, 'float32', 1);
    const b = tf.randomUniform([k, n], -1, 1, 'float32', 2);
    const c = tf.matMul(a, b);
    const expected = matMul64(await a.data() as Float32Array, await b.data() as Float32Array, m, k, n);
    const got = await c.data();
    const maxError = Math.max(...Array.from(got, (x, i) => Math.abs(x - expected[i])));
    tf.dispose([a, b, c]);
    expect(maxError).toBeLessThan(1e-5 * k);
  });

  test("the package's FlashAttention kernels are registered for webgpu", () => {
    expect(tf.getKernel(FlashAttention, 'webgpu')).toBeDefined();
    expect(tf.getKernel(FlashAttentionGrad, 'webgpu')).toBeDefined();
  });

  for (const c of CASES) {
    const title = `case ${c.name}: forward${c.grad ? ' and gradients' : ''} match the float64 reference`;
    test(title, async () => {
      const data = caseData(c);
      const result = await runCase(c, data);
      expect(result.backend).toBe('webgpu');
      expect(failures(checkCase(c, data, result, 2e-5))).toBe('');
    });
  }
});
