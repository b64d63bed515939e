// Tuning knobs of the webgpu attention kernels for benches and tests (re-exported by
// flash_attention.ts); the defaults are what the kernels use. Its own module so that the small
// helpers (aux.ts) can honor the binding limit without importing the kernel.
import type { Tiles } from './tiles';

/** How the float32 forward program walks its work (bench/webgpu.ts --ab times each against the other). */
export interface ForwardSchedule {
  /**
   * Two query blocks per workgroup, i and n−1−i (heavy one first), each with its own online softmax
   * and output write: under a causal-like band every workgroup then does about the same number of
   * key tiles. 'banded' pairs only bands bounded right and unbounded left (causal); 'always' pairs
   * every problem (tests); 'never' runs one block per workgroup, heaviest blocks first.
   */
  pairBlocks: 'banded' | 'always' | 'never';
  /**
   * With paired blocks: cut each pair's key walk (the heavy block's tiles, then the light one's) in
   * two halves run by two workgroups, which write partial outputs and log-sum-exps that
   * merge_splits.ts combines. Under a causal band every workgroup then does the same work as every
   * other, and there are as many of them as the full forward has (two per pair), so the full
   * forward's tiles fit the GPU the same way.
   */
  halvePairs: boolean;
  /**
   * Evaluate the visibility mask only on key tiles that cross a band edge, the key limit or a
   * block-sparse boundary; tiles every key of which is visible take the unmasked score.
   */
  maskEdgeTilesOnly: boolean;
  /**
   * Block-sparse: walk the live key blocks from the packed mask bits, 32 blocks per read by one
   * thread (true), instead of testing runs of 128 key tiles in parallel and listing the live ones
   * serially (false).
   */
  sparseFromBits: boolean;
}

export const webgpuAttentionTuning: {
  forwardTiles?: Tiles;
  forwardSchedule: ForwardSchedule;
  dkdvTiles?: Tiles;
  dqTiles?: Tiles;
  /** Use subgroup reductions when the device has `subgroups` (true) or never (false). */
  subgroups: boolean;
  /** A binding limit below the device's, to exercise dispatch splitting in tests. */
  maxBindingBytes?: number;
} = {
  subgroups: true,
  // Measured on the H100 (bench/RESULTS.md, webgpu section, 2026-11-26 ~18:48 UTC, --ab-targets,
  // medians of 5 interleaved rounds, N = 4096, H = 12): causal D = 64 halved pairs 1.369 ms against
  // 1.432 one block per workgroup (192×32 4×4) and 1.40–2.61 whole pairs (17:02); causal D = 128
  // halved pairs 2.97 and whole pairs 2.95 against 5.7–8.7 one block per workgroup (full 5.50);
  // block-sparse (blocks of 64, 9.5 % live) with the mask only on edge tiles 0.413 against 0.432
  // (a visited tile inside a live block needs none); the mask-bits walk was slower (1.09–1.30
  // against 0.58, 17:02).
  forwardSchedule: { pairBlocks: 'banded', halvePairs: true, maskEdgeTilesOnly: true, sparseFromBits: false },
};

export function maxBindingBytes(device: GPUDevice): number {
  return Math.min(device.limits.maxStorageBufferBindingSize, webgpuAttentionTuning.maxBindingBytes ?? Infinity);
}
