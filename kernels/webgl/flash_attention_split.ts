// The split-KV path of the webgl `FlashAttention` kernel (flash-decoding; src/split_kv.ts decides
// when, by shape): with few query rows against many keys, the one-pass kernel's per-block passes
// loop over each block's keys in a handful of fragments, block after block. Here the keys are cut
// into ranges that run side by side in one draw per pass, and a fixed six draws serve any Nk:
//   scores:     s for every (row, key) (the one-pass scores pass)  [B·Hq, Nq, Nk]
//   stats:      lse of every (row, range)                         [B·Hq, Nq, splits]
//   weights:    P̃ = exp(s − lse_range)·Z for every key            [B·Hq, Nq, Nk]
//   accumulate: O_s = Σ_range P̃·v for every (range, row, column)  [B·Hq·splits, Nq, Dv]
//   merge:      O = Σ_s exp(lse_s − lse)·O_s, and lse = logsumexp_s lse_s
// Every score is computed once (a first version recomputed them in the weights pass instead of
// storing them: 1.4× the one-pass kernel's time at Nq = 1 on SwiftShader, where work, not
// parallelism, sets the time). Memory is linear in Nk: the score and weight textures have
// Nq ≤ WEBGL_SPLIT_RULE.MAX_QUERY_ROWS rows per head and are bounded by MAX_WEIGHT_ELEMENTS each
// (the rule falls back to the one-pass kernel beyond).
// Every option of SPEC §2 goes through the shared score snippet (glsl.ts), so results equal the
// one-pass kernel's to rounding; dropout uses the same keep hash, bit for bit.
import type { TensorInfo } from '@tensorflow/tfjs-core';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import type { AttentionConfig } from '../../src/config';
import type { AttentionInputs } from '../../src/inputs';
import { packedInputs, toUserLayout } from './flash_attention';
import { mergeSplitsLseProgram } from './merge_splits_lse_program';
import { mergeSplitsProgram } from './merge_splits_program';
import { run, texShapeOf } from './program';
import { scoresProgram } from './scores_program';
import { splitAccumulateProgram } from './split_accumulate_program';
import { splitStatsProgram } from './split_stats_program';
import { splitWeightsProgram } from './split_weights_program';

export function splitForwardWebGL(backend: MathBackendWebGL, c: AttentionConfig, x: AttentionInputs<TensorInfo>,
  optional: TensorInfo[], plan: { splits: number; keys: number }): TensorInfo[] {
  const { splits, keys } = plan;
  const packed = packedInputs(backend, { Q: x.q, K: x.k, V: x.v });
  const { Q, K, V } = packed.info;
  const textures = packed.textures;
  const made: TensorInfo[] = [];
  const step = (t: TensorInfo, name: string) => {
    made.push(t);
    textures[name] = texShapeOf(backend, t);
    return t;
  };
  try {
    const scores = step(run(backend, scoresProgram(c, textures, 0, c.seqK), [Q, K, ...optional]), 'Scores');
    const stats = step(run(backend, splitStatsProgram(c, textures, splits, keys), [scores, ...optional]), 'Lse');
    const weights = step(run(backend, splitWeightsProgram(c, textures, splits, keys), [scores, stats, ...optional]), 'Weights');
    const partial = step(run(backend, splitAccumulateProgram(c, textures, splits, keys), [weights, V, ...optional]), 'Partial');
    const out = run(backend, mergeSplitsProgram(c, textures, splits), [stats, partial]);
    const lse = run(backend, mergeSplitsLseProgram(c, textures, splits), [stats]);
    return [toUserLayout(backend, c, out, c.headsQ, c.seqQ, c.headDimV), lse];
  } finally {
    for (const t of made) backend.disposeIntermediateTensorInfo(t);
    packed.release();
  }
}
