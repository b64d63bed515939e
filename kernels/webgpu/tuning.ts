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
   * forward's tiles fit the GPU the same way. 'narrow': for heads of at most 64 (D and Dv), where
   * it was measured faster; wider heads run whole pairs.
   */
  halvePairs: 'narrow' | 'always' | 'never';
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
  // Measured on the H100 (bench/RESULTS.md, webgpu section, 2026-11-26 18:45–19:15 UTC, --ab-targets,
  // medians of 5 interleaved rounds, N = 4096, H = 12; full forward 2.30–2.35 ms in clean rounds):
  // causal D = 64, halved pairs with blocks cut from the end 1.268 / 1.280 ms against 1.346 one
  // block per workgroup (192×32 4×4; median 2.09, min 1.36 in the other run) and 1.40–2.61 whole
  // pairs (17:02);
  // causal D = 128 (full 5.39), whole pairs 2.74 against halved pairs 2.83–4.81 (erratic over
  // rounds, 2.97 once before the blocks were cut from the end) and 4.18 one block per workgroup;
  // block-sparse (blocks of 64, 9.5 % live) with the mask only on edge tiles 0.400 / 0.413
  // against 0.406 / 0.432 (a visited tile inside a live block needs none); the mask-bits walk was
  // slower (1.09–1.30 against 0.58, 17:02).
  forwardSchedule: { pairBlocks: 'banded', halvePairs: 'narrow', maskEdgeTilesOnly: true, sparseFromBits: false },
};

export function maxBindingBytes(device: GPUDevice): number {
  return Math.min(device.limits.maxStorageBufferBindingSize, webgpuAttentionTuning.maxBindingBytes ?? Infinity);
}
