// Cases that the composite fallback (src/composite.ts, built from tfjs' own ops) gets wrong on a GPU
// backend, as observed on SwiftShader. They concern tfjs' ops, not this package's math: the same
// composite passes every case on cpu. They apply only while a backend has no FlashAttention kernel:
// such a case is then expected to fail (jest `test.failing`, which turns red the day it passes), and
// once the backend's kernel is registered every case must pass again.
import * as tf from '@tensorflow/tfjs-core';
import { FlashAttention } from '../../src/kernel_names';

const EMPTY_ROWS = 'tfjs webgl gives a row whose scores are all −Infinity an lse of −1e20 and NaN gradients';

const FAILURES: Record<string, Record<string, string>> = {
  webgl: {
    'causal Nq>Nk (empty rows)': EMPTY_ROWS,
    'mask int32 fully masked rows': EMPTY_ROWS,
    'keyLengths zero': EMPTY_ROWS,
    'block sparse': EMPTY_ROWS,
    'block sparse broadcast causal': EMPTY_ROWS,
    'everything': EMPTY_ROWS,
    'Inf in k': 'tfjs webgl turns the ±Infinity scores of a row into finite values where the reference has NaN',
  },
  webgpu: {
    'Inf in k': 'tfjs webgpu turns every row into NaN when one key is Infinity, also rows whose scores are finite or −Infinity',
  },
};

/** Why `caseName` is expected to fail on `backend`, or undefined when it must pass. */
export function compositeFailure(backend: string, caseName: string): string | undefined {
  if (tf.getKernel(FlashAttention, backend)) return undefined;
  return FAILURES[backend]?.[caseName];
}
