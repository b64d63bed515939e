// The kernels' inputs travel as a list, not a name map: tfjs saves inputs for the gradient either
// by fixed names (which fails for absent optional tensors) or, with `saveAllInputs`, all of an
// array-style input list (as its Concat kernel does). The list's order is derived from the config
// here, in one place, and every kernel reads its inputs back by name through `unpack*`.
import type { NamedTensorInfoMap, NamedTensorMap, Tensor, TensorInfo } from '@tensorflow/tfjs-core';
import type { AttentionConfig, AttentionTensors } from './config';

type OptionalName = 'bias' | 'mask' | 'keyLengths' | 'alibiSlopes' | 'blockMask';

/** Optional inputs in list order, each with the config test that says whether it is present. */
const OPTIONAL_INPUTS: ReadonlyArray<[OptionalName, (c: AttentionConfig) => boolean]> = [
  ['bias', c => c.biasShape.length > 0],
  ['mask', c => c.maskShape.length > 0],
  ['keyLengths', c => c.hasKeyLengths],
  ['alibiSlopes', c => c.alibiShape.length > 0],
  ['blockMask', c => c.blockMaskShape.length > 0],
];

function optionalNames(config: AttentionConfig): OptionalName[] {
  return OPTIONAL_INPUTS.filter(([, present]) => present(config)).map(([name]) => name);
}

/** Input names of the FlashAttention kernel, in list order. */
export function attentionInputNames(config: AttentionConfig): Array<keyof AttentionTensors> {
  return ['q', 'k', 'v', ...optionalNames(config)];
}

/** Input names of the FlashAttentionGrad kernel, in list order. */
export type GradTensors<T> = AttentionInputs<T> & { output: T; lse: T; dOutput: T; dLse: T };
export function gradInputNames(config: AttentionConfig): Array<keyof GradTensors<unknown>> {
  return ['q', 'k', 'v', 'output', 'lse', 'dOutput', 'dLse', ...optionalNames(config)];
}

export type AttentionInputs<T> = { q: T; k: T; v: T } & { [name in OptionalName]?: T };

/** An input list that tfjs accepts as a kernel's inputs (an Array is what `saveAllInputs` needs). */
export type InputList = Tensor[] & NamedTensorMap;

export function packInputs<N extends string>(names: N[], tensors: { [name in N]?: Tensor }): InputList {
  const list = names.map(name => {
    const t = tensors[name];
    if (t === undefined) throw new Error(`flashAttention: internal error: input '${name}' missing`);
    return t;
  });
  return list as InputList;
}

function unpack<N extends string>(names: N[], inputs: NamedTensorInfoMap): { [name in N]?: TensorInfo } {
  const out: { [name in N]?: TensorInfo } = {};
  names.forEach((name, index) => {
    const t = inputs[index];
    if (t === undefined) throw new Error(`flashAttention: kernel input ${index} ('${name}') missing`);
    out[name] = t;
  });
  return out;
}

export function unpackAttentionInputs(config: AttentionConfig, inputs: NamedTensorInfoMap): AttentionInputs<TensorInfo> {
  const named = unpack(attentionInputNames(config), inputs);
  const { q, k, v } = named;
  if (!q || !k || !v) throw new Error('flashAttention: q, k, v missing');
  return { ...named, q, k, v };
}

export function unpackGradInputs(config: AttentionConfig, inputs: NamedTensorInfoMap): GradTensors<TensorInfo> {
  const named = unpack(gradInputNames(config), inputs);
  const { q, k, v, output, lse, dOutput, dLse } = named;
  if (!q || !k || !v || !output || !lse || !dOutput || !dLse) {
    throw new Error('flashAttention: gradient kernel inputs missing');
  }
  return { ...named, q, k, v, output, lse, dOutput, dLse };
}
