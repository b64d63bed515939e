// WebGPU in Node through Dawn for tests, benches and the demo: the library's `initDawn`
// (src/node.ts) with the choices tests make (subgroups on or off, TFJS_FA_NO_SUBGROUPS), keeping
// the backend while the same choices are asked for again. Under jest, VK_ICD_FILENAMES was set by
// the global setup (test/setup/global_setup.ts) where there is no GPU.
import * as tf from '@tensorflow/tfjs-core';
import { initDawn } from '../../src/node';
import type { WebGPUSetup } from '../../src/webgpu_device';

/** Set to 1 to run the webgpu backend on a device without `subgroups` even where the adapter has them. */
export const NO_SUBGROUPS_ENV = 'TFJS_FA_NO_SUBGROUPS';

export interface DawnWebGPU extends WebGPUSetup {
  /** Whether the adapter offers `subgroups`. */
  adapterHasSubgroups: boolean;
  /** Whether the device the webgpu backend runs on has `subgroups` enabled. */
  subgroups: boolean;
  /** Whether the device has `shader-f16` enabled. */
  shaderF16: boolean;
}

export interface DawnTestOptions {
  /** Request `subgroups` when the adapter has them (default: yes, unless TFJS_FA_NO_SUBGROUPS=1). */
  subgroups?: boolean;
  /** Dawn instance flags, e.g. 'enable-dawn-features=allow_unsafe_apis'. */
  dawnFlags?: string[];
}

let current: { subgroups: boolean; flags: string; setup: Promise<DawnWebGPU> } | undefined;

/**
 * Makes tfjs' webgpu backend on Dawn, on a device with or without `subgroups`, the current backend.
 * Calling it again with the same choices while that backend is current keeps it; other choices
 * make a new device and backend (tensors of the old one are gone). Outside jest, a machine without
 * a GPU falls back to SwiftShader.
 */
export async function initDawnWebGPU(options: DawnTestOptions = {}): Promise<DawnWebGPU> {
  const subgroups = options.subgroups ?? process.env[NO_SUBGROUPS_ENV] !== '1';
  const flags = JSON.stringify(options.dawnFlags ?? []);
  if (current && current.subgroups === subgroups && current.flags === flags && tf.getBackend() === 'webgpu') {
    return current.setup;
  }
  const setup = initDawn({ features: { subgroups }, dawnFlags: options.dawnFlags, swiftShaderFallback: true })
    .then(s => ({
      ...s,
      adapterHasSubgroups: s.adapter.features.has('subgroups'),
      subgroups: s.device.features.has('subgroups'),
      shaderF16: s.device.features.has('shader-f16'),
    }));
  current = { subgroups, flags, setup };
  return setup;
}
