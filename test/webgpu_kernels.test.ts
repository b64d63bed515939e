// Tests of the webgpu kernels' own machinery, on Dawn in Node (SwiftShader on CI): the subgroup
// and workgroup-memory reduction paths, staged and from-global rows, a large register tile,
// dispatch splitting under a small binding limit, tiles outside the causal band and dead
// block-sparse tiles never being read, no Nq × Nk buffer, and no leaks (also when a problem is
// refused). The shared case list runs on webgpu in test/webgpu_node.test.ts.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { flashAttention } from '../src/index';
import { AttentionCase, CASES, caseData } from './cases';
import { caseTensors } from './case_tensors';
import { checkCase, failures } from './setup/check_case';
import { runCase } from './setup/run_case';
import { initDawnWebGPU } from './setup/webgpu_node';
import { referenceForward } from './reference';
import { compareForward, maxAbs } from './compare';
import { pickTiles, webgpuAttentionTuning } from '../kernels/webgpu/flash_attention';
import { forwardGrid, forwardPlan, forwardProgram, forwardWorkgroupBytes } from '../kernels/webgpu/attention_forward';
import { auxLayout } from '../kernels/webgpu/aux';
import { attentionLayouts, Box, planBoxes, unitGeometry } from '../kernels/webgpu/chunks';
import { normalizeAttention } from '../src/config';
import type { AttentionConfig } from '../src/config';
import { FORWARD_TILES, Tiles } from '../kernels/webgpu/tiles';
import type { ForwardSchedule } from '../kernels/webgpu/tuning';

const byName = (name: string): AttentionCase => {
  const c = CASES.find(x => x.name === name);
  if (!c) throw new Error(`no case '${name}'`);
  return c;
};

/** A representative subset of the shared cases: GQA, BSHD, masks, bias gradients, dropout, sparsity. */
const SUBSET = ['plain', 'D=7 Dv=5', 'GQA 4:2', 'BSHD', 'causal Nq>Nk (empty rows)', 'bias per head',
  'mask int32 fully masked rows', 'dropout', 'block sparse', 'everything'].map(byName);

async function expectCasesPass(cases: AttentionCase[]): Promise<void> {
  const problems: string[] = [];
  for (const c of cases) {
    const data = caseData(c);
    const result = await runCase(c, data);
    const f = failures(checkCase(c, data, result, 2e-5));
    if (f) problems.push(f);
  }
  expect(problems.join('\n')).toBe('');
}

function backend(): WebGPUBackend {
  return tf.backend() as WebGPUBackend;
}

function withTiles(t: Tiles | undefined, body: () => Promise<void>): () => Promise<void> {
  return async () => {
    webgpuAttentionTuning.forwardTiles = t;
    webgpuAttentionTuning.dqTiles = t;
    webgpuAttentionTuning.dkdvTiles = t;
    try {
      await body();
    } finally {
      webgpuAttentionTuning.forwardTiles = undefined;
      webgpuAttentionTuning.dqTiles = undefined;
      webgpuAttentionTuning.dkdvTiles = undefined;
    }
  };
}

/** Runs `body` with a forward schedule (and forward tiles), restoring the defaults after. */
function withSchedule(schedule: ForwardSchedule, t: Tiles | undefined, body: () => Promise<void>): () => Promise<void> {
  return async () => {
    const saved = webgpuAttentionTuning.forwardSchedule;
    webgpuAttentionTuning.forwardSchedule = schedule;
    webgpuAttentionTuning.forwardTiles = t;
    try {
      await body();
    } finally {
      webgpuAttentionTuning.forwardSchedule = saved;
      webgpuAttentionTuning.forwardTiles = undefined;
    }
  };
}

// The default schedule (tuning.ts: halved causal pairs, mask on edge tiles) runs the shared case
// list in webgpu_node.test.ts; these spell out the others, which stay selectable, so all are tested.
const NEW_SCHEDULE: ForwardSchedule = { pairBlocks: 'banded', halvePairs: 'never', maskEdgeTilesOnly: true, sparseFromBits: true };
const OLD_SCHEDULE: ForwardSchedule = { pairBlocks: 'never', halvePairs: 'never', maskEdgeTilesOnly: false, sparseFromBits: false };

/** Forward-only cases for pairing and the block-sparse walk (8-row SwiftShader blocks). */
const PAIRING_CASES: AttentionCase[] = [
  // 5 query blocks: two pairs and a middle block alone.
  { name: 'causal, odd block count', b: 1, hq: 2, hkv: 1, nq: 40, nk: 40, d: 8, dv: 4, grad: true, causal: true },
  { name: 'causal Nq < Nk', b: 1, hq: 2, hkv: 2, nq: 24, nk: 56, d: 8, dv: 4, grad: false, causal: true },
  { name: 'causal Nq > Nk, BSHD', b: 2, hq: 2, hkv: 1, nq: 56, nk: 24, d: 8, dv: 4, grad: false, causal: true,
    layout: 'BSHD' },
  { name: 'causal window, keyLengths', b: 2, hq: 2, hkv: 2, nq: 36, nk: 44, d: 8, dv: 4, grad: false,
    windowSize: [9, 0], keyLengths: [30, 44] },
  // Key tiles (8) across two mask blocks (3, 12), and mask rows starting mid-word.
  { name: 'block sparse, blocks of 3', b: 1, hq: 2, hkv: 1, nq: 40, nk: 100, d: 8, dv: 4, grad: false,
    blockSparse: { blockSize: 3 } },
  { name: 'block sparse causal, blocks of 12', b: 2, hq: 2, hkv: 1, nq: 40, nk: 100, d: 8, dv: 4, grad: false,
    causal: true, blockSparse: { blockSize: 12 } },
  { name: 'block sparse broadcast, blocks of 16', b: 2, hq: 2, hkv: 2, nq: 33, nk: 70, d: 8, dv: 4, grad: false,
    blockSparse: { blockSize: 16, broadcast: true } },
];

/** The forward's dispatch boxes for a case under a binding limit (SwiftShader tiles: 8 × 8). */
function planFor(k: AttentionCase, limit: number): Box[] {
  const t = caseTensors(k, caseData(k));
  try {
    const { config } = normalizeAttention(t.q, t.k, t.v, t.options);
    const g = unitGeometry(config);
    const layouts = attentionLayouts(config);
    for (const unused of ['dq', 'dout', 'dlse', 'dk', 'dv', 'dbias']) delete layouts[unused];
    return planBoxes(config, g, layouts, limit, g.queryHeadsPerUnit, 65535, { rows: 8, keys: 8, accumulates: 'keys' });
  } finally {
    tf.dispose(t.all);
  }
}

/** The WGSL of every shader module compiled while `body` runs (programs are compiled once per key). */
async function compiledDuring(body: () => Promise<void>): Promise<string[]> {
  const device = backend().device;
  const create = device.createShaderModule.bind(device);
  const codes: string[] = [];
  device.createShaderModule = (descriptor: GPUShaderModuleDescriptor) => {
    codes.push(descriptor.code);
    return create(descriptor);
  };
  try {
    await body();
  } finally {
    device.createShaderModule = create;
  }
  return codes;
}

function plainConfig(over: Partial<AttentionConfig>): AttentionConfig {
  return {
    batch: 1, headsQ: 2, headsKV: 2, seqQ: 16, seqK: 16, headDim: 8, headDimV: 8, layout: 'BHSD', scale: 0.3,
    windowLeft: -1, windowRight: -1, softcap: 0, dropoutRate: 0, dropoutSeed: 0, biasShape: [], maskShape: [],
    alibiShape: [], hasKeyLengths: false, blockMaskShape: [], blockSize: 0, precision: 'float32', ...over,
  };
}

describe('webgpu kernels with subgroups', () => {
  beforeAll(async () => { await initDawnWebGPU({ subgroups: true }); }, 120000);

  test('the subgroup reduction path is chosen where the adapter has subgroups, and is correct', async () => {
    const device = backend().device;
    const hasSubgroups = device.features.has('subgroups');
    const { tiles, useSubgroups } = pickTiles(device, (t, sg) => forwardWorkgroupBytes(plainConfig({}), t, sg),
      FORWARD_TILES);
    const c = plainConfig({});
    const source = forwardProgram(c, auxLayout(c, false), false, tiles, useSubgroups, forwardPlan(c, webgpuAttentionTuning.forwardSchedule)).body();
    expect(useSubgroups).toBe(hasSubgroups);
    expect(source.includes('subgroupShuffleXor')).toBe(hasSubgroups);
    await expectCasesPass(SUBSET);
  });

  test('rows read from global memory instead of staged (all three passes)',
    withTiles({ rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2, rowsFromGlobal: true }, async () => {
      await expectCasesPass(SUBSET);
    }));

  test('a 4×4 register tile (the large-GPU shape) is correct',
    withTiles({ rows: 16, cols: 16, rowsPerThread: 4, colsPerThread: 4, rowsFromGlobal: true }, async () => {
      await expectCasesPass(['D=7 Dv=5', 'everything'].map(byName));
    }));

  test('probabilities read four keys at a time (forward probsVec4)',
    withTiles({ rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2, rowsFromGlobal: true, probsVec4: true }, async () => {
      await expectCasesPass(['plain', 'D=7 Dv=5', 'dropout', 'everything'].map(byName));
    }));

  test('query blocks that are not a power of two (the 192-row, 8×2 shape, scaled down)',
    withTiles({ rows: 24, cols: 16, rowsPerThread: 8, colsPerThread: 2, rowsFromGlobal: true }, async () => {
      await expectCasesPass(['GQA 4:2', 'causal Nq>Nk (empty rows)'].map(byName));
    }));

  test('paired query blocks (i with n−1−i in one workgroup) on every option, and the grid halves',
    withSchedule({ ...NEW_SCHEDULE, pairBlocks: 'always' }, { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 },
      async () => {
        const c = plainConfig({ seqQ: 40, seqK: 40, windowRight: 0 });
        const tiles: Tiles = { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 };
        const paired = forwardPlan(c, webgpuAttentionTuning.forwardSchedule);
        expect(paired.paired).toBe(true);
        expect(forwardGrid(c, 8, 2, paired)).toEqual([3, 2, 1]);
        expect(forwardProgram(c, auxLayout(c, false), false, tiles, false, paired).body()).toContain('qbHeavy');
        await expectCasesPass([...SUBSET, ...PAIRING_CASES]);
      }));

  test('paired query blocks of 16 rows, 4×4 per thread, with query rows split over dispatches (pairs per row range)',
    withSchedule({ ...NEW_SCHEDULE, pairBlocks: 'always' },
      { rows: 16, cols: 16, rowsPerThread: 4, colsPerThread: 4, rowsFromGlobal: true }, async () => {
        // 72 rows = 5 blocks of 16; a [72, 80] bias plane per head (23 KiB) exceeds 16 KiB, so row
        // ranges of 3 and 2 blocks run in separate dispatches, each pairing its own blocks.
        const k: AttentionCase = { name: 'paired causal, rows split', b: 1, hq: 2, hkv: 1, nq: 72, nk: 80, d: 8, dv: 4,
          grad: false, causal: true, bias: [1, 2, 72, 80], dropout: { rate: 0.2, seed: 5 } };
        const limit = 16384;
        expect(planFor(k, limit).some(b => b.r1 - b.r0 < k.nq)).toBe(true);
        webgpuAttentionTuning.maxBindingBytes = limit;
        try {
          await expectCasesPass([k, byName('causal Nq>Nk (empty rows)')]);
        } finally {
          webgpuAttentionTuning.maxBindingBytes = undefined;
        }
      }));

  test('halved pairs (two workgroups per pair, half the key walk each, partials merged by lse) on every option',
    withSchedule({ ...NEW_SCHEDULE, pairBlocks: 'always', halvePairs: 'always' },
      { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 }, async () => {
        const c = plainConfig({ seqQ: 40, seqK: 40, windowRight: 0 });
        const tiles: Tiles = { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 };
        const plan = forwardPlan(c, webgpuAttentionTuning.forwardSchedule);
        expect(plan.halves).toBe(true);
        expect(forwardGrid(c, 8, 2, plan)).toEqual([6, 2, 1]);
        const source = forwardProgram(c, auxLayout(c, false), false, tiles, false, plan).body();
        expect(source).toContain('partial_out[');
        expect(source).not.toContain('store_out(');
        const nan = ['NaN in q', 'Inf in k', 'NaN in v', 'keyLengths zero', 'window+causal'].map(byName);
        const modules = await compiledDuring(() => expectCasesPass([...SUBSET, ...PAIRING_CASES, ...nan]));
        expect(modules.some(code => code.includes('walkHalf'))).toBe(true);
        expect(modules.some(code => code.includes('partial_lse[s * ROWS'))).toBe(true);
      }));

  test('halved pairs with query rows split over dispatches, and whole pairs where key ranges are split',
    withSchedule({ ...NEW_SCHEDULE, pairBlocks: 'always', halvePairs: 'always' },
      { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 }, async () => {
        // 16 KiB: the [72, 80] bias plane per head splits query rows only (partials stay whole);
        // 2 KiB: one head's k splits keys, where the merge cannot follow and pairs run whole.
        const rows: AttentionCase = { name: 'halves, rows split', b: 1, hq: 2, hkv: 1, nq: 72, nk: 80, d: 8, dv: 4,
          grad: false, causal: true, bias: [1, 2, 72, 80], dropout: { rate: 0.2, seed: 5 } };
        const keys: AttentionCase = { name: 'halves, keys split', b: 1, hq: 4, hkv: 2, nq: 40, nk: 48, d: 16, dv: 4,
          grad: false, bias: [1, 4, 40, 48], causal: true };
        const halved: boolean[] = [];
        for (const [k, limit] of [[rows, 16384], [keys, 2048]] as const) {
          webgpuAttentionTuning.maxBindingBytes = limit;
          try {
            halved.push((await compiledDuring(() => expectCasesPass([k]))).some(code => code.includes('walkHalf')));
          } finally {
            webgpuAttentionTuning.maxBindingBytes = undefined;
          }
        }
        expect(halved).toEqual([true, false]);
        expect(planFor(rows, 16384).some(b => b.r1 - b.r0 < rows.nq)).toBe(true);
        expect(planFor(keys, 2048).some(b => b.k1 - b.k0 < keys.nk)).toBe(true);
      }));

  test('the old schedule (one block per workgroup, mask on every tile, block-sparse tile lists) stays correct',
    withSchedule(OLD_SCHEDULE, { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 }, async () => {
      await expectCasesPass([...SUBSET, ...PAIRING_CASES.filter(k => k.blockSparse)]);
    }));

  test('the default schedule: halved pairs under causal bands with heads up to 64, whole pairs for wider heads', () => {
    const schedule = webgpuAttentionTuning.forwardSchedule;
    const plan = (over: Partial<AttentionConfig>) => forwardPlan(plainConfig(over), schedule);
    expect(plan({ windowRight: 0, headDim: 64, headDimV: 64 })).toMatchObject({ paired: true, halves: true });
    expect(plan({ windowRight: 0, headDim: 128, headDimV: 128 })).toMatchObject({ paired: true, halves: false });
    expect(plan({ windowRight: 0, headDim: 64, headDimV: 80 })).toMatchObject({ paired: true, halves: false });
    // Sliding windows (bounded left) and full attention keep one block per workgroup.
    expect(plan({ windowRight: 0, windowLeft: 8 })).toMatchObject({ paired: false, halves: false });
    expect(plan({})).toMatchObject({ paired: false, halves: false });
  });

  test('the mask is evaluated only where a tile crosses a band edge or the key limit', () => {
    const tiles: Tiles = { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 };
    const source = (over: Partial<AttentionConfig>, schedule = NEW_SCHEDULE) => {
      const c = plainConfig(over);
      return forwardProgram(c, auxLayout(c, false), false, tiles, false, forwardPlan(c, schedule)).body();
    };
    expect(source({ windowRight: 0 })).toMatch(/if \(\(i32\(j0 \+ BK\) - 1 <= i32\(iFirst\) \+ 0\)\) \{\s*s_0_0 = scoreValue2/);
    expect(source({ windowRight: 0 }, OLD_SCHEDULE)).not.toContain('scoreValue2(s_');
    // Full attention over whole tiles hides nothing by position: no test at all.
    expect(source({})).not.toContain('scoreValue2(s_');
    expect(source({ seqK: 20 })).toContain('(j0 + BK <= kl)');
  });

  test('problems larger than the binding limit are split over dispatches', async () => {
    const c: AttentionCase = {
      name: 'split', b: 3, hq: 4, hkv: 2, nq: 20, nk: 24, d: 8, dv: 4, grad: true,
      bias: [3, 4, 20, 24], causal: true, dropout: { rate: 0.25, seed: 99 },
    };
    const bshd: AttentionCase = { ...c, name: 'split BSHD', layout: 'BSHD', bias: [4, 1, 24] };
    const limit = 4096;
    for (const k of [c, bshd]) expect(planFor(k, limit).length).toBeGreaterThan(1);
    webgpuAttentionTuning.maxBindingBytes = limit;
    try {
      await expectCasesPass([c, bshd]);
    } finally {
      webgpuAttentionTuning.maxBindingBytes = undefined;
    }
  });

  test('one head whose q, k, bias or mask plane exceeds the binding limit is split along query heads, rows and keys',
    async () => {
      // 2048 bytes: one head's q (40 × 16 floats) and k (48 × 16), and one [40, 48] bias or int32
      // mask plane are each larger; 8 query rows of the bias plane (the SwiftShader tiles' rows)
      // and the mask packed into bits are not.
      const limit = 2048;
      const gqa: AttentionCase = {
        name: 'one head too large, GQA causal dropout, full bias', b: 1, hq: 4, hkv: 2, nq: 40, nk: 48, d: 16, dv: 4,
        grad: true, bias: [1, 4, 40, 48], causal: true, dropout: { rate: 0.2, seed: 7 },
      };
      const bshd: AttentionCase = {
        name: 'one batch too large, BSHD GQA, bias per row', b: 2, hq: 2, hkv: 1, nq: 24, nk: 40, d: 16,
        dv: 8, grad: true, layout: 'BSHD', bias: [2, 24, 1], dropout: { rate: 0.1, seed: 3 },
      };
      const columns: AttentionCase = {
        name: 'bias broadcast over rows (column sums accumulate)', b: 1, hq: 2, hkv: 1, nq: 40, nk: 48, d: 16, dv: 4,
        grad: true, bias: [2, 1, 48], windowSize: [20, 3],
      };
      const rowSums: AttentionCase = {
        name: 'bias broadcast over keys (row sums accumulate)', b: 1, hq: 2, hkv: 2, nq: 40, nk: 48, d: 16, dv: 4,
        grad: true, bias: [2, 40, 1], causal: true,
      };
      const mask: AttentionCase = {
        name: 'mask planes over the limit (packed into bits)', b: 1, hq: 2, hkv: 1, nq: 40, nk: 48, d: 16, dv: 4,
        grad: true, mask: [1, 2, 40, 48], maskDtype: 'int32', maskRowsHidden: [3, 39], alibi: [2],
      };
      for (const k of [gqa, bshd, columns, rowSums, mask]) {
        const boxes = planFor(k, limit);
        expect(boxes.some(b => b.r1 - b.r0 < k.nq)).toBe(true);
        expect(boxes.some(b => b.k1 - b.k0 < k.nk)).toBe(true);
      }
      webgpuAttentionTuning.maxBindingBytes = limit;
      try {
        await expectCasesPass([gqa, bshd, columns, rowSums, mask]);
      } finally {
        webgpuAttentionTuning.maxBindingBytes = undefined;
      }
    });

  test('a limit below one tile of rows is refused with a message, leaking nothing', async () => {
    const c = byName('plain');
    const t = caseTensors(c, caseData(c));
    const tensors = tf.memory().numTensors;
    const dataIds = backend().numDataIds();
    webgpuAttentionTuning.maxBindingBytes = 64;
    try {
      expect(() => flashAttention(t.q, t.k, t.v, t.options)).toThrow(/maxStorageBufferBindingSize/);
    } finally {
      webgpuAttentionTuning.maxBindingBytes = undefined;
    }
    expect(tf.memory().numTensors).toBe(tensors);
    expect(backend().numDataIds()).toBe(dataIds);
    tf.dispose(t.all);
  });

  test('key tiles outside the causal band and dead block-sparse tiles are never read',
    withTiles({ rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 }, async () => {
      // NaN in a value row that a query cannot see still poisons it if its tile were visited
      // (0 · NaN = NaN), so finite, unchanged outputs prove the tile was skipped.
      const n = 32, d = 4;
      const q = tf.randomNormal([1, 1, n, d], 0, 1, 'float32', 1);
      const k = tf.randomNormal([1, 1, n, d], 0, 1, 'float32', 2);
      const v = tf.randomNormal([1, 1, n, d], 0, 1, 'float32', 3);
      const rows = tf.reshape(tf.range(0, n), [1, 1, n, 1]);
      const poisoned = tf.where(tf.greaterEqual(rows, 16), tf.fill(v.shape, NaN), v);
      const clean = await flashAttention(q, k, v, { causal: true }).data();
      const dirty = await flashAttention(q, k, poisoned, { causal: true }).data();
      expect(Array.from(dirty.slice(0, 16 * d))).toEqual(Array.from(clean.slice(0, 16 * d)));
      expect(dirty.slice(0, 16 * d).every(Number.isFinite)).toBe(true);
      // Block-sparse: keys 16..31 live only for query block 1 (blocks of 16).
      const blockMask = tf.tensor4d([1, 0, 1, 1], [1, 1, 2, 2], 'int32');
      const sparse = { blockSparse: { blockMask, blockSize: 16 } };
      const cleanSparse = await flashAttention(q, k, v, sparse).data();
      const dirtySparse = await flashAttention(q, k, poisoned, sparse).data();
      expect(Array.from(dirtySparse.slice(0, 16 * d))).toEqual(Array.from(cleanSparse.slice(0, 16 * d)));
      expect(dirtySparse.slice(0, 16 * d).every(Number.isFinite)).toBe(true);
      tf.dispose([q, k, v, rows, poisoned, blockMask]);
    }));

  test('block-sparse listing over more than one run of key tiles', withTiles(
    { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 }, async () => {
      const c: AttentionCase = { name: 'long block sparse', b: 1, hq: 1, hkv: 1, nq: 24, nk: 1100, d: 4, dv: 4,
        grad: false, blockSparse: { blockSize: 8 } };
      const data = caseData(c);
      const t = caseTensors(c, data);
      const out = flashAttention(t.q, t.k, t.v, t.options);
      const ref = referenceForward(c, data);
      const r = compareForward('output', await out.data(), ref.output, [1, 1, 24, 4], maxAbs(data.v.values));
      tf.dispose([out, ...t.all]);
      expect(r.message).toBe('');
    }));

  test('no buffer of Nq × Nk is created, forward and backward', async () => {
    const n = 512, d = 8;
    const device = backend().device;
    const [q, k, v] = [1, 2, 3].map(seed => tf.randomNormal([1, 1, n, d], 0, 1, 'float32', seed));
    const bias = tf.randomNormal([1, 1, 1, n], 0, 1, 'float32', 4);
    const create = device.createBuffer.bind(device);
    let largest = 0;
    device.createBuffer = (descriptor: GPUBufferDescriptor) => {
      largest = Math.max(largest, descriptor.size);
      return create(descriptor);
    };
    try {
      const loss = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, e: tf.Tensor) =>
        tf.sum(flashAttention(a, b, c, { causal: true, bias: e, dropout: { rate: 0.1, seed: 3 } }));
      const grads = tf.grads(loss)([q, k, v, bias]);
      await Promise.all(grads.map(g => g.data()));
      tf.dispose(grads);
    } finally {
      device.createBuffer = create;
    }
    expect(largest).toBeGreaterThan(0);
    expect(largest).toBeLessThan(n * n * 4 / 8);
    tf.dispose([q, k, v, bias]);
  });

  test('a block-sparse, masked call packs its masks in the kernel\'s one compute pass and submission', async () => {
    const [q, k, v] = [1, 2, 3].map(seed => tf.randomNormal([1, 2, 32, 8], 0, 1, 'float32', seed));
    const blockMask = tf.tensor4d([1, 0, 1, 1], [1, 1, 2, 2], 'int32');
    const mask = tf.tensor4d(Array.from({ length: 32 * 32 }, (_, i) => (i % 3 ? 1 : 0)), [1, 1, 32, 32], 'int32');
    const options = { blockSparse: { blockMask, blockSize: 16 }, mask };
    const warm = flashAttention(q, k, v, options);
    await warm.data();
    const passes = jest.spyOn(GPUCommandEncoder.prototype, 'beginComputePass');
    const submits = jest.spyOn(GPUQueue.prototype, 'submit');
    try {
      const out = flashAttention(q, k, v, options);
      expect(passes).toHaveBeenCalledTimes(1);
      expect(submits).toHaveBeenCalledTimes(1);
      expect(await out.data()).toEqual(await warm.data());
      tf.dispose(out);
    } finally {
      passes.mockRestore();
      submits.mockRestore();
    }
    tf.dispose([q, k, v, blockMask, mask, warm]);
  });
});

describe('webgpu kernels without subgroups', () => {
  beforeAll(async () => { await initDawnWebGPU({ subgroups: false }); }, 120000);

  test('the workgroup-memory reduction path is chosen and is correct', async () => {
    const device = backend().device;
    expect(device.features.has('subgroups')).toBe(false);
    const c = plainConfig({});
    const { tiles, useSubgroups } = pickTiles(device, (t, sg) => forwardWorkgroupBytes(c, t, sg), FORWARD_TILES);
    expect(useSubgroups).toBe(false);
    expect(forwardProgram(c, auxLayout(c, false), false, tiles, useSubgroups, forwardPlan(c, webgpuAttentionTuning.forwardSchedule)).body()).not.toContain('subgroup');
    await expectCasesPass(SUBSET);
  });
});
