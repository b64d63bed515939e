// Timing on tfjs' webgpu backend for the benches: after a warm-up (compilation), one run sizes the
// batch, then `iters` runs are queued back to back and timed with the host clock around
// queue.onSubmittedWorkDone() (submission gaps included).
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { flushTfjs } from '../kernels/webgpu/runtime';

export function backend(): WebGPUBackend {
  return tf.backend() as WebGPUBackend;
}

/** Submits tfjs' pending work and waits for the GPU to finish everything queued. */
export async function settle(): Promise<void> {
  flushTfjs(backend());
  await backend().device.queue.onSubmittedWorkDone();
}

/** Milliseconds per run of `run`, timing about `budgetMs` of runs (at least `minIters`, at most 50). */
export async function timeMs(run: () => void, budgetMs: number, minIters = 1): Promise<number> {
  run();
  await settle();
  let t0 = performance.now();
  run();
  await settle();
  const once = performance.now() - t0;
  if (once > 1000) return once;
  const iters = Math.max(minIters, Math.min(50, Math.ceil(budgetMs / Math.max(once, 0.01))));
  t0 = performance.now();
  for (let i = 0; i < iters; i++) run();
  await settle();
  return (performance.now() - t0) / iters;
}
