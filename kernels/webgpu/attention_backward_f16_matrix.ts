// The 16×16 matrix tiles of the `precision: 'float16'` backward passes, as WGSL generators with two
// implementations behind one interface, so the two programs are written once:
//   'subgroupMatrix'  the matrix units: `chromium-experimental-subgroup-matrix` 16×16×16 f16 × f16 →
//                     f32 multiply-accumulate, one 16-row strip per subgroup of 32 invocations;
//   'scalar'          the same tiles computed by the 32 invocations of the strip themselves: each holds
//                     one row of a left tile (16 values) and 8 accumulators of a result tile in
//                     registers and reads the right tile from workgroup memory. With element type f16
//                     it is the path for adapters with `shader-f16` but no subgroup matrices; with f32
//                     it is the same tile logic on adapters with neither (SwiftShader), which is how
//                     CI tests it against the float64 reference.
// Operands are staged in workgroup arrays of the element type (f16, or f32 for the scalar test
// path); results are f32. Every call must be made by all 32 invocations of a strip (subgroup-uniform
// control flow); the scalar path needs no subgroup operations at all. The subgroup-matrix WGSL
// spelling (load syntax, diagnostic name) is the forward's, from f16_support.ts.
import { matrixDiagnostic, matrixLoad } from './f16_support';
import { range } from './runtime';
export type MatrixPath = 'subgroupMatrix' | 'scalar';

export interface F16Mode {
  path: MatrixPath;
  /** Element type of staged operands: 'f16', or 'f32' only with the scalar path (tests without shader-f16). */
  element: 'f16' | 'f32';
}

/** Tile edge of every matrix operation, and invocations per 16-row strip. */
export const TILE = 16;
export const STRIP_THREADS = 32;

/** A multiple of 16 at least `n` (head sizes are padded with zeros to whole tiles). */
export function tilesOf(n: number): number {
  return Math.ceil(n / TILE);
}

export function f16Extensions(mode: F16Mode): string[] {
  const ext: string[] = mode.element === 'f16' ? ['f16'] : [];
  if (mode.path === 'subgroupMatrix') ext.push('subgroups', 'chromium_experimental_subgroup_matrix');
  return ext;
}

/**
 * The WGSL of one matrix path. Names given to the generators are WGSL identifiers; offsets and
 * strides are WGSL u32 expressions counting elements. `left` tiles are read row-major; `right`
 * tiles row-major or, with `colMajor`, transposed (element [k, n] at offset + n·stride + k).
 */
export interface MatrixOps {
  /** Function-scope declarations of `count` result (f32) or left tiles, zero-filled. */
  declareResults(name: string, count: number): string;
  declareLefts(name: string, count: number): string;
  zero(result: string): string;
  loadLeft(left: string, array: string, offset: string, stride: string): string;
  /** result += left · right, the right tile read from `array`. */
  multiplyAdd(result: string, left: string, array: string, offset: string, stride: string, colMajor: boolean): string;
  /** Writes a result tile into an f32 workgroup array, row-major. */
  store(result: string, array: string, offset: string, stride: string): string;
  /** WGSL statements run once at the top of main (the invocation's place in its strip). */
  prelude: string;
  /** Attributes of the entry point (the subgroup-matrix uniformity diagnostic, see f16_support.ts). */
  entryAttributes: string;
}

export function matrixOps(mode: F16Mode): MatrixOps {
  const E = mode.element;
  if (mode.path === 'subgroupMatrix') {
    const left = `subgroup_matrix_left<${E}, 16, 16>`;
    const right = `subgroup_matrix_right<${E}, 16, 16>`;
    const result = 'subgroup_matrix_result<f32, 16, 16>';
    return {
      declareResults: (n, c) => `var ${n}: array<${result}, ${c}>;`,
      declareLefts: (n, c) => `var ${n}: array<${left}, ${c}>;`,
      zero: r => `${r} = ${result}();`,
      loadLeft: (l, a, o, s) => `${l} = ${matrixLoad(left, a, o, false, s)};`,
      multiplyAdd: (r, l, a, o, s, cm) =>
        `${r} = subgroupMatrixMultiplyAccumulate(${l}, ${matrixLoad(right, a, o, cm, s)}, ${r});`,
      store: (r, a, o, s) => `subgroupMatrixStore(&${a}, ${o}, ${r}, false, ${s});`,
      prelude: '',
      entryAttributes: matrixDiagnostic({ matmul: 'subgroup-matrix', element: E }),
    };
  }
  // Invocation `lane` of a strip owns row lane/2 of every tile: all 16 columns of a left tile and
  // columns (lane % 2)·8 … +7 of a result tile.
  return {
    declareResults: (n, c) => `var ${n}: array<array<f32, 8>, ${c}>;`,
    declareLefts: (n, c) => `var ${n}: array<array<${E}, 16>, ${c}>;`,
    zero: r => `${r} = array<f32, 8>();`,
    loadLeft: (l, a, o, s) => `for (var mk = 0u; mk < 16u; mk++) { ${l}[mk] = ${a}[(${o}) + mrow * (${s}) + mk]; }`,
    multiplyAdd: (r, l, a, o, s, cm) => `for (var mn = 0u; mn < 8u; mn++) {
        var sum = 0.0;
        for (var mk = 0u; mk < 16u; mk++) {
          sum += f32(${l}[mk]) * f32(${a}[(${o}) + ${cm ? `(mcol + mn) * (${s}) + mk` : `mk * (${s}) + mcol + mn`}]);
        }
        ${r}[mn] += sum;
      }`,
    store: (r, a, o, s) => `for (var mn = 0u; mn < 8u; mn++) { ${a}[(${o}) + mrow * (${s}) + mcol + mn] = ${r}[mn]; }`,
    prelude: 'let mrow = (lidx % 32u) / 2u;\n  let mcol = (lidx % 2u) * 8u;',
    entryAttributes: '',
  };
}

/**
 * A loop in which the workgroup's WG invocations copy `rows` rows of a tensor into workgroup array
 * `dst` of the element type (row stride `stride`), vec4 columns firstCol4 … firstCol4 + width4 − 1,
 * zero past the head's `cols4` vec4 columns and past row `limit`, times `scale`. `load` is a
 * tensorAccess loader.
 */
export function stageRowsF16(o: { dst: string; stride: string; cols4: number; width4: number; firstCol4?: number;
  rows: string; first: string; limit: string; load: string; head: string; scale?: string;
  element: F16Mode['element'] }): string {
  const E = o.element;
  const col = o.firstCol4 ? `${o.firstCol4}u + c` : 'c';
  return `for (var e = lidx; e < ${o.rows} * ${o.width4}u; e += WG) {
      let r = e / ${o.width4}u;
      let c = e % ${o.width4}u;
      var x = vec4<f32>(0.0);
      if ((${o.first} + r < ${o.limit}) & (${col} < ${o.cols4}u)) { x = ${o.load}(b, ${o.head}, ${o.first} + r, ${col})${o.scale ? ` * ${o.scale}` : ''}; }
      let at = r * ${o.stride} + c * 4u;
      ${o.dst}[at] = ${E}(x.x);
      ${o.dst}[at + 1u] = ${E}(x.y);
      ${o.dst}[at + 2u] = ${E}(x.z);
      ${o.dst}[at + 3u] = ${E}(x.w);
    }`;
}

/**
 * How a program brings the operands of each tile it walks (Q and dO, or K and V) into workgroup memory:
 *   'loop'      a strided loop of load → convert → store per element group (the first version);
 *   'batched'   every invocation first loads all its vec4s of the tile into registers (unrolled, so the
 *               global loads are in flight together), then converts and stores them;
 *   'prefetch'  as 'batched', but the loads of the next tile are issued right after this tile is
 *               stored, so they are in flight while the tile's matrix products run (registers double
 *               as the second buffer). Needs a walk that visits consecutive tiles: with block-sparse
 *               skipping the programs use 'batched' instead.
 */
export type StageMode = 'loop' | 'batched' | 'prefetch';

/** One operand of a walked tile: rows [first, first + rows) of a tensor, staged as `tiles` 16-column tiles. */
export interface WalkedOperand {
  dst: string;
  stride: string;
  /** vec4 columns of the head, and 16-column tiles staged (zero past the head). */
  cols4: number;
  tiles: number;
  load: string;
  head: string;
  scale?: string;
}

/** WGSL of a walked tile's staging: `declare` once before the walk, `fetch(first)` into registers, `store` them. */
export interface WalkedStaging {
  declare: string;
  fetch: (first: string) => string;
  store: string;
}

/**
 * Register staging ('batched' and 'prefetch') of `rows`-row tiles by WG invocations: invocation
 * lidx holds vec4s lidx, lidx + WG, … of each operand in its own variables (constant indices, so
 * they stay in registers). Rows past `limit` and columns past the head read a clamped, in-range
 * address and are zeroed by select, so the loads carry no branch. `limit` is where the walk ends
 * (the sequence, or the dispatch's range of a problem split over dispatches, chunks.ts, whose
 * binding ends there): the prefetch past the last tile reads no row beyond it. Ranges are whole
 * walked tiles except at the sequence's end, so zeroing at `limit` changes no staged tile.
 */
export function walkedStaging(element: F16Mode['element'], rows: number, wg: number, limit: string,
  operands: WalkedOperand[]): WalkedStaging {
  const parts = operands.map((o, n) => {
    const width4 = o.tiles * 4, total = rows * width4, slots = Math.ceil(total / wg);
    const name = (k: number) => `stg${n}_${k}`;
    const exact = total % wg === 0;
    const colsInside = width4 === o.cols4;
    const fetch = (first: string) => range(slots).map(k => {
      const e = exact ? `lidx + ${k * wg}u` : `min(lidx + ${k * wg}u, ${total - 1}u)`;
      const inside = colsInside ? `${first} + r < ${limit}` : `(${first} + r < ${limit}) & (c < ${o.cols4}u)`;
      return `{
      let e = ${e};
      let r = e / ${width4}u;
      let c = e % ${width4}u;
      let x = ${o.load}(b, ${o.head}, min(${first} + r, ${limit} - 1u), ${colsInside ? 'c' : `min(c, ${o.cols4 - 1}u)`});
      ${name(k)} = select(vec4<f32>(0.0), x${o.scale ? ` * ${o.scale}` : ''}, ${inside});
    }`;
    }).join('\n    ');
    const store = range(slots).map(k => {
      const body = `let e = lidx + ${k * wg}u;
      let at = (e / ${width4}u) * ${o.stride} + (e % ${width4}u) * 4u;
${range(4).map(x => `      ${o.dst}[at + ${x}u] = ${element}(${name(k)}[${x}]);`).join('\n')}`;
      return exact || (k + 1) * wg <= total ? `{\n      ${body}\n    }` : `if (lidx + ${k * wg}u < ${total}u) {\n      ${body}\n    }`;
    }).join('\n    ');
    return { declare: range(slots).map(k => `var ${name(k)}: vec4<f32>;`).join(' '), fetch, store };
  });
  return {
    declare: parts.map(p => p.declare).join('\n  '),
    fetch: first => parts.map(p => p.fetch(first)).join('\n    '),
    store: parts.map(p => p.store).join('\n    '),
  };
}

/** The walked operands staged by the strided loops of the 'loop' mode. */
export function stageLoops(element: F16Mode['element'], rows: string, limit: string, operands: WalkedOperand[],
  first: string): string {
  return operands.map(o => stageRowsF16({
    dst: o.dst, stride: o.stride, cols4: o.cols4, width4: o.tiles * 4, rows, first, limit, load: o.load, head: o.head,
    scale: o.scale, element,
  })).join('\n    ');
}

/**
 * One product of a strip's own left tiles with the walked tile, transposed, into an f32 tile of
 * workgroup memory: dst[strip rows, 16n …] = Σₓ lefts[x] · src[16n …, 16x …]ᵀ for n < count.
 */
export interface StripProduct {
  dst: string;
  lefts: string;
  src: string;
  stride: string;
  tiles: number;
}

/** Result tiles `acc` that stripProducts needs. */
export function stripAccumulators(products: number, count: number, chains: boolean): number {
  return chains ? products * count : 1;
}

/**
 * WGSL of the strip products (row stride of dst: SS). Without `chains` one accumulator serves every
 * output tile in turn, so each tile's multiply-adds wait on the one before; with `chains` every output
 * tile of every product has its own, and the multiply-adds are interleaved across them (independent
 * work in flight, for more registers).
 */
export function stripProducts(ops: MatrixOps, products: StripProduct[], count: number, chains: boolean): string {
  const mma = (acc: string, p: StripProduct, n: number, x: number) =>
    ops.multiplyAdd(acc, `${p.lefts}[${x}]`, p.src, `${n * TILE}u * ${p.stride} + ${x * TILE}u`, p.stride, true);
  const store = (acc: string, p: StripProduct, n: number) => ops.store(acc, p.dst, `sg * 16u * SS + ${n * TILE}u`, 'SS');
  const lines: string[] = [];
  if (!chains) {
    for (const p of products) {
      for (let n = 0; n < count; n++) lines.push(ops.zero('acc[0]'), ...range(p.tiles).map(x => mma('acc[0]', p, n, x)), store('acc[0]', p, n));
    }
  } else {
    const acc = (i: number, n: number) => `acc[${i * count + n}]`;
    products.forEach((p, i) => range(count).forEach(n => lines.push(ops.zero(acc(i, n)))));
    for (let x = 0; x < Math.max(...products.map(p => p.tiles)); x++) {
      products.forEach((p, i) => { if (x < p.tiles) range(count).forEach(n => lines.push(mma(acc(i, n), p, n, x))); });
    }
    products.forEach((p, i) => range(count).forEach(n => lines.push(store(acc(i, n), p, n))));
  }
  return lines.map(l => `    ${l}`).join('\n');
}

/** One set of left tiles a strip keeps for the whole walk (K and V, or Q and dO), and where it is staged. */
export interface OwnTiles {
  /** The function-scope array of left tiles, and the workgroup array (of `capacity` elements) it is staged through. */
  name: string;
  buffer: string;
  capacity: number;
  /** 16-column tiles of the head, and its vec4 columns. */
  tiles: number;
  cols4: number;
  load: string;
  head: string;
  scale?: string;
}

/** Elements a staging buffer needs so that at least one 16-column tile of all `rows` rows fits. */
export function ownTilesCapacity(rows: number, elements: number): number {
  return Math.max(elements, rows * TILE);
}

/**
 * WGSL loading every strip's own rows (`rows` rows from `first`, zero past `limit`) as left tiles,
 * staged through a workgroup buffer that holds fewer rows than the workgroup owns: in each round all
 * rows are staged for as many 16-column tiles as fit (row stride = those columns), and every strip
 * loads its tiles of that round at its own rows. No strip branches, so the subgroup-matrix loads
 * run in workgroup-uniform control flow.
 */
export function ownTilesWgsl(ops: MatrixOps, element: F16Mode['element'], rows: number, first: string, limit: string,
  sets: OwnTiles[]): string {
  const perRound = sets.map(t => Math.min(t.tiles, Math.floor(t.capacity / (rows * TILE))));
  const rounds = Math.max(...sets.map((t, i) => Math.ceil(t.tiles / perRound[i])));
  const out: string[] = [];
  for (let r = 0; r < rounds; r++) {
    const staged = sets.map((t, i) => {
      const from = r * perRound[i], count = Math.max(0, Math.min(t.tiles, from + perRound[i]) - from);
      return { t, from, count, width: perRound[i] * TILE };
    }).filter(x => x.count > 0);
    out.push('  workgroupBarrier();');
    for (const { t, from, count, width } of staged) {
      out.push(`  ${stageRowsF16({ dst: t.buffer, stride: `${width}u`, cols4: t.cols4, width4: count * 4, firstCol4: from * 4,
        rows: `${rows}u`, first, limit, load: t.load, head: t.head, scale: t.scale, element })}`);
    }
    out.push('  workgroupBarrier();');
    for (const { t, from, count, width } of staged) {
      for (let x = 0; x < count; x++) {
        out.push(`  ${ops.loadLeft(`${t.name}[${from + x}]`, t.buffer, `sg * 16u * ${width}u + ${x * TILE}u`, `${width}u`)}`);
      }
    }
  }
  return out.join('\n');
}

/**
 * Block-sparse: WGSL that skips (continue) the tile of rows [rFirst, rLast] × keys [kFirst, kLast]
 * of head h when none of its mask blocks is live. Every invocation reads the few blockMask entries
 * itself (reads of a read-only buffer at workgroup-uniform indices are uniform), and keyLengths is
 * read the same way (keyLimitOf): on the H100 the float16 forward gave wrong results next to
 * subgroup-matrix operations when one invocation read them and broadcast them with
 * workgroupUniformLoad (f16_support.ts), so these programs never branch on one invocation.
 */
export function liveTileTest(blockSize: number, rFirst: string, rLast: string, kFirst: string, kLast: string): string {
  if (blockSize === 0) return '';
  return `var live = false;
      for (var qb2 = (${rFirst}) / BLOCK; qb2 <= (${rLast}) / BLOCK; qb2++) {
        for (var kb2 = (${kFirst}) / BLOCK; kb2 <= (${kLast}) / BLOCK; kb2++) {
          live = live | blockLive(b, h, qb2, kb2);
        }
      }
      if (!live) { continue; }`;
}

/** Element offset of (b, h, i, d) in a q/k/v-shaped tensor of the config's layout, as WGSL. */
export function elementIndex(s: { batch: number; head: number; seq: number }, name: string): string {
  return `b * ${s.batch}u + h * ${s.head}u + i * ${s.seq}u + d - u.off_${name}`;
}
