// The cpu kernel's split-KV path (src/split_kv.ts): the shared case list forced through it
// (forward, lse and gradients against the float64 reference; the backward is the one-pass one, run
// on the split forward's output and lse), decode shapes the rule splits by itself, and the rule.
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-layers';
import { flashAttention } from '../src';
import { normalizeAttention } from '../src/config';
import { keySplits, mergeRow, SPLIT_RULE, splitKvTuning } from '../src/split_kv';
import { caseData } from './cases';
import { checkCase, failures } from './setup/check_case';
import { runCase } from './setup/run_case';
import { CASES, DECODE_CASES, FORCED_SPLITS } from './setup/split_kv_cases';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

afterEach(() => {
  delete splitKvTuning.force;
});

describe.each(FORCED_SPLITS)('cpu, keys forced into %i ranges', splits => {
  for (const c of CASES) {
    test(`case ${c.name}`, async () => {
      splitKvTuning.force = splits;
      const data = caseData(c);
      expect(failures(checkCase(c, data, await runCase(c, data), 2e-5))).toBe('');
    });
  }
});

describe('cpu decode shapes (split by the rule, or forced below its threshold)', () => {
  for (const c of DECODE_CASES) {
    test(c.name, async () => {
      // Shapes below the rule's key threshold run the one-pass kernel by the rule: forced here.
      if (c.nk < SPLIT_RULE.MIN_KEYS) splitKvTuning.force = 4;
      const data = caseData(c);
      expect(failures(checkCase(c, data, await runCase(c, data), 2e-5))).toBe('');
    });
  }

  test('split and one-pass outputs agree to the SPEC tolerance', async () => {
    const q = tf.randomNormal([1, 2, 1, 8], 0, 1, 'float32', 1);
    const k = tf.randomNormal([1, 2, 4096, 8], 0, 1, 'float32', 2);
    const v = tf.randomNormal([1, 2, 4096, 8], 0, 1, 'float32', 3);
    const run = async (force?: number) => {
      if (force === undefined) delete splitKvTuning.force; else splitKvTuning.force = force;
      const { output, lse } = flashAttention(q, k, v, { returnLse: true });
      const values = [await output.data(), await lse.data()];
      tf.dispose([output, lse]);
      return values;
    };
    const [splitOut, splitLse] = await run();
    const [oneOut, oneLse] = await run(1);
    const err = (a: ArrayLike<number>, b: ArrayLike<number>) => Math.max(...Array.from(a, (x, i) => Math.abs(x - b[i])));
    const vmax = Math.max(...Array.from(await v.data(), Math.abs));
    expect(err(splitOut, oneOut)).toBeLessThanOrEqual(2e-5 * vmax);
    expect(err(splitLse, oneLse)).toBeLessThanOrEqual(2e-5 * Math.max(1, ...Array.from(oneLse, Math.abs)));
    tf.dispose([q, k, v]);
  });
});

describe('the split rule', () => {
  const config = (shape: { b?: number; h: number; nq: number; nk: number }) => {
    const q = tf.zeros([shape.b ?? 1, shape.h, shape.nq, 64]);
    const kv = tf.zeros([shape.b ?? 1, shape.h, shape.nk, 64]);
    const { config: c } = normalizeAttention(q, kv, kv);
    tf.dispose([q, kv]);
    return c;
  };

  test('decode shapes split, square and small ones do not', () => {
    expect(keySplits(config({ h: 12, nq: 1, nk: 8192 }), 128)).toBeGreaterThanOrEqual(16);
    expect(keySplits(config({ h: 12, nq: 4, nk: 4096 }), 128)).toBeGreaterThan(1);
    // GPT-2 small decoding below 4096 keys: the one-pass kernel was as fast or faster on the H100.
    for (const nk of [128, 256, 512, 1024, 2048]) expect(keySplits(config({ h: 12, nq: 1, nk }), 128)).toBe(1);
    expect(keySplits(config({ h: 12, nq: 1024, nk: 1024 }), 128)).toBe(1);
    expect(keySplits(config({ h: 12, nq: 1, nk: 300 }), 128)).toBe(1);
    expect(keySplits(config({ b: 64, h: 12, nq: 1, nk: 8192 }), 128)).toBe(1);
  });

  test('merge: empty ranges weigh nothing; all empty gives 0 and -Infinity, never NaN', () => {
    const out = new Float32Array(2);
    expect(mergeRow([-Infinity, -Infinity], [NaN, NaN, NaN, NaN], 2, 2, out, 0)).toBe(-Infinity);
    expect(Array.from(out)).toEqual([0, 0]);
    const lse = mergeRow([-Infinity, Math.log(2), 0], [9, 9, 1, 2, 4, 5], 3, 2, out, 0);
    expect(lse).toBeCloseTo(Math.log(3), 12);
    expect(out[0]).toBeCloseTo((2 * 1 + 4) / 3, 6);
    expect(out[1]).toBeCloseTo((2 * 2 + 5) / 3, 6);
  });
});
