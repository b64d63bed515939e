// Tuning knobs of the webgpu attention kernels for benches and tests (re-exported by
// flash_attention.ts); the defaults are what the kernels use. Its own module so that the small
// helpers (aux.ts) can honor the binding limit without importing the kernel.
import type { Tiles } from './tiles';

export const webgpuAttentionTuning: {
  forwardTiles?: Tiles;
  dkdvTiles?: Tiles;
  dqTiles?: Tiles;
  /** Use subgroup reductions when the device has `subgroups` (true) or never (false). */
  subgroups: boolean;
  /** A binding limit below the device's, to exercise dispatch splitting in tests. */
  maxBindingBytes?: number;
} = { subgroups: true };

export function maxBindingBytes(device: GPUDevice): number {
  return Math.min(device.limits.maxStorageBufferBindingSize, webgpuAttentionTuning.maxBindingBytes ?? Infinity);
}
