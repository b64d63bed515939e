// Loading Keras functional models whose MultiHeadAttention calls pass tensors as keyword arguments.
//
// Keras 2 writes a call `mha(query, value, key=k, attention_mask=m)` into the model JSON as ONE
// inbound entry for `query` whose keyword arguments hold references to the other tensors:
//   [["query", 0, 0, {"value": ["value", 0, 0], "key": ["k", 0, 0], "attention_mask": ["m", 0, 0]}]]
// tfjs-layers connects only the entries themselves and hands the keyword arguments to the layer
// untouched (after converting every string in them to camelCase, layer names included), so such a
// model cannot be built by tfjs as is. Keras' functional models carry the class name 'Functional';
// this module registers a LayersModel under that name whose fromConfig first turns those references
// into ordinary inbound entries [query, value, key, mask], the inputs MultiHeadAttention takes. Every
// other layer and every other kind of model is built exactly as tfjs builds it.
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { toCamelCase } from './keras_objects';

type Json = tf.serialization.ConfigDictValue;
type InboundEntry = [string, number, number, tf.serialization.ConfigDict];
type TensorRef = [string, number, number];

const TENSOR_ARGUMENTS = ['value', 'key', 'attentionMask'] as const;

function isConfigDict(x: unknown): x is tf.serialization.ConfigDict {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function isTensorRef(x: Json | undefined): x is TensorRef {
  return Array.isArray(x) && x.length === 3 && typeof x[0] === 'string' &&
    typeof x[1] === 'number' && typeof x[2] === 'number';
}

function isInboundEntry(x: Json): x is InboundEntry {
  return Array.isArray(x) && x.length >= 3 && typeof x[0] === 'string';
}

/** A reference's layer name was camelCased by tfjs' loader; find the layer it meant. */
function resolveLayerName(ref: string, layerNames: string[], owner: string): string {
  if (layerNames.includes(ref)) return ref;
  const matches = layerNames.filter(name => toCamelCase(name) === ref);
  if (matches.length !== 1) {
    throw new Error(`MultiHeadAttention '${owner}': cannot tell which layer the tensor reference '${ref}' ` +
      `names (candidates: ${matches.length === 0 ? 'none' : matches.join(', ')})`);
  }
  return matches[0];
}

function rewriteNode(node: Json, layerNames: string[], owner: string): Json {
  if (!Array.isArray(node) || node.length !== 1 || !isInboundEntry(node[0])) return node;
  const [queryLayer, queryNode, queryTensor, kwargs = {}] = node[0];
  if (!isConfigDict(kwargs) || !TENSOR_ARGUMENTS.some(name => kwargs[name] !== undefined)) return node;
  const rest: tf.serialization.ConfigDict = { ...kwargs };
  const refs: Partial<Record<typeof TENSOR_ARGUMENTS[number], TensorRef>> = {};
  for (const name of TENSOR_ARGUMENTS) {
    const value = kwargs[name];
    delete rest[name];
    if (value === undefined || value === null) continue;
    if (!isTensorRef(value)) {
      throw new Error(`MultiHeadAttention '${owner}': ${name} must be a tensor of the model; constant ` +
        `(non-tensor) values are not supported, got ${JSON.stringify(value).slice(0, 80)}`);
    }
    refs[name] = [resolveLayerName(value[0], layerNames, owner), value[1], value[2]];
  }
  if (!refs.value) throw new Error(`MultiHeadAttention '${owner}': the call has no value tensor`);
  const entries: Json[] = [[queryLayer, queryNode, queryTensor, rest], [...refs.value, rest], [...(refs.key ?? refs.value), rest]];
  if (refs.attentionMask) entries.push([...refs.attentionMask, rest]);
  return entries;
}

/** Returns the model config with MultiHeadAttention's tensor keyword arguments made into inputs. */
export function resolveKerasTensorArguments(config: tf.serialization.ConfigDict): tf.serialization.ConfigDict {
  const layers = config.layers;
  if (!Array.isArray(layers)) return config;
  const layerNames = layers.filter(isConfigDict).map(layer => String(layer.name));
  return {
    ...config,
    layers: layers.map(layer => {
      if (!isConfigDict(layer) || layer.className !== 'MultiHeadAttention' || !Array.isArray(layer.inboundNodes)) {
        return layer;
      }
      return { ...layer, inboundNodes: layer.inboundNodes.map(node => rewriteNode(node, layerNames, String(layer.name))) };
    }),
  };
}

/** Keras' functional model class: tfjs' own 'Functional' plus the rewrite above. */
export class KerasFunctional extends tfl.LayersModel {
  static override className = 'Functional';

  static override fromConfig<T extends tf.serialization.Serializable>(
    cls: tf.serialization.SerializableConstructor<T>, config: tf.serialization.ConfigDict,
    customObjects?: tf.serialization.ConfigDict, fastWeightInit?: boolean): T {
    return super.fromConfig(cls, resolveKerasTensorArguments(config), customObjects, fastWeightInit);
  }
}

tf.serialization.registerClass(KerasFunctional);
