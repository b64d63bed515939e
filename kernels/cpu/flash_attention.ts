// FlashAttention forward on the cpu backend: for each (batch, query head, query tile) the key tiles
// that may hold a visible key are visited once, with an online softmax (running max and sum per row)
// rescaling the output accumulator, so memory is one tile of scores, never Nq × Nk. The output and
// log-sum-exp of a row are written once, at the end.
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { attentionConfig, layoutStrides, outputShape } from '../../src/config';
import { unpackAttentionInputs } from '../../src/inputs';
import { FlashAttention } from '../../src/kernel_names';
import { warnOnce } from '../../src/warn';
import { AttentionScores, readScoreInputs, TILE_K, TILE_Q } from './attention_scores';
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
  for (let b = 0; b < c.batch; b++) {
    for (let h = 0; h < c.headsQ; h++) {
      const vBase = b * vStrides.batch + scores.kvHead(h) * vStrides.head;
      for (const qt of scores.queryTiles) {
        const rows = qt.end - qt.start;
        rowMax.fill(-Infinity);
        rowSum.fill(0);
        acc.fill(0);
        for (const kt of scores.keyTiles) {
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
        for (let r = 0; r < rows; r++) {
          const i = qt.start + r;
          const max = rowMax[r];
          // No visible key: output 0 and lse −Infinity. A +Infinity score gives a NaN softmax but
          // its log-sum-exp is +Infinity, not the NaN that max + log(NaN) would give.
          lse[(b * c.headsQ + h) * c.seqQ + i] = Math.abs(max) === Infinity ? max : max + Math.log(rowSum[r]);
          const oRow = b * oStrides.batch + h * oStrides.head + i * oStrides.seq;
          for (let d = 0; d < Dv; d++) output[oRow + d] = max === -Infinity ? 0 : acc[r * Dv + d] / rowSum[r];
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
