// KV-cache generation on the cpu backend (checks in test/setup/generate_checks.ts).
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-layers';
import { KVCacheUpdate } from '../src/index';
import { checkCachedLogits, checkGreedyGeneration, checkInPlaceWrite, checkStepKernels, tinyModel } from './setup/generate_checks';

let model: LayersModel;

beforeAll(async () => {
  await tf.setBackend('cpu');
  model = tinyModel();
});

afterAll(() => model.dispose());

test('KVCacheUpdate writes rows into the cache tensor in place', checkInPlaceWrite);
test('cached logits equal recomputing the prefix (prompts of different lengths)', () => checkCachedLogits(model));
test('cached logits equal recomputing the prefix, keys forced through the split path', () => checkCachedLogits(model, 3));
test('greedy generate() with the cache equals greedy recompute; no leaks', () => checkGreedyGeneration(model));
test('a decode step runs 22 kernels per block and 8 more', () => checkStepKernels(model));

test('without a KVCacheUpdate kernel the cache is rebuilt with tfjs ops: same logits, no leaks', async () => {
  const kernel = tf.getKernel(KVCacheUpdate, 'cpu');
  if (!kernel) throw new Error('no cpu KVCacheUpdate kernel');
  tf.unregisterKernel(KVCacheUpdate, 'cpu');
  const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
  try {
    const before = tf.memory().numTensors;
    await checkCachedLogits(model);
    expect(tf.memory().numTensors).toBe(before);
    expect(warn.mock.calls.some(args => /no in-place cache write on the 'cpu' backend/.test(String(args[0])))).toBe(true);
  } finally {
    warn.mockRestore();
    tf.registerKernel(kernel);
  }
});
