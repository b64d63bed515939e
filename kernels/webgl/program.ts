// What every WebGL program of the attention kernels shares: the GPGPUProgram fields tfjs'
// `runWebGLProgram` needs, built from one list of named uniforms so that declaration order and value
// order cannot drift apart, and a type guard for the backend.
import type { DataType, TensorInfo } from '@tensorflow/tfjs-core';
import type { GPGPUProgram, MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';

export interface Uniform {
  name: string;
  type: 'int' | 'float';
  value: number;
}

/**
 * A GPGPUProgram whose inputs are packed textures (2×2 blocks of the last two dimensions in each
 * RGBA texel), which is what lets the inner loops read 4 values per fetch. tfjs caches compiled
 * programs by their userCode and input shapes, and userCode is generated from the AttentionConfig
 * alone (runtime values such as the key block's start or the dropout seed are uniforms), so the
 * cache key is derived from the config as well.
 */
export class AttentionProgram implements GPGPUProgram {
  readonly packedInputs = true;
  readonly customUniforms: Array<{ name: string; type: Uniform['type'] }>;
  readonly uniformValues: number[][];

  constructor(readonly variableNames: string[], readonly outputShape: number[], readonly packedOutput: boolean,
    uniforms: Uniform[], readonly userCode: string) {
    this.customUniforms = uniforms.map(({ name, type }) => ({ name, type }));
    this.uniformValues = uniforms.map(({ value }) => [value]);
  }
}

export function isWebGLBackend(backend: unknown): backend is MathBackendWebGL {
  return typeof backend === 'object' && backend !== null && 'runWebGLProgram' in backend && 'texData' in backend;
}

export function run(backend: MathBackendWebGL, program: AttentionProgram, inputs: TensorInfo[],
  dtype: DataType = 'float32'): TensorInfo {
  return backend.runWebGLProgram(program, inputs, dtype, program.uniformValues, program.packedOutput);
}

/**
 * The same data seen with another shape, without a copy. tfjs' own Reshape does this; it is free for
 * unpacked textures and for packed ones whose last two dimensions stay the same (padding rank-≤3
 * tensors to rank 4 with leading 1s, or splitting [B·H, N, D] into [B, H, N, D]), which is how it is
 * used here. The view shares the texture: it is never disposed on its own.
 */
export function view(x: TensorInfo, shape: number[]): TensorInfo {
  return { dataId: x.dataId, shape, dtype: x.dtype };
}

function copyProgram(shape: number[]): AttentionProgram {
  const coords = ['rc.x', 'rc.y', 'rc.z', 'rc.w'].slice(0, shape.length);
  const userCode = `void main() {
  ${shape.length === 3 ? 'ivec3' : 'ivec4'} rc = getOutputCoords();
  setOutput(getSource(${coords.join(', ')}));
}`;
  return new AttentionProgram(['Source'], shape, true, [], userCode);
}

export interface PackedInput {
  info: TensorInfo;
  texShape: [number, number];
  /** Made here (a packed copy): the caller disposes it. */
  temporary: boolean;
}

/**
 * The input as a packed texture whose layout the programs may address directly with texelFetch:
 * packed, not a slice of another texture, laid out for its own last two dimensions. Anything else
 * (CPU-resident, unpacked, a slice) is copied once into such a texture, O(N·D) work.
 */
export function packedInput(backend: MathBackendWebGL, x: TensorInfo): PackedInput {
  const data = backend.texData.get(x.dataId);
  const direct = data.isPacked && data.texture != null && data.slice == null && data.texShape != null &&
    data.shape.slice(-2).join() === x.shape.slice(-2).join();
  if (direct && data.texShape) return { info: x, texShape: data.texShape, temporary: false };
  const copy = run(backend, copyProgram(x.shape), [x], x.dtype);
  const texShape = backend.texData.get(copy.dataId).texShape;
  if (!texShape) throw new Error('flashAttention (webgl): packed copy has no texture');
  return { info: copy, texShape, temporary: true };
}

/** The physical shape of a program output's texture. */
export function texShapeOf(backend: MathBackendWebGL, x: TensorInfo): [number, number] {
  const texShape = backend.texData.get(x.dataId).texShape;
  if (!texShape) throw new Error('flashAttention (webgl): intermediate has no texture');
  return texShape;
}

/** `faKeyStart<n>`: the first key of each key block a backward program reads. */
export function keyStartUniforms(keyStarts: number[]): Uniform[] {
  return keyStarts.map((value, n) => ({ name: `faKeyStart${n}`, type: 'int', value }));
}
