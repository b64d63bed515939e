// The `aux` buffer: the optional small inputs packed into one u32 array, so that the programs stay
// within WebGPU's default of 8 storage buffers per stage. Its layout is derived from the config:
//   [keyLengths (B) | alibiSlopes (B'·Hq, f32 bits) | blockMask (bits) | mask (bits) | lse·log2e | D]
// The last two regions exist only in the backward, where the row_dot pass fills them. The inputs
// are copied in with copyBufferToBuffer (bool and int32 tensors are 32-bit on tfjs' webgpu backend),
// except the mask and block mask, which are packed 32 entries per word (pack_mask.ts): a second copy
// costs 1/32 of their size, and a mask plane too large to bind fits packed.
import type { TensorInfo } from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import type { AttentionConfig } from '../../src/config';
import { maskWords, packMask } from './pack_mask';
import { gpuBuffer } from './runtime';
import { maxBindingBytes } from './tuning';

export interface AuxLayout {
  keyLengths: number;
  alibi: number;
  blockMask: number;
  mask: number;
  lse: number;
  rowTerm: number;
  /** Total u32 elements. */
  size: number;
}

const product = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

export function auxLayout(c: AttentionConfig, withRowStats: boolean): AuxLayout {
  let at = 0;
  const take = (n: number) => { const start = at; at += n; return start; };
  const keyLengths = take(c.hasKeyLengths ? c.batch : 0);
  const alibi = take(c.alibiShape.length ? product(c.alibiShape) : 0);
  const blockMask = take(c.blockMaskShape.length ? maskWords(product(c.blockMaskShape)) : 0);
  const mask = take(c.maskShape.length ? maskWords(product(c.maskShape)) : 0);
  const rows = c.batch * c.headsQ * c.seqQ;
  const lse = take(withRowStats ? rows : 0);
  const rowTerm = take(withRowStats ? rows : 0);
  return { keyLengths, alibi, blockMask, mask, lse, rowTerm, size: Math.max(at, 4) };
}

export function auxNeeded(c: AttentionConfig, withRowStats: boolean): boolean {
  return withRowStats || c.hasKeyLengths || c.alibiShape.length > 0 || c.blockMaskShape.length > 0 ||
    c.maskShape.length > 0;
}

/**
 * Encodes the copies of the present inputs into `aux` (a scratch buffer of layout.size u32) and
 * queues the packing of the masks (pack_mask.ts); `encoder` is a runPrograms prelude's.
 */
export function encodeAuxCopies(backend: WebGPUBackend, encoder: GPUCommandEncoder, layout: AuxLayout, aux: GPUBuffer,
  inputs: { keyLengths?: TensorInfo; alibiSlopes?: TensorInfo; blockMask?: TensorInfo; mask?: TensorInfo }): void {
  const copy = (t: TensorInfo | undefined, at: number) => {
    if (!t) return;
    const bytes = product(t.shape) * 4;
    if (bytes > 0) encoder.copyBufferToBuffer(gpuBuffer(backend, t), 0, aux, at * 4, bytes);
  };
  copy(inputs.keyLengths, layout.keyLengths);
  copy(inputs.alibiSlopes, layout.alibi);
  for (const [t, at] of [[inputs.blockMask, layout.blockMask], [inputs.mask, layout.mask]] as const) {
    if (t) packMask(encoder, gpuBuffer(backend, t), product(t.shape), aux, at, maxBindingBytes(backend.device));
  }
}
