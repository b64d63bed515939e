import { flashAttention } from './flash_attention';
import { registerFlashAttention } from './register';

registerFlashAttention();

export { flashAttention };
export type { FlashAttentionResult } from './flash_attention';
export type { AttentionConfig, FlashAttentionOptions, Layout, Precision } from './config';
export { FlashAttention, FlashAttentionGrad } from './kernel_names';
export { dropoutKeep, dropoutThreshold } from './dropout';
export { registerWebGPUBackend, RAISED_LIMITS, WEBGPU_FEATURES } from './webgpu_device';
export type { RaisedLimit, WebGPUBackendOptions, WebGPUFeature, WebGPUSetup } from './webgpu_device';
export { MultiHeadAttention } from './layers/multi_head_attention';
export type { MultiHeadAttentionArgs, MultiHeadAttentionCallArgs } from './layers/multi_head_attention';
export { CausalSelfAttention } from './layers/causal_self_attention';
export type { AttentionImplementation, CausalSelfAttentionArgs } from './layers/causal_self_attention';
export { Gpt2Mlp, PositionEmbedding, TokenEmbedding } from './layers/gpt2_blocks';
export { LayerNorm } from './layers/layer_norm';
export type { LayerNormArgs } from './layers/layer_norm';
export { GPT2_PRESETS, gpt2, gpt2Config } from './models/gpt2';
export type { Gpt2Config, Gpt2Options } from './models/gpt2';
export { Gpt2Decoder, generate, recomputeLogits } from './models/generate';
export type { GenerateOptions } from './models/generate';
export { KVCache } from './models/kv_cache';
export { KVCacheUpdate } from './kernel_names';

// Script-tag use: a page that loaded tfjs as a global `tf` gets `tf.flashAttention`.
const globalTf: unknown = (globalThis as { tf?: unknown }).tf;
if (typeof globalTf === 'object' && globalTf !== null) {
  Object.assign(globalTf, { flashAttention });
}
