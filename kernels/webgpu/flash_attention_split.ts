// The split-KV path of the webgpu `FlashAttention` kernel (src/split_kv.ts decides when): the
// split forward program writes every key range's partial output and lse into scratch buffers, the
// merge program combines them into the op's output and lse, both in one command buffer. The split
// pass is planned over dispatches like the one-pass forward (chunks.ts), so K and V caches larger
// than maxStorageBufferBindingSize still bind in slices; the partials are [splits × rows] and small
// for the decode shapes this path serves.
import type { TensorInfo } from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { AttentionConfig, outputShape } from '../../src/config';
import type { AttentionInputs } from '../../src/inputs';
import { keysPerSplit } from '../../src/split_kv';
import { auxLayout, auxNeeded, encodeAuxCopies } from './aux';
import { splitForwardGrid, splitForwardProgram } from './attention_forward_split';
import { NEG_INF_BITS } from './attention_wgsl';
import { planDispatches } from './flash_attention';
import { mergeGrid, mergeProgram } from './merge_splits';
import { attentionInputBuffers, makeOutput, runPrograms } from './runtime';

export function splitForwardWebGPU(backend: WebGPUBackend, c: AttentionConfig, t: AttentionInputs<TensorInfo>,
  splits: number): TensorInfo[] {
  const rows = c.batch * c.headsQ * c.seqQ;
  const dv4 = Math.ceil(c.headDimV / 4);
  const buffers = attentionInputBuffers(backend, t);
  const out = makeOutput(backend, outputShape(c));
  const lse = makeOutput(backend, [c.batch, c.headsQ, c.seqQ]);
  const withAux = auxNeeded(c, false);
  const aux = auxLayout(c, false);
  // Scratch from tfjs' buffer pool rather than createBuffer/destroy per call: a decode step runs this
  // every token with the same sizes. Stale contents are fine: every (range, row) partial is written.
  const pooled = (bytes: number) => backend.bufferManager.acquireBuffer(Math.max(16, Math.ceil(bytes / 16) * 16),
    GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC);
  const scratch = [
    pooled(splits * rows * dv4 * 16),
    pooled(splits * rows * 4),
    ...(withAux ? [pooled(aux.size * 4)] : []),
  ];
  const [partialOut, partialLse, auxBuffer] = scratch;
  try {
    buffers.partial_out = partialOut;
    buffers.partial_lse = partialLse;
    if (auxBuffer) buffers.aux = auxBuffer;
    const split = {
      spec: splitForwardProgram(c, aux, withAux, splits, keysPerSplit(c, splits)),
      dispatches: planDispatches(backend, c, buffers,
        (units, g) => splitForwardGrid(c, splits, units * g.queryHeadsPerUnit), g => g.queryHeadsPerUnit),
    };
    const whole = (buffer: GPUBuffer) => ({ buffer, offset: 0, size: buffer.size });
    const merge = {
      spec: mergeProgram(c, splits),
      dispatches: [{
        workgroups: mergeGrid(c),
        buffers: {
          partial_out: whole(partialOut), partial_lse: whole(partialLse), out: whole(out.buffer), lse: whole(lse.buffer),
        },
        uniforms: { neg_inf_bits: NEG_INF_BITS, off_partial_out: 0, off_partial_lse: 0, off_out: 0, off_lse: 0 },
      }],
    };
    runPrograms(backend, [split, merge], encoder => {
      if (auxBuffer) encodeAuxCopies(backend, encoder, aux, auxBuffer, t);
    });
  } catch (error) {
    backend.disposeData(out.info.dataId);
    backend.disposeData(lse.info.dataId);
    throw error;
  } finally {
    // Later users of these buffers are queued after this call's submit, so the GPU reads them first.
    for (const b of scratch) backend.bufferManager.releaseBuffer(b);
  }
  return [out.info, lse.info];
}
