// The Node side of the browser bench: bundles a page entry (default test/browser/harness.ts) with
// esbuild, serves it on 127.0.0.1, and drives headless Debian Chromium through playwright-core.
// WebGL2 runs on ANGLE's SwiftShader and WebGPU on Dawn's SwiftShader there, so it works on a machine
// without a GPU (slowly).
//
//   const page = await openPage();
//   const info = await page.runInPage<BackendInfo>('faSetup', [{ backend: 'webgl', flags: { WEBGL_FORCE_F16_TEXTURES: true } }]);
//   const result = await page.runInPage<EncodedCaseResult>('faRunCase', ['plain']);
//   await page.close();
//
// One browser and one server are shared by the pages of a process; the last `close()` stops both.
import * as fs from 'fs';
import * as http from 'http';
import type { AddressInfo } from 'net';
import * as path from 'path';
import { build } from 'esbuild';
import { chromium } from 'playwright-core';
import type { Browser, BrowserContext, Page } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** SwiftShader for both WebGL (through ANGLE) and WebGPU; no sandbox, as CI runs as root. */
export const CHROMIUM_FLAGS = [
  '--headless=new', '--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
  '--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader', '--enable-features=Vulkan',
  '--disable-background-networking', '--disable-component-update',
];

export const DEFAULT_ENTRY = path.join(__dirname, 'harness.ts');

export interface PageOptions {
  /** The page's script, bundled with esbuild; it exposes window functions (see harness.ts `expose`). */
  entry?: string;
  /** Print the page's console errors and warnings here (default true). */
  forwardConsole?: boolean;
}

export interface BenchPage {
  page: Page;
  /** Calls `window[name](...args)` in the page and returns its (awaited, JSON-like) result. */
  runInPage<T = unknown>(name: string, args?: unknown[]): Promise<T>;
  close(): Promise<void>;
}

interface Shared {
  browser: Browser;
  server: http.Server;
  origin: string;
  /** Bundled entries, served at /entry/<index>.js. */
  entries: string[];
  bundles: Map<string, Promise<string>>;
  open: number;
}

let shared: Promise<Shared> | undefined;

function bundle(entry: string): Promise<string> {
  return build({
    entryPoints: [entry], bundle: true, format: 'iife', platform: 'browser', target: 'es2020',
    write: false, logLevel: 'warning',
  }).then(result => result.outputFiles[0].text);
}

function startServer(state: Omit<Shared, 'server' | 'origin' | 'browser'>): Promise<{ server: http.Server; origin: string }> {
  const server = http.createServer((request, response) => {
    const match = /^\/entry\/(\d+)\.js$/.exec(request.url ?? '');
    const entry = match ? state.entries[Number(match[1])] : undefined;
    if (request.url === '/') {
      response.writeHead(200, { 'content-type': 'text/html' });
      response.end('<!doctype html><meta charset="utf-8"><title>tfjs-flash-attention bench</title>');
    } else if (entry) {
      (state.bundles.get(entry) ?? Promise.reject(new Error(`${entry} not bundled`))).then(code => {
        response.writeHead(200, { 'content-type': 'text/javascript' });
        response.end(code);
      }, (error: Error) => {
        response.writeHead(500, { 'content-type': 'text/plain' });
        response.end(error.message);
      });
    } else if (request.url === '/favicon.ico') {
      response.writeHead(204);
      response.end();
    } else {
      response.writeHead(404);
      response.end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      resolve({ server, origin: `http://127.0.0.1:${port}` });
    });
  });
}

async function start(): Promise<Shared> {
  if (!fs.existsSync(CHROMIUM_PATH)) {
    throw new Error(`Chromium not found at ${CHROMIUM_PATH}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  }
  const state = { entries: [] as string[], bundles: new Map<string, Promise<string>>(), open: 0 };
  const { server, origin } = await startServer(state);
  try {
    const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_FLAGS });
    return { ...state, server, origin, browser };
  } catch (error) {
    server.close();
    throw error;
  }
}

async function stop(state: Shared): Promise<void> {
  shared = undefined;
  await state.browser.close();
  await new Promise(resolve => state.server.close(resolve));
}

/** Opens a fresh page (its own browser context, so tf.env flags never leak between pages). */
export async function openPage(options: PageOptions = {}): Promise<BenchPage> {
  shared ??= start();
  const state = await shared;
  state.open++;
  const entry = path.resolve(options.entry ?? DEFAULT_ENTRY);
  if (!state.bundles.has(entry)) {
    state.entries.push(entry);
    state.bundles.set(entry, bundle(entry));
  }
  let context: BrowserContext | undefined;
  try {
    await state.bundles.get(entry);
    context = await state.browser.newContext();
    const page = await context.newPage();
    if (options.forwardConsole ?? true) {
      page.on('console', message => {
        if (message.type() === 'error' || message.type() === 'warning') console.warn(`[page ${message.type()}] ${message.text()}`);
      });
      page.on('pageerror', error => console.warn(`[page error] ${error.message}`));
    }
    await page.goto(`${state.origin}/`);
    await page.addScriptTag({ url: `/entry/${state.entries.indexOf(entry)}.js` });
    return {
      page,
      runInPage: <T>(name: string, args: unknown[] = []) => page.evaluate(async ({ name, args }) => {
        const fn = (globalThis as Record<string, unknown>)[name];
        if (typeof fn !== 'function') throw new Error(`the page has no function window.${name}`);
        return fn(...args);
      }, { name, args }) as Promise<T>,
      close: async () => {
        await context?.close();
        if (--state.open === 0) await stop(state);
      },
    };
  } catch (error) {
    await context?.close();
    if (--state.open === 0) await stop(state);
    throw error;
  }
}

/** Float32 values from the page's base64 encoding (harness.ts `encodeFloats`). */
export function decodeFloats(base64: string): Float32Array {
  const bytes = Buffer.from(base64, 'base64');
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}
