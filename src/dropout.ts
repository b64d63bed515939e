// The dropout keep decision, a pure function of (seed, b, h, i, j) so that the backward pass
// regenerates the forward's mask instead of storing it, and every backend draws the same mask.
//
//   x = seed
//   for c in (b, h, i, j):  x = mix32(x ^ c)        (h is the query head, i and j absolute rows)
//   keep  ⇔  (x >>> 8) ≥ round(rate · 2^24)
//
// mix32 is Chris Wellons' "lowbias32" integer hash. Everything is unsigned 32-bit arithmetic with
// wrap-around, which WGSL u32 and GLSL ES 3.00 uint give natively and JS gives with Math.imul and
// `>>> 0`; comparing a 24-bit value keeps the threshold exact in float32 uniforms too.

export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** The integer the 24-bit hash is compared with. */
export function dropoutThreshold(rate: number): number {
  return Math.round(rate * 16777216);
}

export function dropoutHash(seed: number, b: number, h: number, i: number, j: number): number {
  let x = seed >>> 0;
  x = mix32((x ^ b) >>> 0);
  x = mix32((x ^ h) >>> 0);
  x = mix32((x ^ i) >>> 0);
  return mix32((x ^ j) >>> 0);
}

export function dropoutKeep(threshold: number, seed: number, b: number, h: number, i: number, j: number): boolean {
  return dropoutHash(seed, b, h, i, j) >>> 8 >= threshold;
}
