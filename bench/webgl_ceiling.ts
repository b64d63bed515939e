// WebGL ceiling page: what a fragment program run through tfjs' runWebGLProgram can reach on this
// GPU, to tell whether issue 4's "forward ≥ 2× naive" is within reach of any kernel design there.
//   alu:      pure multiply-add chains (no memory), then one texel fetch per 16 / 32 / 64 of them
//   operands: a matrix product whose second operand comes from a uniform buffer instead of a
//             texture (filled on the GPU: the texture is read into a PIXEL_PACK buffer, which is
//             then bound as the UNIFORM_BUFFER), with 16 multiply-adds per texel fetch instead of
//             the 4 of a 2×2-blocked product. Two ways: indexed by the fragment's band at run time,
//             and at compile time (one switch case per band, every read at a constant offset).
//             Both as scores (q·k: a q row per fragment against 4 keys) and as P·V (4 keys of a P
//             row per fetch against 4 columns of V).
// Each FLOP figure is 2 × the multiply-adds the program does, over the median of a few timed runs
// (the GPU waited for at the end of each set). Results are lines POSTed to /result, as bench/webgl.ts.
//
// Bundle: npx esbuild bench/webgl_ceiling.ts --bundle --format=iife --outfile=.benchbuild/webgl_ceiling.js
// Run:    node bench/webgl_serve.mjs .benchbuild/webgl_ceiling.js <chromium> <flags> (bench/RESULTS.md has the
//         H100 command); HASH=quick for a small check on SwiftShader, which also verifies the products.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-webgl';
import type { GPGPUProgram, MathBackendWebGL } from '@tensorflow/tfjs-backend-webgl';

const post = (line: string) => fetch('/result', { method: 'POST', body: line });
const quick = location.hash.includes('quick');

function backend(): MathBackendWebGL {
  const b = tf.backend();
  if (!('gpgpu' in b)) throw new Error('webgl backend expected');
  return b as MathBackendWebGL;
}

function webgl2(b: MathBackendWebGL): WebGL2RenderingContext {
  const gl = b.gpgpu.gl;
  if (!(gl instanceof WebGL2RenderingContext)) throw new Error('WebGL2 expected');
  return gl;
}

function program(variableNames: string[], texels: [number, number], userCode: string,
  customUniforms?: GPGPUProgram['customUniforms']): GPGPUProgram {
  // A packed [2h, 2w] output is an h × w texture of RGBA texels, addressed here by gl_FragCoord.
  return { variableNames, packedInputs: true, packedOutput: true, outputShape: [2 * texels[0], 2 * texels[1]],
    userCode, customUniforms };
}

function aluProgram(side: number, iters: number, chains: number, fmaPerFetch: number): GPGPUProgram {
  const names = Array.from({ length: chains }, (_, c) => `a${c}`);
  const init = names.map((a, c) => `vec4 ${a} = vec4(gl_FragCoord.xyxy) * ${(c + 1) * 1e-4};`).join('\n  ');
  const step = names.map(a => `${a} = ${a} * m + k;`).join(' ');
  const body = fmaPerFetch > 0
    ? `for (int i = 0; i < ${iters}; i++) {
    vec4 k = texelFetch(X, ivec2((i * 7 + int(gl_FragCoord.x)) & 255, i & 255), 0);
    ${Array.from({ length: fmaPerFetch / (4 * chains) }, () => step).join(' ')}
  }`
    : `vec4 k = vec4(0.25);
  for (int i = 0; i < ${iters}; i++) { ${step} }`;
  return program(['X'], [side, side], `void main() {
  vec4 m = vec4(0.999);
  ${init}
  ${body}
  setOutput(${names.join(' + ')});
}`);
}

/** [rows, D] packed → texels n = r·D/4 + d4 holding x[r][4·d4 … 4·d4 + 3], `width` texels per row. */
function rowsLayout(rows: number, D: number, width: number): GPGPUProgram {
  const D4 = D / 4;
  return program(['X'], [Math.ceil(rows * D4 / width), width], `
float at(int r, int d) {
  vec4 t = getX(r, d);
  return r % 2 == 0 ? (d % 2 == 0 ? t.x : t.y) : (d % 2 == 0 ? t.z : t.w);
}
void main() {
  ivec2 p = ivec2(gl_FragCoord.xy);
  int n = p.y * ${width} + p.x;
  int r = n / ${D4};
  int d = 4 * (n - r * ${D4});
  setOutput(r < ${rows} ? vec4(at(r, d), at(r, d + 1), at(r, d + 2), at(r, d + 3)) : vec4(0.0));
}`);
}

// Output texel (x, y) of the products: band = y / bandRows (which 4 keys, or which 4 columns of V),
// row i = (y mod bandRows)·W + x, so that a warp's fragments share a band and read the same uniforms.
const W = 64;

function scoresProgram(Nq: number, keys: number, D: number, qWidth: number, constant: boolean): GPGPUProgram {
  const D4 = D / 4;
  const bandRows = Nq / W;
  const dotKey = (key: string) => Array.from({ length: D4 }, (_, d) => `dot(q${d}, faK[${key} + ${d}])`).join(' + ');
  const four = (first: (k: number) => string) => `vec4(${[0, 1, 2, 3].map(k => dotKey(first(k))).join(',\n      ')})`;
  const product = constant
    ? `switch (band) {
    ${Array.from({ length: keys / 4 }, (_, t) => `case ${t}: s = ${four(k => `${(4 * t + k) * D4}`)}; break;`).join('\n    ')}
  }`
    : `int k0 = 4 * band * ${D4};
  s = ${four(k => `k0 + ${k * D4}`)};`;
  return program(['Q'], [(keys / 4) * bandRows, W], `
layout(std140) uniform FaK { vec4 faK[${keys * D4}]; };
void main() {
  ivec2 p = ivec2(gl_FragCoord.xy);
  int band = p.y / ${bandRows};
  int qn = (qRow0 + (p.y - band * ${bandRows}) * ${W} + p.x) * ${D4};
  ${Array.from({ length: D4 }, (_, d) => `vec4 q${d} = texelFetch(Q, ivec2((qn + ${d}) % ${qWidth}, (qn + ${d}) / ${qWidth}), 0);`).join('\n  ')}
  vec4 s = vec4(0.0);
  ${product}
  setOutput(s);
}`, [{ name: 'qRow0', type: 'int' }]);
}

function accumulateProgram(Nq: number, keys: number, Dv: number, constant: boolean): GPGPUProgram {
  const D4 = Dv / 4;
  const bandRows = Nq / W;
  const step = (t: string, col: (k: number) => string) => `pr = texelFetch(P, ivec2(p.x, ${t} * ${bandRows} + r), 0);
      o += pr.x * faV[${col(0)}] + pr.y * faV[${col(1)}] + pr.z * faV[${col(2)}] + pr.w * faV[${col(3)}];`;
  const product = constant
    ? `switch (band) {
    ${Array.from({ length: D4 }, (_, c) => `case ${c}: {
      ${Array.from({ length: keys / 4 }, (_, t) => step(`${t}`, k => `${(4 * t + k) * D4 + c}`)).join('\n      ')}
      break; }`).join('\n    ')}
  }`
    : `for (int t = 0; t < ${keys / 4}; t++) {
      ${step('t', k => `(4 * t + ${k}) * ${D4} + band`)}
  }`;
  return program(['P'], [D4 * bandRows, W], `
layout(std140) uniform FaV { vec4 faV[${keys * D4}]; };
void main() {
  ivec2 p = ivec2(gl_FragCoord.xy);
  int band = p.y / ${bandRows};
  int r = p.y - band * ${bandRows};
  vec4 o = vec4(0.0);
  vec4 pr;
  ${product}
  setOutput(o);
}`);
}

/** Copies a texture's texels into a new GPU buffer (readPixels into a PIXEL_PACK buffer: no CPU copy). */
function textureToBuffer(b: MathBackendWebGL, t: tf.Tensor, bytes: number): WebGLBuffer {
  const gl = webgl2(b);
  const data = b.texData.get(t.dataId);
  if (!data.texture || !data.texShape) throw new Error('tensor has no texture');
  // texShape is the packed tensor's logical shape; the texture has half its size in each dimension.
  const [h, w] = data.texShape.map(x => Math.ceil(x / 2));
  const buffer = gl.createBuffer();
  const framebuffer = gl.createFramebuffer();
  if (!buffer || !framebuffer) throw new Error('no GL objects');
  const previous = gl.getParameter(gl.READ_FRAMEBUFFER_BINDING) as WebGLFramebuffer | null;
  gl.bindFramebuffer(gl.READ_FRAMEBUFFER, framebuffer);
  gl.framebufferTexture2D(gl.READ_FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, data.texture.texture, 0);
  gl.bindBuffer(gl.PIXEL_PACK_BUFFER, buffer);
  gl.bufferData(gl.PIXEL_PACK_BUFFER, Math.max(bytes, w * h * 16), gl.DYNAMIC_COPY);
  gl.readPixels(0, 0, w, h, gl.RGBA, gl.FLOAT, 0);
  gl.bindBuffer(gl.PIXEL_PACK_BUFFER, null);
  gl.bindFramebuffer(gl.READ_FRAMEBUFFER, previous);
  gl.deleteFramebuffer(framebuffer);
  return buffer;
}

async function median(f: () => tf.Tensor[], reps: number): Promise<number> {
  const warm = f();
  await Promise.all(warm.map(t => t.data()));
  tf.dispose(warm);
  const times: number[] = [];
  for (let set = 0; set < 3; set++) {
    const t0 = performance.now();
    let last: tf.Tensor[] = [];
    for (let r = 0; r < reps; r++) {
      tf.dispose(last);
      last = f();
    }
    await last[last.length - 1].data();
    tf.dispose(last);
    times.push((performance.now() - t0) / reps);
  }
  return times.sort((x, y) => x - y)[1];
}

async function alu(b: MathBackendWebGL): Promise<void> {
  const x = tf.randomNormal([512, 512]);
  const side = quick ? 64 : 512;
  const run = (p: GPGPUProgram) => [tf.engine().makeTensorFromTensorInfo(b.runWebGLProgram(p, [x], 'float32', undefined, true))];
  const variants: Array<[string, number, number, number]> = [
    ['multiply-adds only, 4 vec4 chains', 512, 4, 0], ['multiply-adds only, 8 vec4 chains', 256, 8, 0],
    ['multiply-adds only, 16 vec4 chains', 128, 16, 0], ['1 texel fetch per 16 multiply-adds', 512, 4, 16],
    ['1 texel fetch per 32 multiply-adds', 256, 8, 32], ['1 texel fetch per 64 multiply-adds', 128, 8, 64],
  ];
  for (const [name, iters, chains, perFetch] of variants) {
    const ms = await median(() => run(aluProgram(side, iters, chains, perFetch)), quick ? 1 : 5);
    const flops = 2 * side * side * iters * (perFetch > 0 ? perFetch : 4 * chains);
    await post(`# alu: ${name}: ${ms.toFixed(2)} ms, ${(flops / ms / 1e9).toFixed(3)} TFLOP/s`);
  }
  x.dispose();
}

async function operands(b: MathBackendWebGL): Promise<void> {
  const gl = webgl2(b);
  const heads = quick ? 2 : 12;
  const D = 64;
  const qWidth = 4096;
  const keysPerDraw = quick ? 16 : Math.floor((gl.getParameter(gl.MAX_UNIFORM_BLOCK_SIZE) as number) / (4 * D));
  const run = (p: GPGPUProgram, input: tf.Tensor, uniforms?: number[][]) =>
    tf.engine().makeTensorFromTensorInfo(b.runWebGLProgram(p, [input], 'float32', uniforms, true));
  for (const n of quick ? [128] : [2048, 4096]) {
    const [q, k] = [1, 2].map(seed => tf.randomNormal([heads * n, D], 0, 1, 'float32', seed));
    const qRows = run(rowsLayout(heads * n, D, qWidth), q);
    const kRows = run(rowsLayout(heads * n, D, qWidth), k);
    const kBuffer = textureToBuffer(b, kRows, heads * n * D * 4);
    const bind = (h: number, start: number) =>
      gl.bindBufferRange(gl.UNIFORM_BUFFER, 0, kBuffer, (h * n + start) * D * 4, keysPerDraw * D * 4);
    // One draw per (head, range of keysPerDraw keys), as a kernel would run them.
    const draws = (make: () => tf.Tensor) => () => {
      const outs: tf.Tensor[] = [];
      for (let h = 0; h < heads; h++) {
        for (let start = 0; start < n; start += keysPerDraw) {
          bind(h, start);
          outs.push(make());
        }
      }
      return outs;
    };
    bind(0, 0);
    // P for the P·V programs: any [n, keysPerDraw] block in the scores' band layout (V = K's buffer).
    const p = run(scoresProgram(n, keysPerDraw, D, qWidth, false), qRows, [[0]]);
    if (quick) await checkProducts(q, k, p, n, keysPerDraw, D, qRows, run);
    const flops = 2 * heads * n * n * D;
    for (const constant of [false, true]) {
      const scores = scoresProgram(n, keysPerDraw, D, qWidth, constant);
      const accumulate = accumulateProgram(n, keysPerDraw, D, constant);
      let h = 0;
      const sMs = await median(draws(() => run(scores, qRows, [[(h++ % heads) * n]])), quick ? 1 : 5);
      const aMs = await median(draws(() => run(accumulate, p)), quick ? 1 : 5);
      const how = constant ? 'compile-time offsets' : 'run-time index';
      await post(`# operands N=${n} H=${heads} D=${D}, ${keysPerDraw} keys per draw, uniform buffer at ${how}: ` +
        `scores ${sMs.toFixed(2)} ms ${(flops / sMs / 1e9).toFixed(3)} TFLOP/s, ` +
        `P·V ${aMs.toFixed(2)} ms ${(flops / aMs / 1e9).toFixed(3)} TFLOP/s`);
    }
    gl.deleteBuffer(kBuffer);
    tf.dispose([q, k, qRows, kRows, p]);
  }
}

/** Small case: both product programs, both ways, against tf.matMul. */
async function checkProducts(q: tf.Tensor, k: tf.Tensor, p: tf.Tensor, n: number, keys: number,
  D: number, qRows: tf.Tensor, run: (p: GPGPUProgram, x: tf.Tensor, u?: number[][]) => tf.Tensor): Promise<void> {
  const bandRows = n / W;
  // Element (row i, column c) of a band-layout output: texel (x = i mod W, y = band·bandRows + i / W).
  const read = (data: Float32Array | Int32Array | Uint8Array, width: number, i: number, c: number) => {
    const y = (c >> 2) * bandRows + Math.floor(i / W);
    const x = i % W;
    return data[(2 * y + ((c & 3) >> 1)) * 2 * width + 2 * x + (c & 1)];
  };
  const kHead = tf.slice(k, [0, 0], [keys, D]);
  const sRef = await tf.matMul(tf.slice(q, [0, 0], [n, D]), kHead, false, true).data();
  const pData = await p.data();
  const pv = tf.tidy(() => {
    const dense = tf.buffer([n, keys]);
    for (let i = 0; i < n; i++) for (let j = 0; j < keys; j++) dense.set(read(pData, W, i, j), i, j);
    return tf.matMul(dense.toTensor(), kHead);
  });
  const pvRef = await pv.data();
  for (const constant of [false, true]) {
    const s = run(scoresProgram(n, keys, D, 4096, constant), qRows, [[0]]);
    const o = run(accumulateProgram(n, keys, D, constant), p);
    const [sData, oData] = await Promise.all([s.data(), o.data()]);
    let sErr = 0;
    let oErr = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < keys; j++) sErr = Math.max(sErr, Math.abs(read(sData, W, i, j) - sRef[i * keys + j]));
    for (let i = 0; i < n; i++) for (let c = 0; c < D; c++) oErr = Math.max(oErr, Math.abs(read(oData, W, i, c) - pvRef[i * D + c]));
    await post(`# check (${constant ? 'compile-time' : 'run-time'}): scores max |err| ${sErr.toExponential(2)}, P·V ${oErr.toExponential(2)}`);
    tf.dispose([s, o]);
  }
  tf.dispose([kHead, pv]);
}

async function main(): Promise<void> {
  await tf.setBackend('webgl');
  const b = backend();
  const gl = webgl2(b);
  const debug = gl.getExtension('WEBGL_debug_renderer_info');
  await post(`# renderer: ${String(gl.getParameter(debug ? debug.UNMASKED_RENDERER_WEBGL : gl.RENDERER))}`);
  await post(`# MAX_UNIFORM_BLOCK_SIZE ${String(gl.getParameter(gl.MAX_UNIFORM_BLOCK_SIZE))}, ` +
    `MAX_FRAGMENT_UNIFORM_BLOCKS ${String(gl.getParameter(gl.MAX_FRAGMENT_UNIFORM_BLOCKS))}`);
  if (!location.hash.includes('operands')) await alu(b);
  if (!location.hash.includes('alu')) await operands(b);
}

main().catch(error => post(`# error: ${String(error)}`)).finally(() => post('DONE'));
