// Block-sparse regression A/B: dense and block-sparse (blocks of 64, ~10 % live) forward and
// forward+backward at N = 4096, D = 64, B = 1, H = 12, float32, in interleaved rounds, with the
// host's enqueue time beside the total (a call whose enqueue time is near its total is bound by
// host work, not by the GPU). It uses only the public op and initDawn, so the same file bundles
// against an older commit's kernels for an A/B between commits:
//   bash /work/brief/bundle.sh <tag> <commit> bench/webgpu_sparse_ab.ts   (copy this file into the
//   worktree first where the commit predates it), then on the GPU machine
//   bash .gpu/run.sh webgpu_sparse_ab_<tag>.mjs [--rounds R] [--label NAME] [--only TEXT] [--n N (smoke tests)]
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { flashAttention } from '../src/index';
import { initDawn } from '../src/node';

const H = 12, D = 64, BLOCK = 64, LIVE = 0.1;

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

async function settle(): Promise<void> {
  const b = tf.backend() as WebGPUBackend;
  b.ensureCommandEncoderReady();
  b.endComputePassEncoder();
  b.submitQueue();
  await b.device.queue.onSubmittedWorkDone();
}

/** ms per call (total and host enqueue only) over about `budgetMs` of calls after a warm-up. */
async function time(run: () => void, budgetMs: number): Promise<{ total: number; enqueue: number }> {
  run();
  await settle();
  // As bench/webgpu_timing.ts: no collection of earlier garbage inside the timed batch (--expose-gc).
  (globalThis as { gc?: () => void }).gc?.();
  let t0 = performance.now();
  run();
  await settle();
  const once = performance.now() - t0;
  const iters = Math.max(3, Math.min(50, Math.ceil(budgetMs / Math.max(once, 0.01))));
  t0 = performance.now();
  for (let i = 0; i < iters; i++) run();
  const enqueued = performance.now();
  await settle();
  const done = performance.now();
  return { total: (done - t0) / iters, enqueue: (enqueued - t0) / iters };
}

async function main(): Promise<void> {
  const label = arg('--label', 'this');
  const rounds = Number(arg('--rounds', '3'));
  const N = Number(arg('--n', '4096'));
  const { description } = await initDawn({ swiftShaderFallback: true });
  console.log(`sparse-ab ${label}: adapter ${description}`);
  const nb = N / BLOCK;
  const values = new Int32Array(nb * nb);
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (let i = 0; i < values.length; i++) values[i] = rand() < LIVE ? 1 : 0;
  const blockMask = tf.tensor4d(values, [1, 1, nb, nb], 'int32');
  const live = values.reduce((a, b) => a + b, 0) / values.length;
  const [q, k, v, dy] = [1, 2, 3, 4].map(s => tf.randomNormal([1, H, N, D], 0, 1, 'float32', s));
  const variants: Array<{ name: string; run: () => void }> = [];
  for (const sparse of [false, true]) {
    const options = sparse ? { blockSparse: { blockMask, blockSize: BLOCK } } : {};
    const f = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttention(a, b, c, options);
    const kind = sparse ? `sparse ${(live * 100).toFixed(1)}%` : 'dense';
    variants.push({ name: `${kind} fwd`, run: () => tf.tidy(() => { f(q, k, v); }) });
    variants.push({ name: `${kind} fwd+bwd`, run: () => tf.tidy(() => { tf.grads(f)([q, k, v], dy); }) });
  }
  // --only TEXT keeps the variants whose name contains TEXT (e.g. for a CPU profile of one of them).
  const only = arg('--only', '');
  variants.splice(0, variants.length, ...variants.filter(x => x.name.includes(only)));
  const times = variants.map(() => [] as Array<{ total: number; enqueue: number }>);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < variants.length; i++) {
      const index = (i + r) % variants.length;
      times[index].push(await time(variants[index].run, 300));
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (let i = 0; i < variants.length; i++) {
    const t = times[i];
    console.log(`sparse-ab ${label} ${variants[i].name}: median ${median(t.map(x => x.total)).toFixed(3)} ms ` +
      `(enqueue ${median(t.map(x => x.enqueue)).toFixed(3)} ms); all ${t.map(x => x.total.toFixed(3)).join(' ')}`);
  }
  tf.dispose([q, k, v, dy, blockMask]);
}

main().catch(e => { console.error(e); process.exit(1); });
