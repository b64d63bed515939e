// KV-cache generation on the webgpu backend in Node through Dawn (SwiftShader here): the cache
// write is a copyBufferToBuffer into the cache tensor's GPUBuffer (checks in test/setup/generate_checks.ts).
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-layers';
import { KVCache } from '../src/index';
import { checkCachedLogits, checkGreedyGeneration, checkInPlaceWrite, checkStepKernels, tinyModel } from './setup/generate_checks';
import { initDawnWebGPU } from './setup/webgpu_node';

let model: LayersModel;

beforeAll(async () => {
  await initDawnWebGPU();
  expect(tf.getBackend()).toBe('webgpu');
  model = tinyModel();
}, 120000);

afterAll(() => model.dispose());

test('KVCacheUpdate writes rows into the cache tensor in place', checkInPlaceWrite);
test('KVCacheUpdate records its copies in tfjs\' command encoder: no queue submission of its own', async () => {
  const cache = new KVCache({ layers: 1, batch: 1, maxLength: 4, heads: 2, headDim: 3 });
  const rows = tf.tidy(() => tf.reshape(tf.add(tf.range(0, 6), 1), [1, 1, 2, 3]));
  await rows.data();
  const submit = jest.spyOn(GPUQueue.prototype, 'submit');
  try {
    cache.lengths[0] = 2;
    cache.write(0, rows, rows);
    expect(submit).not.toHaveBeenCalled();
  } finally {
    submit.mockRestore();
  }
  expect((await cache.values[0].array())[0][2]).toEqual([[1, 2, 3], [4, 5, 6]]);
  rows.dispose();
  cache.dispose();
});
test('cached logits equal recomputing the prefix (prompts of different lengths)', () => checkCachedLogits(model));
test('cached logits equal recomputing the prefix, keys forced through the split path', () => checkCachedLogits(model, 3));
test('greedy generate() with the cache equals greedy recompute; no leaks', () => checkGreedyGeneration(model));
test('a decode step runs 22 kernels per block and 8 more', () => checkStepKernels(model));
