// npm start: flashAttention against naive tfjs attention (matMul → softmax → matMul) on the best
// backend this machine has: WebGPU through Dawn (a real GPU, else SwiftShader), else cpu.
//   npm start -- --n 512 --heads 4 --dim 64 --causal
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
// tfjs-core's op gradients (its Node bundle carries them), for the naive attention's backward pass.
import '@tensorflow/tfjs-layers';
import { FlashAttention, flashAttention } from '../src/index';
import { initDawnWebGPU } from '../test/setup/webgpu_node';

function option(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 ? Number(process.argv[at + 1]) : fallback;
}

async function chooseBackend(): Promise<{ name: string; fast: boolean }> {
  try {
    const gpu = await initDawnWebGPU();
    return { name: `webgpu on ${gpu.description}${gpu.software ? ' (software rendering: slow)' : ''}`, fast: !gpu.software };
  } catch (error) {
    console.log(`WebGPU unavailable (${(error as Error).message}): using cpu`);
    await tf.setBackend('cpu');
    return { name: 'cpu', fast: false };
  }
}

/** Rate in the largest unit that keeps it readable. */
function rate(flopsPerMs: number): string {
  const perSecond = flopsPerMs * 1e3;
  return perSecond >= 1e12 ? `${(perSecond / 1e12).toFixed(2)} TFLOP/s` : `${(perSecond / 1e9).toFixed(2)} GFLOP/s`;
}

function naiveAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, causal: boolean): tf.Tensor {
  const [, , n, d] = q.shape;
  let scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(d));
  if (causal) {
    const hidden = tf.sub(1, tf.linalg.bandPart(tf.ones([n, n]), -1, 0));
    scores = tf.add(scores, tf.mul(hidden, -1e30));
  }
  return tf.matMul(tf.softmax(scores), v);
}

/** Median wall time of `runs` calls after one warm-up, each waiting for its results. */
async function time(runs: number, f: () => tf.Tensor[]): Promise<number> {
  const once = async () => {
    const start = performance.now();
    const outputs = tf.tidy(f);
    await Promise.all(outputs.map(t => t.data()));
    tf.dispose(outputs);
    return performance.now() - start;
  };
  await once();
  const times: number[] = [];
  for (let r = 0; r < runs; r++) times.push(await once());
  return times.sort((a, b) => a - b)[Math.floor(runs / 2)];
}

async function main(): Promise<void> {
  const backend = await chooseBackend();
  // Small by default where the math runs on the CPU (cpu backend or SwiftShader).
  const [b, h, n, d] = [1, option('heads', backend.fast ? 12 : 2), option('n', backend.fast ? 2048 : 128), option('dim', 64)];
  const causal = process.argv.includes('--causal');
  const fused = tf.getKernel(FlashAttention, tf.getBackend()) !== undefined;
  console.log(`backend: ${backend.name}`);
  console.log(`flashAttention path: ${fused ? 'fused kernel' : 'composite fallback (no fused kernel for this backend yet)'}`);
  console.log(`shape: B=${b} H=${h} N=${n} D=${d}${causal ? ', causal' : ''}`);

  const [q, k, v, dy] = [1, 2, 3, 4].map(seed => tf.randomNormal([b, h, n, d], 0, 1, 'float32', seed));
  const flash = (x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) => flashAttention(x, y, z, { causal });
  const naive = (x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) => naiveAttention(x, y, z, causal);

  const [outFlash, outNaive] = [flash(q, k, v), naive(q, k, v)];
  const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(outFlash, outNaive))));
  const maxDiff = (await diff.data())[0];
  console.log(`max |flash − naive| = ${maxDiff.toExponential(2)}`);

  const runs = 3;
  const flops = 4 * b * h * n * n * d * (causal ? 0.5 : 1);
  const report = (label: string, ms: number, factor: number) =>
    `${label.padEnd(24)} ${ms.toFixed(2).padStart(9)} ms  ${rate(flops * factor / ms)}`;
  const forward = [await time(runs, () => [flash(q, k, v)]), await time(runs, () => [naive(q, k, v)])];
  const backward = [
    await time(runs, () => tf.grads((x, y, z) => flash(x, y, z))([q, k, v], dy)),
    await time(runs, () => tf.grads((x, y, z) => naive(x, y, z))([q, k, v], dy)),
  ];
  console.log(report('flash forward', forward[0], 1));
  console.log(report('naive forward', forward[1], 1));
  console.log(report('flash forward+backward', backward[0], 3.5));
  console.log(report('naive forward+backward', backward[1], 3.5));
  console.log(`speed-up: forward ×${(forward[1] / forward[0]).toFixed(2)}, forward+backward ×${(backward[1] / backward[0]).toFixed(2)}`);
  tf.dispose([q, k, v, dy, outFlash, outNaive, diff]);
}

main().then(() => process.exit(0), error => {
  console.error(error);
  process.exit(1);
});
