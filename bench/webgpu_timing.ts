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

/**
 * A full garbage collection when node runs with --expose-gc (NODE_OPTIONS=--expose-gc), so that a
 * collection of earlier runs' garbage (tensors, Dawn objects with native finalizers) does not
 * stall the host inside a timed batch and leave the GPU idle.
 */
function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) gc();
}

/**
 * Milliseconds per run of `run`, timing about `budgetMs` of runs (at least `minIters`, at most
 * 2000): a batch much shorter than the budget lets the wait for the GPU's completion signal weigh
 * on sub-millisecond runs (with at most 50 runs, the block-sparse forward's batches were 20 ms).
 */
export async function timeMs(run: () => void, budgetMs: number, minIters = 1): Promise<number> {
  return (await timeWithEnqueue(run, budgetMs, minIters)).total;
}

/**
 * A warm-up run (compilation), then the fastest of up to three timed runs (`once`, ms) sizes a batch
 * of about `budgetMs`: `iters` runs, clamped to [minIters, maxIters]. Not one run: the runs right
 * after a full garbage collection are slow (SwiftShader: 4.6–11 ms against 0.2–0.35 for a float16
 * forward), and sizing on such a run shrank the H100 table's batches to one call (bench/RESULTS.md,
 * float16 section, 21:06 UTC).
 */
export async function sizeBatch(run: () => void, budgetMs: number, minIters: number, maxIters: number):
    Promise<{ once: number; iters: number }> {
  run();
  await settle();
  collectGarbage();
  const once = await fastestRunMs(run);
  return { once, iters: Math.max(minIters, Math.min(maxIters, Math.ceil(budgetMs / Math.max(once, 0.01)))) };
}

/** The fastest of three timed runs (ms), or the first where it takes over a second (one is enough then). */
async function fastestRunMs(run: () => void): Promise<number> {
  let once = Infinity;
  for (let i = 0; i < 3 && once <= 1000; i++) {
    const t0 = performance.now();
    run();
    await settle();
    once = Math.min(once, performance.now() - t0);
  }
  return once;
}

/**
 * A garbage collection, `warmMs` of untimed runs, then fastestRunMs: the per-run time that sizes a
 * steady batch (the runs right after a collection are slow, see sizeBatch).
 */
export async function steadyRunMs(run: () => void, warmMs: number): Promise<number> {
  collectGarbage();
  const t0 = performance.now();
  do {
    run();
    await settle();
  } while (performance.now() - t0 < warmMs);
  return fastestRunMs(run);
}

/**
 * timeMs's measurement with the host's share beside it: `enqueue` is the time per run until the
 * last run was queued; where it is close to `total`, host work (JS, encoding, submission) bounds
 * the run, not the GPU.
 */
export async function timeWithEnqueue(run: () => void, budgetMs: number, minIters = 1):
    Promise<{ total: number; enqueue: number }> {
  const { once, iters } = await sizeBatch(run, budgetMs, minIters, 2000);
  if (once > 1000) return { total: once, enqueue: NaN };
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) run();
  const queued = performance.now();
  await settle();
  return { total: (performance.now() - t0) / iters, enqueue: (queued - t0) / iters };
}

export interface RepeatedTiming {
  /** Median ms per run over the repeats, with the fastest and slowest repeat. */
  median: number; min: number; max: number;
  /** Median host time per run until the last run was queued. */
  enqueue: number;
}

/**
 * timeWithEnqueue `repeats` times after `warmMs` of untimed runs, reporting the median: one batch
 * per measurement measured the first dense shape of an H100 process at 3–4× its steady time (--final
 * at 73a1a21, 19:26 UTC: 8.5 ms where every repeat later measures about 2.3), while the rows after it were steady.
 */
export async function timeRepeated(run: () => void, budgetMs: number, repeats: number, warmMs = 200):
    Promise<RepeatedTiming> {
  const start = performance.now();
  do {
    run();
    await settle();
  } while (performance.now() - start < warmMs);
  const samples: { total: number; enqueue: number }[] = [];
  for (let i = 0; i < repeats; i++) samples.push(await timeWithEnqueue(run, budgetMs));
  const totals = samples.map(s => s.total).sort((a, b) => a - b);
  const enqueues = samples.map(s => s.enqueue).sort((a, b) => a - b);
  const middle = (xs: number[]) => xs[Math.floor(xs.length / 2)];
  return { median: middle(totals), min: totals[0], max: totals[totals.length - 1], enqueue: middle(enqueues) };
}
