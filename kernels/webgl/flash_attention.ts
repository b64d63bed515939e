// The `webgl` FlashAttention kernel: WebGL2 fragment programs through tfjs' runWebGLProgram.
//
// Algorithm: FlashAttention's tiling moved from workgroups to textures. WebGL has no shared memory
// and a fragment writes one RGBA texel, so the key dimension is cut into blocks of `blockKeys` keys
// and each block runs four programs over all query rows (three on GPUs: weights fused, see below):
//   scores:     s for (row, key in block)                    [B·Hq, Nq, blockKeys]
//   blockStats: running lse_i ← logaddexp(lse_i, block)       [B·Hq, Nq, 2]
//   weights:    P̃ = exp(s − lse)·Z                           [B·Hq, Nq, blockKeys]
//   accumulate: O ← O·exp(lse_prev − lse) + P̃·V               [B·Hq, Nq, Dv]
// Every score is computed once, as a 2×2-blocked matrix product like tfjs' packed matMul, and
// memory is O(Nq·blockKeys + Nq·Dv): linear in N, never an Nq × Nk texture. O and lse stay
// normalized after each block (convex combinations of V; log-sums), so nothing grows with N and
// half-float render targets do not overflow.
// How it was chosen (numbers in bench/RESULTS.md):
// - Work per fetch. A fragment writes one RGBA texel, i.e. 4 results; a product over the head
//   dimension for an m × n block of results (m·n = 4) fetches (m + n)·D values, D texels at best, so
//   the 2×2 block of tfjs' packed matMul (4 multiply-adds per texel fetched) is the best any
//   single-output fragment can do. 1 query × 4 keys with the q row in registers fetches 1.25·D texels
//   for the same 4·D multiply-adds (3.2 per fetch): not taken. The scores and accumulate passes are
//   such 2×2 products; what is left to win is draws, extra passes and instructions around fetches.
// - A fragment per (row, 4 output columns) looping over all keys with an online softmax (one draw
//   in all) was rejected on paper, not measured: it recomputes every score Dv/4 times (16× at
//   Dv = 64) and refetches K as often.
// - A two-sweep version (lse over all keys first, then exp(s − lse)·V per block) computes every
//   score twice; it was replaced by the online per-block lse here, which computes it once (together
//   with texelFetch addressing: time relative to naive attention in the same run went from 1.6× to
//   0.97× at N = 256, 12 heads, D = 64, on SwiftShader).
// - Four draws per block is the least this scheme allows with P̃ in a texture of its own: the
//   weights need the block's row lse, i.e. a reduction over the whole block's scores, before any of
//   them is written. Fusing blockStats into weights would redo that reduction in every weights
//   fragment (blockKeys/2 fetches per 4 weights). Fusing weights into accumulate (accumulate reads
//   the scores and takes exp(s − lse) itself) redoes each exp Dv/2 times but saves a draw, a write
//   and a read of every score: on SwiftShader, where an exp costs more than a fetch, it is slower
//   (1.33–1.56× naive's speed fused against 1.67–1.86× unfused, N = 256–1024, 18:40 UTC), on the
//   H100, where an exp is cheap next to the fetches that bind the products, faster (forward
//   1.25–1.65× naive fused against 1.25–1.54×, N = 256–4096, 18:45 UTC). So it is fused unless the
//   renderer is a CPU rasterizer, or dropout is on (the hash would be redone Dv/2 times as well).
//   The rescale of O by exp(lse_prev − lse) is folded into accumulate either way.
// - blockStats: on CPU rasterizers the block's row max first, then Σ exp(s − max) (two sweeps, one
//   exp per score); on GPUs one sweep with a running (max, sum), half the fetches for 1.5 exps per
//   score (H100, 18:56 UTC: forward 223.1 vs 226.6 ms at N = 4096, equal at 2048).
// - Loops step a texel index with addresses an add away (row bases hoisted, no per-iteration
//   division or odd-tail test unless N is odd): SwiftShader's Subzero JIT hoists little, and GPU
//   compilers lose nothing by it. With the two points above and the backward's P reuse this took
//   SwiftShader's flash/naive speed ratios at N = 256–1024 from 0.9–1.6× to 1.5–2.0× forward and
//   from 0.7–1.0× to 1.3–1.4× forward+backward (bench/RESULTS.md: two before/after pairs of runs).
// - On the H100 the products are bound by texel fetches. Measured per program (bench/webgl.ts
//   profile, N = 2048, 18:45 UTC): q·k 0.23 TFLOP/s, P̃·V 0.22–0.225, the same as naive attention's
//   two tfjs matMuls in the same run (0.239, 0.230) and as tfjs' matMul at 2048³ (0.24): every 2×2
//   product runs at the rate of 4 multiply-adds per texel fetch (pixel shaders reportedly run on 4
//   of its SMs). The forward is those two products plus ≈ 5 % of other passes (block stats, lse),
//   naive attention the same two products plus 41 ms of softmax, scale and reduction passes at
//   N = 2048 (≈ 75 % of the products' time), so flash can beat naive by at most ≈ 1.7× in the
//   forward with single-output fragments; measured 1.42× at 2048 and 1.64–1.67× at 4096 (two runs),
//   where 2× would need the products at ≥ 0.28 TFLOP/s, above the fetch rate. Past that needs
//   more results per fragment (multiple render targets: not through runWebGLProgram, whose shader
//   declares `out vec4 outputColor` without a location, and GLSL ES 3.00 wants a location on every
//   output once there are several) or a quad of fragments sharing fetched texels through dFdx/dFdy
//   (exact only if the bits are exchanged as 16-bit halves; its ALU cost is of the order of the
//   fetch it saves): not done. Operands from a uniform buffer (filled on the GPU through a
//   PIXEL_PACK buffer) instead of a texture cut the fetches 4× but were measured no faster
//   (bench/webgl_ceiling.ts, 21:01 UTC: q·k 0.22–0.23 TFLOP/s, P·V 0.10–0.19, at run-time or
//   compile-time offsets): a uniform-buffer read costs about a texel fetch there, and the pixel
//   shaders' multiply-add rate itself is only ≈ 0.9 TFLOP/s. The forward+backward is 7 such
//   products against naive's 6 (the recomputation of q·k), won back by naive's passes over N²
//   scores: 1.03×, 1.01×, 1.07×, 1.06×, 1.15× at N = 256 … 4096 (19:06 UTC; at 256 and 512 a tie
//   within the rounds' spread).
// - Block size: 256-, 512- and 1024-key blocks gave the same H100 forward time at N = 4096 (17:22
//   UTC), so blocks are as large as memory allows (up to 1024 keys, see `blockKeys`), all of one size
//   (the last block is not a small remainder with the same fixed cost).
// Inputs are read with texelFetch at addresses derived from tfjs' packed layout (no division per
// fetch unless a texture was squarified beyond MAX_TEXTURE_SIZE, and then by constants).
import { env } from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import type { MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';
import type { AttentionConfig } from '../../src/config';
import { unpackAttentionInputs } from '../../src/inputs';
import { FlashAttention } from '../../src/kernel_names';
import { webglSplitPlan } from '../../src/split_kv';
import { accumulateProgram } from './accumulate_program';
import { attentionConfig } from '../../src/config';
import { blockStatsProgram } from './block_stats_program';
import { splitForwardWebGL } from './flash_attention_split';
import { optionalShapes } from './glsl';
import type { TexShapes } from './glsl';
import { lseProgram, toBSHDProgram } from './layout_programs';
import { isWebGLBackend, packedInput, run, texShapeOf, view } from './program';
import type { PackedInput } from './program';
import { scoresProgram } from './scores_program';
import { weightsProgram } from './weights_program';

/**
 * Most keys per block. Fewer blocks mean fewer draws (which cost host time at small N); at
 * N = 4096 the H100 forward time did not depend on the block size (bench/RESULTS.md).
 */
let blockKeysTarget = 1024;

/**
 * Elements a per-block texture ([B·Hq, Nq, blockKeys]) may hold: 256 MiB in float32, which keeps
 * 1024-key blocks up to N = 4096 at 12 heads (two such textures live at a time; the backward of
 * short sequences keeps four whose elements together stay within this budget).
 */
export const BLOCK_ELEMENTS = 2 ** 26;

/** Tuning knob for benchmarks: the most keys per block (even, ≥ 2) the webgl kernels use. */
export function setWebGLBlockKeys(keys: number): void {
  if (!(Number.isInteger(keys) && keys >= 2 && keys % 2 === 0)) throw new Error(`block keys must be even ≥ 2, got ${keys}`);
  blockKeysTarget = keys;
}

/**
 * How the forward runs its key blocks, beyond their size. Both choices trade exps for fetches
 * (see the header), so both default to on for GPUs and off for CPU rasterizers (SwiftShader,
 * llvmpipe).
 */
export interface WebGLForwardPlan {
  /** accumulate takes P̃ = exp(s − lse) from the scores itself: no weights pass (not with dropout). */
  fuseWeights: boolean;
  /** blockStats in one sweep over the scores with a running (max, sum) instead of two. */
  onePassStats: boolean;
}

let planOverride: Partial<WebGLForwardPlan> = {};

/** Tuning knob for benchmarks and tests: fixes parts of the forward plan ({} = the defaults). */
export function setWebGLForwardPlan(plan: Partial<WebGLForwardPlan>): void {
  planOverride = { ...plan };
}

const cpuRasterizers = new WeakMap<WebGL2RenderingContext | WebGLRenderingContext, boolean>();

/** Whether the context renders on the CPU (SwiftShader, llvmpipe), by the unmasked renderer name. */
function cpuRasterizer(gl: WebGL2RenderingContext | WebGLRenderingContext): boolean {
  let cpu = cpuRasterizers.get(gl);
  if (cpu === undefined) {
    const debug = gl.getExtension('WEBGL_debug_renderer_info');
    const renderer = String(gl.getParameter(debug ? debug.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
    cpu = /swiftshader|llvmpipe|softpipe/i.test(renderer);
    cpuRasterizers.set(gl, cpu);
  }
  return cpu;
}

function forwardPlan(backend: MathBackendWebGL, c: AttentionConfig): WebGLForwardPlan {
  const gpu = !cpuRasterizer(backend.gpgpu.gl);
  return {
    fuseWeights: c.dropoutRate === 0 && (planOverride.fuseWeights ?? gpu),
    onePassStats: planOverride.onePassStats ?? gpu,
  };
}

const evenFloor = (n: number) => n - (n % 2);

/**
 * The key block size (even): at most the target, at most BLOCK_ELEMENTS per block texture, at most
 * half the keys (so there are always two or more blocks: no texture is ever Nq × Nk), and small
 * enough that a [B·Hq, Nq, blockKeys] packed texture fits MAX_TEXTURE_SIZE² texels; then evened
 * out over the blocks that many keys need.
 */
export function blockKeys(c: AttentionConfig, maxTextureSize: number): number {
  const rows = c.batch * c.headsQ * c.seqQ;
  const budget = evenFloor(Math.floor(BLOCK_ELEMENTS / rows));
  const half = 2 * Math.ceil(c.seqK / 4);
  // tfjs squarifies a texture beyond MAX_TEXTURE_SIZE into about √texels × √texels; (max − 1)² texels
  // always fit.
  const rowTexels = c.batch * c.headsQ * Math.ceil(c.seqQ / 2);
  const fit = 2 * Math.floor((maxTextureSize - 1) ** 2 / rowTexels);
  const most = Math.max(2, Math.min(blockKeysTarget, budget, half, fit));
  // Equal blocks rather than full ones and a small remainder: the same draw count, less work in the
  // last block, and one texture shape for all blocks.
  const blocks = Math.ceil(c.seqK / most);
  return 2 * Math.ceil(c.seqK / (2 * blocks));
}

/** Whether some query row may see a key in [start, end) (window bounds only). */
export function blockVisible(c: AttentionConfig, start: number, end: number): boolean {
  const offset = c.seqK - c.seqQ;
  if (c.windowRight >= 0 && start > c.seqQ - 1 + offset + c.windowRight) return false;
  if (c.windowLeft >= 0 && end - 1 < offset - c.windowLeft) return false;
  return true;
}

/** The user's layout of a [B·heads, seq, dim] internal result. */
export function toUserLayout(backend: MathBackendWebGL, c: AttentionConfig, x: TensorInfo,
  heads: number, seq: number, dim: number): TensorInfo {
  if (c.layout === 'BHSD') return view(x, [c.batch, heads, seq, dim]);
  const out = run(backend, toBSHDProgram(c, heads, seq, dim), [x]);
  backend.disposeIntermediateTensorInfo(x);
  return out;
}

export function optionalInputs(c: AttentionConfig, inputs: Partial<Record<string, TensorInfo>>): TensorInfo[] {
  const present = [inputs.bias, inputs.mask, inputs.keyLengths, inputs.alibiSlopes, inputs.blockMask]
    .filter((t): t is TensorInfo => t !== undefined);
  const shapes = optionalShapes(c);
  return present.map((t, n) => view(t, shapes[n]));
}

/** q, k, v, ... as packed textures addressable by texelFetch; `release` disposes the copies made. */
export function packedInputs<N extends string>(backend: MathBackendWebGL, inputs: Record<N, TensorInfo>):
    { info: Record<N, TensorInfo>; textures: TexShapes; release(): void } {
  const packed = Object.entries<TensorInfo>(inputs).map(([name, t]) => [name, packedInput(backend, t)] as const);
  const info: Partial<Record<string, TensorInfo>> = {};
  const textures: TexShapes = {};
  for (const [name, p] of packed) {
    info[name] = p.info;
    textures[name] = p.texShape;
  }
  return {
    info: info as Record<N, TensorInfo>,
    textures,
    release: () => packed.filter(([, p]: readonly [string, PackedInput]) => p.temporary)
      .forEach(([, p]) => backend.disposeIntermediateTensorInfo(p.info)),
  };
}

/** The programs are GLSL ES 3.00 (texelFetch, uint arithmetic for dropout): WebGL2 only. */
export function checkWebGL2(): void {
  const version = env().getNumber('WEBGL_VERSION');
  if (version !== 2) throw new Error(`flashAttention: the webgl kernels need WebGL2; this context is WebGL${version}`);
}

const flashAttentionWebGL: KernelFunc = ({ inputs, backend, attrs }) => {
  if (!isWebGLBackend(backend)) throw new Error('flashAttention: the webgl kernel needs the webgl backend');
  checkWebGL2();
  const c = attentionConfig(attrs);
  const x = unpackAttentionInputs(c, inputs);
  const optional = optionalInputs(c, x);
  // Decode shapes (few query rows, many keys) take the split-KV path (src/split_kv.ts).
  const split = webglSplitPlan(c, env().getNumber('WEBGL_MAX_TEXTURE_SIZE'));
  if (split.splits > 1) return splitForwardWebGL(backend, c, x, optional, split);
  const keys = blockKeys(c, env().getNumber('WEBGL_MAX_TEXTURE_SIZE'));
  const packed = packedInputs(backend, { Q: x.q, K: x.k, V: x.v });
  const { Q, K, V } = packed.info;
  const textures = packed.textures;

  const plan = forwardPlan(backend, c);
  let stats: TensorInfo | undefined;
  let sum: TensorInfo | undefined;
  for (let start = 0; start < c.seqK; start += keys) {
    // Block 0 always runs: it also initializes O and lse (0 and −Infinity for rows that see no key).
    if (start > 0 && !blockVisible(c, start, start + keys)) continue;
    const scores = run(backend, scoresProgram(c, textures, start, keys), [Q, K, ...optional]);
    textures.Scores = texShapeOf(backend, scores);
    if (stats) textures.Previous = texShapeOf(backend, stats);
    const nextStats = run(backend, blockStatsProgram(c, textures, start, keys, !stats, plan.onePassStats),
      [scores, ...(stats ? [stats] : []), ...optional]);
    textures.Stats = texShapeOf(backend, nextStats);
    // What accumulate reads: P̃ from a weights pass, or the scores themselves when it takes the exp.
    const weights = plan.fuseWeights ? undefined : run(backend, weightsProgram(c, textures, start, keys), [scores, nextStats, ...optional]);
    if (weights) textures.Weights = texShapeOf(backend, weights);
    if (sum) textures.Previous = texShapeOf(backend, sum);
    const nextSum = run(backend, accumulateProgram(c, textures, start, keys, !sum, plan.fuseWeights),
      [weights ?? scores, V, nextStats, ...(sum ? [sum] : []), ...optional]);
    for (const t of [scores, weights, stats, sum]) if (t) backend.disposeIntermediateTensorInfo(t);
    stats = nextStats;
    sum = nextSum;
  }
  packed.release();
  if (!stats || !sum) throw new Error('flashAttention (webgl): no key block ran');
  const lse = run(backend, lseProgram(c), [stats]);
  backend.disposeIntermediateTensorInfo(stats);
  return [toUserLayout(backend, c, sum, c.headsQ, c.seqQ, c.headDimV), lse];
};

export const flashAttentionWebGLConfig: KernelConfig = {
  kernelName: FlashAttention,
  backendName: 'webgl',
  kernelFunc: flashAttentionWebGL,
};
