/** Forward kernel: inputs `attentionInputs`, attrs AttentionConfig, outputs [output, lse]. */
export const FlashAttention = 'FlashAttention';
/**
 * Backward kernel: inputs `gradInputs`, attrs AttentionConfig, outputs [dq, dk, dv] and dbias (in
 * the rank-4 `biasShape`) when a bias was given.
 */
export const FlashAttentionGrad = 'FlashAttentionGrad';
