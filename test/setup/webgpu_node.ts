// WebGPU in Node through Dawn (the `webgpu` npm package), for tests, benches and the demo.
//
// The package's index.js is ESM-only, so under jest's CommonJS mode we load its native addon
// directly. Dawn finds a real GPU through the system's Vulkan drivers; on a machine without one it
// finds nothing, and we fall back to SwiftShader, the software Vulkan driver that Debian's
// `chromium` package ships, by setting VK_ICD_FILENAMES. The Vulkan loader reads it when Dawn
// creates its instance, so a child process probes for a hardware adapter first
// (`selectVulkanDriver`).
//
// tfjs' own webgpu backend factory never requests the `subgroups` feature, so a kernel would never
// see it. We register a factory that requests it when the adapter has it (unless told not to, to
// test the kernels' path without subgroups) and otherwise builds the backend as tfjs does.
import * as fs from 'fs';
import * as path from 'path';
import { spawnSync } from 'child_process';

export const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

/** Set to 1 to run the webgpu backend on a device without `subgroups` even where the adapter has them. */
export const NO_SUBGROUPS_ENV = 'TFJS_FA_NO_SUBGROUPS';

interface DawnAddon {
  create(flags: string[]): GPU;
  globals: Record<string, unknown>;
}

export interface DawnWebGPU {
  gpu: GPU;
  adapter: GPUAdapter;
  device: GPUDevice;
  /** vendor / architecture / description of the adapter. */
  description: string;
  /** True on SwiftShader (or any CPU adapter). */
  software: boolean;
  /** Whether the adapter offers `subgroups`. */
  adapterHasSubgroups: boolean;
  /** Whether the device the webgpu backend runs on has `subgroups` enabled. */
  subgroups: boolean;
  /** Whether the device has `shader-f16` enabled. */
  shaderF16: boolean;
}

export interface DawnOptions {
  /** Request `subgroups` when the adapter has them (default: yes, unless TFJS_FA_NO_SUBGROUPS=1). */
  subgroups?: boolean;
  /** Dawn instance toggles, e.g. 'enable-dawn-features=allow_unsafe_apis'. */
  dawnFlags?: string[];
}

// dawn.node crashes when the GPU, adapter or device objects are garbage collected while the device
// is in use, so everything created here stays referenced for the life of the process: on the addon's
// exports, which outlive jest's per-file module registries (a test file's own module state does not).
const KEEP_ALIVE = Symbol.for('tfjs-flash-attention.dawnKeepAlive');

function keepAlive(dawn: DawnAddon, object: unknown): void {
  const holder = dawn as DawnAddon & { [KEEP_ALIVE]?: unknown[] };
  (holder[KEEP_ALIVE] ??= []).push(object);
}

let dawnInstance: Promise<{ dawn: DawnAddon; gpu: GPU }> | undefined;

function dawnAddonPath(): string {
  const arch = process.platform === 'darwin' ? 'universal' : process.arch;
  const packageDir = path.dirname(require.resolve('webgpu/package.json'));
  const addonPath = path.join(packageDir, 'dist', `${process.platform}-${arch}`, 'dawn.node');
  if (!fs.existsSync(addonPath)) throw new Error(`Dawn for Node not found at ${addonPath} (npm install webgpu)`);
  return addonPath;
}

function loadDawn(): DawnAddon {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(dawnAddonPath()) as DawnAddon;
}

/**
 * Sets VK_ICD_FILENAMES to SwiftShader when Dawn finds no hardware adapter, deciding in a child
 * process so that this process' Vulkan loader has not started yet. Jest's global setup calls it:
 * a test file's `process.env` is a copy that the native addon never sees.
 */
export function selectVulkanDriver(): void {
  if (process.env.VK_ICD_FILENAMES !== undefined || !fs.existsSync(SWIFTSHADER_ICD)) return;
  const probe = `const { create } = require(${JSON.stringify(dawnAddonPath())});
    create([]).requestAdapter({ powerPreference: 'high-performance' })
      .then(a => { console.log(JSON.stringify(a ? [a.info.vendor, a.info.architecture, a.info.description].join(' ') : '')); process.exit(0); });`;
  const result = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8', timeout: 60000 });
  const lines = (result.stdout ?? '').trim().split('\n');
  const found: unknown = result.status === 0 ? JSON.parse(lines[lines.length - 1] || '""') : '';
  if (typeof found !== 'string' || found === '' || SOFTWARE_ADAPTER.test(found)) {
    process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  }
}

function describeAdapter(info: GPUAdapterInfo): string {
  return [info.vendor, info.architecture, info.device, info.description].filter(s => s).join(' / ');
}

const SOFTWARE_ADAPTER = /swiftshader|llvmpipe|lavapipe/i;

function isSoftware(info: GPUAdapterInfo): boolean {
  return SOFTWARE_ADAPTER.test(`${info.vendor} ${info.architecture} ${info.description}`);
}

async function findAdapter(dawn: DawnAddon, flags: string[]): Promise<{ gpu: GPU; adapter: GPUAdapter }> {
  const gpu = dawn.create(flags);
  keepAlive(dawn, gpu);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (adapter && !(isSoftware(adapter.info) && process.env.VK_ICD_FILENAMES === undefined && fs.existsSync(SWIFTSHADER_ICD))) {
    keepAlive(dawn, adapter);
    return { gpu, adapter };
  }
  if (process.env.VK_ICD_FILENAMES !== undefined) {
    throw new Error(`no WebGPU adapter found with VK_ICD_FILENAMES=${process.env.VK_ICD_FILENAMES} ` +
      '(under jest, the global setup test/setup/global_setup.ts must choose the driver)');
  }
  if (!fs.existsSync(SWIFTSHADER_ICD)) {
    throw new Error(`no GPU adapter and no SwiftShader at ${SWIFTSHADER_ICD}: apt-get install -y chromium libvulkan1`);
  }
  process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  return findAdapter(dawn, flags);
}

function wantSubgroups(options: DawnOptions): boolean {
  return options.subgroups ?? process.env[NO_SUBGROUPS_ENV] !== '1';
}

/** A device on a fresh adapter of `gpu` (an adapter makes one device only). */
async function requestDevice(dawn: DawnAddon, gpu: GPU, subgroups: boolean): Promise<{ adapter: GPUAdapter; device: GPUDevice }> {
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new Error('Dawn found an adapter once and not a second time');
  keepAlive(dawn, adapter);
  // 'subgroups' is missing from TypeScript's GPUFeatureName; the adapter is the judge of names.
  // Subgroup matrices are offered only with dawnFlags ['enable-dawn-features=allow_unsafe_apis'].
  const optional = ['timestamp-query', 'bgra8unorm-storage', 'shader-f16',
    ...(subgroups ? ['subgroups', 'chromium-experimental-subgroup-matrix'] : [])];
  const offered = (name: string): name is GPUFeatureName => adapter.features.has(name);
  const limits = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: optional.filter(offered),
    requiredLimits: {
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxComputeWorkgroupsPerDimension: limits.maxComputeWorkgroupsPerDimension,
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
    },
  });
  keepAlive(dawn, device);
  return { adapter, device };
}

async function start(dawnFlags: string[]): Promise<{ dawn: DawnAddon; gpu: GPU }> {
  selectVulkanDriver();
  const dawn = loadDawn();
  const { gpu } = await findAdapter(dawn, dawnFlags);
  Object.assign(globalThis, dawn.globals);
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav) {
    Object.defineProperty(nav, 'gpu', { value: gpu, configurable: true });
  } else {
    Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  }
  return { dawn, gpu };
}

const devices = new Map<boolean, Promise<{ adapter: GPUAdapter; device: GPUDevice }>>();
let active: boolean | undefined;

/**
 * Starts Dawn (once per process; `dawnFlags` of the first call win) and makes tfjs' webgpu backend,
 * on a device with or without `subgroups`, the current backend. Calling it again with the other
 * `subgroups` choice swaps the backend to a device made with that choice.
 */
export async function initDawnWebGPU(options: DawnOptions = {}): Promise<DawnWebGPU> {
  dawnInstance ??= start(options.dawnFlags ?? []);
  const { dawn, gpu } = await dawnInstance;
  const subgroups = wantSubgroups(options);
  let made = devices.get(subgroups);
  if (!made) {
    made = requestDevice(dawn, gpu, subgroups);
    devices.set(subgroups, made);
  }
  const { adapter, device } = await made;

  // Loaded only now: the backend package checks for navigator.gpu when it is first imported.
  const tf = await import('@tensorflow/tfjs-core');
  const { WebGPUBackend } = await import('@tensorflow/tfjs-backend-webgpu');
  if (active !== subgroups || tf.getBackend() !== 'webgpu') {
    if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
    tf.registerBackend('webgpu', () => new WebGPUBackend(device, adapter.info), 3);
    if (!(await tf.setBackend('webgpu'))) throw new Error('tfjs could not start its webgpu backend on Dawn');
    active = subgroups;
  }
  return {
    gpu, adapter, device,
    description: describeAdapter(adapter.info),
    software: isSoftware(adapter.info),
    adapterHasSubgroups: adapter.features.has('subgroups'),
    subgroups: device.features.has('subgroups'),
    shaderF16: device.features.has('shader-f16'),
  };
}
