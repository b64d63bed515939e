// KV-cache generation on the webgl backend in headless Chromium (SwiftShader): KVCacheUpdate draws
// the new rows into the cache tensor's texture in place (kernels/webgl/kv_cache_update.ts), also
// when tfjs squarified that texture (rows of the cache then straddle texel rows); cached logits
// equal recomputing the prefix (with and without the split path); greedy generation equals a
// cacheless greedy loop; no leaked tensors or textures.
import * as path from 'path';
import type { BackendInfo } from './browser/harness';
import { BenchPage, openPage } from './browser/page';
import type { WriteProbe } from './generate_webgl_page';

const ENTRY = path.join(__dirname, 'generate_webgl_page.ts');

async function withPage(flags: Record<string, number>, body: (page: BenchPage) => Promise<void>): Promise<void> {
  const page = await openPage({ entry: ENTRY });
  try {
    const info = await page.runInPage<BackendInfo>('faSetup', [{ backend: 'webgl', flags }]);
    expect(info.backend).toBe('webgl');
    await body(page);
  } finally {
    await page.close();
  }
}

/** The cache [B, L, H, D] after writing rows (values 1, 2, … or their negatives) at `positions`. */
function expected(B: number, L: number, H: number, D: number, T: number, positions: number[], sign: number, base: number[]): number[] {
  const out = [...base];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let e = 0; e < H * D; e++) out[((b * L + positions[b] + t) * H * D) + e] = sign * (((b * T + t) * H * D) + e + 1);
    }
  }
  return out;
}

async function checkWrites(page: BenchPage, B: number, L: number, H: number, D: number, T: number, first: number[],
  second: number[]): Promise<WriteProbe> {
  const r = await page.runInPage<WriteProbe>('faCacheWriteProbe', [B, L, H, D, T, first, second]);
  expect(r.kernel).toBe(true);
  expect(r.sameTensor).toBe(true);
  expect(r.packed).toBe(true);
  const afterFirst = expected(B, L, H, D, T, first, 1, new Array<number>(B * L * H * D).fill(0));
  expect(r.first).toEqual(afterFirst);
  expect(r.second).toEqual(expected(B, L, H, D, T, second, -1, afterFirst));
  expect(r.tensorsAfter).toBe(r.tensorsBefore);
  return r;
}

describe('webgl KV cache', () => {
  test('KVCacheUpdate writes rows into the cache texture in place (even and odd H, D)', async () => {
    await withPage({}, async page => {
      expect((await checkWrites(page, 2, 6, 2, 3, 2, [1, 4], [0, 3])).texelWidth).toBe(2);
      await checkWrites(page, 3, 9, 3, 5, 1, [0, 8, 4], [2, 2, 7]);
      await checkWrites(page, 1, 40, 4, 8, 3, [17], [37]);
    });
  });

  test('KVCacheUpdate from a fused q|k|v tensor: key and value heads at offsets H and 2H (odd H: mid-texel)', async () => {
    await withPage({}, async page => {
      for (const [B, L, H, D, T, positions] of [[2, 5, 3, 2, 2, [3, 0]], [1, 4, 2, 3, 1, [2]]] as const) {
        const r = await page.runInPage<{ keys: number[]; values: number[]; tensorsBefore: number; tensorsAfter: number }>(
          'faFusedWriteProbe', [B, L, H, D, T, positions]);
        const want = (first: number) => Array.from({ length: B * L * H * D }, (_, i) => {
          const [b, p, h, d] = [Math.floor(i / (L * H * D)), Math.floor(i / (H * D)) % L, Math.floor(i / D) % H, i % D];
          const t = p - positions[b];
          return t >= 0 && t < T ? ((b * T + t) * 3 * H + first + h) * D + d + 1 : 0;
        });
        expect(r.keys).toEqual(want(H));
        expect(r.values).toEqual(want(2 * H));
        expect(r.tensorsAfter).toBe(r.tensorsBefore);
      }
    });
  });

  test('KVCacheUpdate into a squarified cache texture (WEBGL_MAX_TEXTURE_SIZE = 32)', async () => {
    await withPage({ WEBGL_MAX_TEXTURE_SIZE: 32 }, async page => {
      // [2·30, 3, 5] packed is 60·2 texel rows of 3 texels: more than 32, so tfjs squarifies it.
      const r = await checkWrites(page, 2, 30, 3, 5, 2, [3, 27], [11, 0]);
      expect(r.texelWidth).not.toBe(3);
    });
  });

  test('cached logits equal recomputing the prefix; greedy generate() equals greedy recompute; no leaks', async () => {
    await withPage({}, async page => {
      for (const force of [null, 3]) {
        const r = await page.runInPage<{ steps: Array<{ diff: number; scale: number }>; lengths: number[] }>('faCachedLogits', [force]);
        expect(r.lengths).toEqual([10, 7]);
        for (const s of r.steps) {
          expect(s.scale).toBeGreaterThan(0);
          // SPEC §3's webgl float32 tolerance, relative to the logits' scale.
          expect(s.diff).toBeLessThanOrEqual(1e-3 * Math.max(1, s.scale));
        }
      }
      const g = await page.runInPage<{ cached: number[][]; recomputed: number[][]; tensorsBefore: number; tensorsAfter: number;
        textureBytesLeaked: number }>('faGreedy');
      expect(g.cached).toEqual(g.recomputed);
      expect(g.tensorsAfter).toBe(g.tensorsBefore);
      expect(g.textureBytesLeaked).toBe(0);
    });
  }, 300000);
});
