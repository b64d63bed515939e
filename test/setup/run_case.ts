// Runs one case of the shared list on the current tfjs backend: the forward pass with lse, and the
// gradients of q, k, v (and bias) for the upstream gradients dOutput and dLse of the case data.
// The same code runs in Node (cpu, webgpu through Dawn) and in the browser page, so every backend is
// driven the same way and only the comparison with the float64 reference differs in tolerance.
import * as tf from '@tensorflow/tfjs-core';
import { flashAttention } from '../../src/index';
import type { AttentionCase, CaseData } from '../cases';
import { caseTensors, toTensor } from '../case_tensors';

export interface CaseResult {
  backend: string;
  output: Float32Array;
  lse: Float32Array;
  /** Present when the case has `grad`. */
  dq?: Float32Array; dk?: Float32Array; dv?: Float32Array;
  /** In the bias' own shape, when the case has a bias. */
  dbias?: Float32Array;
  /** tf.memory().numTensors before the case and after everything it made was disposed. */
  tensorsBefore: number;
  tensorsAfter: number;
}

export async function runCase(c: AttentionCase, data: CaseData): Promise<CaseResult> {
  const tensorsBefore = tf.memory().numTensors;
  const t = caseTensors(c, data);
  const made: tf.Tensor[] = [...t.all];
  try {
    const { output, lse } = flashAttention(t.q, t.k, t.v, { ...t.options, returnLse: true });
    made.push(output, lse);
    const result: CaseResult = {
      backend: tf.getBackend(),
      output: (await output.data()) as Float32Array,
      lse: (await lse.data()) as Float32Array,
      tensorsBefore, tensorsAfter: -1,
    };
    if (c.grad) Object.assign(result, await gradients(c, data, t, made));
    tf.dispose(made);
    result.tensorsAfter = tf.memory().numTensors;
    return result;
  } catch (error) {
    tf.dispose(made);
    throw error;
  }
}

const flat = (x: tf.Tensor) => tf.reshape(x, [-1]);

/**
 * Gradients for the upstream (dOutput, dLse): the op's two outputs are flattened into one tensor
 * so that `tf.grads` can take both upstream gradients as its `dy`, unchanged.
 */
async function gradients(c: AttentionCase, data: CaseData, t: ReturnType<typeof caseTensors>, made: tf.Tensor[]):
    Promise<Pick<CaseResult, 'dq' | 'dk' | 'dv' | 'dbias'>> {
  const bias = t.options.bias;
  const dy = tf.tidy(() => tf.concat([flat(toTensor(data.dOutput)), flat(toTensor(data.dLse))]));
  made.push(dy);
  const f = (...xs: tf.Tensor[]) => {
    const [q, k, v, b] = xs;
    const options = b ? { ...t.options, bias: b } : t.options;
    const { output, lse } = flashAttention(q, k, v, { ...options, returnLse: true });
    return tf.concat([flat(output), flat(lse)]);
  };
  const grads = tf.grads(f)(bias ? [t.q, t.k, t.v, bias] : [t.q, t.k, t.v], dy);
  made.push(...grads);
  const [dq, dk, dv, dbias] = await Promise.all(grads.map(g => g.data() as Promise<Float32Array>));
  return bias ? { dq, dk, dv, dbias } : { dq, dk, dv };
}
