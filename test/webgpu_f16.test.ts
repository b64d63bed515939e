// The `precision: 'float16'` forward on webgpu through Dawn.
//
// - Everywhere (SwiftShader in CI, which has neither `shader-f16` nor subgroup matrices): the f16
//   program is generated with its 'registers' plan and f32 elements, so its whole tile logic
//   (staging, score modifiers, online softmax, workgroup layouts, skipped tiles, output) runs on the
//   shared case list against the float64 reference with SPEC's float32 tolerance.
// - Without `shader-f16`, `precision: 'float16'` runs the float32 kernel and warns once.
// - On adapters with `shader-f16` (and subgroup matrices): the real f16 plans on the case list, with
//   the float16 tolerance (see F16_TOLERANCE); skipped elsewhere with the reason printed.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { flashAttention } from '../src/index';
import { AttentionCase, CASES, caseData } from './cases';
import { caseTensors } from './case_tensors';
import { compareForward, compareLse, maxAbs } from './compare';
import { referenceForward } from './reference';
import { DawnWebGPU, initDawnWebGPU } from './setup/webgpu_node';
import { F16Plan, f16Capabilities, f16Tuning, matrixPathFits } from '../kernels/webgpu/f16_support';
import { f16ForwardTuning, f16Pairing, F16Tiles } from '../kernels/webgpu/attention_forward_f16';
import { forwardGrid } from '../kernels/webgpu/attention_forward';
import { webgpuAttentionTuning } from '../kernels/webgpu/tuning';
import type { ForwardSchedule } from '../kernels/webgpu/tuning';
import { normalizeAttention } from '../src/config';

/**
 * Forward error bound of the real f16 plans, relative to max|v| (Q, K, P and V rounded to f16, every
 * sum in f32). Measured on the H100 (bench/RESULTS.md, float16 section): worst case of this list
 * 3.7e-4; random normal inputs, N = 1024…16384, at most 2.3e-5; with 1 % of the entries ×10, up to
 * 3.8e-3. The bound is that last figure rounded up; a wrong tile errs by about 1·max|v|.
 */
const F16_TOLERANCE = 4e-3;

const byName = (name: string): AttentionCase => {
  const c = CASES.find(x => x.name === name);
  if (!c) throw new Error(`no case '${name}'`);
  return c;
};

/** Runs the forward of each case in float16 mode and returns the failures (empty when all pass). */
async function forwardFailures(cases: AttentionCase[], tolerance: number): Promise<string> {
  const problems: string[] = [];
  for (const c of cases) {
    const data = caseData(c);
    const before = tf.memory().numTensors;
    const t = caseTensors(c, data);
    const { output, lse } = flashAttention(t.q, t.k, t.v, { ...t.options, precision: 'float16', returnLse: true });
    const ref = referenceForward(c, data);
    const shape = c.layout === 'BSHD' ? [c.b, c.nq, c.hq, c.dv] : [c.b, c.hq, c.nq, c.dv];
    const results = [
      compareForward(`${c.name} output`, await output.data(), ref.output, shape, maxAbs(data.v.values), tolerance),
      compareLse(`${c.name} lse`, await lse.data(), ref.lse, [c.b, c.hq, c.nq], tolerance),
    ];
    tf.dispose([output, lse, ...t.all]);
    for (const r of results) if (!r.ok) problems.push(r.message);
    if (tf.memory().numTensors !== before) problems.push(`${c.name}: ${tf.memory().numTensors - before} tensor(s) leaked`);
  }
  return problems.join('\n');
}

function withPlan(plan: F16Plan | undefined, tiles: F16Tiles | undefined, body: () => Promise<void>):
    () => Promise<void> {
  return async () => {
    f16Tuning.plan = plan;
    f16ForwardTuning.tiles = tiles;
    try {
      await body();
    } finally {
      f16Tuning.plan = undefined;
      f16ForwardTuning.tiles = undefined;
    }
  };
}

const F32_REGISTERS: F16Plan = { matmul: 'registers', element: 'f32' };

/** Without subgroups only the row reductions differ: a subset covers them. */
const NO_SUBGROUP_CASES = ['plain', 'D=7 Dv=5', 'GQA 4:2', 'BSHD', 'causal Nq>Nk (empty rows)', 'mask int32 fully masked rows',
  'keyLengths zero', 'dropout', 'block sparse', 'everything'].map(byName);

describe.each([[true, CASES], [false, NO_SUBGROUP_CASES]])('float16 forward tile logic in f32, subgroups requested: %s',
  (subgroups, cases) => {
  beforeAll(async () => { await initDawnWebGPU({ subgroups }); }, 120000);

  test(`${cases.length} cases of the shared list match float64 to 2e-5·max|v| (one subgroup of 16 rows, 16-key tiles)`,
    withPlan(F32_REGISTERS, { groups: 1, keys: 16 }, async () => {
      expect(await forwardFailures(cases, 2e-5)).toBe('');
    }));

});

describe('float16 forward: larger tiles, skipped tiles and the fallback', () => {
  let gpu: DawnWebGPU;
  beforeAll(async () => { gpu = await initDawnWebGPU({ subgroups: true }); }, 120000);

  test('several subgroups per workgroup, 32-key tiles, O in two column chunks (Dv = 80 > 32 keys)',
    withPlan(F32_REGISTERS, { groups: 2, keys: 32 }, async () => {
      const cases = ['plain', 'D=80', 'N=129 D=64', 'D=7 Dv=5', 'BSHD', 'causal Nq>Nk (empty rows)',
        'keyLengths', 'block sparse broadcast causal', 'everything', 'NaN in v'].map(byName);
      expect(await forwardFailures(cases, 2e-5)).toBe('');
    }));

  test('T = P·V staged in chunks wider than the key tile, the last one partial (48 + 32 columns at Dv = 80)',
    withPlan(F32_REGISTERS, { groups: 2, keys: 16, valueCols: 48 }, async () => {
      expect(await forwardFailures(['D=80', 'D=7 Dv=5', 'everything'].map(byName), 2e-5)).toBe('');
    }));

  test('O in \'matrices\' (lazy rescale through fs in 16-column chunks), double-buffered K/V tiles',
    withPlan(F32_REGISTERS, { groups: 2, keys: 16, accumulator: 'matrices', doubleBuffer: true, valueCols: 16 }, async () => {
      const cases = ['D=80', 'causal Nq>Nk (empty rows)', 'mask int32 fully masked rows', 'keyLengths zero', 'dropout',
        'block sparse broadcast causal', 'everything', 'NaN in v'].map(byName);
      expect(await forwardFailures(cases, 2e-5)).toBe('');
    }));

  test('K/V tiles staged through registers: prefetched (batched where block-sparse walks skip tiles), double-buffered',
    withPlan(F32_REGISTERS, { groups: 2, keys: 16, accumulator: 'matrices', doubleBuffer: true, stage: 'prefetch' }, async () => {
      const cases = ['plain', 'N=129 D=64', 'D=7 Dv=5', 'D=80', 'GQA 4:2', 'BSHD', 'causal Nq>Nk (empty rows)', 'window',
        'keyLengths', 'keyLengths zero', 'block sparse', 'everything', 'NaN in v'].map(byName);
      expect(await forwardFailures(cases, 2e-5)).toBe('');
    }));

  test('K/V tiles staged through registers in one batch per tile, one slot',
    withPlan(F32_REGISTERS, { groups: 1, keys: 32, stage: 'batched' }, async () => {
      expect(await forwardFailures(['N=129 D=64', 'D=7 Dv=5', 'causal', 'keyLengths', 'everything'].map(byName), 2e-5)).toBe('');
    }));

  test('staging loops with more invocations than tile elements (4 subgroups, 16 keys × 4 vec4 columns)',
    withPlan(F32_REGISTERS, { groups: 4, keys: 16, accumulator: 'matrices' }, async () => {
      expect(await forwardFailures(['plain', 'D=7 Dv=5', 'everything'].map(byName), 2e-5)).toBe('');
    }));

  test('\'matrices\': rows whose max outgrows the lazy reference tile after tile are rescaled exactly',
    withPlan(F32_REGISTERS, { groups: 2, keys: 16, accumulator: 'matrices', valueCols: 16 }, async () => {
      // Key norms grow along the sequence, so most rows' max rises by far more than the slack
      // (2^8) in many tiles, and by less in others; the float64 softmax is computed here.
      const n = 96, d = 8, dv = 20;
      const [qa, ka, va] = [[n, d], [n, d], [n, dv]].map(([rows, cols], s) =>
        tf.randomNormal([rows, cols], 0, 1, 'float32', 40 + s).dataSync());
      for (let j = 0; j < n; j++) for (let e = 0; e < d; e++) ka[j * d + e] *= 1 + j / 4;
      const q = tf.tensor4d(qa, [1, 1, n, d]), k = tf.tensor4d(ka, [1, 1, n, d]), v = tf.tensor4d(va, [1, 1, n, dv]);
      const got = await flashAttention(q, k, v, { scale: 1, precision: 'float16' }).data();
      tf.dispose([q, k, v]);
      let worst = 0;
      for (let i = 0; i < n; i++) {
        const s = Array.from({ length: n }, (_, j) => {
          let x = 0;
          for (let e = 0; e < d; e++) x += qa[i * d + e] * ka[j * d + e];
          return x;
        });
        const mx = Math.max(...s);
        const p = s.map(x => Math.exp(x - mx));
        const sum = p.reduce((a, b) => a + b, 0);
        for (let e = 0; e < dv; e++) {
          const ref = p.reduce((a, pj, j) => a + pj * va[j * dv + e], 0) / sum;
          worst = Math.max(worst, Math.abs(got[i * dv + e] - ref));
        }
      }
      expect(worst).toBeLessThan(2e-5 * maxAbs(va));
    }));

  test('key tiles outside the causal band and dead block-sparse tiles are never read',
    withPlan(F32_REGISTERS, { groups: 1, keys: 16 }, async () => {
      // A NaN value row in a visited tile poisons every row (0 · NaN = NaN), so finite, unchanged
      // outputs of the first 16 rows prove that tile 1 (keys 16..31) was skipped.
      const n = 32, d = 4;
      const q = tf.randomNormal([1, 1, n, d], 0, 1, 'float32', 1);
      const k = tf.randomNormal([1, 1, n, d], 0, 1, 'float32', 2);
      const v = tf.randomNormal([1, 1, n, d], 0, 1, 'float32', 3);
      const rows = tf.reshape(tf.range(0, n), [1, 1, n, 1]);
      const poisoned = tf.where(tf.greaterEqual(rows, 16), tf.fill(v.shape, NaN), v);
      const blockMask = tf.tensor4d([1, 0, 1, 1], [1, 1, 2, 2], 'int32');
      for (const options of [{ causal: true }, { blockSparse: { blockMask, blockSize: 16 } }]) {
        const clean = await flashAttention(q, k, v, { ...options, precision: 'float16' }).data();
        const dirty = await flashAttention(q, k, poisoned, { ...options, precision: 'float16' }).data();
        expect(Array.from(dirty.slice(0, 16 * d))).toEqual(Array.from(clean.slice(0, 16 * d)));
        expect(dirty.slice(0, 16 * d).every(Number.isFinite)).toBe(true);
      }
      tf.dispose([q, k, v, rows, poisoned, blockMask]);
    }));

  test('without shader-f16, float16 runs the float32 kernel and says so once', async () => {
    const caps = f16Capabilities(gpu.device);
    if (caps.shaderF16) {
      console.log('skipped: this adapter has shader-f16, so float16 has a kernel here');
      return;
    }
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      const cases = ['plain', 'everything'].map(byName);
      expect(await forwardFailures(cases, 2e-5)).toBe('');
      const ours = warn.mock.calls.filter(args => String(args[0]).includes("precision 'float16'"));
      expect(ours.length).toBe(1);
    } finally {
      warn.mockRestore();
    }
  });
});

type PairSchedule = Pick<ForwardSchedule, 'pairBlocks' | 'halvePairs'>;

/** withPlan under a block-pairing schedule (f16ForwardTuning.schedule), restored after. */
function withPairing(schedule: PairSchedule, tiles: F16Tiles, body: () => Promise<void>): () => Promise<void> {
  return withPlan(F32_REGISTERS, tiles, async () => {
    const saved = f16ForwardTuning.schedule;
    f16ForwardTuning.schedule = schedule;
    try {
      await body();
    } finally {
      f16ForwardTuning.schedule = saved;
    }
  });
}

/** The WGSL of every shader module compiled while `body` runs (programs are compiled once per key). */
async function compiledDuring(device: GPUDevice, body: () => Promise<void>): Promise<string[]> {
  const spy = jest.spyOn(device, 'createShaderModule');
  try {
    await body();
    return spy.mock.calls.map(([descriptor]) => descriptor.code);
  } finally {
    spy.mockRestore();
  }
}

/**
 * Pairing cases beyond the shared list's: block counts odd and even at 16 and 64 rows per block,
 * the partial block (cut from the end of the rows, so it is block 0) of 1 to 15 rows.
 */
const PAIRING_CASES: AttentionCase[] = [
  { name: 'causal, 3 blocks of 16 (a pair and a middle block)', b: 1, hq: 2, hkv: 1, nq: 40, nk: 40, d: 8, dv: 4,
    grad: false, causal: true },
  { name: 'causal Nq < Nk', b: 1, hq: 2, hkv: 2, nq: 24, nk: 56, d: 8, dv: 4, grad: false, causal: true },
  { name: 'causal Nq > Nk, BSHD', b: 2, hq: 2, hkv: 1, nq: 56, nk: 24, d: 8, dv: 4, grad: false, causal: true,
    layout: 'BSHD' },
  { name: 'causal window, keyLengths', b: 2, hq: 2, hkv: 2, nq: 36, nk: 44, d: 8, dv: 4, grad: false,
    windowSize: [9, 0], keyLengths: [30, 44] },
];

/** The shared list's cases that pairing touches: odd N (17, 129), Nq ≠ Nk, causal, windows and every option. */
const PAIRED_LIST = ['plain', 'N=129 D=64', 'D=7 Dv=5', 'Nq<Nk', 'Nq>Nk', 'GQA 4:2', 'BSHD', 'causal', 'causal Nq<Nk',
  'causal Nq>Nk (empty rows)', 'window', 'window+causal', 'keyLengths', 'keyLengths zero', 'alibi [B,H]',
  'mask int32 fully masked rows', 'dropout', 'block sparse broadcast causal', 'everything'].map(byName);
const NON_FINITE = ['NaN in q', 'Inf in k', 'NaN in v'].map(byName);

describe('float16 forward: paired query blocks and halved pairs (the float32 forward\'s causal schedule)', () => {
  let gpu: DawnWebGPU;
  beforeAll(async () => { gpu = await initDawnWebGPU({ subgroups: true }); }, 120000);

  const config = (over: Partial<AttentionCase>) => {
    const k: AttentionCase = { ...byName('causal'), nq: 40, nk: 40, ...over };
    const t = caseTensors(k, caseData(k));
    try {
      return normalizeAttention(t.q, t.k, t.v, { ...t.options, precision: 'float16' }).config;
    } finally {
      tf.dispose(t.all);
    }
  };

  test('the default: one block per workgroup, also under a causal band (pairing measured slower on the H100)', () => {
    expect(f16Pairing(config({}))).toEqual({ paired: false, halves: false });
    expect(f16Pairing(config({ d: 128, dv: 128 }))).toEqual({ paired: false, halves: false });
  });

  test('paired blocks (i with n−1−i in one workgroup) on every option: 16-row blocks, 16-key tiles',
    withPairing({ pairBlocks: 'always', halvePairs: 'never' }, { groups: 1, keys: 16 }, async () => {
      const pairing = f16Pairing(config({}));
      expect(pairing).toEqual({ paired: true, halves: false });
      expect(forwardGrid(config({}), 16, 2, pairing)).toEqual([2, 2, 1]);
      const modules = await compiledDuring(gpu.device, async () => {
        expect(await forwardFailures([...PAIRED_LIST, ...PAIRING_CASES, ...NON_FINITE], 2e-5)).toBe('');
      });
      expect(modules.some(code => code.includes('qbHeavy') && code.includes('store_out('))).toBe(true);
    }));

  test('halved pairs (two workgroups per pair, half the key walk each, partials merged by lse) on every option',
    withPairing({ pairBlocks: 'always', halvePairs: 'always' }, { groups: 1, keys: 16 }, async () => {
      const pairing = f16Pairing(config({}));
      expect(pairing).toEqual({ paired: true, halves: true });
      expect(forwardGrid(config({}), 16, 2, pairing)).toEqual([4, 2, 1]);
      const modules = await compiledDuring(gpu.device, async () => {
        expect(await forwardFailures([...PAIRED_LIST, ...PAIRING_CASES, ...NON_FINITE], 2e-5)).toBe('');
      });
      expect(modules.some(code => code.includes('walkHalf') && code.includes('partial_out[') && !code.includes('store_out('))).toBe(true);
      expect(modules.some(code => code.includes('partial_lse[s * ROWS'))).toBe(true);
    }));

  test('halved pairs on the narrow-head default\'s shape: 64-row blocks, O in \'matrices\', K/V prefetched',
    withPairing({ pairBlocks: 'always', halvePairs: 'always' }, { groups: 4, keys: 16, accumulator: 'matrices', stage: 'prefetch' },
      async () => {
        const cases = ['N=129 D=64', 'D=7 Dv=5', 'causal Nq>Nk (empty rows)', 'window+causal', 'keyLengths zero',
          'block sparse broadcast causal', 'everything', 'NaN in v'].map(byName);
        expect(await forwardFailures([...cases, ...PAIRING_CASES], 2e-5)).toBe('');
      }));

  test('where halves can not run (partials over the binding limit) narrow heads run one block per workgroup, wide heads whole pairs',
    withPairing({ pairBlocks: 'banded', halvePairs: 'always' }, { groups: 1, keys: 16 }, async () => {
      // 4 KiB: each head's q, k, v and output fit, the [2, 320, DV4] partials (10 KiB at Dv = 4) do not.
      const narrow: AttentionCase = { name: 'halves over the limit, Dv = 4', b: 2, hq: 4, hkv: 4, nq: 40, nk: 40, d: 8, dv: 4,
        grad: false, causal: true };
      const wide: AttentionCase = { ...narrow, name: 'halves over the limit, Dv = 68', b: 1, hq: 1, hkv: 1, nq: 12, nk: 12, dv: 68 };
      const ran: string[][] = [];
      webgpuAttentionTuning.maxBindingBytes = 4096;
      try {
        for (const k of [narrow, wide]) {
          ran.push(await compiledDuring(gpu.device, async () => { expect(await forwardFailures([k], 2e-5)).toBe(''); }));
        }
      } finally {
        webgpuAttentionTuning.maxBindingBytes = undefined;
      }
      const forwardOf = (codes: string[]) => codes.filter(code => code.includes('keyLimitOf'));
      expect(ran.map(codes => forwardOf(codes).map(code => [code.includes('qbHeavy'), code.includes('walkHalf')])))
        .toEqual([[[false, false]], [[true, false]]]);
    }));
});

describe('float16 forward on the adapter\'s f16 hardware', () => {
  let gpu: DawnWebGPU;
  beforeAll(async () => {
    gpu = await initDawnWebGPU({ subgroups: true, dawnFlags: ['enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia'] });
  }, 120000);

  test('the shared case list with f16 staging: the plan the device gets, then f16 registers', async () => {
    const caps = f16Capabilities(gpu.device);
    if (!caps.shaderF16) {
      console.log(`skipped: adapter '${gpu.description}' has no shader-f16 (nor subgroup matrices)`);
      return;
    }
    if (!matrixPathFits(caps)) console.log(`no subgroup-matrix plan here: ${JSON.stringify(caps)}`);
    for (const plan of [undefined, { matmul: 'registers', element: 'f16' } as const]) {
      await withPlan(plan, undefined, async () => {
        expect(await forwardFailures(CASES, F16_TOLERANCE)).toBe('');
      })();
    }
  });
});
