#!/usr/bin/env node
// Writes test/fixtures/keras_mha/: a Keras functional model with two MultiHeadAttention layers in
// the format `tensorflowjs_converter --input_format keras model.h5 out/` writes for tf.keras 2.15
// (model.json with the Keras JSON as modelTopology.model_config, snake_case configs, Keras 2's
// inbound nodes that pass value/key/attention_mask as tensor references in the keyword arguments,
// weight names as Keras saves them, one float32 shard). The weights come from a seeded PRNG here,
// not from the library, so the test that loads this model checks the library independently.
//
// The model, in Keras:
//   query = Input((5, 8), name='query_input'); value = Input((7, 6), name='value_input')
//   key = Input((7, 10), name='key_input'); mask = Input((5, 7), dtype='bool', name='attention_mask')
//   x = MultiHeadAttention(2, 4, value_dim=3)(query, value, key=key, attention_mask=mask)
//   y = MultiHeadAttention(2, 4, name='multi_head_attention_1')(x, x, use_causal_mask=True)
//   Model([query, value, key, mask], y)
// Run: node scripts/make_keras_fixture.mjs
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const OUT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test', 'fixtures', 'keras_mha');

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const initializer = (className, config) => ({ module: 'keras.initializers', class_name: className, config, registered_name: null });

function inputLayer(name, shape, dtype = 'float32') {
  return {
    class_name: 'InputLayer',
    config: { batch_input_shape: [null, ...shape], dtype, sparse: false, ragged: false, name },
    name,
    inbound_nodes: [],
  };
}

function mhaLayer(name, { numHeads, keyDim, valueDim, queryShape, keyShape, valueShape }, inboundNodes) {
  return {
    class_name: 'MultiHeadAttention',
    config: {
      name, trainable: true, dtype: 'float32',
      num_heads: numHeads, key_dim: keyDim, value_dim: valueDim, dropout: 0.0, use_bias: true,
      output_shape: null, attention_axes: [1],
      kernel_initializer: initializer('GlorotUniform', { seed: null }),
      bias_initializer: initializer('Zeros', {}),
      kernel_regularizer: null, bias_regularizer: null, activity_regularizer: null,
      kernel_constraint: null, bias_constraint: null,
      query_shape: [null, ...queryShape], key_shape: [null, ...keyShape], value_shape: [null, ...valueShape],
    },
    name,
    inbound_nodes: inboundNodes,
  };
}

/** Keras' weight order for one MultiHeadAttention layer. */
function mhaWeights(name, { numHeads: h, keyDim, valueDim, queryShape, keyShape, valueShape }) {
  const out = queryShape[1];
  return [
    [`${name}/query/kernel`, [queryShape[1], h, keyDim]], [`${name}/query/bias`, [h, keyDim]],
    [`${name}/key/kernel`, [keyShape[1], h, keyDim]], [`${name}/key/bias`, [h, keyDim]],
    [`${name}/value/kernel`, [valueShape[1], h, valueDim]], [`${name}/value/bias`, [h, valueDim]],
    [`${name}/attention_output/kernel`, [h, valueDim, out]], [`${name}/attention_output/bias`, [out]],
  ];
}

const first = { numHeads: 2, keyDim: 4, valueDim: 3, queryShape: [5, 8], keyShape: [7, 10], valueShape: [7, 6] };
const second = { numHeads: 2, keyDim: 4, valueDim: 4, queryShape: [5, 8], keyShape: [5, 8], valueShape: [5, 8] };

const modelConfig = {
  class_name: 'Functional',
  config: {
    name: 'model',
    trainable: true,
    layers: [
      inputLayer('query_input', [5, 8]),
      inputLayer('value_input', [7, 6]),
      inputLayer('key_input', [7, 10]),
      inputLayer('attention_mask', [5, 7], 'bool'),
      mhaLayer('multi_head_attention', first, [[['query_input', 0, 0, {
        value: ['value_input', 0, 0], key: ['key_input', 0, 0], attention_mask: ['attention_mask', 0, 0],
      }]]]),
      mhaLayer('multi_head_attention_1', second, [[['multi_head_attention', 0, 0, {
        value: ['multi_head_attention', 0, 0], use_causal_mask: true,
      }]]]),
    ],
    input_layers: [['query_input', 0, 0], ['value_input', 0, 0], ['key_input', 0, 0], ['attention_mask', 0, 0]],
    output_layers: [['multi_head_attention_1', 0, 0]],
  },
};

const weights = [...mhaWeights('multi_head_attention', first), ...mhaWeights('multi_head_attention_1', second)];
const random = mulberry32(20261126);
const values = [];
for (const [, shape] of weights) {
  const size = shape.reduce((a, b) => a * b, 1);
  for (let i = 0; i < size; i++) values.push(random() - 0.5);
}

const modelJson = {
  format: 'layers-model',
  generatedBy: 'keras v2.15.0',
  convertedBy: 'TensorFlow.js Converter v4.22.0',
  modelTopology: { keras_version: '2.15.0', backend: 'tensorflow', model_config: modelConfig },
  weightsManifest: [{
    paths: ['group1-shard1of1.bin'],
    weights: weights.map(([name, shape]) => ({ name, shape, dtype: 'float32' })),
  }],
};

fs.mkdirSync(OUT, { recursive: true });
fs.writeFileSync(path.join(OUT, 'model.json'), JSON.stringify(modelJson));
fs.writeFileSync(path.join(OUT, 'group1-shard1of1.bin'), Buffer.from(new Float32Array(values).buffer));
console.log(`wrote ${OUT}: ${weights.length} weights, ${values.length} floats`);
