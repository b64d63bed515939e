// The webgpu kernel's split-KV path (attention_forward_split.ts + merge_splits.ts) in Node through
// Dawn (SwiftShader here): the shared case list forced through it, forward, lse and gradients
// against the float64 reference (the backward is the one-pass one, fed the split forward's output
// and lse), and decode shapes up to Nk = 65536 that the shape rule splits by itself.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-layers';
import { webgpuAttentionTuning } from '../kernels/webgpu/flash_attention';
import { flashAttention } from '../src/index';
import { SPLIT_RULE, splitKvTuning } from '../src/split_kv';
import { caseData } from './cases';
import { checkCase, failures } from './setup/check_case';
import { runCase } from './setup/run_case';
import { CASES, DECODE_CASES } from './setup/split_kv_cases';
import { initDawnWebGPU } from './setup/webgpu_node';

beforeAll(async () => {
  await initDawnWebGPU();
}, 120000);

afterEach(() => {
  delete splitKvTuning.force;
});

describe('webgpu, keys forced into 3 ranges', () => {
  for (const c of CASES) {
    test(`case ${c.name}`, async () => {
      splitKvTuning.force = 3;
      const data = caseData(c);
      const result = await runCase(c, data);
      expect(result.backend).toBe('webgpu');
      expect(failures(checkCase(c, data, result, 2e-5))).toBe('');
    });
  }
});

describe('webgpu decode shapes (split by the rule, or forced below its threshold)', () => {
  for (const c of DECODE_CASES) {
    test(c.name, async () => {
      // Shapes below the rule's key threshold run the one-pass kernel by the rule: forced here.
      if (c.nk < SPLIT_RULE.MIN_KEYS) splitKvTuning.force = 4;
      const data = caseData(c);
      const result = await runCase(c, data);
      expect(result.backend).toBe('webgpu');
      expect(failures(checkCase(c, data, result, 2e-5))).toBe('');
    });
  }

  test('K and V larger than the binding limit bind in slices (one dispatch per chunk)', async () => {
    const c = { name: 'decode chunked', b: 2, hq: 4, hkv: 2, nq: 1, nk: 4096, d: 8, dv: 8, causal: true, grad: false };
    const data = caseData(c);
    // One (batch, KV head) slice of K is 128 KiB: at most two fit a 300 KB binding.
    webgpuAttentionTuning.maxBindingBytes = 300_000;
    try {
      expect(failures(checkCase(c, data, await runCase(c, data), 2e-5))).toBe('');
    } finally {
      webgpuAttentionTuning.maxBindingBytes = undefined;
    }
  });

  test('split and one-pass outputs agree; every range but one empty gives no NaN', async () => {
    const q = tf.randomNormal([1, 2, 1, 8], 0, 1, 'float32', 1);
    const k = tf.randomNormal([1, 2, 4096, 8], 0, 1, 'float32', 2);
    const v = tf.randomNormal([1, 2, 4096, 8], 0, 1, 'float32', 3);
    const keyLengths = tf.tensor1d([5], 'int32');
    const run = async (force: number | undefined, options = {}) => {
      if (force === undefined) delete splitKvTuning.force; else splitKvTuning.force = force;
      const { output, lse } = flashAttention(q, k, v, { returnLse: true, ...options });
      const values = [await output.data(), await lse.data()];
      tf.dispose([output, lse]);
      return values;
    };
    const err = (a: ArrayLike<number>, b: ArrayLike<number>) => Math.max(...Array.from(a, (x, i) => Math.abs(x - b[i])));
    const vmax = Math.max(...Array.from(await v.data(), Math.abs));
    const [splitOut, splitLse] = await run(undefined);
    const [oneOut, oneLse] = await run(1);
    expect(err(splitOut, oneOut)).toBeLessThanOrEqual(2e-5 * vmax);
    expect(err(splitLse, oneLse)).toBeLessThanOrEqual(2e-5 * Math.max(1, ...Array.from(oneLse, Math.abs)));
    const [shortOut] = await run(undefined, { keyLengths });
    const [shortOne] = await run(1, { keyLengths });
    expect(Array.from(shortOut).some(Number.isNaN)).toBe(false);
    expect(err(shortOut, shortOne)).toBeLessThanOrEqual(2e-5 * vmax);
    tf.dispose([q, k, v, keyLengths]);
  });
});
