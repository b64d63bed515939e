// Which `precision: 'float16'` backward the device can run, and its two programs:
//   - `shader-f16` and subgroup matrices with a 16×16×16 f16 → f32 configuration, subgroups of 32:
//     the matrix-unit programs (checked on the H100: bench/RESULTS.md, float16 backward);
//   - `shader-f16` only: the same programs with their 16×16 tiles computed by the invocations;
//   - neither: none (the float32 kernels run; the forward kernel says so once).
// The scalar tiles in f32 can be forced (`float32Tiles`) so that CI, on an adapter with neither,
// tests the programs' tile logic against the float64 reference.
import type { AttentionConfig } from '../../src/config';
import type { AuxLayout } from './aux';
import { dkdvF16Program, dkdvF16WorkgroupBytes, F16Tiles } from './attention_backward_dkdv_f16';
import { dqF16Program, dqF16WorkgroupBytes } from './attention_backward_dq_f16';
import type { F16Mode } from './attention_backward_f16_matrix';
import { biasGradMode } from './attention_wgsl';
import { f16Capabilities, f16Tuning, matrixPathFits } from './f16_support';
import type { ProgramSpec } from './runtime';

/** Knobs for tests and benches; the defaults are what the kernel uses. */
export const webgpuF16BackwardTuning: {
  dkdvTiles?: F16Tiles;
  dqTiles?: F16Tiles;
  /** Run the subgroup-matrix programs where the device has them (false: the scalar f16 tiles). */
  subgroupMatrix: boolean;
  /** Without shader-f16, run the scalar tiles in f32 instead of the float32 kernels (tests). */
  float32Tiles: boolean;
} = { subgroupMatrix: true, float32Tiles: false };

/**
 * Fastest first where they fit (rows: the workgroup's own rows; cols: the tile it walks), as
 * measured on the H100 (N = 4096, D = 64, each program alone, bench/RESULTS.md float16 backward):
 *   - subgroup matrices: 64×16 with the next tile prefetched into registers and chained
 *     accumulators, dK/dV 1.33 ms and dQ 1.14 ms, against 4.01 and 3.6–4.3 ms for the first version
 *     (64×32, loop staging). Register staging alone ('batched') gave 2.25/1.93 at 64×32, the
 *     prefetch 2.01/1.77, 16-row walked tiles (less staging per step, so more workgroups in flight)
 *     1.38/1.22, chains 1.33/1.14; 128×16 1.49/1.28, 32×16 1.67/1.23, 32×32 2.05/1.80. At D = 128
 *     64×16 prefetch (without chains) took 3.40/1.43 ms against 6.57/5.94 for the first version;
 *   - scalar tiles (f16 without matrices): 64×16 with loop staging (forward+backward 21.7 ms against
 *     48.3 ms with 64×32); register staging is unmeasured there.
 */
const TILE_CANDIDATES: Record<F16Mode['path'], readonly F16Tiles[]> = {
  subgroupMatrix: [{ rows: 64, cols: 16 }, { rows: 128, cols: 16 }, { rows: 32, cols: 16 }, { rows: 32, cols: 32 },
    { rows: 16, cols: 16 }].map(t => ({ ...t, stage: 'prefetch', chains: true })),
  scalar: [{ rows: 64, cols: 16 }, { rows: 32, cols: 16 }, { rows: 16, cols: 16 }],
};

/** Whether the device runs the matrix-unit programs: 16×16×16 f16 → f32 tiles, one subgroup of 32 per strip. */
export function hasF16SubgroupMatrix(device: GPUDevice): boolean {
  return matrixPathFits(f16Capabilities(device));
}

/** The float16 backward's path: the forward's test override (f16Tuning.plan) first, then the device's best. */
export function f16BackwardMode(device: GPUDevice): F16Mode | undefined {
  const forced = f16Tuning.plan;
  if (forced) return { path: forced.matmul === 'subgroup-matrix' ? 'subgroupMatrix' : 'scalar', element: forced.element };
  if (webgpuF16BackwardTuning.subgroupMatrix && hasF16SubgroupMatrix(device)) {
    return { path: 'subgroupMatrix', element: 'f16' };
  }
  if (f16Capabilities(device).shaderF16) return { path: 'scalar', element: 'f16' };
  return webgpuF16BackwardTuning.float32Tiles ? { path: 'scalar', element: 'f32' } : undefined;
}

function pick(device: GPUDevice, mode: F16Mode, bytes: (t: F16Tiles) => number, preferred?: F16Tiles): F16Tiles {
  const limit = device.limits.maxComputeWorkgroupStorageSize;
  const threads = device.limits.maxComputeInvocationsPerWorkgroup;
  const tiles = [...(preferred ? [preferred] : []), ...TILE_CANDIDATES[mode.path]]
    .find(t => bytes(t) <= limit && (t.rows / 16) * 32 <= threads);
  if (!tiles) throw new Error(`flashAttention (webgpu): no float16 tile size fits ${limit} bytes of workgroup memory`);
  return tiles;
}

export interface BackwardF16Passes {
  dkdv: ProgramSpec;
  /** Keys per dK/dV workgroup and query rows per dQ workgroup (the dispatch grids). */
  dkdvRows: number;
  dq: ProgramSpec;
  dqRows: number;
  /** The column-sum pass of a bias broadcast over query rows (biasGradMode 'columns'). */
  biasColumns?: ProgramSpec;
}

/** The float16 backward programs for this device, or undefined where it has no float16 path. */
export function f16BackwardPasses(device: GPUDevice, c: AttentionConfig, aux: AuxLayout): BackwardF16Passes | undefined {
  const mode = f16BackwardMode(device);
  if (!mode) return undefined;
  const kv = pick(device, mode, t => dkdvF16WorkgroupBytes(c, t, mode), webgpuF16BackwardTuning.dkdvTiles);
  const q = pick(device, mode, t => dqF16WorkgroupBytes(c, t, mode), webgpuF16BackwardTuning.dqTiles);
  return {
    dkdv: dkdvF16Program(c, aux, kv, mode), dkdvRows: kv.rows,
    dq: dqF16Program(c, aux, q, mode), dqRows: q.rows,
    biasColumns: biasGradMode(c) === 'columns' ? dkdvF16Program(c, aux, kv, mode, 'biasColumns') : undefined,
  };
}
