// The WebGPU plumbing shared by the attention programs. We run our own compute pipelines on the
// backend's device instead of `WebGPUBackend.runWebGPUProgram` because tfjs' program model is in
// the way in three places:
//   - a program there has exactly one output, and the forward writes two (output and lse), the
//     dK/dV pass two (dK and dV);
//   - it binds whole buffers, and splitting a problem over dispatches when a tensor exceeds
//     `maxStorageBufferBindingSize` needs buffer ranges (offset + size) per dispatch;
//   - it injects its own uniforms and input declarations, which would sit beside ours.
// Tensors stay tfjs tensors: inputs are uploaded with `uploadToGPU`, outputs come from
// `makeTensorInfo`, and tfjs' queued work is submitted before ours so queue order is kept.
import type { DataType, TensorInfo } from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import type { AttentionInputs } from '../../src/inputs';

/** One storage binding of a program: its WGSL name, element type and whether it is written. */
export interface BindingSpec {
  name: string;
  type: 'f32' | 'vec4<f32>' | 'u32';
  write: boolean;
}

/** One uniform field of a program (all u32: offsets, chunk starts and the dropout seed). */
export type UniformNames = readonly string[];

export interface ProgramSpec {
  /** Derived from the fields of the AttentionConfig (and tiles) that shape the shader. */
  key: string;
  bindings: readonly BindingSpec[];
  uniforms: UniformNames;
  /** The WGSL body after the generated binding and uniform declarations. */
  body: () => string;
  /** WGSL `enable` extensions. */
  extensions?: readonly string[];
  /**
   * How the program splits one (batch, head) unit over dispatches when its slices exceed the
   * binding limit (chunks.ts); absent: it cannot, and such problems are refused.
   */
  chunking?: Chunking;
}

/**
 * Within-unit splitting of a program: query-row ranges are multiples of `rows` and key ranges
 * multiples of `keys` (its tiles, so no tile straddles a range); `accumulates` names the side whose
 * ranges the program sums over (read-modify-write by later dispatches, the first one writes), the
 * other side's ranges are independent. 'none': only the independent side may be split.
 */
export interface Chunking {
  rows: number;
  keys: number;
  accumulates: 'rows' | 'keys' | 'none';
}

export function wgslBindings(spec: ProgramSpec): string {
  const ext = (spec.extensions ?? []).map(e => `enable ${e};\n`).join('');
  const fields = spec.uniforms.map(u => `  ${u}: u32,`).join('\n');
  const storage = spec.bindings.map((b, i) =>
    `@group(0) @binding(${i}) var<storage, ${b.write ? 'read_write' : 'read'}> ${b.name}: array<${b.type}>;`).join('\n');
  return `${ext}struct Uniforms {\n${fields}\n  pad_: u32,\n}\n` +
    `@group(0) @binding(${spec.bindings.length}) var<uniform> u: Uniforms;\n${storage}\n`;
}

interface CompiledProgram {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  /** Names the layout in bind-group cache keys. */
  id: number;
}

let nextId = 0;

const pipelineCache = new WeakMap<GPUDevice, Map<string, CompiledProgram>>();

function compile(device: GPUDevice, spec: ProgramSpec): CompiledProgram {
  let cache = pipelineCache.get(device);
  if (!cache) {
    cache = new Map();
    pipelineCache.set(device, cache);
  }
  const cached = cache.get(spec.key);
  if (cached) return cached;
  const entries: GPUBindGroupLayoutEntry[] = spec.bindings.map((b, i) => ({
    binding: i, visibility: GPUShaderStage.COMPUTE,
    buffer: { type: b.write ? 'storage' : 'read-only-storage' },
  }));
  entries.push({ binding: spec.bindings.length, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'uniform' } });
  const layout = device.createBindGroupLayout({ entries });
  const code = wgslBindings(spec) + spec.body();
  const module = device.createShaderModule({ code });
  const pipeline = device.createComputePipeline({
    layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
    compute: { module, entryPoint: 'main' },
  });
  const compiled = { pipeline, layout, id: nextId++ };
  cache.set(spec.key, compiled);
  return compiled;
}

/** Identities of GPU buffers for bind-group cache keys (weak: a buffer's id does not keep it alive). */
const bufferIds = new WeakMap<GPUBuffer, number>();

function bufferId(buffer: GPUBuffer): number {
  let id = bufferIds.get(buffer);
  if (id === undefined) {
    id = nextId++;
    bufferIds.set(buffer, id);
  }
  return id;
}

/**
 * Recently used bind groups by program and bound ranges. tfjs' buffer pool hands the same buffers
 * back call after call (outputs, scratch, uniforms), so repeated calls bind the same ranges, and
 * a bind group made per dispatch is host work and one more object to collect per call. Bounded,
 * so the buffers it refers to are not held for long once unused.
 */
const BIND_GROUP_CACHE_SIZE = 64;
const bindGroupCache = new WeakMap<GPUDevice, Map<string, GPUBindGroup>>();

function bindGroup(device: GPUDevice, program: CompiledProgram, ranges: BoundRange[]): GPUBindGroup {
  let cache = bindGroupCache.get(device);
  if (!cache) {
    cache = new Map();
    bindGroupCache.set(device, cache);
  }
  const key = `${program.id}:${ranges.map(r => `${bufferId(r.buffer)},${r.offset},${r.size}`).join(':')}`;
  const cached = cache.get(key);
  if (cached) {
    cache.delete(key);
    cache.set(key, cached);
    return cached;
  }
  const group = device.createBindGroup({
    layout: program.layout,
    entries: ranges.map(({ buffer, offset, size }, binding) => ({ binding, resource: { buffer, offset, size } })),
  });
  cache.set(key, group);
  if (cache.size > BIND_GROUP_CACHE_SIZE) cache.delete(cache.keys().next().value as string);
  return group;
}

/** A buffer range bound to one binding of one dispatch; `offset` is in bytes. */
export interface BoundRange {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

export interface Dispatch {
  workgroups: [number, number, number];
  buffers: Record<string, BoundRange>;
  uniforms: Record<string, number>;
}

/** A program with its dispatches, as runPrograms and encodePrograms take them. */
export interface ProgramRun {
  spec: ProgramSpec;
  dispatches: Dispatch[];
}

/** Dispatches that a runPrograms prelude queued (queuePrograms), by the encoder it was given. */
const queuedRuns = new WeakMap<GPUCommandEncoder, ProgramRun[]>();

/**
 * Encodes `prelude` (buffer copies; dispatches it queues with queuePrograms, such as the mask
 * packing) and the programs' dispatches, in one command buffer and one submission. tfjs' queued
 * commands are submitted first, so queue order is kept. Every tensor involved must already be on
 * the GPU (gpuBuffer), so that no upload is left in tfjs' encoder behind ours. The uniform buffer
 * comes from tfjs' buffer pool and goes back to it after the submission: later users of a buffer
 * are queued behind that submission, so the GPU reads it first.
 */
export function runPrograms(backend: WebGPUBackend, programs: ProgramRun[],
  prelude?: (encoder: GPUCommandEncoder) => void): void {
  flushTfjs(backend);
  const device = backend.device;
  const encoder = device.createCommandEncoder();
  const queued: ProgramRun[] = [];
  queuedRuns.set(encoder, queued);
  const releases: Array<() => void> = [];
  try {
    prelude?.(encoder);
    encodePrograms(backend, encoder, [...queued, ...programs], releases);
    device.queue.submit([encoder.finish()]);
  } finally {
    for (const release of releases) release();
  }
}

/**
 * Queues dispatches from a runPrograms prelude ahead of the kernel's programs, in the same compute
 * pass and uniform buffer: they run after every copy the prelude encodes and before the programs.
 * A compute pass, uniform buffer and buffer write of their own cost host time on every call (one
 * more beginComputePass was the largest cost we measured, bench/RESULTS.md, webgpu host time).
 */
export function queuePrograms(encoder: GPUCommandEncoder, programs: ProgramRun[]): void {
  const queued = queuedRuns.get(encoder);
  if (!queued) throw new Error('flashAttention webgpu: queuePrograms needs the encoder of a runPrograms prelude');
  queued.push(...programs);
}

/**
 * Encodes the programs' dispatches into `encoder` in one compute pass (each dispatch is its own
 * synchronization scope, so a dispatch sees what the one before it wrote), with the uniforms of
 * all of them in one buffer at aligned offsets: per kernel call one buffer and one write instead
 * of one per dispatch, and fewer objects for the host to make and collect. The buffer's release
 * is pushed onto `releases`, to run after the submission.
 */
function encodePrograms(backend: WebGPUBackend, encoder: GPUCommandEncoder, programs: ProgramRun[],
  releases: Array<() => void>): void {
  const device = backend.device;
  const align = device.limits.minUniformBufferOffsetAlignment;
  const runs = programs.flatMap(({ spec, dispatches }) => dispatches.map(d => ({ spec, d })));
  if (runs.length === 0) return;
  const slot = (spec: ProgramSpec) => Math.ceil(4 * (spec.uniforms.length + 1) / align) * align;
  const values = new Uint32Array(runs.reduce((bytes, r) => bytes + slot(r.spec), 0) / 4);
  const uniformBuffer = backend.bufferManager.acquireBuffer(values.byteLength, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  releases.push(() => backend.bufferManager.releaseBuffer(uniformBuffer));
  const pass = encoder.beginComputePass();
  let offset = 0;
  for (const { spec, d } of runs) {
    const program = compile(device, spec);
    spec.uniforms.forEach((name, i) => {
      const value = d.uniforms[name];
      if (value === undefined) throw new Error(`flashAttention webgpu: uniform '${name}' missing`);
      values[offset / 4 + i] = value;
    });
    const ranges: BoundRange[] = spec.bindings.map(b => {
      const range = d.buffers[b.name];
      if (!range) throw new Error(`flashAttention webgpu: binding '${b.name}' missing`);
      return range;
    });
    ranges.push({ buffer: uniformBuffer, offset, size: Math.ceil(4 * (spec.uniforms.length + 1) / 16) * 16 });
    pass.setPipeline(program.pipeline);
    pass.setBindGroup(0, bindGroup(device, program, ranges));
    pass.dispatchWorkgroups(...d.workgroups);
    offset += slot(spec);
  }
  pass.end();
  device.queue.writeBuffer(uniformBuffer, 0, values);
}

/**
 * Ends tfjs' open compute pass and submits its command encoder, so our work is queued after it.
 * Where tfjs has no open encoder nothing is queued, and an empty submission per kernel call only
 * costs host time (the H100's host spent ~0.3–0.5 ms per forward call). The field is private to
 * tfjs, so it is read by name; where it does not exist, the flush happens anyway.
 */
export function flushTfjs(backend: WebGPUBackend): void {
  if (Reflect.has(backend, 'commandEncoder') && Reflect.get(backend, 'commandEncoder') == null) return;
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder();
  backend.submitQueue();
}

/** The GPU buffer of a tensor, uploaded first if its values are still on the CPU. */
export function gpuBuffer(backend: WebGPUBackend, t: TensorInfo): GPUBuffer {
  backend.uploadToGPU(t.dataId);
  const resource = backend.tensorMap.get(t.dataId).resource;
  if (!(resource instanceof GPUBuffer)) throw new Error('flashAttention webgpu: tensor is not in a GPU buffer');
  return resource;
}

/**
 * GPU buffers of the inputs the shaders bind directly (q, k, v and bias). The small optional inputs
 * are uploaded too, because the kernels copy them into their packed `aux` buffer.
 */
export function attentionInputBuffers(backend: WebGPUBackend, t: AttentionInputs<TensorInfo>): Record<string, GPUBuffer> {
  const buffers: Record<string, GPUBuffer> = {
    q: gpuBuffer(backend, t.q), k: gpuBuffer(backend, t.k), v: gpuBuffer(backend, t.v),
  };
  if (t.bias) buffers.bias = gpuBuffer(backend, t.bias);
  for (const small of [t.mask, t.keyLengths, t.alibiSlopes, t.blockMask]) if (small) gpuBuffer(backend, small);
  return buffers;
}

/** A new tfjs tensor with a GPU buffer for a kernel to write. */
export function makeOutput(backend: WebGPUBackend, shape: number[], dtype: DataType = 'float32'):
    { info: TensorInfo; buffer: GPUBuffer } {
  const info = backend.makeTensorInfo(shape, dtype);
  return { info, buffer: gpuBuffer(backend, info) };
}

/**
 * A scratch buffer from tfjs' buffer pool, for one kernel call: give it back with
 * backend.bufferManager.releaseBuffer after submitting the work that uses it (queue order keeps a
 * later user's writes behind that work). Pooled rather than made per call: fewer host objects.
 */
export function pooledScratch(backend: WebGPUBackend, bytes: number): GPUBuffer {
  return backend.bufferManager.acquireBuffer(Math.max(16, Math.ceil(bytes / 16) * 16),
    GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC);
}

/** A scratch buffer that is not a tensor (destroy it after submitting the work that uses it). */
export function scratchBuffer(device: GPUDevice, bytes: number): GPUBuffer {
  return device.createBuffer({
    size: Math.max(16, Math.ceil(bytes / 16) * 16),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
}

/** A field of the device's GPUAdapterInfo (`device.adapterInfo`, not yet in every typing). */
function adapterInfoField(device: GPUDevice, field: string): unknown {
  const info: unknown = (device as { adapterInfo?: unknown }).adapterInfo;
  return typeof info === 'object' && info !== null ? (info as Record<string, unknown>)[field] : undefined;
}

/** Smallest subgroup size of the device's adapter; 0 without the `subgroups` feature or when unknown. */
export function subgroupMinSize(device: GPUDevice): number {
  if (!device.features.has('subgroups')) return 0;
  const size = adapterInfoField(device, 'subgroupMinSize');
  return typeof size === 'number' ? size : 0;
}

/** CPU implementations of WebGPU (SwiftShader, lavapipe), where shader compile time dominates. */
export function isSoftwareAdapter(device: GPUDevice): boolean {
  const text = ['vendor', 'architecture', 'description'].map(f => String(adapterInfoField(device, f) ?? '')).join(' ');
  return /swiftshader|llvmpipe|lavapipe/i.test(text);
}

export function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** A WGSL f32 literal that round-trips the JS number through float32. */
export function f32(x: number): string {
  if (!Number.isFinite(x)) throw new Error(`flashAttention webgpu: non-finite shader constant ${x}`);
  const s = Math.fround(x).toPrecision(9);
  return s.includes('.') || s.includes('e') ? s : `${s}.0`;
}
