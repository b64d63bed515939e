// FlashAttention forward on the cpu backend: for each (batch, query head, query tile) the key tiles
// that may hold a visible key are visited once, with an online softmax (running max and sum per row)
// rescaling the output accumulator, so memory is one tile of scores, never Nq × Nk. The output and
// log-sum-exp of a row are written once, at the end.
//
// Decode-shaped problems (src/split_kv.ts) take the split-KV structure the GPU kernels use: the key
// tiles are cut into ranges, each range's normalized partial output and lse are computed alone and
// merged with the log-sum-exp rule, so this kernel stays the reference of that path too.
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { attentionConfig, layoutStrides, outputShape } from '../../src/config';
import { unpackAttentionInputs } from '../../src/inputs';
import { FlashAttention } from '../../src/kernel_names';
import { keySplits, keysPerSplit, mergeRow } from '../../src/split_kv';
import { warnOnce } from '../../src/warn';
import { AttentionScores, readScoreInputs, Tile, TILE_K, TILE_Q } from './attention_scores';
import { cpuBackend, readFloats } from './cpu_io';

const flashAttentionCpu: KernelFunc = ({ inputs, backend, attrs }): TensorInfo[] => {
  const cpu = cpuBackend(backend);
  const c = attentionConfig(attrs);
  if (c.precision === 'float16') {
    warnOnce('cpu-float16', "precision 'float16' has no cpu kernel: the cpu backend computes in float32.");
  }
  const tensors = unpackAttentionInputs(c, inputs);
  const scores = new AttentionScores(c, readScoreInputs(cpu, tensors));
  const v = readFloats(cpu, tensors.v);
  const Dv = c.headDimV;
  const vStrides = layoutStrides(c, c.headsKV, c.seqK, Dv);
  const oStrides = layoutStrides(c, c.headsQ, c.seqQ, Dv);
  const output = new Float32Array(c.batch * c.headsQ * c.seqQ * Dv);
  const lse = new Float32Array(c.batch * c.headsQ * c.seqQ);

  const tile = new Float64Array(TILE_Q * TILE_K);
  const rowMax = new Float64Array(TILE_Q);
  const rowSum = new Float64Array(TILE_Q);
  const acc = new Float64Array(TILE_Q * Dv);
  /** Online softmax of the rows of `qt` over the live tiles of `keyTiles` into rowMax, rowSum, acc. */
  const attend = (b: number, h: number, qt: Tile, keyTiles: readonly Tile[]) => {
    const rows = qt.end - qt.start;
    const vBase = b * vStrides.batch + scores.kvHead(h) * vStrides.head;
    rowMax.fill(-Infinity);
    rowSum.fill(0);
    acc.fill(0);
    for (const kt of keyTiles) {
      if (!scores.tileLive(b, h, qt, kt)) continue;
      scores.scoreTile(b, h, qt, kt, tile);
      const cols = kt.end - kt.start;
      for (let r = 0; r < rows; r++) {
        // Math.max propagates NaN, so a NaN score makes the whole row NaN, as softmax would.
        let max = rowMax[r];
        for (let col = 0; col < cols; col++) max = Math.max(max, tile[r * cols + col]);
        if (max === -Infinity) continue;
        const rescale = Math.exp(rowMax[r] - max);
        if (rescale !== 1) {
          rowSum[r] *= rescale;
          for (let d = 0; d < Dv; d++) acc[r * Dv + d] *= rescale;
        }
        rowMax[r] = max;
        const i = qt.start + r;
        for (let col = 0; col < cols; col++) {
          const s = tile[r * cols + col];
          if (s === -Infinity) continue;
          const j = kt.start + col;
          const p = Math.exp(s - max);
          rowSum[r] += p;
          const w = p * scores.dropoutFactor(b, h, i, j);
          const vRow = vBase + j * vStrides.seq;
          for (let d = 0; d < Dv; d++) acc[r * Dv + d] += w * v[vRow + d];
        }
      }
    }
  };
  /** Row r's lse, and its normalized output into out[at..at+Dv). */
  const finish = (r: number, out: Float32Array | Float64Array, at: number): number => {
    const max = rowMax[r];
    for (let d = 0; d < Dv; d++) out[at + d] = max === -Infinity ? 0 : acc[r * Dv + d] / rowSum[r];
    // No visible key: output 0 and lse −Infinity. A +Infinity score gives a NaN softmax but
    // its log-sum-exp is +Infinity, not the NaN that max + log(NaN) would give.
    return Math.abs(max) === Infinity ? max : max + Math.log(rowSum[r]);
  };

  const splits = keySplits(c, TILE_Q);
  const splitSize = keysPerSplit(c, splits);
  // Key tiles clipped to each range (a clipped tile keeps its block-sparse block).
  const ranges = Array.from({ length: splits }, (_, s) => scores.keyTiles
    .map(kt => ({ ...kt, start: Math.max(kt.start, s * splitSize), end: Math.min(kt.end, (s + 1) * splitSize) }))
    .filter(kt => kt.start < kt.end));
  const partialLse = new Float64Array(splits);
  const partial = new Float64Array(splits * Dv);
  for (let b = 0; b < c.batch; b++) {
    for (let h = 0; h < c.headsQ; h++) {
      for (const qt of scores.queryTiles) {
        const rows = qt.end - qt.start;
        const rowAt = (r: number) => (b * c.headsQ + h) * c.seqQ + qt.start + r;
        const outAt = (r: number) => b * oStrides.batch + h * oStrides.head + (qt.start + r) * oStrides.seq;
        if (splits === 1) {
          attend(b, h, qt, scores.keyTiles);
          for (let r = 0; r < rows; r++) lse[rowAt(r)] = finish(r, output, outAt(r));
          continue;
        }
        // Row by row over the ranges, so the partials of one row at a time are kept.
        const perRange = ranges.map(range => {
          attend(b, h, qt, range);
          return { max: Float64Array.from(rowMax), sum: Float64Array.from(rowSum), acc: Float64Array.from(acc) };
        });
        for (let r = 0; r < rows; r++) {
          perRange.forEach((state, s) => {
            rowMax.set(state.max);
            rowSum.set(state.sum);
            acc.set(state.acc);
            partialLse[s] = finish(r, partial, s * Dv);
          });
          lse[rowAt(r)] = mergeRow(partialLse, partial, splits, Dv, output, outAt(r));
        }
      }
    }
  }
  return [
    cpu.makeTensorInfo(outputShape(c), 'float32', output),
    cpu.makeTensorInfo([c.batch, c.headsQ, c.seqQ], 'float32', lse),
  ];
};

export const flashAttentionCpuConfig: KernelConfig = {
  kernelName: FlashAttention,
  backendName: 'cpu',
  kernelFunc: flashAttentionCpu,
};
