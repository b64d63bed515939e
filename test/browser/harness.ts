// The page side of the browser bench: bundled by esbuild (test/browser/page.ts) into the page that
// headless Chromium loads. It exposes functions on `window` that the Node side calls through
// `runInPage(name, args)`. Arguments and results are plain JSON; float arrays travel as base64 of
// their float32 bytes, so that NaN and ±Infinity (which JSON turns into null) arrive bit-exact.
//
// Another entry may import this file and add its own window functions (see `expose`).
import * as tf from '@tensorflow/tfjs-core';
// Registers tfjs-core's op gradients: runCase's tf.grads goes through concat and reshape around the op,
// and pages that train layers need them all.
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-webgl';
import { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { FlashAttention, FlashAttentionGrad, registerWebGPUBackend } from '../../src/index';
import type { AttentionCase } from '../cases';
import { CASES, caseData } from '../cases';
import { runCase } from '../setup/run_case';

export type Flags = Record<string, number | boolean | string>;

export interface SetupOptions {
  backend: 'webgl' | 'webgpu' | 'cpu';
  /** tf.env() flags, set before the backend initializes (e.g. WEBGL_MAX_TEXTURE_SIZE). */
  flags?: Flags;
  /** webgpu only: request `subgroups` when the adapter has them (default true). */
  subgroups?: boolean;
}

export interface BackendInfo {
  backend: string;
  /** The GPU as the browser reports it (WebGL renderer or WebGPU adapter). */
  adapter: string;
  features: string[];
  flags: Flags;
}

/** Float32 values as base64 of their bytes. */
export function encodeFloats(values: ArrayLike<number>): string {
  const bytes = new Uint8Array(Float32Array.from(values).buffer);
  let binary = '';
  for (let n = 0; n < bytes.length; n += 0x8000) binary += String.fromCharCode(...bytes.subarray(n, n + 0x8000));
  return btoa(binary);
}

/** Makes `fn` callable from Node as `runInPage(name, args)`. */
export function expose(name: string, fn: (...args: never[]) => unknown): void {
  Object.assign(window, { [name]: fn });
}

function describeBackend(): Pick<BackendInfo, 'adapter' | 'features'> {
  const backend = tf.backend();
  if (backend instanceof WebGPUBackend) {
    const info = backend.device.adapterInfo;
    return {
      adapter: [info.vendor, info.architecture, info.device, info.description].filter(s => s).join(' / '),
      features: [...backend.device.features].map(String).sort(),
    };
  }
  if (tf.getBackend() === 'webgl') {
    const canvas = document.createElement('canvas');
    const gl = canvas.getContext('webgl2');
    if (!gl) return { adapter: 'no webgl2 context', features: [] };
    const debug = gl.getExtension('WEBGL_debug_renderer_info');
    const renderer = debug ? gl.getParameter(debug.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
    return {
      adapter: `${renderer}; MAX_TEXTURE_SIZE ${gl.getParameter(gl.MAX_TEXTURE_SIZE)}`,
      features: (gl.getSupportedExtensions() ?? []).filter(e => /float|half/i.test(e)).sort(),
    };
  }
  return { adapter: 'cpu', features: [] };
}

/** Sets the flags, starts the backend and describes it. Call once per page, before anything else. */
async function setup(options: SetupOptions): Promise<BackendInfo> {
  for (const [name, value] of Object.entries(options.flags ?? {})) tf.env().set(name, value);
  // tfjs' own webgpu factory never requests `subgroups`; the package's does when the adapter has
  // them, so that the kernels' subgroup path runs in the page as it does in Node.
  if (options.backend === 'webgpu') await registerWebGPUBackend({ features: { subgroups: options.subgroups ?? true } });
  if (!(await tf.setBackend(options.backend))) throw new Error(`tfjs could not start the ${options.backend} backend`);
  await tf.ready();
  const flags: Flags = {};
  for (const name of Object.keys(options.flags ?? {})) flags[name] = tf.env().get(name);
  return { backend: tf.getBackend(), ...describeBackend(), flags };
}

export interface EncodedMatMul { values: string; a: string; b: string }

/** tfjs' own matMul of two seeded [m, k] × [k, n] matrices on the current backend. */
async function matMul(m: number, k: number, n: number): Promise<EncodedMatMul> {
  const a = tf.randomUniform([m, k], -1, 1, 'float32', 1);
  const b = tf.randomUniform([k, n], -1, 1, 'float32', 2);
  const c = tf.matMul(a, b);
  const [av, bv, cv] = await Promise.all([a.data(), b.data(), c.data()]);
  tf.dispose([a, b, c]);
  return { values: encodeFloats(cv), a: encodeFloats(av), b: encodeFloats(bv) };
}

export interface EncodedCaseResult {
  backend: string;
  output: string; lse: string;
  dq?: string; dk?: string; dv?: string; dbias?: string;
  tensorsBefore: number; tensorsAfter: number;
}

/**
 * Runs one case of the shared list, by name or as a case object; its data is rebuilt here from the
 * same seed as in Node.
 */
async function runCaseEncoded(which: string | AttentionCase): Promise<EncodedCaseResult> {
  const c = typeof which === 'string' ? CASES.find(x => x.name === which) : which;
  if (!c) throw new Error(`no case named '${which}' in test/cases.ts`);
  const r = await runCase(c, caseData(c));
  const optional = (x?: Float32Array) => (x ? encodeFloats(x) : undefined);
  return {
    backend: r.backend, output: encodeFloats(r.output), lse: encodeFloats(r.lse),
    dq: optional(r.dq), dk: optional(r.dk), dv: optional(r.dv), dbias: optional(r.dbias),
    tensorsBefore: r.tensorsBefore, tensorsAfter: r.tensorsAfter,
  };
}

expose('faSetup', setup);
expose('faMatMul', matMul);
expose('faRunCase', runCaseEncoded);
expose('faMemory', () => tf.memory());
/** Which of the package's kernels are registered for the current backend. */
expose('faKernels', () => ({
  forward: tf.getKernel(FlashAttention, tf.getBackend()) !== undefined,
  grad: tf.getKernel(FlashAttentionGrad, tf.getBackend()) !== undefined,
}));
