// Initializers, regularizers and constraints given to the layers as Keras identifiers: an object,
// a tfjs/Keras name ('glorotUniform', 'glorot_uniform', 'zeros') or a serialized {className, config}.
// tfjs-layers resolves these with functions it does not export, so they are resolved here through
// the same public serialization registry tfjs' own classes are registered in.
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type { Constraint } from '@tensorflow/tfjs-layers/dist/constraints';
import type { Initializer } from '@tensorflow/tfjs-layers/dist/initializers';
import type { Regularizer } from '@tensorflow/tfjs-layers/dist/regularizers';

export type { Constraint, Initializer, Regularizer };
export type KerasIdentifier<T> = T | string | tf.serialization.ConfigDict;

/** snake_case → camelCase, exactly as tfjs-layers converts Keras JSON on load. */
export function toCamelCase(identifier: string): string {
  if (identifier.length <= 1 || !identifier.includes('_')) return identifier;
  return identifier.replace(/[_]+(\w|$)/g, (_m, p1: string) => p1.toUpperCase());
}

// tfjs registers a few classes under names that are not the capitalized identifier.
const CLASS_ALIASES: Record<string, string> = { L1l2: 'L1L2', LecunNormal: 'LeCunNormal', LecunUniform: 'LeCunUniform' };

function classNameOf(name: string): string {
  const camel = toCamelCase(name);
  const capitalized = camel.charAt(0).toUpperCase() + camel.slice(1);
  return CLASS_ALIASES[capitalized] ?? capitalized;
}

function isConfigDict(x: unknown): x is tf.serialization.ConfigDict {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function deserialize<T extends tf.serialization.Serializable>(
  kind: string, identifier: KerasIdentifier<T> | null | undefined, isInstance: (x: unknown) => x is T): T | null {
  if (identifier === null || identifier === undefined) return null;
  if (isInstance(identifier)) return identifier;
  let className: string, config: tf.serialization.ConfigDict;
  if (typeof identifier === 'string') {
    [className, config] = [classNameOf(identifier), {}];
  } else if (isConfigDict(identifier) && typeof identifier.className === 'string') {
    className = classNameOf(identifier.className);
    config = isConfigDict(identifier.config) ? identifier.config : {};
  } else {
    throw new Error(`unknown ${kind} ${JSON.stringify(identifier)}`);
  }
  // Keras has separate L1 and L2 regularizer classes; tfjs has only L1L2.
  if (kind === 'regularizer' && (className === 'L1' || className === 'L2')) {
    config = { l1: 0, l2: 0, [className.toLowerCase()]: config[className.toLowerCase()] ?? 0.01 };
    className = 'L1L2';
  }
  const entry = tf.serialization.SerializationMap.getMap().classNameMap[className];
  if (!entry) throw new Error(`unknown ${kind} '${className}' (not registered with tf.serialization)`);
  const [cls, fromConfig] = entry;
  const object: unknown = fromConfig(cls, config);
  if (!isInstance(object)) throw new Error(`'${className}' is not a ${kind}`);
  return object;
}

// The abstract base classes are not exported at runtime; each is the parent of a public class.
type AbstractClass<T> = abstract new (...args: never[]) => T;
const InitializerClass = Object.getPrototypeOf(tfl.initializers.zeros().constructor) as AbstractClass<Initializer>;
const RegularizerClass = Object.getPrototypeOf(tfl.regularizers.l1l2().constructor) as AbstractClass<Regularizer>;
const ConstraintClass = Object.getPrototypeOf(tfl.constraints.nonNeg().constructor) as AbstractClass<Constraint>;
const isInitializer = (x: unknown): x is Initializer => x instanceof InitializerClass;
const isRegularizer = (x: unknown): x is Regularizer => x instanceof RegularizerClass;
const isConstraint = (x: unknown): x is Constraint => x instanceof ConstraintClass;

export function getInitializer(identifier: KerasIdentifier<Initializer> | null | undefined,
  fallback: KerasIdentifier<Initializer>): Initializer {
  const initializer = deserialize('initializer', identifier ?? fallback, isInitializer);
  if (initializer === null) throw new Error('missing initializer');
  return initializer;
}

export function getRegularizer(identifier: KerasIdentifier<Regularizer> | null | undefined): Regularizer | null {
  return deserialize('regularizer', identifier, isRegularizer);
}

export function getConstraint(identifier: KerasIdentifier<Constraint> | null | undefined): Constraint | null {
  return deserialize('constraint', identifier, isConstraint);
}

/** The {className, config} form tfjs-layers writes into a layer's config. */
export function serializeObject(object: tf.serialization.Serializable | null): tf.serialization.ConfigDict | null {
  return object === null ? null : { className: object.getClassName(), config: object.getConfig() };
}
