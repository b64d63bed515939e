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
  // The H100 (bench/RESULTS.md, webgpu, 17:02 UTC, --ab-schedule medians of 7 rounds, D = 64): causal
  // one block per workgroup 1.37 ms against 1.40–2.61 paired; block-sparse tile list 0.58 ms against
  // 1.09–1.30 from mask bits; the edge-tile mask bought nothing measurable. (At D = 128 the paired
  // causal schedule measured 2.94 ms against 4.26 once; not yet a default: see RESULTS.)
  forwardSchedule: { pairBlocks: 'never', halvePairs: false, maskEdgeTilesOnly: false, sparseFromBits: false },
};

export function maxBindingBytes(device: GPUDevice): number {
  return Math.min(device.limits.maxStorageBufferBindingSize, webgpuAttentionTuning.maxBindingBytes ?? Infinity);
}
