// KVCacheUpdate on the webgl backend: the new rows are drawn into the cache tensor's own texture,
// in place, through the public GPGPUContext of tfjs' MathBackendWebGL (backend.gpgpu): the cache
// texture is bound as the framebuffer, the scissor box is cut to the texel rows that hold the new
// positions, and a small fragment program copies each new texel from the rows tensor, discarding
// the fragments of that box outside the new rows (they keep their values; a fragment program
// cannot read the texture it renders to, so discard, not a copy of the old value, preserves them).
// One draw per batch row; the work is O(new rows), independent of the cache length. The rows may
// hold more heads than the cache (a fused q|k|v projection, kv_cache_writes.ts): a cache texel's
// two heads are then read from the rows' texels at the `firstHead` offset, whose halves need not
// line up with the cache's when the offset is odd.
//
// Why not runWebGLProgram: it always renders into a fresh output texture, which would copy the
// whole cache every token. Why not texSubImage2D: the new rows are on the GPU (a matMul output);
// uploading them needs a CPU readback. copyTexSubImage2D from a float framebuffer is not
// guaranteed by WebGL2 for float formats.
//
// The cache is kept as a packed texture (2×2 blocks of [H, D] per position, tfjs' packed layout,
// which the attention kernels read directly with texelFetch). tf.zeros makes it unpacked, so the
// first write converts it once: a packed copy is made with a program and the two tensors' textures
// are exchanged in the backend's texture table (texData entries, public), then the copy, now
// holding the old texture, is disposed. After a write, a CPU copy of the cache's values that an
// earlier read left behind is dropped: the texture is the truth.
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import type { GPGPUContext, MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import { webgl_util } from '@tensorflow/tfjs-backend-webgl';
import { KVCacheUpdate } from '../../src/kernel_names';
import { cacheWrites } from '../../src/models/kv_cache_writes';
import { checkWebGL2 } from './flash_attention';
import { isWebGLBackend, packedInput } from './program';

type GLProgram = ReturnType<GPGPUContext['createProgram']>;

const UNIFORMS = ['faTargetWidth', 'faSourceWidth', 'faSeq', 'faRows', 'faHeads', 'faHeadTexels', 'faDimTexels',
  'faSourceHeadTexels', 'faFirstHead', 'faBatch', 'faPosition', 'faStart', 'faEnd'] as const;
type UniformName = typeof UNIFORMS[number];

/**
 * Fragment (x, y) of the cache texture is texel k = y·targetWidth + x of the packed [B·L, H, D]
 * layout: position row bl = k / (headTexels·dimTexels), and within it texel row hh, column dd: heads
 * 2hh and 2hh + 1 (a packed texel holds rows r, r + 1 of columns c, c + 1 as xy, zw). They are heads
 * firstHead + 2hh and firstHead + 2hh + 1 of the (batch, new row t = l − position) slab of rows
 * [B, T, S, D], which starts at texel row (batch·T + t)·sourceHeadTexels; a head s sits in texel row
 * s / 2, half s % 2. The padding head of an odd H is written as 0.
 */
const SOURCE = `#version 300 es
precision highp float;
precision highp int;
uniform sampler2D faSource;
${UNIFORMS.map(name => `uniform int ${name};`).join('\n')}
out vec4 outputColor;
vec2 sourceHalf(int slab, int head, int dd) {
  int texel = (slab + head / 2) * faDimTexels + dd;
  vec4 v = texelFetch(faSource, ivec2(texel % faSourceWidth, texel / faSourceWidth), 0);
  return head % 2 == 0 ? v.xy : v.zw;
}
void main() {
  ivec2 xy = ivec2(gl_FragCoord.xy);
  int k = xy.y * faTargetWidth + xy.x;
  if (k < faStart || k >= faEnd) discard;
  int perPosition = faHeadTexels * faDimTexels;
  int l = k / perPosition - faBatch * faSeq;
  int within = k - (k / perPosition) * perPosition;
  int hh = within / faDimTexels;
  int dd = within - hh * faDimTexels;
  int slab = (faBatch * faRows + l - faPosition) * faSourceHeadTexels;
  int s = faFirstHead + 2 * hh;
  outputColor = vec4(sourceHalf(slab, s, dd), 2 * hh + 1 < faHeads ? sourceHalf(slab, s + 1, dd) : vec2(0.0));
}`;

interface CopyProgram { program: GLProgram; locations: Record<UniformName | 'faSource', WebGLUniformLocation | null> }

const programs = new WeakMap<GPGPUContext, CopyProgram>();

function copyProgram(gpgpu: GPGPUContext): CopyProgram {
  const cached = programs.get(gpgpu);
  if (cached) return cached;
  const shader = webgl_util.createFragmentShader(gpgpu.gl, SOURCE);
  const program = gpgpu.createProgram(shader);
  gpgpu.buildVao(program);
  const locations = Object.fromEntries([...UNIFORMS, 'faSource'].map(name =>
    [name, gpgpu.getUniformLocation(program, name, false)])) as CopyProgram['locations'];
  const made = { program, locations };
  programs.set(gpgpu, made);
  return made;
}

/** Makes the cache tensor's texture a packed one with its own layout (once; see the header). */
function adoptPacked(backend: MathBackendWebGL, cache: TensorInfo): void {
  backend.uploadToGPU(cache.dataId);
  const data = backend.texData.get(cache.dataId);
  if (data.slice != null) throw new Error('KVCacheUpdate (webgl): the cache tensor is a slice of another tensor');
  const direct = packedInput(backend, cache);
  if (!direct.temporary) return;
  const copy = backend.texData.get(direct.info.dataId);
  for (const field of ['texture', 'texShape', 'isPacked', 'usage'] as const) {
    const mine = data[field];
    Object.assign(data, { [field]: copy[field] });
    Object.assign(copy, { [field]: mine });
  }
  backend.disposeIntermediateTensorInfo(direct.info);
}

const kvCacheUpdateWebGL: KernelFunc = ({ inputs, backend, attrs }): TensorInfo[] => {
  if (!isWebGLBackend(backend)) throw new Error('KVCacheUpdate: the webgl kernel needs the webgl backend');
  checkWebGL2();
  const { cache, rows, positions, firstHead } = cacheWrites(inputs, attrs);
  adoptPacked(backend, cache);
  const target = backend.texData.get(cache.dataId);
  if (!target.texture || !target.texShape) throw new Error('KVCacheUpdate (webgl): the cache has no texture');
  const source = packedInput(backend, rows);
  const sourceTexture = backend.texData.get(source.info.dataId).texture;
  try {
    if (!sourceTexture) throw new Error('KVCacheUpdate (webgl): the new rows have no texture');
    const [, L, H, D] = cache.shape;
    const [, T, S] = rows.shape;
    const perPosition = Math.ceil(H / 2) * Math.ceil(D / 2);
    const targetWidth = Math.ceil(target.texShape[1] / 2);
    const values: Record<UniformName, number> = {
      faTargetWidth: targetWidth, faSourceWidth: Math.ceil(source.texShape[1] / 2), faSeq: L, faRows: T, faHeads: H,
      faHeadTexels: Math.ceil(H / 2), faDimTexels: Math.ceil(D / 2), faSourceHeadTexels: Math.ceil(S / 2),
      faFirstHead: firstHead, faBatch: 0, faPosition: 0, faStart: 0, faEnd: 0,
    };
    const gpgpu = backend.gpgpu;
    const gl = gpgpu.gl;
    const { program, locations } = copyProgram(gpgpu);
    gpgpu.setProgram(program);
    gpgpu.bindVertexArray(program.vao);
    gpgpu.setOutputPackedMatrixTexture(target.texture.texture, target.texShape[0], target.texShape[1]);
    gpgpu.setInputMatrixTexture(sourceTexture.texture, locations.faSource as WebGLUniformLocation, 0);
    positions.forEach((position, b) => {
      values.faBatch = b;
      values.faPosition = position;
      values.faStart = (b * L + position) * perPosition;
      values.faEnd = (b * L + position + T) * perPosition;
      for (const name of UNIFORMS) gl.uniform1i(locations[name], values[name]);
      const firstRow = Math.floor(values.faStart / targetWidth);
      const lastRow = Math.floor((values.faEnd - 1) / targetWidth);
      gpgpu.setOutputMatrixWriteRegion(firstRow, lastRow - firstRow + 1, 0, targetWidth);
      gpgpu.executeProgram();
    });
    target.values = undefined;
  } finally {
    if (source.temporary) backend.disposeIntermediateTensorInfo(source.info);
  }
  return [];
};

export const kvCacheUpdateWebGLConfig: KernelConfig = {
  kernelName: KVCacheUpdate,
  backendName: 'webgl',
  kernelFunc: kvCacheUpdateWebGL,
};
