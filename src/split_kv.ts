// Split-KV ("flash-decoding"): when a problem has few query rows against many keys (decoding with a
// KV cache), one workgroup per (batch, head, query block) leaves most of a GPU idle, because the
// keys of a row are visited one tile after another by one workgroup. The split path cuts the keys
// into `splits` ranges of whole key tiles, computes each range's partial output O_s (normalized
// over its own keys) and log-sum-exp lse_s in parallel, then merges them:
//
//   lse = logsumexp_s lse_s,   O = Σ_s exp(lse_s − lse) · O_s
//
// A range with no visible key has lse_s = −Infinity and weight 0; when every range is empty the
// row is empty (output 0, lse −Infinity), never NaN. Dropout does not change the rule: each O_s is
// Σ p·z·v / Σ p over its keys, so weighting by the (dropout-free) sums recombines it exactly.
//
// The rule (by shape only, so a cached program is reused while the cache length is fixed):
//   parallel work  W = batch · headsQ · ceil(seqQ / queryRowsPerBlock)
//   split when     seqQ ≤ MAX_QUERY_ROWS and W < TARGET_WORKGROUPS and seqK ≥ MIN_KEYS
//   splits         = min(ceil(seqK / MIN_KEYS_PER_SPLIT), ceil(TARGET_WORKGROUPS / W)), ≥ 2
// TARGET_WORKGROUPS is about two waves of an H100's 132 SMs; below MIN_KEYS_PER_SPLIT keys a
// range's fixed cost (staging q, writing a partial row, the merge) outweighs its work.
// MIN_KEYS, from the H100 decode times (bench/RESULTS.md, B=1, 12 heads, D=64, Nq=1): the one-pass
// kernel took 0.28 / 0.72 / 1.65 / 3.23 ms at 1024 / 4096 / 8192 / 16384 keys (≈ 0.08 ms + 0.195 ms
// per 1024 keys: one workgroup walks each row's keys), the split path 0.30–0.48 ms at every length
// (two dispatches, scratch buffers, a submit: fixed cost, not work). So the split lost at 1024 keys
// (0.32 vs 0.28 ms), ties near 2048 (one-pass ≈ 0.47 ms) and wins from 4096 on (1.5× at 4096,
// 5.5× at 8192). The first rule (split from 512 keys) made GPT-2 small decoding at 1024 tokens
// slower than with the one-pass kernel; from 4096 keys the split never loses on that data.
import type { AttentionConfig } from './config';

export const SPLIT_RULE = {
  /** Decode-like problems only: the split kernels give each query row its own workgroup. */
  MAX_QUERY_ROWS: 16,
  TARGET_WORKGROUPS: 256,
  MIN_KEYS_PER_SPLIT: 256,
  MIN_KEYS: 4096,
};

/**
 * Tuning knob for tests and benches, not a user option: `force` = n runs every problem with n key
 * ranges (n = 1: never split), whatever the rule says.
 */
export const splitKvTuning: { force?: number } = {};

/** Parallel work units of the one-pass kernel: (batch, head, query block)s. */
function workUnits(c: AttentionConfig, queryRowsPerBlock: number): number {
  return c.batch * c.headsQ * Math.ceil(c.seqQ / queryRowsPerBlock);
}

/** The number of key ranges the rule gives a split problem, whatever its key count (benches force it). */
export function splitCount(c: AttentionConfig, queryRowsPerBlock: number): number {
  const { TARGET_WORKGROUPS, MIN_KEYS_PER_SPLIT } = SPLIT_RULE;
  const work = workUnits(c, queryRowsPerBlock);
  return Math.max(2, Math.min(Math.ceil(c.seqK / MIN_KEYS_PER_SPLIT), Math.ceil(TARGET_WORKGROUPS / work)));
}

/** Number of key ranges for this problem (1: the one-pass kernel); `queryRowsPerBlock` is the one-pass tile. */
export function keySplits(c: AttentionConfig, queryRowsPerBlock: number): number {
  if (splitKvTuning.force !== undefined) return Math.max(1, Math.min(splitKvTuning.force, c.seqK));
  const { MAX_QUERY_ROWS, TARGET_WORKGROUPS, MIN_KEYS } = SPLIT_RULE;
  if (c.seqQ > MAX_QUERY_ROWS || workUnits(c, queryRowsPerBlock) >= TARGET_WORKGROUPS || c.seqK < MIN_KEYS) return 1;
  return splitCount(c, queryRowsPerBlock);
}

/** Keys per range: range s is [s·size, (s+1)·size) ∩ [0, seqK). */
export function keysPerSplit(c: AttentionConfig, splits: number): number {
  return Math.ceil(c.seqK / splits);
}

/**
 * Merges one row's partials in float64 (the cpu reference of the GPU merge pass): `lse[s]` and
 * `partial[s·dim + d]` for s < splits into `out[outAt + d]`; returns the row's lse. A NaN lse
 * anywhere makes the row NaN, a +Infinity one gives lse +Infinity and a NaN output (the one-pass
 * softmax of a +Infinity score), as the one-pass kernels do.
 */
export function mergeRow(lse: ArrayLike<number>, partial: ArrayLike<number>, splits: number, dim: number,
  out: Float32Array, outAt: number): number {
  let max = -Infinity;
  for (let s = 0; s < splits; s++) max = Math.max(max, lse[s]);
  if (max === -Infinity) {
    out.fill(0, outAt, outAt + dim);
    return -Infinity;
  }
  if (Number.isNaN(max) || max === Infinity) {
    out.fill(NaN, outAt, outAt + dim);
    return max;
  }
  let sum = 0;
  const acc = new Float64Array(dim);
  for (let s = 0; s < splits; s++) {
    if (lse[s] === -Infinity) continue;
    const w = Math.exp(lse[s] - max);
    sum += w;
    for (let d = 0; d < dim; d++) acc[d] += w * partial[s * dim + d];
  }
  for (let d = 0; d < dim; d++) out[outAt + d] = acc[d] / sum;
  return max + Math.log(sum);
}

// WebGL has no workgroups: the one-pass webgl forward walks the keys in blocks of up to 1024 keys,
// four draws per block (kernels/webgl/flash_attention.ts), and inside a block one fragment per
// query row pair loops over the block's keys for the row statistics. With few query rows those
// loops are long and the fragments few. The webgl split path (kernels/webgl/flash_attention_split.ts)
// runs a fixed number of draws whatever Nk: scores, per-range statistics, weights, per-range
// partial outputs (one fragment per (range, row pair, column pair)), and the merge; each range's
// loops are WEBGL_SPLIT_RULE.KEYS_PER_SPLIT keys long. It holds [B·Hq, Nq, Nk] score and weight
// textures, linear in Nk because Nq ≤ MAX_QUERY_ROWS, and bounded by MAX_WEIGHT_ELEMENTS.
export const WEBGL_SPLIT_RULE = {
  MAX_QUERY_ROWS: 16,
  KEYS_PER_SPLIT: 256,
  /**
   * Below this many keys the one-pass kernel is used. On SwiftShader (headless Chromium, B=1, 12
   * heads, D=64; work, not parallelism, sets the time there) both paths were within noise of each
   * other from 256 to 1024 keys (split 0.9–1.1× the one-pass time at Nq = 1, 4, 16) and the split
   * was as fast or faster from 2048 keys (Nq = 1: 15–22 vs 34 ms at 2048); unmeasured on a real GPU,
   * where the split's parallel ranges and fixed draw count only add to its advantage.
   */
  MIN_KEYS: 2048,
  /** Elements of the score and of the weight texture ([B·Hq, Nq, Nk]): 128 MiB each in float32. */
  MAX_WEIGHT_ELEMENTS: 2 ** 25,
};

/**
 * The webgl split plan: `splits` key ranges of `keys` keys each (the last may be shorter); splits = 1
 * means the one-pass kernel. Ranges hold an even number of keys (a packed texel pairs two keys), so
 * the count follows from that size. `maxTextureSize` bounds those textures, which tfjs
 * squarifies into at most (max − 1)² texels; `splitKvTuning.force` is honored where it fits.
 */
export function webglSplitPlan(c: AttentionConfig, maxTextureSize: number): { splits: number; keys: number } {
  const { MAX_QUERY_ROWS, KEYS_PER_SPLIT, MIN_KEYS, MAX_WEIGHT_ELEMENTS } = WEBGL_SPLIT_RULE;
  const rows = c.batch * c.headsQ;
  const texels = rows * Math.ceil(c.seqQ / 2) * Math.ceil(c.seqK / 2);
  const fits = rows * c.seqQ * c.seqK <= MAX_WEIGHT_ELEMENTS && texels <= (maxTextureSize - 1) ** 2;
  const onePass = { splits: 1, keys: c.seqK };
  if (!fits) return onePass;
  let wanted: number;
  if (splitKvTuning.force !== undefined) {
    wanted = Math.max(1, Math.min(splitKvTuning.force, c.seqK));
  } else {
    if (c.seqQ > MAX_QUERY_ROWS || c.seqK < MIN_KEYS) return onePass;
    wanted = Math.ceil(c.seqK / KEYS_PER_SPLIT);
  }
  if (wanted === 1) return onePass;
  const keys = 2 * Math.ceil(c.seqK / wanted / 2);
  return { splits: Math.ceil(c.seqK / keys), keys };
}
