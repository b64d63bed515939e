// Splitting one attention problem over several dispatches when a tensor is larger than the device's
// `maxStorageBufferBindingSize`: each dispatch binds only the ranges of the tensors that its
// (batch, head) slice reads or writes. A "unit" is the smallest slice whose rows are contiguous in
// every tensor: (batch, KV head) with its query heads in BHSD, one batch in BSHD (heads interleave
// there). The shaders index tensors with absolute (b, h, i, d) and subtract the bound range's
// element offset, which travels as a uniform.
import type { AttentionConfig } from '../../src/config';
import type { BoundRange, Dispatch } from './runtime';
import { dbiasExpandedShape } from './attention_wgsl';

/** How one tensor's elements map onto units. */
export type Coverage =
  /** [units × perUnit] elements, unit u at [u·perUnit, (u+1)·perUnit). */
  | { kind: 'perUnit'; elements: number }
  /** A [B', H', X] tensor (B' ∈ {1, B}, H' ∈ {1, Hq}) read by query head (b, h) at its [b', h'] block. */
  | { kind: 'perQueryHead'; batch: number; heads: number; block: number };

export interface UnitGeometry {
  units: number;
  /** Query heads (flat b·Hq + h) per unit, and KV heads per unit. */
  queryHeadsPerUnit: number;
  kvHeadsPerUnit: number;
}

export function unitGeometry(c: AttentionConfig): UnitGeometry {
  return c.layout === 'BHSD'
    ? { units: c.batch * c.headsKV, queryHeadsPerUnit: c.headsQ / c.headsKV, kvHeadsPerUnit: 1 }
    : { units: c.batch, queryHeadsPerUnit: c.headsQ, kvHeadsPerUnit: c.headsKV };
}

/** Element range [start, end) of a tensor that units [u0, u1) touch. */
export function coveredRange(c: AttentionConfig, g: UnitGeometry, cov: Coverage, u0: number, u1: number):
    [number, number] {
  switch (cov.kind) {
    case 'perUnit': {
      const per = cov.elements / g.units;
      return [u0 * per, u1 * per];
    }
    case 'perQueryHead': {
      let lo = Infinity, hi = -Infinity;
      for (let qh = u0 * g.queryHeadsPerUnit; qh < u1 * g.queryHeadsPerUnit; qh++) {
        const b = Math.floor(qh / c.headsQ), h = qh % c.headsQ;
        const base = ((cov.batch > 1 ? b : 0) * cov.heads + (cov.heads > 1 ? h : 0)) * cov.block;
        lo = Math.min(lo, base);
        hi = Math.max(hi, base + cov.block);
      }
      return [lo, hi];
    }
  }
}

const ALIGN = 256;

/** The bound range (byte offset aligned down to 256) holding elements [start, end), and its element offset. */
export function boundRange(buffer: GPUBuffer, start: number, end: number, elementBytes = 4):
    { range: BoundRange; elementOffset: number } {
  const offset = Math.floor((start * elementBytes) / ALIGN) * ALIGN;
  const size = Math.max(16, Math.ceil((end * elementBytes - offset) / 16) * 16);
  return { range: { buffer, offset, size: Math.min(size, buffer.size - offset) }, elementOffset: offset / elementBytes };
}

/**
 * Splits [0, units) into the fewest equal chunks whose ranges of every tensor fit `maxBytes` and
 * whose workgroup count along y stays under `maxY`.
 */
export function planChunks(c: AttentionConfig, g: UnitGeometry, coverages: Coverage[], maxBytes: number,
  yPerUnit: number, maxY: number): Array<[number, number]> {
  const fits = (u0: number, u1: number) => (u1 - u0) * yPerUnit <= maxY && coverages.every(cov => {
    const [s, e] = coveredRange(c, g, cov, u0, u1);
    return (e - s) * 4 + ALIGN <= maxBytes;
  });
  for (let count = 1; count <= g.units; count++) {
    const size = Math.ceil(g.units / count);
    const chunks: Array<[number, number]> = [];
    for (let u = 0; u < g.units; u += size) chunks.push([u, Math.min(g.units, u + size)]);
    if (chunks.every(([u0, u1]) => fits(u0, u1))) return chunks;
  }
  throw new Error(`flashAttention (webgpu): one ${c.layout === 'BHSD' ? '(batch, head)' : 'batch'} slice of the ` +
    `inputs exceeds the device's maxStorageBufferBindingSize (${maxBytes} bytes)`);
}

/**
 * One dispatch per chunk, binding each named tensor's covered range (uniform `off_<name>` = the
 * range's first element). Names in `buffers` without a coverage are bound whole.
 */
export function chunkDispatches(c: AttentionConfig, g: UnitGeometry, chunks: Array<[number, number]>,
  coverage: Record<string, Coverage>, buffers: Record<string, GPUBuffer>,
  workgroups: (units: number) => [number, number, number], uniforms: Record<string, number>): Dispatch[] {
  return chunks.map(([u0, u1]) => {
    const d: Dispatch = {
      workgroups: workgroups(u1 - u0), buffers: {},
      uniforms: { ...uniforms, unit_start: u0, heads_in_chunk: (u1 - u0) * g.queryHeadsPerUnit },
    };
    for (const [name, buffer] of Object.entries(buffers)) {
      const cov = coverage[name];
      if (!cov) {
        d.buffers[name] = { buffer, offset: 0, size: buffer.size };
        d.uniforms[`off_${name}`] = 0;
        continue;
      }
      const [s, e] = coveredRange(c, g, cov, u0, u1);
      const { range, elementOffset } = boundRange(buffer, s, e);
      d.buffers[name] = range;
      d.uniforms[`off_${name}`] = elementOffset;
    }
    return d;
  });
}

/** How each tensor a pass binds maps onto units (names as the programs' bindings). */
export function attentionCoverage(c: AttentionConfig): Record<string, Coverage> {
  const q = c.batch * c.headsQ * c.seqQ, kv = c.batch * c.headsKV * c.seqK;
  const cov: Record<string, Coverage> = {
    q: { kind: 'perUnit', elements: q * c.headDim },
    dq: { kind: 'perUnit', elements: q * c.headDim },
    out: { kind: 'perUnit', elements: q * c.headDimV },
    dout: { kind: 'perUnit', elements: q * c.headDimV },
    lse: { kind: 'perUnit', elements: q },
    dlse: { kind: 'perUnit', elements: q },
    k: { kind: 'perUnit', elements: kv * c.headDim },
    dk: { kind: 'perUnit', elements: kv * c.headDim },
    v: { kind: 'perUnit', elements: kv * c.headDimV },
    dv: { kind: 'perUnit', elements: kv * c.headDimV },
  };
  if (c.biasShape.length) {
    const [bb, bh, bi, bj] = c.biasShape;
    cov.bias = { kind: 'perQueryHead', batch: bb, heads: bh, block: bi * bj };
    cov.dbias = { kind: 'perUnit', elements: dbiasExpandedShape(c).reduce((a, b) => a * b, 1) };
  }
  return cov;
}
