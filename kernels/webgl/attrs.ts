import type { NamedAttrMap } from '@tensorflow/tfjs-core';
import type { AttentionConfig } from '../../src/config';

const FIELDS = ['batch', 'headsQ', 'headsKV', 'seqQ', 'seqK', 'headDim', 'headDimV', 'layout', 'scale',
  'windowLeft', 'windowRight', 'softcap', 'dropoutRate', 'dropoutSeed', 'biasShape', 'maskShape', 'alibiShape',
  'hasKeyLengths', 'blockMaskShape', 'blockSize'];

function isAttentionConfig(attrs: NamedAttrMap): attrs is NamedAttrMap & AttentionConfig {
  return FIELDS.every(field => field in attrs);
}

/** The kernels' attrs are the op's AttentionConfig; this narrows tfjs' NamedAttrMap back to it. */
export function attentionConfig(attrs: NamedAttrMap | undefined): AttentionConfig {
  if (!attrs || !isAttentionConfig(attrs)) {
    throw new Error('flashAttention (webgl): kernel attributes are not an AttentionConfig');
  }
  return attrs;
}
