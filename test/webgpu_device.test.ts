// The package's WebGPU device setup (src/webgpu_device.ts, src/node.ts) on Dawn in Node (SwiftShader
// on CI): the device gets every optional feature the adapter offers unless opted out, limits raised
// to the adapter's (or to what is asked), tfjs' webgpu backend runs on it, and the kernels run there
// as on cpu, without leaking tensors.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { flashAttention } from '../src/index';
import { dawnInstanceFlags, initDawn } from '../src/node';
import { RAISED_LIMITS, requestedFeatures, WEBGPU_FEATURES, WebGPUSetup } from '../src/webgpu_device';
import { subgroupMinSize } from '../kernels/webgpu/runtime';

/** A small causal GQA problem with a bias: every input of the forward kernel but masks. */
function inputs(): { q: Float32Array; k: Float32Array; v: Float32Array; bias: Float32Array } {
  let seed = 7;
  const next = (): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 1073741824 - 1;
  };
  const fill = (n: number): Float32Array => Float32Array.from({ length: n }, next);
  return { q: fill(1 * 4 * 19 * 16), k: fill(1 * 2 * 23 * 16), v: fill(1 * 2 * 23 * 8), bias: fill(19 * 23) };
}

/** flashAttention's output and lse on the current backend; checks that no tensor is left behind. */
async function attention(): Promise<{ output: Float32Array; lse: Float32Array }> {
  const x = inputs();
  const before = tf.memory().numTensors;
  const q = tf.tensor4d(x.q, [1, 4, 19, 16]);
  const k = tf.tensor4d(x.k, [1, 2, 23, 16]);
  const v = tf.tensor4d(x.v, [1, 2, 23, 8]);
  const bias = tf.tensor2d(x.bias, [19, 23]);
  const result = flashAttention(q, k, v, { causal: true, bias, returnLse: true });
  const [output, lse] = await Promise.all([result.output.data(), result.lse.data()]);
  tf.dispose([q, k, v, bias, result.output, result.lse]);
  expect(tf.memory().numTensors).toBe(before);
  return { output: Float32Array.from(output), lse: Float32Array.from(lse) };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

let cpu: { output: Float32Array; lse: Float32Array };

beforeAll(async () => {
  await tf.setBackend('cpu');
  cpu = await attention();
});

afterAll(async () => {
  await tf.setBackend('cpu');
});

/**
 * The kernels on the current (webgpu) backend agree with the cpu kernel within SPEC §3's forward
 * tolerance: output 2e-5·max|v|, lse 2e-5·max(1, max|lse|), as test/compare.ts bounds them.
 */
async function expectKernelsMatchCpu(): Promise<void> {
  const gpu = await attention();
  const maxAbs = (a: Float32Array): number => a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
  expect(maxAbsDiff(gpu.output, cpu.output)).toBeLessThanOrEqual(2e-5 * maxAbs(inputs().v));
  expect(maxAbsDiff(gpu.lse, cpu.lse)).toBeLessThanOrEqual(2e-5 * Math.max(1, maxAbs(cpu.lse)));
}

describe('registerWebGPUBackend through initDawn', () => {
  let setup: WebGPUSetup;

  test('the device has every offered feature and the adapter\'s limits, and is the webgpu backend\'s', async () => {
    setup = await initDawn();
    const { adapter, device } = setup;
    console.log(`adapter: ${setup.description}; adapter features: ${[...adapter.features].sort().join(', ')}`);
    for (const feature of WEBGPU_FEATURES) expect([feature, device.features.has(feature)]).toEqual([feature, adapter.features.has(feature)]);
    for (const limit of RAISED_LIMITS) expect([limit, device.limits[limit]]).toEqual([limit, adapter.limits[limit]]);
    expect(tf.getBackend()).toBe('webgpu');
    expect((tf.backend() as WebGPUBackend).device).toBe(device);
  });

  test('the kernels see the subgroups of the device and run on it as on cpu', async () => {
    expect(subgroupMinSize(setup.device) > 0).toBe(setup.adapter.features.has('subgroups'));
    await expectKernelsMatchCpu();
  });

  test('features opted out stay off, asked-for limits are used, and the kernels run there too', async () => {
    const previous = setup.device;
    setup = await initDawn({ features: { subgroups: false }, limits: { maxComputeWorkgroupStorageSize: 16384 } });
    expect(setup.device).not.toBe(previous);
    // The replaced device is destroyed, not kept alive for the life of the process.
    expect((await previous.lost).reason).toBe('destroyed');
    expect(setup.device.features.has('subgroups')).toBe(false);
    expect(setup.device.features.has('chromium-experimental-subgroup-matrix')).toBe(false);
    expect(setup.device.features.has('timestamp-query')).toBe(setup.adapter.features.has('timestamp-query'));
    expect(setup.device.limits.maxComputeWorkgroupStorageSize).toBe(16384);
    expect(setup.device.limits.maxStorageBufferBindingSize).toBe(setup.adapter.limits.maxStorageBufferBindingSize);
    expect((tf.backend() as WebGPUBackend).device).toBe(setup.device);
    expect(subgroupMinSize(setup.device)).toBe(0);
    await expectKernelsMatchCpu();
  });

  test('setBackend: false registers the backend without switching to it', async () => {
    await tf.setBackend('cpu');
    const made = await initDawn({ setBackend: false });
    expect(tf.getBackend()).toBe('cpu');
    await tf.setBackend('webgpu');
    expect((tf.backend() as WebGPUBackend).device).toBe(made.device);
  });

  test('Dawn instance flags: none by default; the opt-in toggles merge into one enable-dawn-features', async () => {
    expect(dawnInstanceFlags({})).toEqual([]);
    expect(dawnInstanceFlags({ unsafeFeatures: true, disableRobustness: true, dawnFlags: ['backend=vulkan', 'enable-dawn-features=allow_unsafe_apis,x'] }))
      .toEqual(['backend=vulkan', 'enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia,disable_robustness,x']);
    const unsafe = await initDawn({ unsafeFeatures: true, setBackend: false });
    expect(unsafe.device.features.has('subgroups')).toBe(unsafe.adapter.features.has('subgroups'));
  });
});

test('requestedFeatures: offered and not opted out; subgroups off takes subgroup matrices with it', () => {
  const offered = new Set(['subgroups', 'shader-f16', 'chromium-experimental-subgroup-matrix', 'depth-clip-control']);
  expect(requestedFeatures(offered)).toEqual(['subgroups', 'shader-f16', 'chromium-experimental-subgroup-matrix']);
  expect(requestedFeatures(offered, { subgroups: false })).toEqual(['shader-f16']);
  expect(requestedFeatures(offered, { 'shader-f16': false })).toEqual(['subgroups', 'chromium-experimental-subgroup-matrix']);
});
