/// <reference types="node" />
// Loading Dawn, WebGPU for Node (the `webgpu` npm package, an optional peer dependency), and the
// flags its instance is created with. The package's index.js is ESM-only, which a CommonJS caller
// (jest, or this package's build) cannot require, so its native addon is loaded by path. Nothing
// here loads tfjs: jest's global setup uses it in jest's own process (see test/setup/global_setup.ts).
import * as fs from 'fs';
import * as path from 'path';

/** SwiftShader's Vulkan driver as Debian's and Ubuntu's `chromium` packages install it. */
export const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

export interface DawnToggleOptions {
  /**
   * Dawn toggles `allow_unsafe_apis` and `vulkan_enable_f16_on_nvidia`: Dawn then offers
   * `chromium-experimental-subgroup-matrix` (matrix units) and, on NVIDIA through Vulkan,
   * `shader-f16`, as Chrome does behind its WebGPU developer flags. Off by default.
   */
  unsafeFeatures?: boolean;
  /**
   * Dawn toggle `disable_robustness`: no bounds checks on buffer accesses (measured ~30 % faster for
   * matrix-unit attention on an H100), and an out-of-range access is undefined behaviour instead of
   * a clamped one. Only for code you trust, never with untrusted shaders. Off by default.
   */
  disableRobustness?: boolean;
  /** More Dawn instance flags (`name=value`); their `enable-dawn-features` toggles are merged with the above. */
  dawnFlags?: string[];
}

export interface DawnAddon {
  create(flags: string[]): GPU;
  globals: Record<string, unknown>;
}

const ENABLE_TOGGLES = 'enable-dawn-features=';

/** The flags Dawn's instance is created with: the options' toggles merged into one `enable-dawn-features`. */
export function dawnInstanceFlags(options: DawnToggleOptions): string[] {
  const toggles: string[] = [];
  if (options.unsafeFeatures) toggles.push('allow_unsafe_apis', 'vulkan_enable_f16_on_nvidia');
  if (options.disableRobustness) toggles.push('disable_robustness');
  const others: string[] = [];
  for (const flag of options.dawnFlags ?? []) {
    if (flag.startsWith(ENABLE_TOGGLES)) toggles.push(...flag.slice(ENABLE_TOGGLES.length).split(',').filter(t => t));
    else others.push(flag);
  }
  const unique = [...new Set(toggles)];
  return unique.length > 0 ? [...others, ENABLE_TOGGLES + unique.join(',')] : others;
}

/** Dawn's native addon for this platform, inside the installed `webgpu` package. */
export function dawnAddonPath(): string {
  const platform = process.platform === 'darwin' ? 'darwin-universal' : `${process.platform}-${process.arch}`;
  let packageDir: string;
  try {
    packageDir = path.dirname(require.resolve('webgpu/package.json'));
  } catch {
    throw new Error('tfjs-flash-attention/node needs the `webgpu` package (Dawn for Node): npm install webgpu');
  }
  const addon = path.join(packageDir, 'dist', platform, 'dawn.node');
  if (!fs.existsSync(addon)) throw new Error(`the webgpu package has no Dawn build for ${platform} (looked for ${addon})`);
  return addon;
}

export function loadDawn(): DawnAddon {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(dawnAddonPath()) as DawnAddon;
}
