// FlashAttention backward on the cpu backend (FlashAttention-2): the probabilities are recomputed
// tile by tile from the saved log-sum-exp, P = exp(s − lse), never stored. For each (batch, KV head,
// key tile) dK and dV are accumulated over every query head of the GQA group and every query tile
// that may see the keys, then written once; dQ and dbias are accumulated per query row.
//
//   D_i   = rowsum(dO_i ∘ O_i) − dLse_i
//   dV_j += P_ij·Z_ij·dO_i                     Z = dropout factor (0 or 1/(1 − rate))
//   dS_ij = P_ij·((dO_i·v_j)·Z_ij − D_i)       gradient of the score after softcap (= dbias)
//   dq_i += scale·dS_ij·softcap'_ij·k_j,  dk_j += scale·dS_ij·softcap'_ij·q_i
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { AttentionConfig, attentionConfig, layoutStrides } from '../../src/config';
import { unpackGradInputs } from '../../src/inputs';
import { FlashAttentionGrad } from '../../src/kernel_names';
import { AttentionScores, readScoreInputs, TILE_K, TILE_Q } from './attention_scores';
import { cpuBackend, readFloats } from './cpu_io';

/** D_i = rowsum(dO_i ∘ O_i) − dLse_i for every row, in [B, Hq, Nq] order. */
function rowTerms(c: AttentionConfig, output: Float32Array, dOutput: Float32Array, dLse: Float32Array): Float64Array {
  const strides = layoutStrides(c, c.headsQ, c.seqQ, c.headDimV);
  const terms = new Float64Array(c.batch * c.headsQ * c.seqQ);
  for (let b = 0; b < c.batch; b++) {
    for (let h = 0; h < c.headsQ; h++) {
      for (let i = 0; i < c.seqQ; i++) {
        const row = b * strides.batch + h * strides.head + i * strides.seq;
        let sum = 0;
        for (let d = 0; d < c.headDimV; d++) sum += dOutput[row + d] * output[row + d];
        const at = (b * c.headsQ + h) * c.seqQ + i;
        terms[at] = sum - dLse[at];
      }
    }
  }
  return terms;
}

const flashAttentionGradCpu: KernelFunc = ({ inputs, backend, attrs }): TensorInfo[] => {
  const cpu = cpuBackend(backend);
  const c = attentionConfig(attrs);
  const tensors = unpackGradInputs(c, inputs);
  const scoreInputs = readScoreInputs(cpu, tensors);
  const scores = new AttentionScores(c, scoreInputs);
  const { q, k } = scoreInputs;
  const v = readFloats(cpu, tensors.v);
  const lse = readFloats(cpu, tensors.lse);
  const dOutput = readFloats(cpu, tensors.dOutput);
  const terms = rowTerms(c, readFloats(cpu, tensors.output), dOutput, readFloats(cpu, tensors.dLse));

  const D = c.headDim, Dv = c.headDimV;
  const { qStrides, kStrides } = scores;
  const vStrides = layoutStrides(c, c.headsKV, c.seqK, Dv);
  const oStrides = layoutStrides(c, c.headsQ, c.seqQ, Dv);
  const dq = new Float64Array(q.length);
  const dk = new Float32Array(k.length);
  const dv = new Float32Array(v.length);
  const dbias = c.biasShape.length ? new Float64Array(c.biasShape.reduce((a, n) => a * n, 1)) : undefined;

  const tile = new Float64Array(TILE_Q * TILE_K);
  const capSlope = c.softcap > 0 ? new Float64Array(TILE_Q * TILE_K) : undefined;
  const dkTile = new Float64Array(TILE_K * D);
  const dvTile = new Float64Array(TILE_K * Dv);
  const group = c.headsQ / c.headsKV;
  for (let b = 0; b < c.batch; b++) {
    for (let kvh = 0; kvh < c.headsKV; kvh++) {
      const kBase = b * kStrides.batch + kvh * kStrides.head;
      const vBase = b * vStrides.batch + kvh * vStrides.head;
      for (const kt of scores.keyTiles) {
        const cols = kt.end - kt.start;
        dkTile.fill(0);
        dvTile.fill(0);
        for (let h = kvh * group; h < (kvh + 1) * group; h++) {
          for (const qt of scores.queryTiles) {
            if (!scores.tileLive(b, h, qt, kt)) continue;
            scores.scoreTile(b, h, qt, kt, tile, capSlope);
            for (let i = qt.start; i < qt.end; i++) {
              const rowAt = (b * c.headsQ + h) * c.seqQ + i;
              const rowLse = lse[rowAt];
              if (rowLse === -Infinity) continue;
              const rowTerm = terms[rowAt];
              const qRow = b * qStrides.batch + h * qStrides.head + i * qStrides.seq;
              const oRow = b * oStrides.batch + h * oStrides.head + i * oStrides.seq;
              const row = (i - qt.start) * cols;
              for (let col = 0; col < cols; col++) {
                const s = tile[row + col];
                if (s === -Infinity) continue;
                const j = kt.start + col;
                const p = Math.exp(s - rowLse);
                const z = scores.dropoutFactor(b, h, i, j);
                const vRow = vBase + j * vStrides.seq;
                let dp = 0;
                for (let d = 0; d < Dv; d++) dp += dOutput[oRow + d] * v[vRow + d];
                const pz = p * z;
                for (let d = 0; d < Dv; d++) dvTile[col * Dv + d] += pz * dOutput[oRow + d];
                const ds = p * (dp * z - rowTerm);
                if (dbias) dbias[scores.biasIndex(b, h, i, j)] += ds;
                const g = c.scale * (capSlope ? ds * capSlope[row + col] : ds);
                const kRow = kBase + j * kStrides.seq;
                for (let d = 0; d < D; d++) {
                  dq[qRow + d] += g * k[kRow + d];
                  dkTile[col * D + d] += g * q[qRow + d];
                }
              }
            }
          }
        }
        for (let col = 0; col < cols; col++) {
          const j = kt.start + col;
          const kRow = kBase + j * kStrides.seq, vRow = vBase + j * vStrides.seq;
          for (let d = 0; d < D; d++) dk[kRow + d] = dkTile[col * D + d];
          for (let d = 0; d < Dv; d++) dv[vRow + d] = dvTile[col * Dv + d];
        }
      }
    }
  }
  const grads = [
    cpu.makeTensorInfo([...tensors.q.shape], 'float32', Float32Array.from(dq)),
    cpu.makeTensorInfo([...tensors.k.shape], 'float32', dk),
    cpu.makeTensorInfo([...tensors.v.shape], 'float32', dv),
  ];
  if (dbias) grads.push(cpu.makeTensorInfo([...c.biasShape], 'float32', Float32Array.from(dbias)));
  return grads;
};

export const flashAttentionGradCpuConfig: KernelConfig = {
  kernelName: FlashAttentionGrad,
  backendName: 'cpu',
  kernelFunc: flashAttentionGradCpu,
};
