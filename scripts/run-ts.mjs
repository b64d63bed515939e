// Runs a TypeScript entry point in Node without ts-node: esbuild bundles it (npm packages stay
// external, so they load from node_modules as usual) into node_modules/.cache, then it is imported.
//   node scripts/run-ts.mjs examples/demo.ts [args...]
import { mkdirSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { build } from 'esbuild';

const entry = process.argv[2];
if (!entry) {
  console.error('usage: node scripts/run-ts.mjs <entry.ts> [args...]');
  process.exit(2);
}
const outDir = resolve('node_modules/.cache/tfjs-flash-attention');
mkdirSync(outDir, { recursive: true });
const outfile = join(outDir, `${basename(entry, extname(entry))}.cjs`);
await build({
  entryPoints: [entry], bundle: true, platform: 'node', format: 'cjs', target: 'node20', packages: 'external',
  outfile, sourcemap: 'inline', logLevel: 'warning',
});
process.argv.splice(1, 2, outfile);
await import(pathToFileURL(outfile).href);
