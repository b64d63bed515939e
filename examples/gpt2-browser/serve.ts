// Builds the browser example with esbuild and serves it (`npm run example:browser` runs
// serve_cli.ts). The test (test/gpt2_browser.test.ts) starts the same server on a free port.
import * as fs from 'fs';
import * as path from 'path';
import * as esbuild from 'esbuild';

/** This folder, found from wherever this file runs (its source, or a bundle of it elsewhere). */
function pageDir(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'examples', 'gpt2-browser');
    if (fs.existsSync(path.join(candidate, 'index.html'))) return candidate;
    if (path.dirname(dir) === dir) throw new Error(`examples/gpt2-browser not found above ${__dirname}`);
  }
}

const PAGE_DIR = pageDir();

export const buildOptions: esbuild.BuildOptions = {
  entryPoints: [path.join(PAGE_DIR, 'app.ts')],
  bundle: true,
  format: 'esm',
  target: 'es2020',
  outdir: path.join(PAGE_DIR, 'build'),
  sourcemap: true,
  // The corpus travels inside the bundle: no download at run time.
  loader: { '.txt': 'text' },
  // tfjs backend packages register their kernels by side effect but list only some files in
  // "sideEffects"; esbuild would otherwise drop those imports.
  ignoreAnnotations: true,
  logLevel: 'warning',
};

export interface ExampleServer {
  url: string;
  stop(): Promise<void>;
}

/** Serves the page at http://127.0.0.1:port/ (port 0: any free port), rebuilding on each reload. */
export async function serveExample(port: number): Promise<ExampleServer> {
  const context = await esbuild.context(buildOptions);
  const { port: actual } = await context.serve({ servedir: PAGE_DIR, host: '127.0.0.1', port });
  return { url: `http://127.0.0.1:${actual}/`, stop: () => context.dispose() };
}
