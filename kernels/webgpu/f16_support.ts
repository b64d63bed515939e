// What `precision: 'float16'` runs on a given WebGPU device, and the WGSL pieces the f16 programs
// share (forward here, backward in its own files).
//
// Three ways to run a float16 program, best first:
//   'subgroup-matrix'  Q, K, V (and dO) staged as f16 in workgroup memory; the tile products are
//                      16×16×16 subgroup-matrix multiply-accumulates, f16 × f16 → f32 (the matrix
//                      units); needs `shader-f16`, `subgroups` and `chromium-experimental-subgroup-matrix`
//                      with an f16 → f32 16×16×16 configuration and a fixed subgroup size of 32.
//   'registers'        the same tiles and staging, with the products computed by each thread from
//                      workgroup memory (f16 storage, f32 arithmetic); needs `shader-f16`.
//   none               the float32 kernels run, and the op says so once.
// Subgroup-matrix programs must keep every invocation of a subgroup on the same path: on the H100
// (Dawn/Vulkan, 2026-11-26) a forward that read keyLengths or the block mask on invocation 0 and
// broadcast it with workgroupUniformLoad gave wrong results (errors ~1·max|v|) in exactly those cases,
// while the same program without matrices was right. Read such values in every invocation instead
// (reads of a read-only buffer at workgroup-uniform indices are uniform for Tint).
// A fourth, 'registers' with f32 elements, exists for tests: it runs the f16 programs' whole tile
// logic (staging, masks, softmax, workgroup layouts) on adapters without `shader-f16` (SwiftShader
// in CI), where it must match the float64 reference to float32 accuracy.
import { warnOnce } from '../../src/warn';
import { adapterInfoOf } from '../../src/webgpu_device';

export type MatmulKind = 'subgroup-matrix' | 'registers';
export type ElementType = 'f16' | 'f32';

/** How an f16 program computes its tile products and what its staged tiles hold. */
export interface F16Plan {
  matmul: MatmulKind;
  element: ElementType;
}

/** One entry of GPUAdapterInfo.subgroupMatrixConfigs (not yet in the TypeScript WebGPU types). */
export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

export interface F16Capabilities {
  shaderF16: boolean;
  subgroups: boolean;
  subgroupMinSize: number;
  subgroupMaxSize: number;
  /** The f16 → f32 16×16×16 configuration when the device has subgroup matrices and lists it. */
  matrix?: SubgroupMatrixConfig;
}

/** The feature name of subgroup matrices (not in TypeScript's GPUFeatureName). */
export const SUBGROUP_MATRIX_FEATURE = 'chromium-experimental-subgroup-matrix';

/** Rows, columns and depth of every subgroup-matrix product the f16 programs issue. */
export const MATRIX_SIZE = 16;
/** Invocations per subgroup the f16 programs are written for (the size of NVIDIA's, AMD's wave32, Apple's). */
export const SUBGROUP_SIZE = 32;

function adapterInfo(device: GPUDevice): Record<string, unknown> {
  const info: unknown = (device as { adapterInfo?: unknown }).adapterInfo;
  return typeof info === 'object' && info !== null ? (info as Record<string, unknown>) : {};
}

function isMatrixConfig(x: unknown): x is SubgroupMatrixConfig {
  const o = x as Partial<SubgroupMatrixConfig> | null;
  return typeof o === 'object' && o !== null && typeof o.M === 'number' && typeof o.N === 'number' &&
    typeof o.K === 'number' && typeof o.componentType === 'string' && typeof o.resultComponentType === 'string';
}

/** The adapter's subgroup-matrix configurations (empty where the device does not expose them). */
export function subgroupMatrixConfigs(device: GPUDevice): SubgroupMatrixConfig[] {
  const listed = (info: unknown): SubgroupMatrixConfig[] => {
    const list = typeof info === 'object' && info !== null ? (info as Record<string, unknown>).subgroupMatrixConfigs : undefined;
    if (!list || typeof (list as Iterable<unknown>)[Symbol.iterator] !== 'function') return [];
    // Dawn's objects expose their fields as getters: copy them into plain objects.
    return Array.from(list as Iterable<unknown>).filter(isMatrixConfig).map(m => ({
      componentType: m.componentType, resultComponentType: m.resultComponentType, M: m.M, N: m.N, K: m.K,
    }));
  };
  const own = listed(adapterInfo(device));
  return own.length ? own : listed(adapterInfoOf(device));
}

export function f16Capabilities(device: GPUDevice): F16Capabilities {
  const info = adapterInfo(device);
  const subgroups = device.features.has('subgroups');
  const size = (x: unknown) => (typeof x === 'number' ? x : 0);
  const caps: F16Capabilities = {
    shaderF16: device.features.has('shader-f16'),
    subgroups,
    subgroupMinSize: subgroups ? size(info.subgroupMinSize) : 0,
    subgroupMaxSize: subgroups ? size(info.subgroupMaxSize) : 0,
  };
  if (caps.shaderF16 && subgroups && device.features.has(SUBGROUP_MATRIX_FEATURE)) {
    caps.matrix = subgroupMatrixConfigs(device).find(m => m.componentType === 'f16' &&
      m.resultComponentType === 'f32' && m.M === MATRIX_SIZE && m.N === MATRIX_SIZE && m.K === MATRIX_SIZE);
  }
  return caps;
}

/** Whether the f16 programs' subgroup-matrix path can run: a 16×16×16 f16 config and subgroups of exactly 32. */
export function matrixPathFits(caps: F16Capabilities): boolean {
  return caps.matrix !== undefined && caps.subgroupMinSize === SUBGROUP_SIZE && caps.subgroupMaxSize === SUBGROUP_SIZE;
}

/**
 * Overrides for tests and benches; undefined fields mean "what the device supports".
 * `templatedLoad`: write loads as subgroupMatrixLoad<T, col_major>(p, offset, stride), the form
 * newer Tint wants, instead of subgroupMatrixLoad<T>(p, offset, col_major, stride).
 */
export const f16Tuning: { plan?: F16Plan; templatedLoad?: boolean } = {};

/** WGSL loading a subgroup matrix of `type` from workgroup array `array`. */
export function matrixLoad(type: string, array: string, offset: string, colMajor: boolean, stride: string): string {
  return f16Tuning.templatedLoad
    ? `subgroupMatrixLoad<${type}, ${colMajor ? 'col_major' : 'row_major'}>(&${array}, ${offset}, ${stride})`
    : `subgroupMatrixLoad<${type}>(&${array}, ${offset}, ${colMajor}, ${stride})`;
}

/**
 * The plan `precision: 'float16'` runs with on this device, or undefined when the device has
 * neither `shader-f16` nor subgroup matrices (the float32 kernels run; warned once per `pass`).
 */
export function f16Plan(device: GPUDevice, pass: string): F16Plan | undefined {
  if (f16Tuning.plan) return f16Tuning.plan;
  const caps = f16Capabilities(device);
  if (matrixPathFits(caps)) return { matmul: 'subgroup-matrix', element: 'f16' };
  if (caps.shaderF16) return { matmul: 'registers', element: 'f16' };
  warnOnce(`webgpu-float16-${pass}`, `precision 'float16': this WebGPU device has no 'shader-f16' ` +
    `(nor subgroup matrices), so the ${pass} runs in float32. In Node, initDawn({ unsafeFeatures: true }) ` +
    'enables them where the GPU has them; in Chrome, the WebGPU developer features flag.');
  return undefined;
}

/** WGSL `enable` extensions a program of this plan needs (`subgroups` added where the program uses them). */
export function planExtensions(plan: F16Plan, useSubgroups: boolean): string[] {
  const ext: string[] = [];
  if (plan.element === 'f16') ext.push('f16');
  if (useSubgroups || plan.matmul === 'subgroup-matrix') ext.push('subgroups');
  if (plan.matmul === 'subgroup-matrix') ext.push('chromium_experimental_subgroup_matrix');
  return ext;
}

/**
 * Attribute for the entry point of a subgroup-matrix program. Tint checks subgroup-matrix calls with
 * its workgroup-uniformity analysis; our calls sit in workgroup-uniform control flow but take
 * offsets that differ per subgroup (each subgroup owns its 16 rows), which is subgroup-uniform
 * because every 32 consecutive invocations form one subgroup on the devices matrixPathFits accepts.
 */
export function matrixDiagnostic(plan: F16Plan): string {
  return plan.matmul === 'subgroup-matrix' ? '@diagnostic(off, chromium.subgroup_matrix_uniformity)\n' : '';
}

export const roundUp = (x: number, m: number): number => Math.ceil(x / m) * m;

/** WGSL types of 16×16 matrix operands and accumulator. */
export function leftType(e: ElementType): string { return `subgroup_matrix_left<${e}, 16, 16>`; }
export function rightType(e: ElementType): string { return `subgroup_matrix_right<${e}, 16, 16>`; }
export const RESULT_TYPE = 'subgroup_matrix_result<f32, 16, 16>';

/**
 * A WGSL loop in which `invocations` invocations (index `thread`, default the workgroup's WG
 * invocations by `lidx`) copy rows [first, first + rows) of a tensor into workgroup array `dst`
 * (element type `element`, row stride `stride` elements, `cols4` vec4 columns, padded with zeros
 * past `dim4` vec4 columns and past row `limit`), times `scale`, from element `at` (a number or a
 * WGSL u32 expression).
 * `load(row, col4)` is a WGSL expression of a vec4<f32>.
 * The loop counts from 0 to a constant and the element index is the invocation index plus a
 * multiple of `invocations`: Tint's integer range analysis then proves the workgroup-array indices
 * in range and leaves out the bounds clamps that robustness would put on each store (where the
 * invocations divide the tile; otherwise a guard and the clamps remain).
 */
export function stageTile(o: { dst: string; element: ElementType; rows: number; cols4: number; dim4: string;
  stride: number; first: string; limit: string; load: (row: string, col4: string) => string; scale?: string;
  at?: number | string; invocations: number; thread?: string }): string {
  const total = o.rows * o.cols4;
  const scaled = o.scale ? ` * ${o.scale}` : '';
  const lanes = [0, 1, 2, 3].map(e => `${o.dst}[base + ${e}u] = ${o.element}(x[${e}]);`).join(' ');
  const guard = total % o.invocations ? `if (e >= ${total}u) { break; }\n      ` : '';
  return `for (var s = 0u; s < ${Math.ceil(total / o.invocations)}u; s++) {
      let e = ${o.thread ?? 'lidx'} + s * ${o.invocations}u;
      ${guard}let r = e / ${o.cols4}u;
      let c4 = e % ${o.cols4}u;
      var x = vec4<f32>(0.0);
      if ((${o.first} + r < ${o.limit}) & (c4 < ${o.dim4})) { x = ${o.load(`${o.first} + r`, 'c4')}${scaled}; }
      let base = ${typeof o.at === 'string' ? o.at : `${o.at ?? 0}u`} + r * ${o.stride}u + c4 * 4u;
      ${lanes}
    }`;
}
