// npm run build: CommonJS and ES module builds with .d.ts from tsc, and the browser bundle.
//   dist/cjs/   tsc, module commonjs, with .d.ts (Node's `require` and `import` both load this)
//   dist/esm/   tsc, module es2020 (bundlers)
//   dist/tfjs-flash-attention.min.js   esbuild IIFE for a <script> tag after tfjs' own: tfjs packages
//               are read from the global `tf`, and the package adds `tf.flashAttention` to it.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { build } from 'esbuild';

const require = createRequire(import.meta.url);
const tsc = require.resolve('typescript/bin/tsc');

rmSync('dist', { recursive: true, force: true });
for (const project of ['tsconfig.build.json', 'tsconfig.build.esm.json']) {
  execFileSync(process.execPath, [tsc, '-p', project], { stdio: 'inherit' });
}
mkdirSync('dist/esm', { recursive: true });
writeFileSync('dist/esm/package.json', JSON.stringify({ type: 'module' }) + '\n');

// Every tfjs package resolves to the page's global `tf` (tfjs' union bundle carries core and backends).
const TFJS_PACKAGES = /^@tensorflow\/tfjs(-core|-backend-cpu|-backend-webgl|-backend-webgpu|-layers)?$/;
const globalTf = {
  name: 'global-tf',
  setup(b) {
    b.onResolve({ filter: TFJS_PACKAGES }, args => ({ path: args.path, namespace: 'global-tf' }));
    b.onLoad({ filter: /.*/, namespace: 'global-tf' }, () => ({
      contents: 'if (typeof tf === "undefined") throw new Error("tfjs-flash-attention: load tfjs before this script"); module.exports = tf;',
      loader: 'js',
    }));
  },
};
await build({
  entryPoints: ['src/index.ts'], bundle: true, minify: true, format: 'iife', globalName: 'tfjsFlashAttention',
  platform: 'browser', target: 'es2020', outfile: 'dist/tfjs-flash-attention.min.js', plugins: [globalTf],
  logLevel: 'warning',
});
console.log('built dist/cjs, dist/esm and dist/tfjs-flash-attention.min.js');
