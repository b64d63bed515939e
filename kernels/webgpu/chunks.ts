// Splitting one attention problem over several dispatches when a tensor is larger than the device's
// `maxStorageBufferBindingSize`: each dispatch binds only the ranges of the tensors that its part
// of the problem (a `Box`) reads or writes. The shaders index tensors with absolute (b, h, i, d)
// and subtract the bound range's element offset, which travels as a uniform (`off_<name>`).
//
// A "unit" is the smallest slice whose rows are contiguous in every tensor: (batch, KV head) with
// its query heads in BHSD, one batch in BSHD (heads interleave there). Units are grouped first.
// When one unit is still too large, it is split along the query heads of its GQA group (BHSD), query
// rows and keys (runtime.ts' Chunking): query heads and blocks are independent in the forward and
// dQ passes and key blocks in the dK/dV pass; the
// other side's ranges are summed over by sequential dispatches that read what the previous one
// wrote (the forward merges its key ranges' outputs with the log-sum-exp rule, the backward adds
// gradients), so no float atomics and no partial buffers (which would be as large as what does
// not fit) are needed.
import type { AttentionConfig } from '../../src/config';
import { layoutStrides } from '../../src/config';
import type { BoundRange, Chunking, Dispatch } from './runtime';
import { dbiasExpandedShape } from './attention_wgsl';

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

/**
 * Where a tensor's elements lie: element (b, h, i, j, x) at b·sb + h·sh + i·si + j·sj + x, x < row,
 * with h a query or KV head, i a query row and j a key (strides 0 where the tensor has no such
 * dimension or broadcasts over it).
 */
export interface TensorLayout {
  heads: 'query' | 'kv';
  sb: number;
  sh: number;
  si: number;
  sj: number;
  row: number;
}

/**
 * The part of the problem one dispatch covers: units [u0, u1), query heads [g0, g1) of each unit's
 * GQA group (BHSD; all of them in BSHD, where heads interleave within a row), query rows [r0, r1),
 * keys [k0, k1).
 */
export interface Box {
  u0: number;
  u1: number;
  g0: number;
  g1: number;
  r0: number;
  r1: number;
  k0: number;
  k1: number;
}

/** A rank-4 broadcast shape [B', H', N', M'] as a layout over (b, query head, i, j). */
function broadcastLayout(shape: number[]): TensorLayout {
  const [b, h, n, m] = shape;
  return { heads: 'query', sb: b > 1 ? h * n * m : 0, sh: h > 1 ? n * m : 0, si: n > 1 ? m : 0, sj: m > 1 ? 1 : 0, row: 1 };
}

/** Layouts of the tensors the passes bind, by binding name. */
export function attentionLayouts(c: AttentionConfig): Record<string, TensorLayout> {
  const rows = (dim: number): TensorLayout => {
    const s = layoutStrides(c, c.headsQ, c.seqQ, dim);
    return { heads: 'query', sb: s.batch, sh: s.head, si: s.seq, sj: 0, row: dim };
  };
  const keys = (dim: number): TensorLayout => {
    const s = layoutStrides(c, c.headsKV, c.seqK, dim);
    return { heads: 'kv', sb: s.batch, sh: s.head, si: 0, sj: s.seq, row: dim };
  };
  const stats: TensorLayout = { heads: 'query', sb: c.headsQ * c.seqQ, sh: c.seqQ, si: 1, sj: 0, row: 1 };
  const layouts: Record<string, TensorLayout> = {
    q: rows(c.headDim), dq: rows(c.headDim), out: rows(c.headDimV), dout: rows(c.headDimV), lse: stats, dlse: stats,
    k: keys(c.headDim), dk: keys(c.headDim), v: keys(c.headDimV), dv: keys(c.headDimV),
  };
  if (c.biasShape.length) {
    layouts.bias = broadcastLayout(c.biasShape);
    layouts.dbias = broadcastLayout(dbiasExpandedShape(c));
  }
  return layouts;
}

/** The (batch, head) pairs a box covers, in query or KV heads. */
function headsOf(c: AttentionConfig, heads: 'query' | 'kv', box: Box): Array<[number, number]> {
  const pairs: Array<[number, number]> = [];
  const group = c.headsQ / c.headsKV;
  for (let u = box.u0; u < box.u1; u++) {
    if (c.layout === 'BSHD') {
      for (let h = 0; h < (heads === 'query' ? c.headsQ : c.headsKV); h++) pairs.push([u, h]);
    } else {
      const b = Math.floor(u / c.headsKV), hk = u % c.headsKV;
      if (heads === 'kv') pairs.push([b, hk]);
      else for (let h = hk * group + box.g0; h < hk * group + box.g1; h++) pairs.push([b, h]);
    }
  }
  return pairs;
}

/** Element range [start, end) of a tensor that a box touches. */
export function boxSpan(c: AttentionConfig, l: TensorLayout, box: Box): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (const [b, h] of headsOf(c, l.heads, box)) {
    lo = Math.min(lo, b * l.sb + h * l.sh);
    hi = Math.max(hi, b * l.sb + h * l.sh);
  }
  return [lo + box.r0 * l.si + box.k0 * l.sj, hi + (box.r1 - 1) * l.si + (box.k1 - 1) * l.sj + l.row];
}

const ALIGN = 256;

/** The bound range (byte offset aligned down to 256) holding elements [start, end), and its element offset. */
export function boundRange(buffer: GPUBuffer, start: number, end: number, elementBytes = 4):
    { range: BoundRange; elementOffset: number } {
  const offset = Math.floor((start * elementBytes) / ALIGN) * ALIGN;
  const size = Math.max(16, Math.ceil((end * elementBytes - offset) / 16) * 16);
  return { range: { buffer, offset, size: Math.min(size, buffer.size - offset) }, elementOffset: offset / elementBytes };
}

/** [0, n) cut into `parts` ranges of whole `align`-sized blocks. */
function ranges(n: number, align: number, parts: number): Array<[number, number]> {
  const size = Math.ceil(Math.ceil(n / align) / parts) * align;
  const out: Array<[number, number]> = [];
  for (let s = 0; s < n; s += size) out.push([s, Math.min(n, s + size)]);
  return out;
}

/**
 * The fewest boxes whose ranges of every tensor fit `maxBytes`: equal groups of whole units (with
 * at most `maxY` workgroups along y), else each unit cut into query-head × query-row × key ranges
 * as `chunking` allows. Boxes are ordered so that, for each range of the independent side, the
 * ranges that the program accumulates over start at 0 and come first.
 */
export function planBoxes(c: AttentionConfig, g: UnitGeometry, layouts: Record<string, TensorLayout>, maxBytes: number,
  yPerUnit: number, maxY: number, chunking?: Chunking): Box[] {
  const all = Object.values(layouts);
  const tooLarge = (box: Box, l: TensorLayout) => {
    const [s, e] = boxSpan(c, l, box);
    return (e - s) * 4 + ALIGN > maxBytes;
  };
  // BSHD boxes keep whole groups: its heads interleave within a row, so fewer of them bind no less.
  const groupSize = c.headsQ / c.headsKV, groupSplits = c.layout === 'BHSD' ? groupSize : 1;
  for (let count = 1; count <= g.units; count++) {
    const size = Math.ceil(g.units / count);
    const boxes: Box[] = [];
    for (let u = 0; u < g.units; u += size) {
      boxes.push({ u0: u, u1: Math.min(g.units, u + size), g0: 0, g1: groupSize, r0: 0, r1: c.seqQ, k0: 0, k1: c.seqK });
    }
    if (boxes.every(b => (b.u1 - b.u0) * yPerUnit <= maxY && all.every(l => !tooLarge(b, l)))) return boxes;
  }
  const slice = c.layout === 'BHSD' ? '(batch, head)' : 'batch';
  if (!chunking || yPerUnit > maxY) {
    throw new Error(`flashAttention (webgpu): one ${slice} slice of the inputs exceeds the device's ` +
      `maxStorageBufferBindingSize (${maxBytes} bytes)`);
  }
  const rowBlocks = Math.ceil(c.seqQ / chunking.rows), keyBlocks = Math.ceil(c.seqK / chunking.keys);
  let groupParts = 1, rowParts = 1, keyParts = 1;
  for (;;) {
    const boxes: Box[] = [];
    const groups = ranges(groupSize, 1, groupParts), rows = ranges(c.seqQ, chunking.rows, rowParts);
    const keys = ranges(c.seqK, chunking.keys, keyParts);
    for (let u = 0; u < g.units; u++) {
      if (chunking.accumulates === 'rows') {
        // dK/dV: key ranges are independent; query heads and rows are summed over.
        for (const [k0, k1] of keys) {
          for (const [g0, g1] of groups) for (const [r0, r1] of rows) boxes.push({ u0: u, u1: u + 1, g0, g1, r0, r1, k0, k1 });
        }
      } else {
        for (const [g0, g1] of groups) {
          for (const [r0, r1] of rows) for (const [k0, k1] of keys) boxes.push({ u0: u, u1: u + 1, g0, g1, r0, r1, k0, k1 });
        }
      }
    }
    const failing = all.filter(l => boxes.some(b => tooLarge(b, l)));
    if (failing.length === 0) return boxes;
    const before = groupParts * rowParts * keyParts;
    // A tensor with query rows shrinks with fewer query heads, then row ranges (a bias plane by whole
    // rows); K/V with key ranges.
    if (failing.some(l => l.si > 0)) {
      if (groupParts < groupSplits) groupParts = Math.min(groupSplits, groupParts * 2);
      else rowParts = Math.min(rowBlocks, rowParts * 2);
    }
    if (failing.some(l => l.si === 0 && l.sj > 0) && chunking.accumulates !== 'none') {
      keyParts = Math.min(keyBlocks, keyParts * 2);
    }
    if (groupParts * rowParts * keyParts === before) {
      throw new Error(`flashAttention (webgpu): a ${slice} slice of the inputs cannot be split to fit the device's ` +
        `maxStorageBufferBindingSize (${maxBytes} bytes)`);
    }
  }
}

/**
 * One dispatch per box, binding each named tensor's covered range (uniform `off_<name>` = the
 * range's first element). Names in `buffers` without a layout (the small `aux` buffer) are bound
 * whole and must fit `maxBytes`.
 */
export function boxDispatches(c: AttentionConfig, g: UnitGeometry, boxes: Box[], layouts: Record<string, TensorLayout>,
  buffers: Record<string, GPUBuffer>, maxBytes: number, chunking: Chunking | undefined,
  workgroups: (units: number) => [number, number, number], uniforms: Record<string, number>): Dispatch[] {
  for (const [name, buffer] of Object.entries(buffers)) {
    if (!layouts[name] && buffer.size > maxBytes) {
      throw new Error(`flashAttention (webgpu): the packed '${name}' inputs (${buffer.size} bytes: mask, block mask, ` +
        `row statistics) exceed the device's maxStorageBufferBindingSize (${maxBytes} bytes)`);
    }
  }
  return boxes.map(box => {
    const accumulate = chunking?.accumulates === 'keys' ? box.k0 > 0
      : chunking?.accumulates === 'rows' ? box.g0 > 0 || box.r0 > 0 : false;
    const heads = box.u1 - box.u0 > 1 || c.layout === 'BSHD' ? (box.u1 - box.u0) * g.queryHeadsPerUnit : box.g1 - box.g0;
    const d: Dispatch = {
      workgroups: workgroups(box.u1 - box.u0), buffers: {},
      uniforms: {
        ...uniforms, unit_start: box.u0, heads_in_chunk: heads, group_start: box.g0, group_end: box.g1,
        row_start: box.r0, row_end: box.r1, key_start: box.k0, key_end: box.k1, accumulate: accumulate ? 1 : 0,
      },
    };
    for (const [name, buffer] of Object.entries(buffers)) {
      const layout = layouts[name];
      if (!layout) {
        d.buffers[name] = { buffer, offset: 0, size: buffer.size };
        d.uniforms[`off_${name}`] = 0;
        continue;
      }
      const [s, e] = boxSpan(c, layout, box);
      const { range, elementOffset } = boundRange(buffer, s, e);
      d.buffers[name] = range;
      d.uniforms[`off_${name}`] = elementOffset;
    }
    return d;
  });
}
