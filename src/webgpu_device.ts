// tfjs' webgpu backend registers a factory that asks its device for `timestamp-query` and
// `bgra8unorm-storage` only, so on stock tfjs the kernels never see `subgroups`, `shader-f16` or
// subgroup matrices. `registerWebGPUBackend` creates the device itself, with every optional feature
// the adapter offers that the kernels (or tfjs) use and every limit raised to the adapter's, and
// registers tfjs' own `WebGPUBackend` class on it under tfjs' name, 'webgpu': tfjs' kernels and
// ours are registered for that name, so the backend must carry it.
import * as tf from '@tensorflow/tfjs-core';

/** Optional WebGPU features requested when the adapter offers them (unless turned off). */
export const WEBGPU_FEATURES = [
  'subgroups',
  'shader-f16',
  'chromium-experimental-subgroup-matrix',
  'timestamp-query',
  'bgra8unorm-storage',
] as const;
export type WebGPUFeature = typeof WEBGPU_FEATURES[number];

/** Device limits raised to the adapter's (the WebGPU defaults are far below what GPUs have). */
export const RAISED_LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxStorageBuffersPerShaderStage',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
  'maxUniformBufferBindingSize',
] as const;
export type RaisedLimit = typeof RAISED_LIMITS[number];

export interface WebGPUBackendOptions {
  /** Where to find adapters; default `navigator.gpu`. */
  gpu?: GPU;
  /** Default: 'low-power' when tfjs' WEBGPU_USE_LOW_POWER_GPU flag is set, else 'high-performance' (as tfjs). */
  powerPreference?: GPUPowerPreference;
  /**
   * `false` leaves a feature off even where the adapter offers it (e.g. `{ subgroups: false }` to run
   * the kernels' path without subgroups). Turning `subgroups` off also turns off
   * `chromium-experimental-subgroup-matrix`: subgroup matrices are subgroup operations.
   */
  features?: Partial<Record<WebGPUFeature, boolean>>;
  /** Values requested instead of the adapter's own for these limits. */
  limits?: Partial<Record<RaisedLimit, number>>;
  /** Make the new backend the current one (default true). */
  setBackend?: boolean;
}

export interface WebGPUSetup {
  gpu: GPU;
  adapter: GPUAdapter;
  device: GPUDevice;
  /** Vendor, architecture, device and description of the adapter, for logs. */
  description: string;
  /** A CPU implementation of WebGPU (SwiftShader, llvmpipe, lavapipe): correct, but nothing to time. */
  software: boolean;
}

// Dawn (Node) crashes when the GPU, adapter or device objects are garbage collected while the
// device is in use, and tfjs' backend holds only the device: the current setup is held here until
// a later call replaces its backend and destroys its device.
let current: WebGPUSetup | undefined;

const SOFTWARE_ADAPTER = /swiftshader|llvmpipe|lavapipe/i;

/** The features of `WEBGPU_FEATURES` that the adapter offers and the options leave on. */
export function requestedFeatures(adapterFeatures: ReadonlySet<string>,
  choices: WebGPUBackendOptions['features'] = {}): GPUFeatureName[] {
  const on = (name: WebGPUFeature): boolean =>
    choices[name] !== false && !(name === 'chromium-experimental-subgroup-matrix' && choices.subgroups === false);
  // TypeScript's GPUFeatureName lacks the subgroup-matrix feature: the adapter is the judge of names.
  const offered = (name: string): name is GPUFeatureName => adapterFeatures.has(name);
  const wanted: readonly string[] = WEBGPU_FEATURES.filter(on);
  return wanted.filter(offered);
}

/** The adapter's value of every raised limit it reports, or the value the options ask for. */
export function requestedLimits(adapterLimits: GPUSupportedLimits,
  overrides: WebGPUBackendOptions['limits'] = {}): Record<string, number> {
  const limits: Record<string, number> = {};
  for (const name of RAISED_LIMITS) {
    const value = overrides[name] ?? adapterLimits[name];
    if (typeof value === 'number') limits[name] = value;
  }
  return limits;
}

/**
 * The info of the adapter `device` was made from, when it was made here: Dawn's `device.adapterInfo`
 * lacks the adapter's `subgroupMatrixConfigs`, which the f16 kernels read.
 */
export function adapterInfoOf(device: GPUDevice): GPUAdapterInfo | undefined {
  return current?.device === device ? current.adapter.info : undefined;
}

/**
 * Creates a WebGPU device with every feature the kernels can use that the adapter offers
 * (`subgroups`, `shader-f16`, `chromium-experimental-subgroup-matrix`, `timestamp-query`; and
 * `bgra8unorm-storage`, which tfjs asks for) and limits raised to the adapter's, registers tfjs'
 * `WebGPUBackend` on it as 'webgpu' (removing the backend registered under that name, tfjs' own
 * factory included, and any tensors on it: call this before making tensors) and makes it the
 * current backend. Each call makes a new device and destroys the one the previous call made.
 */
export async function registerWebGPUBackend(options: WebGPUBackendOptions = {}): Promise<WebGPUSetup> {
  // Loaded here, not imported at the top: the package is an optional peer dependency, and its
  // import checks for `navigator.gpu`, which the Node helper sets up just before calling this.
  const { WebGPUBackend } = await import('@tensorflow/tfjs-backend-webgpu');
  if (typeof WebGPUBackend !== 'function') {
    throw new Error('registerWebGPUBackend: @tensorflow/tfjs-backend-webgpu is not loaded (its WebGPUBackend is missing)');
  }
  const gpu = options.gpu ?? (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (!gpu) throw new Error('registerWebGPUBackend: no WebGPU here (navigator.gpu is missing and no `gpu` was given)');
  const powerPreference = options.powerPreference ??
    (tf.env().getBool('WEBGPU_USE_LOW_POWER_GPU') ? 'low-power' : 'high-performance');
  const adapter = await gpu.requestAdapter({ powerPreference });
  if (!adapter) throw new Error(`registerWebGPUBackend: requestAdapter({ powerPreference: '${powerPreference}' }) found no adapter`);
  const device = await adapter.requestDevice({
    requiredFeatures: requestedFeatures(adapter.features, options.features),
    requiredLimits: requestedLimits(adapter.limits, options.limits),
  });
  const previous = current;
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  // Only after tfjs' backend on it is gone: the previous device would otherwise live as long as the page.
  previous?.device.destroy();
  // Priority 3, as tfjs' own factory: above webgl (2) and cpu (1) when tfjs picks a backend itself.
  tf.registerBackend('webgpu', () => new WebGPUBackend(device, adapter.info), 3);
  const info = adapter.info;
  const text = [info.vendor, info.architecture, info.device, info.description].filter(s => s).join(' / ');
  const setup = { gpu, adapter, device, description: text, software: SOFTWARE_ADAPTER.test(text) };
  current = setup;
  if ((options.setBackend ?? true) && !(await tf.setBackend('webgpu'))) {
    throw new Error('registerWebGPUBackend: tfjs could not start its webgpu backend on the new device');
  }
  return setup;
}
