// One GPT-2 training step (forward, backward, Adam) timed for flash attention, naive attention and
// the identity-on-V ablation, on the best backend Node has (`../examples/gpt2/backend.ts`).
// Random token ids: the data does not change the work. One JSON line per measurement on stdout.
//
//   node gpt2_step.mjs --preset small --contexts 1024,2048 --batches 1,4 --variants flash,naive,identity
//     [--steps 3] [--profile] [--backend auto|webgpu|cpu] [--vocab N (default: the preset's, 50257)]
// With $OUT set (the device tool), the lines are also appended to $OUT/gpt2_step.jsonl. On WebGPU a
// measurement runs inside error scopes, so a buffer over the device's limits is reported, not missed.
// Run big configurations one per process: tfjs' webgpu backend keeps freed buffers in a pool, so
// after naive attention at 4 × 2048 the next model in the same process ran out of device memory.
// tf.profile lists the fused FlashAttention kernels with 0 ms (tfjs' timer does not see their
// dispatches): the identity ablation, not the profile, measures attention's share.
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { isBackendRequest, selectBackend } from '../examples/gpt2/backend';
import { Trainer } from '../examples/gpt2/training';
import { gpt2, gpt2Config } from '../src/index';
import { ablateAttention } from './gpt2_ablation';

type Variant = 'flash' | 'naive' | 'identity';

function isVariant(s: string): s is Variant {
  return s === 'flash' || s === 'naive' || s === 'identity';
}

interface KernelTime {
  name: string;
  ms: number;
  calls: number;
}

interface Measurement {
  variant: Variant;
  preset: string;
  vocab: number;
  context: number;
  batch: number;
  backend: string;
  stepMs?: number[];
  medianMs?: number;
  tokensPerSecond?: number;
  /** Most bytes of live tensors during one step (tf.profile's peakBytes). */
  peakBytes?: number;
  topKernels?: KernelTime[];
  error?: string;
}

function randomBatch(batch: number, context: number, vocab: number): { x: tf.Tensor2D; y: tf.Tensor2D } {
  const ids = () => tf.tensor2d(Int32Array.from({ length: batch * context }, () => Math.floor(Math.random() * vocab)),
    [batch, context], 'int32');
  return { x: ids(), y: ids() };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function measure(variant: Variant, preset: string, vocab: number, context: number, batch: number,
  steps: number, profile: boolean): Promise<Measurement> {
  const result: Measurement = { variant, preset, vocab, context, batch, backend: tf.getBackend() };
  const ablation = variant === 'identity' ? ablateAttention(tf.getBackend()) : undefined;
  const model = gpt2({
    preset, vocabSize: vocab, contextLength: context, attention: variant === 'naive' ? 'naive' : 'flash', dropout: 0,
  });
  const trainer = new Trainer(model, vocab, 3e-4);
  const data = randomBatch(batch, context, vocab);
  try {
    const checked = async () => {
      const step = await trainer.step(data);
      if (!Number.isFinite(step.loss)) throw new Error(`loss is ${step.loss}`);
      return step.milliseconds;
    };
    await checked();
    const times: number[] = [];
    for (let i = 0; i < steps; i++) times.push(await checked());
    result.stepMs = times.map(t => Math.round(t * 10) / 10);
    result.medianMs = median(times);
    result.tokensPerSecond = Math.round(batch * context / (result.medianMs / 1000));
    if (profile) {
      const info = await tf.profile(async () => { await trainer.step(data); });
      result.peakBytes = info.peakBytes;
      const byName = new Map<string, KernelTime>();
      for (const kernel of info.kernels) {
        const ms = typeof kernel.kernelTimeMs === 'number' ? kernel.kernelTimeMs : 0;
        const entry = byName.get(kernel.name) ?? { name: kernel.name, ms: 0, calls: 0 };
        entry.ms += ms;
        entry.calls += 1;
        byName.set(kernel.name, entry);
      }
      result.topKernels = [...byName.values()].sort((a, b) => b.ms - a.ms).slice(0, 10)
        .map(k => ({ ...k, ms: Math.round(k.ms * 10) / 10 }));
    }
  } catch (error) {
    result.error = error instanceof Error ? error.message : String(error);
  } finally {
    tf.dispose([data.x, data.y]);
    trainer.dispose();
    model.dispose();
    ablation?.restore();
  }
  return result;
}

/** Runs `measure` inside WebGPU validation and out-of-memory error scopes where the backend is webgpu. */
async function guarded(run: () => Promise<Measurement>): Promise<Measurement> {
  if (tf.getBackend() !== 'webgpu') return run();
  const { device } = tf.backend() as WebGPUBackend;
  device.pushErrorScope('validation');
  device.pushErrorScope('out-of-memory');
  const result = await run();
  const outOfMemory = await device.popErrorScope();
  const invalid = await device.popErrorScope();
  const gpuError = outOfMemory ?? invalid;
  if (gpuError && !result.error) result.error = `WebGPU ${outOfMemory ? 'out of memory' : 'validation error'}: ${gpuError.message.split('\n')[0]}`;
  return result;
}

function report(m: Measurement): void {
  const line = JSON.stringify(m);
  console.log(line);
  if (process.env.OUT) fs.appendFileSync(path.join(process.env.OUT, 'gpt2_step.jsonl'), line + '\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      preset: { type: 'string', default: 'small' },
      vocab: { type: 'string' },
      contexts: { type: 'string', default: '1024' },
      batches: { type: 'string', default: '1' },
      variants: { type: 'string', default: 'flash,naive,identity' },
      steps: { type: 'string', default: '3' },
      profile: { type: 'boolean', default: false },
      backend: { type: 'string', default: 'auto' },
    },
  });
  if (!isBackendRequest(values.backend)) throw new Error(`--backend must be auto, webgpu or cpu, got ${values.backend}`);
  const variants = values.variants.split(',');
  const bad = variants.find(v => !isVariant(v));
  if (bad !== undefined) throw new Error(`unknown variant ${bad}: flash, naive or identity`);
  const vocab = values.vocab === undefined ? gpt2Config({ preset: values.preset }).vocabSize : Number(values.vocab);
  const backend = await selectBackend(values.backend);
  console.error(`backend: ${backend.description}`);
  for (const context of values.contexts.split(',').map(Number)) {
    for (const batch of values.batches.split(',').map(Number)) {
      for (const variant of variants.filter(isVariant)) {
        report(await guarded(() => measure(variant, values.preset, vocab, context, batch, Number(values.steps), values.profile)));
      }
    }
  }
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
