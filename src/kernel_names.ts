/** Forward kernel: inputs `attentionInputs`, attrs AttentionConfig, outputs [output, lse]. */
export const FlashAttention = 'FlashAttention';
/**
 * Backward kernel: inputs `gradInputs`, attrs AttentionConfig, outputs [dq, dk, dv] and dbias (in
 * the rank-4 `biasShape`) when a bias was given.
 */
export const FlashAttentionGrad = 'FlashAttentionGrad';
/**
 * KV-cache write (src/models/kv_cache.ts): inputs [cache [B, L, H, D], rows [B, T, S, D]], attrs
 * { positions: number[] (one per batch), firstHead?: number (default 0) }; writes heads
 * [firstHead, firstHead + H) of rows[b] into cache[b, positions[b] …] in place, in the cache's own
 * storage, and returns no output.
 */
export const KVCacheUpdate = 'KVCacheUpdate';
