// Seeds of the fused attention dropout. The op's dropout mask is a pure function of its seed, so
// each training call needs a fresh one; a layer given a seed draws a reproducible sequence.

// The golden-ratio increment spreads consecutive seeds over the 32-bit range.
const SEED_STEP = 0x9e3779b9;

export function checkSeed(owner: string, seed: number | null | undefined): number | null {
  if (seed === null || seed === undefined) return null;
  if (!(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32)) {
    throw new Error(`${owner}: seed must be an integer in [0, 2^32), got ${seed}`);
  }
  return seed;
}

export class DropoutSeeds {
  private calls = 0;

  /** `seed` null: random seeds. Otherwise call n uses (seed + n · 0x9e3779b9) mod 2^32, so the first is `seed`. */
  constructor(private readonly seed: number | null) {}

  next(): number {
    const n = this.calls++;
    if (this.seed === null) return Math.floor(Math.random() * 2 ** 32);
    return (this.seed + Math.imul(n, SEED_STEP)) >>> 0;
  }
}
