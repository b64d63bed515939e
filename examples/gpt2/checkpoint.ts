// A directory checkpoint for Node: `model.json` (topology, weight manifest, metadata) next to one
// `weights.bin`, the same files tfjs-node's file:// handler writes, which this repo cannot use
// (no tfjs-node). `tf.loadLayersModel` reads them back through `directoryHandler(dir)` too.
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';

const MODEL_FILE = 'model.json';
const WEIGHTS_FILE = 'weights.bin';

export function directoryHandler(dir: string): tf.io.IOHandler {
  return {
    async save(artifacts: tf.io.ModelArtifacts): Promise<tf.io.SaveResult> {
      const topology = artifacts.modelTopology;
      if (topology === undefined || topology instanceof ArrayBuffer) {
        throw new Error('only LayersModel JSON topologies can be saved here');
      }
      const weights = tf.io.CompositeArrayBuffer.join(artifacts.weightData);
      const modelJSON: tf.io.ModelJSON = {
        modelTopology: topology,
        weightsManifest: [{ paths: [`./${WEIGHTS_FILE}`], weights: artifacts.weightSpecs ?? [] }],
        format: artifacts.format,
        generatedBy: artifacts.generatedBy,
        convertedBy: artifacts.convertedBy,
        trainingConfig: artifacts.trainingConfig,
        userDefinedMetadata: artifacts.userDefinedMetadata,
      };
      await fs.promises.mkdir(dir, { recursive: true });
      await fs.promises.writeFile(path.join(dir, WEIGHTS_FILE), new Uint8Array(weights));
      await fs.promises.writeFile(path.join(dir, MODEL_FILE), JSON.stringify(modelJSON));
      return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(artifacts) };
    },

    async load(): Promise<tf.io.ModelArtifacts> {
      const modelJSON = JSON.parse(await fs.promises.readFile(path.join(dir, MODEL_FILE), 'utf8')) as tf.io.ModelJSON;
      return tf.io.getModelArtifactsForJSON(modelJSON, async manifest => {
        const specs = manifest.flatMap(group => group.weights);
        const buffers = await Promise.all(manifest.flatMap(group => group.paths).map(async p => {
          const bytes = await fs.promises.readFile(path.join(dir, p));
          return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
        }));
        return [specs, buffers];
      });
    },
  };
}
