// The cpu FlashAttention kernel against naive tfjs-cpu attention (matMul → softmax → matMul),
// forward only, B=1, H=4, D=64, N = 256, 1024, 4096.
//
//   npx esbuild bench/cpu.ts --bundle --platform=node --outfile=/tmp/cpu_bench.js && node /tmp/cpu_bench.js
//
// Each (implementation, N) runs in its own child process so that its peak resident memory
// (process.resourceUsage().maxRSS) is its own. Tensor memory is tfjs' own count: tf.profile's
// peakBytes, which includes q, k, v and every live intermediate tensor. The cpu kernel's scratch
// (one tile of scores and accumulators) lives outside tfjs and shows only in the RSS.
import { execFileSync } from 'child_process';
// A bound import, not a bare one: esbuild drops bare imports of tfjs-backend-cpu's node build
// (its package.json lists only the ESM files as side effects), and the cpu backend with them.
import { version_cpu } from '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
import { flashAttention } from '../src/index';

const B = 1, H = 4, D = 64;
const SIZES = [256, 1024, 4096];
const IMPLEMENTATIONS = ['flash', 'naive'] as const;
type Implementation = typeof IMPLEMENTATIONS[number];

interface Measurement {
  impl: Implementation;
  n: number;
  iterations: number;
  ms: number;
  /** CPU time of this process per iteration: the machine is shared, so wall time alone overstates. */
  cpuMs: number;
  gflops: number;
  tensorPeakMiB: number;
  rssPeakMiB: number;
  rssBeforeMiB: number;
}

function attention(impl: Implementation, q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D): tf.Tensor {
  if (impl === 'flash') return flashAttention(q, k, v);
  return tf.tidy(() => tf.matMul(tf.softmax(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(D))), v));
}

async function measure(impl: Implementation, n: number): Promise<Measurement> {
  await tf.setBackend('cpu');
  const [q, k, v] = [1, 2, 3].map(seed => tf.randomNormal([B, H, n, D], 0, 1, 'float32', seed) as tf.Tensor4D);
  const rssBefore = process.memoryUsage().rss;
  // The profiled run is also the warm-up.
  const profile = await tf.profile(() => { attention(impl, q, k, v).dispose(); });
  const iterations = n >= 4096 ? 1 : n >= 1024 ? 3 : 10;
  const start = performance.now();
  const cpuStart = process.cpuUsage();
  for (let it = 0; it < iterations; it++) {
    const out = attention(impl, q, k, v);
    await out.data();
    out.dispose();
  }
  const ms = (performance.now() - start) / iterations;
  const cpu = process.cpuUsage(cpuStart);
  const cpuMs = (cpu.user + cpu.system) / 1000 / iterations;
  tf.dispose([q, k, v]);
  const mib = (bytes: number) => bytes / 2 ** 20;
  return {
    impl, n, iterations, ms, cpuMs,
    gflops: (4 * B * H * n * n * D) / (ms * 1e6),
    tensorPeakMiB: mib(profile.peakBytes),
    rssPeakMiB: process.resourceUsage().maxRSS / 1024,
    rssBeforeMiB: mib(rssBefore),
  };
}

function runChild(impl: Implementation, n: number): Measurement {
  const out = execFileSync(process.execPath, [process.argv[1], '--child', impl, String(n)], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20,
  });
  const line = out.trim().split('\n').pop() ?? '';
  return JSON.parse(line) as Measurement;
}

async function main(): Promise<void> {
  const [flag, impl, n] = process.argv.slice(2);
  if (flag === '--child') {
    if (impl !== 'flash' && impl !== 'naive') throw new Error(`unknown implementation ${impl}`);
    console.log(JSON.stringify(await measure(impl, Number(n))));
    return;
  }
  console.log(`cpu kernel vs naive tfjs-cpu attention, forward, B=${B} H=${H} D=${D}, float32, ` +
    `tfjs-backend-cpu ${version_cpu}, node ${process.version}`);
  console.log('| N | impl | iters | wall ms/iter | cpu ms/iter | GFLOP/s (wall) | tfjs tensor peak MiB | process peak RSS MiB (RSS before) |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const size of SIZES) {
    for (const which of IMPLEMENTATIONS) {
      const m = runChild(which, size);
      console.log(`| ${m.n} | ${m.impl} | ${m.iterations} | ${m.ms.toFixed(1)} | ${m.cpuMs.toFixed(1)} | ${m.gflops.toFixed(2)} | ` +
        `${m.tensorPeakMiB.toFixed(1)} | ${m.rssPeakMiB.toFixed(0)} (${m.rssBeforeMiB.toFixed(0)}) |`);
    }
  }
}

main().catch(err => {
  console.error(err);
  process.exit(1);
});
