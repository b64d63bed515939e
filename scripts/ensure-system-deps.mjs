// `npm test` needs Debian's chromium (headless browser bench, and SwiftShader for WebGPU in Node)
// and the Vulkan loader libvulkan.so.1 (Dawn). Installs them when missing and we are root with apt;
// otherwise prints the one command that does, and the browser/WebGPU tests will fail saying so.
import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';

if (process.platform !== 'linux') process.exit(0);

const COMMAND = 'apt-get update && apt-get install -y chromium libvulkan1';
const chromium = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

function hasVulkanLoader() {
  try {
    return execSync('ldconfig -p', { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).includes('libvulkan.so.1');
  } catch {
    return ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib']
      .some(dir => existsSync(`${dir}/libvulkan.so.1`));
  }
}

const missing = [];
if (!existsSync(chromium)) missing.push(`chromium (${chromium})`);
if (!hasVulkanLoader()) missing.push('libvulkan.so.1');
if (missing.length === 0) process.exit(0);

console.log(`missing: ${missing.join(', ')}`);
const root = typeof process.getuid === 'function' && process.getuid() === 0;
if (root && existsSync('/usr/bin/apt-get')) {
  console.log(`installing: ${COMMAND}`);
  try {
    execSync(COMMAND, { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  } catch {
    console.log('the install failed: the browser and WebGPU tests will fail');
  }
} else {
  console.log(`install them with: sudo sh -c '${COMMAND}'`);
}
