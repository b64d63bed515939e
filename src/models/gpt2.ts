// A GPT-2 model builder: token + position embeddings, pre-LayerNorm transformer blocks (causal
// self-attention and a GELU MLP, each added to the residual stream), a final LayerNorm and an output
// head tied to the token embedding (or a separate one). The result is an ordinary tf.LayersModel
// mapping int32 token ids [B, T] to logits [B, T, vocab]; it trains with model.fit or an optimizer
// and serializes with model.save / tf.loadLayersModel.
import * as tfl from '@tensorflow/tfjs-layers';
import { AttentionImplementation, CausalSelfAttention } from '../layers/causal_self_attention';
import { Gpt2Mlp, PositionEmbedding, TokenEmbedding } from '../layers/gpt2_blocks';
import { LayerNorm } from '../layers/layer_norm';

export interface Gpt2Options {
  /** Named size: 'tiny', 'mini' or 'small' (GPT-2 small); options given here override it. */
  preset?: string;
  vocabSize?: number;
  contextLength?: number;
  numLayers?: number;
  numHeads?: number;
  /** Width of the residual stream (GPT-2's n_embd). */
  channels?: number;
  /** MLP width; defaults to 4 · channels. */
  mlpHiddenSize?: number;
  /** Default for the three dropouts below. */
  dropout?: number;
  embeddingDropout?: number;
  attentionDropout?: number;
  residualDropout?: number;
  layerNormEpsilon?: number;
  /** Output head shares the token embedding matrix (GPT-2) or has its own. */
  tiedEmbeddings?: boolean;
  /** 'flash' (fused kernel) or 'naive' (matMul → mask → softmax → matMul) attention. */
  attention?: AttentionImplementation;
  /** Seed of the attention dropout masks; random if absent. */
  seed?: number;
  name?: string;
}

export type Gpt2Config = Required<Omit<Gpt2Options, 'preset' | 'seed' | 'mlpHiddenSize' | 'name'>> &
  { mlpHiddenSize: number; seed: number | null; name: string };

type Preset = Pick<Gpt2Config, 'vocabSize' | 'contextLength' | 'numLayers' | 'numHeads' | 'channels'>;

const GPT2_VOCAB = 50257;

export const GPT2_PRESETS: Readonly<Record<string, Preset>> = {
  tiny: { vocabSize: GPT2_VOCAB, contextLength: 64, numLayers: 2, numHeads: 2, channels: 64 },
  mini: { vocabSize: GPT2_VOCAB, contextLength: 256, numLayers: 4, numHeads: 4, channels: 256 },
  small: { vocabSize: GPT2_VOCAB, contextLength: 1024, numLayers: 12, numHeads: 12, channels: 768 },
};

function fail(message: string): never {
  throw new Error(`gpt2: ${message}`);
}

/** The preset merged with the options, validated. */
export function gpt2Config(options: Gpt2Options = {}): Gpt2Config {
  const presetName = options.preset ?? 'tiny';
  const preset = GPT2_PRESETS[presetName];
  if (!preset) fail(`unknown preset '${presetName}' (known: ${Object.keys(GPT2_PRESETS).join(', ')})`);
  const dropout = options.dropout ?? 0.1;
  const config: Gpt2Config = {
    vocabSize: options.vocabSize ?? preset.vocabSize,
    contextLength: options.contextLength ?? preset.contextLength,
    numLayers: options.numLayers ?? preset.numLayers,
    numHeads: options.numHeads ?? preset.numHeads,
    channels: options.channels ?? preset.channels,
    mlpHiddenSize: options.mlpHiddenSize ?? 4 * (options.channels ?? preset.channels),
    dropout,
    embeddingDropout: options.embeddingDropout ?? dropout,
    attentionDropout: options.attentionDropout ?? dropout,
    residualDropout: options.residualDropout ?? dropout,
    layerNormEpsilon: options.layerNormEpsilon ?? 1e-5,
    tiedEmbeddings: options.tiedEmbeddings ?? true,
    attention: options.attention ?? 'flash',
    seed: options.seed ?? null,
    name: options.name ?? `gpt2_${presetName}`,
  };
  for (const key of ['vocabSize', 'contextLength', 'numLayers', 'numHeads', 'channels', 'mlpHiddenSize'] as const) {
    if (!(Number.isInteger(config[key]) && config[key] >= 1)) fail(`${key} must be an integer ≥ 1, got ${config[key]}`);
  }
  if (config.channels % config.numHeads !== 0) {
    fail(`channels (${config.channels}) must be a multiple of numHeads (${config.numHeads})`);
  }
  for (const key of ['dropout', 'embeddingDropout', 'attentionDropout', 'residualDropout'] as const) {
    if (!(config[key] >= 0 && config[key] < 1)) fail(`${key} must be a rate in [0, 1), got ${config[key]}`);
  }
  if (config.attention !== 'flash' && config.attention !== 'naive') {
    fail(`attention must be 'flash' or 'naive', got '${config.attention}'`);
  }
  return config;
}

/** Builds GPT-2: int32 token ids [B, T ≤ contextLength] → logits [B, T, vocabSize]. */
export function gpt2(options: Gpt2Options = {}): tfl.LayersModel {
  const c = gpt2Config(options);
  // GPT-2 scales the initial weights of the projections into the residual stream by 1/√(2·layers).
  const projection = { className: 'RandomNormal', config: { mean: 0, stddev: 0.02 / Math.sqrt(2 * c.numLayers) } };
  const ids = tfl.input({ shape: [null], dtype: 'int32', name: `${c.name}_ids` });
  const tokens = new TokenEmbedding({ vocabSize: c.vocabSize, channels: c.channels, name: `${c.name}_wte` });
  let x = tokens.apply(ids) as tfl.SymbolicTensor;
  x = new PositionEmbedding({ contextLength: c.contextLength, name: `${c.name}_wpe` }).apply(x) as tfl.SymbolicTensor;
  x = tfl.layers.dropout({ rate: c.embeddingDropout, name: `${c.name}_drop` }).apply(x) as tfl.SymbolicTensor;
  for (let i = 0; i < c.numLayers; i++) {
    const prefix = `${c.name}_h${i}`;
    const layerNorm = (n: number) => new LayerNorm({ epsilon: c.layerNormEpsilon, name: `${prefix}_ln_${n}` });
    let h = layerNorm(1).apply(x) as tfl.SymbolicTensor;
    h = new CausalSelfAttention({
      numHeads: c.numHeads, attentionDropout: c.attentionDropout, residualDropout: c.residualDropout,
      projectionInitializer: projection, attention: c.attention,
      seed: c.seed === null ? null : (c.seed + i) >>> 0, name: `${prefix}_attn`,
    }).apply(h) as tfl.SymbolicTensor;
    x = tfl.layers.add({ name: `${prefix}_add_1` }).apply([x, h]) as tfl.SymbolicTensor;
    h = layerNorm(2).apply(x) as tfl.SymbolicTensor;
    h = new Gpt2Mlp({
      hiddenSize: c.mlpHiddenSize, residualDropout: c.residualDropout, projectionInitializer: projection,
      name: `${prefix}_mlp`,
    }).apply(h) as tfl.SymbolicTensor;
    x = tfl.layers.add({ name: `${prefix}_add_2` }).apply([x, h]) as tfl.SymbolicTensor;
  }
  x = new LayerNorm({ epsilon: c.layerNormEpsilon, name: `${c.name}_ln_f` }).apply(x) as tfl.SymbolicTensor;
  const head = c.tiedEmbeddings ? tokens : new TokenEmbedding({
    vocabSize: c.vocabSize, channels: c.channels, name: `${c.name}_lm_head`,
  });
  const logits = head.apply(x) as tfl.SymbolicTensor;
  return tfl.model({ inputs: ids, outputs: logits, name: c.name });
}
