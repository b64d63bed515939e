// Packs the attention mask into bits (32 keys per u32) in the `aux` buffer: the mask is a
// [B', H', Nq', Nk'] bool/int32 tensor (32-bit elements on tfjs' webgpu backend), and packed it
// binds with the other small inputs 32 times past the size at which its own plane would exceed
// maxStorageBufferBindingSize. The source is read in ranges that fit the binding limit, one
// dispatch each; one thread writes one word.
import { boundRange } from './chunks';
import { Dispatch, ProgramSpec, queuePrograms } from './runtime';

const THREADS = 64;
const MAX_X = 65535;

export function maskWords(elements: number): number {
  return Math.ceil(elements / 32);
}

function packMaskProgram(): ProgramSpec {
  const body = () => `
@compute @workgroup_size(${THREADS})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let w = u.word_start + gid.x;
  if (w >= u.word_end) { return; }
  var bits = 0u;
  for (var k = 0u; k < 32u; k++) {
    let e = w * 32u + k;
    if (e < u.elements) { bits = bits | (select(0u, 1u, src[e - u.off_src] != 0u) << k); }
  }
  aux[u.at + w] = bits;
}
`;
  return {
    key: 'pack_mask',
    bindings: [{ name: 'src', type: 'u32', write: false }, { name: 'aux', type: 'u32', write: true }],
    uniforms: ['word_start', 'word_end', 'elements', 'at', 'off_src'],
    body,
  };
}

/**
 * Queues the packing of `elements` mask values from `mask` into `aux` at word `at` on `encoder` (a
 * runPrograms prelude's), ahead of the programs that read it: in the kernel's own compute pass
 * rather than a pass or submission of its own, so a kernel call is one pass and one submission.
 */
export function packMask(encoder: GPUCommandEncoder, mask: GPUBuffer, elements: number,
  aux: GPUBuffer, at: number, maxBytes: number): void {
  const words = maskWords(elements);
  const perDispatch = Math.max(1, Math.min(Math.floor((maxBytes - 256) / 128), MAX_X * THREADS));
  const dispatches: Dispatch[] = [];
  for (let w0 = 0; w0 < words; w0 += perDispatch) {
    const w1 = Math.min(words, w0 + perDispatch);
    const { range, elementOffset } = boundRange(mask, w0 * 32, Math.min(elements, w1 * 32));
    dispatches.push({
      workgroups: [Math.ceil((w1 - w0) / THREADS), 1, 1],
      buffers: { src: range, aux: { buffer: aux, offset: 0, size: aux.size } },
      uniforms: { word_start: w0, word_end: w1, elements, at, off_src: elementOffset },
    });
  }
  queuePrograms(encoder, [{ spec: packMaskProgram(), dispatches }]);
}
