// Jest global setup: runs once in jest's own process, whose environment the test workers inherit.
//
// Dawn finds a real GPU through the system's Vulkan drivers; on a machine without one we run on
// SwiftShader by setting VK_ICD_FILENAMES. `initDawn({ swiftShaderFallback })` does that inside a
// plain Node process, but not inside a test file, whose `process.env` is a copy the native addon
// never sees; so the driver is chosen here, in a child process (no Vulkan loader starts in jest's
// own process). Nothing here may load tfjs: with one worker jest runs the tests in this process,
// and tfjs-core keeps its engine on `process`, which the tests' realm would then share.
import * as fs from 'fs';
import { spawnSync } from 'child_process';
import { dawnAddonPath, SWIFTSHADER_ICD } from '../../src/dawn';

const SOFTWARE_ADAPTER = /swiftshader|llvmpipe|lavapipe/i;

/** Sets VK_ICD_FILENAMES to SwiftShader when Dawn finds no hardware adapter (none, or a CPU one). */
function selectVulkanDriver(): void {
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

export default function globalSetup(): void {
  selectVulkanDriver();
}
