import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D, Tensor4D } from '@tensorflow/tfjs-core';
import { AttentionConfig, AttentionTensors, FlashAttentionOptions, normalizeAttention } from './config';
import { compositeAttention } from './composite';
import { attentionInputNames, packInputs } from './inputs';
import { FlashAttention } from './kernel_names';
import { warnOnce } from './warn';

export interface FlashAttentionResult {
  output: Tensor4D;
  /** Natural-log log-sum-exp of each row's visible scores, [B, Hq, Nq]; −Infinity for empty rows. */
  lse: Tensor3D;
}

/**
 * softmax(scale · Q Kᵀ (+ softcap, bias, ALiBi, masks)) V, computed tile by tile with an online
 * softmax: no Nq × Nk tensor is ever allocated on the backends that have a kernel (cpu, webgl,
 * webgpu). The gradient recomputes the scores from the saved log-sum-exp.
 */
export function flashAttention(q: Tensor, k: Tensor, v: Tensor,
  options: FlashAttentionOptions & { returnLse: true }): FlashAttentionResult;
export function flashAttention(q: Tensor, k: Tensor, v: Tensor, options?: FlashAttentionOptions): Tensor4D;
export function flashAttention(q: Tensor, k: Tensor, v: Tensor, options: FlashAttentionOptions = {}):
    Tensor4D | FlashAttentionResult {
  const { config, tensors, returnLse } = normalizeAttention(q, k, v, options);
  const [output, lse] = hasKernel() ? runFused(config, tensors) : runComposite(config, tensors);
  if (returnLse) return { output, lse };
  lse.dispose();
  return output;
}

function hasKernel(): boolean {
  return tf.getKernel(FlashAttention, tf.getBackend()) !== undefined;
}

function runFused(config: AttentionConfig, tensors: AttentionTensors): [Tensor4D, Tensor3D] {
  const inputs = packInputs(attentionInputNames(config), tensors);
  const [output, lse] = tf.engine().runKernel(FlashAttention, inputs, config) as Tensor[];
  return [output as Tensor4D, lse as Tensor3D];
}

function runComposite(config: AttentionConfig, tensors: AttentionTensors): [Tensor4D, Tensor3D] {
  const backend = tf.getBackend();
  warnOnce(`composite:${backend}`, `no FlashAttention kernel for the '${backend}' backend: using a ` +
    'composite of tfjs ops with the same results, whose memory is O(Nq·Nk) per head.');
  return compositeAttention(config, tensors);
}
