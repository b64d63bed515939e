// The `FlashAttentionGrad` kernel of the webgpu backend: three passes in one command buffer, none
// with float atomics (WGSL has none): row_dot (D and lse·log2 e into aux), dK/dV over key blocks,
// dQ over query blocks; each recomputes the scores from lse, so nothing of size Nq × Nk is made.
//
// The bias gradient is dS reduced to the bias' shape. The kernels write dS, already summed over
// keys or query rows where the bias broadcasts over them (biasGradMode), into an expanded
// [B, Hq, Nq or 1, Nk or 1] buffer, which tfjs' Sum kernel then reduces over the batch and head
// dims the bias broadcasts over. Memory: B·Hq·Nq (bias over rows), B·Hq·Nk (over keys) or, for a
// bias with both a row and a key dimension, B·Hq·Nq·Nk floats during the backward — the bias'
// own size when it is full, B·Hq times a [Nq, Nk] bias shared by all heads. That is the one
// O(Nq·Nk) buffer, and only when the user's bias already is O(Nq·Nk).
import { getKernel } from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import type { AttentionConfig } from '../../src/config';
import { unpackGradInputs } from '../../src/inputs';
import { FlashAttentionGrad } from '../../src/kernel_names';
import { auxLayout, encodeAuxCopies } from './aux';
import { biasGradMode, dbiasExpandedShape, queryBlockGrid } from './attention_wgsl';
import { dkdvProgram, dkdvWorkgroupBytes } from './attention_backward_dkdv';
import { dqProgram, dqWorkgroupBytes } from './attention_backward_dq';
import { f16BackwardPasses } from './attention_backward_f16';
import { ROW_DOT_ROWS, rowDotProgram } from './row_dot';
import { isAttentionConfig, pickTiles, planDispatches, webgpuAttentionTuning, webgpuBackendOf } from './flash_attention';
import { attentionInputBuffers, gpuBuffer, makeOutput, pooledScratch, runPrograms } from './runtime';
import { BACKWARD_TILES, forBlockSize } from './tiles';

/** Sums `x` over `axes` (keeping them) with tfjs' own Sum kernel of this backend. */
function sumKeepDims(backend: WebGPUBackend, x: TensorInfo, axes: number[]): TensorInfo {
  const sum = getKernel('Sum', 'webgpu');
  if (!sum) throw new Error('flashAttention (webgpu): tfjs Sum kernel missing');
  const result = sum.kernelFunc({ inputs: { x }, backend, attrs: { axis: axes, keepDims: true } });
  if (Array.isArray(result)) throw new Error('flashAttention (webgpu): Sum returned several tensors');
  return result;
}

const flashAttentionGradWebGPU: KernelFunc = ({ inputs, backend: anyBackend, attrs }): TensorInfo[] => {
  if (!isAttentionConfig(attrs)) throw new Error('FlashAttentionGrad (webgpu): attributes are not an AttentionConfig');
  const c: AttentionConfig = attrs;
  const backend = webgpuBackendOf(anyBackend);
  const device = backend.device;
  const t = unpackGradInputs(c, inputs);
  const buffers: Record<string, GPUBuffer> = {
    ...attentionInputBuffers(backend, t),
    out: gpuBuffer(backend, t.output), lse: gpuBuffer(backend, t.lse),
    dout: gpuBuffer(backend, t.dOutput), dlse: gpuBuffer(backend, t.dLse),
  };
  const dq = makeOutput(backend, [...t.q.shape]);
  const dk = makeOutput(backend, [...t.k.shape]);
  const dv = makeOutput(backend, [...t.v.shape]);
  buffers.dq = dq.buffer;
  buffers.dk = dk.buffer;
  buffers.dv = dv.buffer;
  const expandedBiasShape = c.biasShape.length ? dbiasExpandedShape(c) : [];
  const dbias = c.biasShape.length ? makeOutput(backend, expandedBiasShape) : undefined;
  if (dbias) buffers.dbias = dbias.buffer;

  const made = [dq.info, dk.info, dv.info, ...(dbias ? [dbias.info] : [])];
  const aux = auxLayout(c, true);
  const auxBuffer = pooledScratch(backend, aux.size * 4);
  try {
    buffers.aux = auxBuffer;
    const pick = (names: string[]) => Object.fromEntries(names.filter(n => buffers[n]).map(n => [n, buffers[n]]));

    const rowDot = rowDotProgram(c, aux);
    const rowDotDispatches = planDispatches(backend, c, pick(['out', 'dout', 'lse', 'dlse', 'aux']),
      (units, g) => [Math.ceil(c.seqQ / ROW_DOT_ROWS), units * g.queryHeadsPerUnit, 1], g => g.queryHeadsPerUnit, rowDot.chunking);

    // precision 'float16': the matrix-tile programs where the device has shader-f16 (see attention_backward_f16.ts).
    const f16 = c.precision === 'float16' ? f16BackwardPasses(device, c, aux) : undefined;
    const kv = pickTiles(device, tl => dkdvWorkgroupBytes(c, tl), forBlockSize(BACKWARD_TILES, c.blockSize),
      webgpuAttentionTuning.dkdvTiles);
    const kvRows = f16?.dkdvRows ?? kv.tiles.rows;
    const dkdv = f16?.dkdv ?? dkdvProgram(c, aux, kv.tiles);
    const dkdvDispatches = planDispatches(backend, c, pick(['q', 'k', 'v', 'dout', 'dk', 'dv', 'bias', 'aux']),
      (units, g) => [Math.ceil(c.seqK / kvRows), units * g.kvHeadsPerUnit, 1], g => g.kvHeadsPerUnit, dkdv.chunking);

    const qt = pickTiles(device, (tl, sg) => dqWorkgroupBytes(c, tl, sg), forBlockSize(BACKWARD_TILES, c.blockSize),
      webgpuAttentionTuning.dqTiles);
    const qRows = f16?.dqRows ?? qt.tiles.rows;
    const dqSpec = f16?.dq ?? dqProgram(c, aux, qt.tiles, qt.useSubgroups);
    const dqDispatches = planDispatches(backend, c, pick(['q', 'k', 'v', 'dout', 'dq', 'bias', 'aux',
      ...(biasGradMode(c) === 'columns' ? [] : ['dbias'])]),
      (units, g) => queryBlockGrid(c, qRows, units * g.queryHeadsPerUnit), g => g.queryHeadsPerUnit, dqSpec.chunking);

    const programs = [
      { spec: rowDot, dispatches: rowDotDispatches },
      { spec: dkdv, dispatches: dkdvDispatches },
      { spec: dqSpec, dispatches: dqDispatches },
    ];
    if (biasGradMode(c) === 'columns') {
      const columns = f16?.biasColumns ?? dkdvProgram(c, aux, kv.tiles, 'biasColumns');
      programs.push({
        spec: columns,
        dispatches: planDispatches(backend, c, pick(['q', 'k', 'v', 'dout', 'bias', 'aux', 'dbias']),
          (units, g) => [Math.ceil(c.seqK / kvRows), units * g.kvHeadsPerUnit, 1], g => g.kvHeadsPerUnit, columns.chunking),
      });
    }
    runPrograms(backend, programs, encoder => {
      encodeAuxCopies(backend, encoder, aux, auxBuffer, t);
      // Tiles the dQ pass skips (outside the window, dead blocks) leave their dS entries unwritten.
      if (dbias) encoder.clearBuffer(dbias.buffer);
    });
  } catch (error) {
    for (const t of made) backend.disposeData(t.dataId);
    throw error;
  } finally {
    // Later users of the pooled buffer are queued after this call's submission.
    backend.bufferManager.releaseBuffer(auxBuffer);
  }

  const outputs = [dq.info, dk.info, dv.info];
  if (dbias) {
    const axes = [0, 1, 2].filter(a => c.biasShape[a] === 1 && expandedBiasShape[a] !== 1);
    if (axes.length === 0) {
      outputs.push(dbias.info);
    } else {
      outputs.push(sumKeepDims(backend, dbias.info, axes));
      backend.disposeData(dbias.info.dataId);
    }
  }
  return outputs;
};

export const flashAttentionGradWebGPUConfig: KernelConfig = {
  kernelName: FlashAttentionGrad,
  backendName: 'webgpu',
  kernelFunc: flashAttentionGradWebGPU,
};
