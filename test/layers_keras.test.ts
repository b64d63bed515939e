// Loading a converted Keras model with MultiHeadAttention layers (test/fixtures/keras_mha, written
// by scripts/make_keras_fixture.mjs in tensorflowjs_converter's format), and tfjs-native save/load
// of models with the layer.
import '@tensorflow/tfjs-backend-cpu';
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D } from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { MultiHeadAttention } from '../src/index';
import { MhaWeights, kerasMultiHeadAttention, maxAbsDiff } from './layers_reference';

const FIXTURE = path.join(__dirname, 'fixtures', 'keras_mha');

interface ModelJson {
  modelTopology: object;
  format: string;
  generatedBy: string;
  convertedBy: string;
  weightsManifest: { paths: string[]; weights: tf.io.WeightsManifestEntry[] }[];
}

/** What tfjs' file:// and http handlers do: model.json plus its weight shards from one folder. */
function folderHandler(dir: string): tf.io.IOHandler {
  return {
    load: async () => {
      const json = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8')) as ModelJson;
      const buffers = json.weightsManifest.flatMap(group => group.paths.map(p => fs.readFileSync(path.join(dir, p))));
      const data = Buffer.concat(buffers);
      return {
        modelTopology: json.modelTopology, format: json.format, generatedBy: json.generatedBy, convertedBy: json.convertedBy,
        weightSpecs: json.weightsManifest.flatMap(group => group.weights),
        weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength),
      };
    },
  };
}

/** The fixture's weights read straight from its files, by Keras name, without the library. */
function fixtureWeights(): Record<string, Tensor> {
  const json = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'model.json'), 'utf8')) as ModelJson;
  const bytes = fs.readFileSync(path.join(FIXTURE, json.weightsManifest[0].paths[0]));
  const floats = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const weights: Record<string, Tensor> = {};
  let offset = 0;
  for (const spec of json.weightsManifest[0].weights) {
    const size = spec.shape.reduce((a, b) => a * b, 1);
    weights[spec.name] = tf.tensor(floats.slice(offset, offset + size), spec.shape);
    offset += size;
  }
  return weights;
}

function kerasWeights(all: Record<string, Tensor>, layer: string): MhaWeights {
  const w = (name: string) => all[`${layer}/${name}`];
  return {
    queryKernel: w('query/kernel'), queryBias: w('query/bias'), keyKernel: w('key/kernel'), keyBias: w('key/bias'),
    valueKernel: w('value/kernel'), valueBias: w('value/bias'),
    outputKernel: w('attention_output/kernel'), outputBias: w('attention_output/bias'),
  };
}

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('Keras model conversion', () => {
  it('loads the converted Keras model with tf.loadLayersModel and computes Keras\' outputs', async () => {
    const model = await tfl.loadLayersModel(folderHandler(FIXTURE));
    const mhas = model.layers.filter(l => l instanceof MultiHeadAttention) as MultiHeadAttention[];
    expect(mhas.map(l => [l.name, l.numHeads, l.keyDim, l.valueDim])).toEqual([
      ['multi_head_attention', 2, 4, 3], ['multi_head_attention_1', 2, 4, 4],
    ]);
    expect(model.inputs.map(i => i.shape)).toEqual([[null, 5, 8], [null, 7, 6], [null, 7, 10], [null, 5, 7]]);

    const query = tf.randomNormal([3, 5, 8], 0, 1, 'float32', 1) as Tensor3D;
    const value = tf.randomNormal([3, 7, 6], 0, 1, 'float32', 2) as Tensor3D;
    const key = tf.randomNormal([3, 7, 10], 0, 1, 'float32', 3) as Tensor3D;
    // Key 0 is always visible so that no row is fully masked.
    const mask = tf.tidy(() => tf.logicalOr(tf.greater(tf.randomUniform([3, 5, 7], 0, 1, 'float32', 4), 0.5),
      tf.concat([tf.ones([3, 5, 1], 'bool'), tf.zeros([3, 5, 6], 'bool')], 2)));
    const out = model.predict([query, value, key, mask]) as Tensor;

    const weights = fixtureWeights();
    const expected = tf.tidy(() => {
      const x = kerasMultiHeadAttention(query, value, key, kerasWeights(weights, 'multi_head_attention'), { attentionMask: mask }) as Tensor3D;
      return kerasMultiHeadAttention(x, x, x, kerasWeights(weights, 'multi_head_attention_1'), { useCausalMask: true });
    });
    expect(out.shape).toEqual([3, 5, 8]);
    expect(maxAbsDiff(out, expected)).toBeLessThan(1e-5);
    tf.dispose([query, value, key, mask, out, expected, ...Object.values(weights)]);
    model.dispose();
  });

  it('says which reference it cannot resolve', async () => {
    const json = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'model.json'), 'utf8')) as ModelJson & {
      modelTopology: { model_config: { config: { layers: { inbound_nodes: unknown }[] } } } };
    json.modelTopology.model_config.config.layers[4].inbound_nodes =
      [[['query_input', 0, 0, { value: ['no_such_layer', 0, 0] }]]];
    const handler: tf.io.IOHandler = { load: async () => ({ modelTopology: json.modelTopology }) };
    await expect(tfl.loadLayersModel(handler)).rejects.toThrow(/tensor reference 'noSuchLayer'/);
  });
});

describe('MultiHeadAttention serialization', () => {
  it('round-trips model.save / tf.loadLayersModel with a mask input, causal call and config', async () => {
    const query = tfl.input({ shape: [6, 8], name: 'q' });
    const value = tfl.input({ shape: [9, 5], name: 'v' });
    const mask = tfl.input({ shape: [6, 9], dtype: 'bool', name: 'm' });
    const layer = new MultiHeadAttention({
      numHeads: 2, keyDim: 3, valueDim: 4, outputShape: [2, 5], dropout: 0.2, seed: 5,
      kernelInitializer: 'heNormal', kernelRegularizer: { className: 'L1L2', config: { l1: 0, l2: 0.01 } },
      kernelConstraint: 'maxNorm', name: 'mha',
    });
    const out = layer.apply([query, value], { attentionMask: mask, useCausalMask: true }) as tfl.SymbolicTensor;
    const model = tfl.model({ inputs: [query, value, mask], outputs: out });
    let saved: tf.io.ModelArtifacts | null = null;
    await model.save(tf.io.withSaveHandler(async artifacts => {
      saved = artifacts;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }));
    const topology = JSON.stringify(saved!.modelTopology);
    expect(topology).toContain('"class_name":"MultiHeadAttention"');
    expect(topology).toContain('"use_causal_mask":true');
    expect(saved!.weightSpecs!.map(s => s.name)).toEqual([
      'mha/query/kernel', 'mha/query/bias', 'mha/key/kernel', 'mha/key/bias', 'mha/value/kernel', 'mha/value/bias',
      'mha/attention_output/kernel', 'mha/attention_output/bias',
    ]);
    const loaded = await tfl.loadLayersModel(tf.io.fromMemory(saved!));
    const copy = loaded.layers.find(l => l instanceof MultiHeadAttention) as MultiHeadAttention;
    // tfjs writes an unset initializer seed (undefined) as null.
    const plain = (config: object) => JSON.parse(JSON.stringify(config, (_k, v: unknown) => v ?? null)) as object;
    expect(plain(copy.getConfig())).toEqual(plain(layer.getConfig()));

    const q = tf.randomNormal([2, 6, 8], 0, 1, 'float32', 1);
    const v = tf.randomNormal([2, 9, 5], 0, 1, 'float32', 2);
    const m = tf.tidy(() => tf.logicalOr(tf.greater(tf.randomUniform([2, 6, 9], 0, 1, 'float32', 3), 0.5),
      tf.concat([tf.ones([2, 6, 1], 'bool'), tf.zeros([2, 6, 8], 'bool')], 2)));
    const a = model.predict([q, v, m]) as Tensor;
    const b = loaded.predict([q, v, m]) as Tensor;
    expect(a.shape).toEqual([2, 6, 2, 5]);
    // Not bit-equal: tfjs applies the maxNorm constraint when it writes the loaded weights, which
    // rescales them by (1 − ~1e-7) (norm / (norm + epsilon)).
    expect(maxAbsDiff(a, b)).toBeLessThan(1e-5);
    tf.dispose([q, v, m, a, b]);
    model.dispose();
    loaded.dispose();
  });
});
