// Host (CPU) time of one flashAttention call on the webgpu backend: from the op call until it
// returns (validation, packing, planning, encoding, submission), the GPU work not awaited. Before
// every sample the queue is drained, so a sample measures one call's JS and Dawn work, plus any
// garbage collection (and destruction of earlier calls' Dawn objects) that falls into it: that is
// host time per call too, so no gc() is forced between samples (the call after a forced one is
// slow). Host work does not depend on N beyond the block mask's size, so the shapes run at a small
// N (SwiftShader executes the GPU work between samples).
//
//   VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json \
//     node scripts/run-ts.mjs bench/webgpu_host.ts
//   (--samples S: samples per shape, default 100; --n N: sequence length of the dense shapes, default 64;
//   --sparse-n N: of the block-sparse shape, default 512; --only NAME: the shapes whose name starts
//   with NAME, e.g. for node --cpu-prof; --dawn-calls: also count and time the Dawn calls per call)
// Prints one line per shape: median and 10th–90th percentile µs per call.
import * as tf from '@tensorflow/tfjs-core';
import { flashAttention } from '../src/index';
import type { FlashAttentionOptions } from '../src/config';
import { initDawn } from '../src/node';
import { settle } from './webgpu_timing';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : undefined;
const samples = arg('--samples', 100);
const N = arg('--n', 64);
const SPARSE_N = arg('--sparse-n', 512);
const H = 12;
const D = 64;

interface Shape {
  name: string;
  nq: number; nk: number;
  options: FlashAttentionOptions;
  /** Block-sparse with a 9.5 % live mask of blocks of 64. */
  sparse?: boolean;
  grad: boolean;
}

/** 9.5 % live blocks of 64 (the same generator as bench/webgpu.ts' randomBlockMask, 10 % target). */
function blockMask(n: number): tf.Tensor4D {
  const nb = n / 64;
  const values = new Int32Array(nb * nb);
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (let i = 0; i < values.length; i++) values[i] = rand() < 0.1 ? 1 : 0;
  return tf.tensor4d(values, [1, 1, nb, nb], 'int32');
}

const shapes: Shape[] = [
  { name: 'dense forward', nq: N, nk: N, options: {}, grad: false },
  { name: 'causal forward', nq: N, nk: N, options: { causal: true }, grad: false },
  { name: 'block-sparse forward', nq: SPARSE_N, nk: SPARSE_N, options: {}, sparse: true, grad: false },
  { name: 'dense forward+backward (tf.grads)', nq: N, nk: N, options: {}, grad: true },
  { name: 'decode (Nq = 1, Nk = 1024)', nq: 1, nk: 1024, options: {}, grad: false },
];

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

/** --dawn-calls: ms and count per Dawn entry point, over a shape's timed calls. */
const dawnCalls = new Map<string, { ms: number; count: number }>();

async function measure(shape: Shape): Promise<number[]> {
  const q = tf.randomNormal([1, H, shape.nq, D], 0, 1, 'float32', 1);
  const k = tf.randomNormal([1, H, shape.nk, D], 0, 1, 'float32', 2);
  const v = tf.randomNormal([1, H, shape.nk, D], 0, 1, 'float32', 3);
  const dy = tf.randomNormal([1, H, shape.nq, D], 0, 1, 'float32', 4);
  const mask = shape.sparse ? blockMask(shape.nk) : undefined;
  const options: FlashAttentionOptions = mask ? { ...shape.options, blockSparse: { blockMask: mask, blockSize: 64 } }
    : shape.options;
  const call = (): tf.Tensor[] => shape.grad
    ? tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttention(a, b, c, options))([q, k, v], dy)
    : [flashAttention(q, k, v, options)];
  const times: number[] = [];
  for (let i = 0; i < samples + 5; i++) {
    await settle();
    if (i === 5) dawnCalls.clear();
    const t0 = performance.now();
    const outs = call();
    const t1 = performance.now();
    tf.dispose(outs);
    if (i >= 5) times.push((t1 - t0) * 1000);
  }
  await settle();
  tf.dispose([q, k, v, dy, ...(mask ? [mask] : [])]);
  return times.sort((a, b) => a - b);
}

/** Wraps the methods of a Dawn object's prototype to add their time and count to dawnCalls. */
function countCalls(object: object, label: string, methods: string[]): void {
  const proto = Object.getPrototypeOf(object) as Record<string, unknown>;
  for (const name of methods) {
    const method = proto[name];
    if (typeof method !== 'function') continue;
    proto[name] = function (this: unknown, ...args: unknown[]): unknown {
      const t0 = performance.now();
      const result: unknown = method.apply(this, args);
      const entry = dawnCalls.get(`${label}.${name}`) ?? { ms: 0, count: 0 };
      entry.ms += performance.now() - t0;
      entry.count++;
      dawnCalls.set(`${label}.${name}`, entry);
      return result;
    };
  }
}

function instrumentDawn(device: GPUDevice): void {
  countCalls(device, 'device', ['createBindGroup', 'createCommandEncoder', 'createBuffer']);
  countCalls(device.queue, 'queue', ['submit', 'writeBuffer']);
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  countCalls(encoder, 'encoder', ['beginComputePass', 'finish', 'copyBufferToBuffer', 'clearBuffer']);
  countCalls(pass, 'pass', ['setPipeline', 'setBindGroup', 'dispatchWorkgroups', 'end']);
  pass.end();
  encoder.finish();
}

async function main(): Promise<void> {
  const { description, device } = await initDawn({ swiftShaderFallback: true });
  if (process.argv.includes('--dawn-calls')) instrumentDawn(device);
  console.log(`adapter: ${description}; B = 1, H = ${H}, D = ${D}, float32; ${samples} samples per shape`);
  for (const shape of shapes) {
    if (only && !shape.name.startsWith(only)) continue;
    const t = await measure(shape);
    for (const [name, { ms, count }] of dawnCalls) {
      const calls = samples;
      console.log(`  ${name.padEnd(28)} ${(count / calls).toFixed(1)} per call, ${(ms * 1000 / calls).toFixed(1)} µs per call`);
    }
    console.log(`${shape.name.padEnd(36)} N = ${String(shape.nq).padStart(4)}×${String(shape.nk).padEnd(5)} ` +
      `host µs per call: median ${percentile(t, 0.5).toFixed(0)} (p10 ${percentile(t, 0.1).toFixed(0)}, ` +
      `p90 ${percentile(t, 0.9).toFixed(0)})`);
  }
}

main().then(() => process.exit(0), e => { console.error(e); process.exit(1); });
