import type { LayersModel } from '@tensorflow/tfjs-layers';
import { AttentionImplementation, gpt2, GPT2_PRESETS } from '../../src/index';

export type Attention = AttentionImplementation;

export const PRESET_NAMES = Object.keys(GPT2_PRESETS);

export interface ModelOptions {
  preset: string;
  vocabSize: number;
  context: number;
  attention: Attention;
  /** Overrides the preset's number of transformer blocks. */
  layers?: number;
  /** Overrides the preset's width (channels of the residual stream). */
  channels?: number;
  /** Output head tied to the token embedding (GPT-2; the default) or a separate matrix. */
  tiedEmbeddings?: boolean;
}

/**
 * The library's GPT-2 with the example's vocabulary and context. Dropout is off: these runs are
 * a few hundred steps over a 1.2 MB book, far from overfitting, and dropout only slows learning.
 */
export function buildModel(options: ModelOptions): LayersModel {
  return gpt2({
    preset: options.preset,
    vocabSize: options.vocabSize,
    contextLength: options.context,
    attention: options.attention,
    numLayers: options.layers,
    channels: options.channels,
    tiedEmbeddings: options.tiedEmbeddings,
    dropout: 0,
  });
}

export function isAttention(s: string): s is Attention {
  return s === 'flash' || s === 'naive';
}
