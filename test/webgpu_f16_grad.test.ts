// The `precision: 'float16'` backward programs of the webgpu backend (attention_backward_*_f16.ts),
// on Dawn in Node.
//
// CI's SwiftShader has neither `shader-f16` nor subgroup matrices, so there the programs run with
// their scalar 16×16 tiles in f32 (webgpuF16BackwardTuning.float32Tiles): the same staging, strips,
// rounds, elementwise options and stores as the f16 programs, checked against the float64
// reference at SPEC's 1e-4 relative. On an adapter with `shader-f16` the real f16 programs run
// (with subgroup matrices where offered) within the float16 tolerance measured on an H100
// (bench/RESULTS.md, float16 backward section); elsewhere those tests skip and say why.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-layers';
import { flashAttention } from '../src/index';
import { AttentionCase, CASES, CaseData, caseData } from './cases';
import { caseTensors, toTensor } from './case_tensors';
import { compareGrad } from './compare';
import { referenceGrads } from './reference';
import { initDawnWebGPU } from './setup/webgpu_node';
import { f16BackwardMode, hasF16SubgroupMatrix, webgpuF16BackwardTuning } from '../kernels/webgpu/attention_backward_f16';
import { dkdvF16Program } from '../kernels/webgpu/attention_backward_dkdv_f16';
import { dqF16Program } from '../kernels/webgpu/attention_backward_dq_f16';
import { auxLayout } from '../kernels/webgpu/aux';
import { webgpuAttentionTuning } from '../kernels/webgpu/flash_attention';
import { attentionLayouts, planBoxes, unitGeometry } from '../kernels/webgpu/chunks';
import { normalizeAttention } from '../src/config';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import type { AttentionConfig } from '../src/config';
import type { F16Tiles } from '../kernels/webgpu/attention_backward_dkdv_f16';

/**
 * float16 gradients: ‖got − ref‖∞ ≤ F16_GRAD_TOLERANCE · ‖ref‖∞. Measured on the H100
 * (bench/RESULTS.md, float16 backward section): the worst over this case list was 3.0e-3 (the f16
 * scalar tiles; f16 operands carry 2⁻¹¹ relative rounding), and 0.9e-2 at N = 1024 with 1 % of
 * q/k entries ×10; 1e-2 leaves about 3× over the case list's worst.
 */
const F16_GRAD_TOLERANCE = 1e-2;

const flat = (x: tf.Tensor) => tf.reshape(x, [-1]);

/** Gradients of (output, lse) for the case's upstream gradients, with precision 'float16'. */
async function gradsF16(c: AttentionCase, data: CaseData): Promise<Record<string, Float32Array>> {
  const before = tf.memory().numTensors;
  const t = caseTensors(c, data);
  const bias = t.options.bias;
  const dy = tf.tidy(() => tf.concat([flat(toTensor(data.dOutput)), flat(toTensor(data.dLse))]));
  const f = (...xs: tf.Tensor[]) => {
    const [q, k, v, b] = xs;
    const { output, lse } = flashAttention(q, k, v, { ...t.options, ...(b ? { bias: b } : {}), precision: 'float16', returnLse: true });
    return tf.concat([flat(output), flat(lse)]);
  };
  const grads = tf.grads(f)(bias ? [t.q, t.k, t.v, bias] : [t.q, t.k, t.v], dy);
  const values = await Promise.all(grads.map(g => g.data() as Promise<Float32Array>));
  tf.dispose([...grads, dy, ...t.all]);
  expect(tf.memory().numTensors).toBe(before);
  const names = ['dq', 'dk', 'dv', 'dbias'];
  return Object.fromEntries(values.map((v, i) => [names[i], v]));
}

async function caseFailures(cases: AttentionCase[], tolerance: number): Promise<string> {
  const problems: string[] = [];
  for (const c of cases) {
    const data = caseData(c);
    const got = await gradsF16(c, data);
    const ref = referenceGrads(c, data);
    const pairs: Array<[string, Float64Array | undefined, number[]]> = [
      ['dq', ref.dq, data.q.shape], ['dk', ref.dk, data.k.shape], ['dv', ref.dv, data.v.shape],
      ...(data.bias ? [['dbias', ref.dbias, data.bias.shape] as [string, Float64Array | undefined, number[]]] : []),
    ];
    for (const [name, expected, shape] of pairs) {
      const actual = got[name];
      if (!actual || !expected) { problems.push(`${c.name} ${name}: missing`); continue; }
      const r = compareGrad(`${c.name} [float16 webgpu] ${name}`, actual, expected, shape, tolerance);
      if (!r.ok) problems.push(r.message);
    }
  }
  return problems.join('\n');
}

function withTiles(dkdv: F16Tiles | undefined, dq: F16Tiles | undefined, body: () => Promise<void>): () => Promise<void> {
  return async () => {
    webgpuF16BackwardTuning.dkdvTiles = dkdv;
    webgpuF16BackwardTuning.dqTiles = dq;
    try {
      await body();
    } finally {
      webgpuF16BackwardTuning.dkdvTiles = undefined;
      webgpuF16BackwardTuning.dqTiles = undefined;
    }
  };
}

const GRAD_CASES = CASES.filter(c => c.grad);
const byName = (name: string): AttentionCase => {
  const c = GRAD_CASES.find(x => x.name === name);
  if (!c) throw new Error(`no case '${name}'`);
  return c;
};

function config(over: Partial<AttentionConfig>): AttentionConfig {
  return {
    batch: 1, headsQ: 2, headsKV: 2, seqQ: 40, seqK: 40, headDim: 64, headDimV: 64, layout: 'BHSD', scale: 0.125,
    windowLeft: -1, windowRight: -1, softcap: 0, dropoutRate: 0, dropoutSeed: 0, biasShape: [], maskShape: [],
    alibiShape: [], hasKeyLengths: false, blockMaskShape: [], blockSize: 0, precision: 'float16', ...over,
  };
}

describe("precision 'float16' backward on webgpu (Dawn)", () => {
  let device: GPUDevice;
  beforeAll(async () => {
    const gpu = await initDawnWebGPU({ subgroups: true });
    device = (tf.backend() as WebGPUBackend).device;
    console.log(`float16 backward: adapter ${gpu.description}; shader-f16 ${gpu.shaderF16}; ` +
      `f16 subgroup matrices ${hasF16SubgroupMatrix(device)}`);
  }, 120000);

  test('the programs generate the matrix-unit WGSL for the subgroup-matrix path and scalar tiles otherwise', () => {
    const c = config({ biasShape: [1, 2, 40, 40], dropoutRate: 0.1, softcap: 5 });
    const aux = auxLayout(c, true);
    const tiles = { rows: 64, cols: 32 };
    for (const source of [dkdvF16Program(c, aux, tiles, { path: 'subgroupMatrix', element: 'f16' }),
      dqF16Program(c, aux, tiles, { path: 'subgroupMatrix', element: 'f16' })]) {
      const wgsl = source.body();
      expect(source.extensions).toEqual(['f16', 'subgroups', 'chromium_experimental_subgroup_matrix']);
      expect(wgsl).toContain('subgroupMatrixMultiplyAccumulate(');
      expect(wgsl).toContain('subgroup_matrix_left<f16, 16, 16>');
      expect(wgsl).toContain('@workgroup_size(128)');
    }
    const scalar = dqF16Program(c, aux, tiles, { path: 'scalar', element: 'f16' });
    expect(scalar.body()).not.toContain('subgroupMatrix');
    expect(scalar.extensions).toEqual(['f16']);
  });

  test('prefetch staging loads the next walked tile, except where block-sparse skipping makes it unknown', () => {
    const mode = { path: 'subgroupMatrix', element: 'f16' } as const;
    const tiles: F16Tiles = { rows: 64, cols: 16, stage: 'prefetch', chains: true };
    const dense = config({});
    const sparse = config({ blockSize: 8, blockMaskShape: [1, 1, 5, 5] });
    const next = (wgsl: string) => wgsl.includes('load_q(b, h, min(i0 + BQ + r,') || wgsl.includes('load_k(b, hk, min(j0 + BK + r,');
    for (const program of [dkdvF16Program, dqF16Program]) {
      const wgsl = program(dense, auxLayout(dense, true), tiles, mode).body();
      expect(next(wgsl)).toBe(true);
      // Chains: the S and dP products of one 16-column walked tile accumulate into two results.
      expect(wgsl).toContain('var acc: array<subgroup_matrix_result<f32, 16, 16>, 2>;');
      expect(next(program(sparse, auxLayout(sparse, true), tiles, mode).body())).toBe(false);
    }
  });

  test('without shader-f16 the float32 kernels run unless the f32 test tiles are forced', () => {
    if (device.features.has('shader-f16')) {
      console.log('skipped: this adapter has shader-f16, so the float16 programs always run');
      return;
    }
    expect(f16BackwardMode(device)).toBeUndefined();
    webgpuF16BackwardTuning.float32Tiles = true;
    try {
      expect(f16BackwardMode(device)).toEqual({ path: 'scalar', element: 'f32' });
    } finally {
      webgpuF16BackwardTuning.float32Tiles = false;
    }
  });

  describe('the tile logic in f32 (scalar tiles) matches the float64 reference to 1e-4', () => {
    beforeAll(() => { webgpuF16BackwardTuning.float32Tiles = true; });
    afterAll(() => { webgpuF16BackwardTuning.float32Tiles = false; });
    const f32Tiles = (body: () => Promise<void>) => async () => {
      if (device.features.has('shader-f16')) {
        console.log('skipped: this adapter has shader-f16, where the f16 element type is used (tests below)');
        return;
      }
      await body();
    };

    // SwiftShader compiles each case's programs anew (~7 s a case on CI's 2 cores), so the case list
    // is split over the two tile shapes: every option, each bias-gradient mode, GQA/MQA, BSHD,
    // partial tiles and empty rows, in one or the other.
    test('two strips and two staging rounds per workgroup: every option and bias-gradient mode',
      withTiles({ rows: 32, cols: 16 }, { rows: 32, cols: 16 }, f32Tiles(async () => {
        // D=64 and D=80 stage the strips' own rows in 2 and 3 rounds (the last one partial).
        const cases = ['D=7 Dv=5', 'N=129 D=64', 'D=80', 'MQA 3:1', 'causal Nq>Nk (empty rows)', 'window+causal', 'bias full',
          'bias broadcast rows', 'bias per head', 'mask int32 fully masked rows', 'keyLengths zero', 'alibi [B,H]',
          'softcap', 'dropout', 'block sparse', 'everything'];
        expect(await caseFailures(cases.map(byName), 1e-4)).toBe('');
      })), 600000);

    test('a head over the binding limit: split along query heads, rows and keys, partial sums accumulated (loop and prefetch staging)',
      withTiles({ rows: 16, cols: 16 }, { rows: 16, cols: 16 }, f32Tiles(async () => {
        // 4096 bytes hold 16 rows of q or k (and of a [40, 48] bias plane) but not a head's 40 or 48
        // (BHSD, D = 32; BSHD: one batch of 2 heads, D = 16): the dK/dV pass sums query-row and head
        // ranges, the dQ pass key ranges, in later dispatches (chunks.ts).
        const gqa: AttentionCase = {
          name: 'f16 split: GQA causal dropout, full bias', b: 1, hq: 4, hkv: 2, nq: 40, nk: 48, d: 32, dv: 4,
          grad: true, bias: [1, 4, 40, 48], causal: true, dropout: { rate: 0.2, seed: 7 },
        };
        const columns: AttentionCase = {
          name: 'f16 split: bias broadcast over rows', b: 1, hq: 2, hkv: 1, nq: 40, nk: 48, d: 32, dv: 4,
          grad: true, bias: [2, 1, 48], windowSize: [20, 3],
        };
        const rowSums: AttentionCase = {
          name: 'f16 split: bias broadcast over keys, BSHD', b: 1, hq: 2, hkv: 2, nq: 40, nk: 48, d: 16, dv: 4,
          grad: true, bias: [2, 40, 1], causal: true, layout: 'BSHD',
        };
        for (const k of [gqa, columns, rowSums]) {
          const t = caseTensors(k, caseData(k));
          const { config } = normalizeAttention(t.q, t.k, t.v, t.options);
          tf.dispose(t.all);
          const g = unitGeometry(config);
          for (const accumulates of ['rows', 'keys'] as const) {
            const boxes = planBoxes(config, g, attentionLayouts(config), 4096, g.queryHeadsPerUnit, 65535,
              { rows: 16, keys: 16, accumulates });
            expect(boxes.some(b => b.r1 - b.r0 < k.nq) && boxes.some(b => b.k1 - b.k0 < k.nk)).toBe(true);
          }
        }
        webgpuAttentionTuning.maxBindingBytes = 4096;
        try {
          expect(await caseFailures([gqa, columns, rowSums], 1e-4)).toBe('');
          // The prefetch past a range's last tile stays inside the range (its binding ends there).
          const prefetch: F16Tiles = { rows: 16, cols: 16, stage: 'prefetch', chains: true };
          webgpuF16BackwardTuning.dkdvTiles = prefetch;
          webgpuF16BackwardTuning.dqTiles = prefetch;
          expect(await caseFailures([gqa, columns, rowSums], 1e-4)).toBe('');
        } finally {
          webgpuAttentionTuning.maxBindingBytes = undefined;
        }
      })), 300000);

    // Register staging (the next tile's loads in flight during this tile's products; 'batched' where
    // block-sparse skipping makes the next tile unknown) and chained accumulators, with walked tiles
    // that end mid-tile, head sizes that are not whole tiles and several staging rounds.
    test('register staging and chained accumulators: prefetch (dK/dV) and batched (dQ)',
      withTiles({ rows: 32, cols: 16, stage: 'prefetch', chains: true }, { rows: 16, cols: 32, stage: 'batched', chains: true },
        f32Tiles(async () => {
          const cases = ['N=129 D=64', 'D=7 Dv=5', 'D=80', 'block sparse', 'dropout', 'everything'];
          expect(await caseFailures(cases.map(byName), 1e-4)).toBe('');
        })), 300000);

    test('register staging: batched (dK/dV) and prefetch (dQ)',
      withTiles({ rows: 16, cols: 32, stage: 'batched' }, { rows: 32, cols: 16, stage: 'prefetch' }, f32Tiles(async () => {
        const cases = ['N=129 D=64', 'GQA 4:2', 'causal Nq>Nk (empty rows)', 'bias broadcast rows'];
        expect(await caseFailures(cases.map(byName), 1e-4)).toBe('');
      })), 300000);

    test('one strip, and a key tile wider than the query block',
      withTiles({ rows: 16, cols: 32 }, { rows: 16, cols: 32 }, f32Tiles(async () => {
        const cases = ['plain', 'Nq>Nk', 'BSHD', 'Nq<Nk', 'GQA 4:2'];
        expect(await caseFailures(cases.map(byName), 1e-4)).toBe('');
      })), 300000);
  });

  test('real f16 programs: the shared case list within the float16 tolerance (scalar tiles, and subgroup matrices where offered)', async () => {
    if (!device.features.has('shader-f16')) {
      console.log('skipped: the adapter has no shader-f16 (SwiftShader has neither it nor subgroup matrices)');
      return;
    }
    webgpuF16BackwardTuning.subgroupMatrix = false;
    try {
      expect(await caseFailures(GRAD_CASES, F16_GRAD_TOLERANCE)).toBe('');
    } finally {
      webgpuF16BackwardTuning.subgroupMatrix = true;
    }
    if (!hasF16SubgroupMatrix(device)) {
      console.log('subgroup-matrix part skipped: the adapter has no 16×16×16 f16 subgroup matrices with subgroups of 32');
      return;
    }
    expect(await caseFailures(GRAD_CASES, F16_GRAD_TOLERANCE)).toBe('');
  }, 600000);
});
