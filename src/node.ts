/// <reference types="node" />
// WebGPU in Node through Dawn, as the package entry 'tfjs-flash-attention/node': `initDawn` starts
// Dawn (src/dawn.ts) and registers tfjs' webgpu backend on a device with every feature the kernels
// can use (src/webgpu_device.ts).
//
// Dawn picks its GPU through the system's Vulkan drivers (on Linux). On a machine without one it finds
// no adapter; `swiftShaderFallback` then points the Vulkan loader at SwiftShader, the software driver
// Chromium ships, and creates a new Dawn instance, which reads VK_ICD_FILENAMES again. That works
// only where `process.env` is the real environment: under jest a test file's `process.env` is a
// copy the addon never sees, so the test setup chooses the driver before jest starts its workers.
import * as fs from 'fs';
import { DawnAddon, dawnInstanceFlags, DawnToggleOptions, loadDawn, SWIFTSHADER_ICD } from './dawn';
import { registerWebGPUBackend, WebGPUBackendOptions, WebGPUSetup } from './webgpu_device';

export interface DawnOptions extends Omit<WebGPUBackendOptions, 'gpu'>, DawnToggleOptions {
  /**
   * When Dawn finds no adapter, run on this Vulkan driver (an ICD json; `true`: SWIFTSHADER_ICD).
   * Linux only; does nothing when VK_ICD_FILENAMES is already set.
   */
  swiftShaderFallback?: boolean | string;
}

// Everything Dawn made stays referenced on the addon's exports, which live as long as the process:
// a module's own state does not under jest, whose per-file module registries are dropped between
// test files while the native addon (and its devices) stay loaded.
const KEEP_ALIVE = Symbol.for('tfjs-flash-attention.dawnKeepAlive');

function keepAlive(dawn: DawnAddon, ...objects: unknown[]): void {
  const holder = dawn as DawnAddon & { [KEEP_ALIVE]?: unknown[] };
  (holder[KEEP_ALIVE] ??= []).push(...objects);
}

function fallbackDriver(option: DawnOptions['swiftShaderFallback']): string | undefined {
  if (option === undefined || option === false || process.env.VK_ICD_FILENAMES !== undefined) return undefined;
  const icd = option === true ? SWIFTSHADER_ICD : option;
  if (!fs.existsSync(icd)) {
    throw new Error(`Dawn found no WebGPU adapter, and the fallback Vulkan driver ${icd} does not exist` +
      (icd === SWIFTSHADER_ICD ? ' (Debian/Ubuntu: apt-get install chromium libvulkan1)' : ''));
  }
  return icd;
}

/** A Dawn GPU that has an adapter, after the fallback driver when the first instance found none. */
async function gpuWithAdapter(dawn: DawnAddon, options: DawnOptions): Promise<GPU> {
  const flags = dawnInstanceFlags(options);
  const powerPreference = options.powerPreference ?? 'high-performance';
  const gpu = dawn.create(flags);
  keepAlive(dawn, gpu);
  if (await gpu.requestAdapter({ powerPreference })) return gpu;
  const icd = fallbackDriver(options.swiftShaderFallback);
  if (icd !== undefined) {
    process.env.VK_ICD_FILENAMES = icd;
    const fallback = dawn.create(flags);
    keepAlive(dawn, fallback);
    if (await fallback.requestAdapter({ powerPreference })) return fallback;
  }
  const driver = process.env.VK_ICD_FILENAMES;
  throw new Error('Dawn found no WebGPU adapter' + (driver === undefined
    ? ' (without a GPU, on Linux: initDawn({ swiftShaderFallback: true }) runs on SwiftShader)'
    : ` with VK_ICD_FILENAMES=${driver}`));
}

/**
 * Starts Dawn, installs its WebGPU globals (`GPUBufferUsage`, …, and `navigator.gpu`) and registers
 * tfjs' webgpu backend on a device with every feature the kernels can use (`registerWebGPUBackend`).
 * No Dawn toggles unless asked for (`unsafeFeatures`, `disableRobustness`, `dawnFlags`).
 */
export async function initDawn(options: DawnOptions = {}): Promise<WebGPUSetup> {
  const dawn = loadDawn();
  const gpu = await gpuWithAdapter(dawn, options);
  Object.assign(globalThis, dawn.globals);
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  // Node ≥ 21 has a global navigator without `gpu`; older Node has none.
  if (nav) Object.defineProperty(nav, 'gpu', { value: gpu, configurable: true });
  else Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  const setup = await registerWebGPUBackend({ ...options, gpu });
  keepAlive(dawn, setup.adapter, setup.device);
  return setup;
}

export { dawnAddonPath, dawnInstanceFlags, SWIFTSHADER_ICD } from './dawn';
export type { DawnToggleOptions } from './dawn';
export { registerWebGPUBackend };
export type { WebGPUBackendOptions, WebGPUSetup };
