// tfjs 4.22's gradient of Tile adds up one slice of dy per repetition: thousands of tiny kernels
// per training step here, because tfjs-layers' LayerNormalization tiles its statistics, gamma and
// beta to every row of the input (a [B·T, C] input tiles B·T times). On a GPU each of those
// kernels is a dispatch, and they cost more than the rest of a small model's step. The same
// gradient, per tiled axis: view dy's axis as [reps, size] and sum over the reps, one kernel.
// Registering it replaces tfjs' Tile gradient for the whole process (same values, fewer kernels).
import * as tf from '@tensorflow/tfjs-core';
import type { NamedAttrMap, Tensor } from '@tensorflow/tfjs-core';

function tileReps(attrs: NamedAttrMap, rank: number): number[] {
  const reps = attrs.reps;
  if (!Array.isArray(reps) || reps.length !== rank || !reps.every(r => typeof r === 'number')) {
    throw new Error('Tile gradient: attrs.reps is not a list of one number per axis');
  }
  return reps;
}

function tileGradient(dy: Tensor, shape: number[], reps: number[]): Tensor {
  let grad = dy;
  shape.forEach((size, axis) => {
    if (reps[axis] === 1) return;
    // grad is [before, reps·size, after]: view as [before, reps, size·after] and sum the reps.
    const before = shape.slice(0, axis).reduce((a, b) => a * b, 1);
    const after = grad.size / (before * reps[axis] * size);
    grad = tf.sum(tf.reshape(grad, [before, reps[axis], size * after]), 1);
  });
  return tf.reshape(grad, shape);
}

let registered = false;

export function registerTileGradient(): void {
  if (registered) return;
  registered = true;
  tf.registerGradient({
    kernelName: tf.Tile,
    inputsToSave: ['x'],
    gradFunc: (dy, saved, attrs) => {
      const [x] = saved;
      const dyTensor = Array.isArray(dy) ? dy[0] : dy;
      return { x: () => tileGradient(dyTensor, x.shape, tileReps(attrs, x.rank)) };
    },
  });
}
