// The `FlashAttention` kernel of the webgpu backend: packs the small optional inputs into `aux`,
// chooses tiles for the device's workgroup memory, splits the problem over dispatches when a
// tensor exceeds maxStorageBufferBindingSize, and runs attention_forward.ts or, in float16,
// attention_forward_f16.ts (with halved causal pairs, followed by merge_splits.ts' merge of the halves).
import type { KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { AttentionConfig, outputShape } from '../../src/config';
import { unpackAttentionInputs } from '../../src/inputs';
import { FlashAttention } from '../../src/kernel_names';
import { keySplits } from '../../src/split_kv';
import { AuxLayout, auxLayout, auxNeeded, encodeAuxCopies } from './aux';
import {
  BlockPairing, ForwardPlan, forwardGrid, forwardPlan, forwardProgram, forwardWorkgroupBytes,
} from './attention_forward';
import { f16Pairing, forwardF16 } from './attention_forward_f16';
import { NEG_INF_BITS } from './attention_wgsl';
import { attentionLayouts, boxDispatches, planBoxes, UnitGeometry, unitGeometry } from './chunks';
import {
  attentionInputBuffers, Chunking, Dispatch, isSoftwareAdapter, makeOutput, pooledScratch, ProgramRun, runPrograms,
  subgroupMinSize,
} from './runtime';
import { splitForwardWebGPU } from './flash_attention_split';
import { mergeGrid, mergeProgram } from './merge_splits';
import { chooseTiles, FORWARD_TILES, forwardTileCandidates, subgroupReduceFits, Tiles } from './tiles';
import { maxBindingBytes, webgpuAttentionTuning } from './tuning';

export function isAttentionConfig(attrs: NamedAttrMap | undefined): attrs is NamedAttrMap & AttentionConfig {
  return typeof attrs === 'object' && attrs !== null && typeof attrs.headsQ === 'number' &&
    Array.isArray(attrs.biasShape) && typeof attrs.layout === 'string';
}

export function webgpuBackendOf(backend: unknown): WebGPUBackend {
  const b = backend as Partial<WebGPUBackend>;
  if (!b || !b.device || !b.tensorMap) throw new Error('flashAttention: the webgpu kernel needs the webgpu backend');
  return b as WebGPUBackend;
}

export { webgpuAttentionTuning, maxBindingBytes } from './tuning';

export function useSubgroupsFor(device: GPUDevice, t: Tiles): boolean {
  return webgpuAttentionTuning.subgroups && subgroupReduceFits(t, subgroupMinSize(device));
}

const SOFTWARE_TILES: Tiles = { rows: 8, cols: 8, rowsPerThread: 1, colsPerThread: 2 };

/** Chooses tiles that fit the device, preferring the subgroup path where it fits. */
export function pickTiles(device: GPUDevice, bytes: (t: Tiles, sg: boolean) => number, candidates: readonly Tiles[],
  preferred?: Tiles):
    { tiles: Tiles; useSubgroups: boolean } {
  const limit = device.limits.maxComputeWorkgroupStorageSize;
  const threads = device.limits.maxComputeInvocationsPerWorkgroup;
  // On a CPU adapter, compiling unrolled 4×4 register tiles takes seconds per program, and large
  // tiles buy nothing there.
  const choice = preferred ?? (isSoftwareAdapter(device) ? SOFTWARE_TILES : undefined);
  const tiles = chooseTiles(t => bytes(t, useSubgroupsFor(device, t)), limit, threads, candidates, choice);
  return { tiles, useSubgroups: useSubgroupsFor(device, tiles) };
}

/**
 * Splits over dispatches (chunks.ts) and builds each dispatch's bindings for the given tensors;
 * `chunking` (the program's) allows splitting one unit when even that does not fit.
 */
export function planDispatches(backend: WebGPUBackend, c: AttentionConfig, buffers: Record<string, GPUBuffer>,
  workgroups: (units: number, g: UnitGeometry) => [number, number, number], yPerUnit: (g: UnitGeometry) => number,
  chunking?: Chunking): Dispatch[] {
  const device = backend.device;
  const g = unitGeometry(c);
  const all = attentionLayouts(c);
  const layouts = Object.fromEntries(Object.keys(buffers).filter(n => all[n]).map(n => [n, all[n]]));
  const maxBytes = maxBindingBytes(device);
  const boxes = planBoxes(c, g, layouts, maxBytes, yPerUnit(g), device.limits.maxComputeWorkgroupsPerDimension, chunking);
  return boxDispatches(c, g, boxes, layouts, buffers, maxBytes, chunking, units => workgroups(units, g),
    { neg_inf_bits: NEG_INF_BITS, seed: c.dropoutSeed >>> 0 });
}

/**
 * A forward's programs under its block pairing (float32 and float16 alike; `build` makes the
 * forward program's run for a pairing and bound buffers): the forward alone, or with halved pairs
 * the forward writing partials into pooled scratch buffers (pushed onto `scratch`) and
 * merge_splits.ts' merge of the two halves into out and lse. The merge binds the partials and
 * outputs whole and does not read what an earlier key range wrote, so where those exceed the
 * binding limit or the dispatches split keys, the pairs run whole instead.
 */
function pairedForward<P extends BlockPairing>(backend: WebGPUBackend, c: AttentionConfig, plan: P,
  buffers: Record<string, GPUBuffer>, scratch: GPUBuffer[], build: (plan: P, bound: Record<string, GPUBuffer>) => ProgramRun):
    ProgramRun[] {
  if (!plan.halves) return [build(plan, buffers)];
  const rows = c.batch * c.headsQ * c.seqQ;
  const partialBytes = 2 * rows * Math.ceil(c.headDimV / 4) * 16;
  const maxBytes = maxBindingBytes(backend.device);
  if (Math.max(partialBytes, buffers.out.size, buffers.lse.size) <= maxBytes) {
    const [partialOut, partialLse] = [pooledScratch(backend, partialBytes), pooledScratch(backend, 2 * rows * 4)];
    scratch.push(partialOut, partialLse);
    const { out, lse, ...inputs } = buffers;
    const forward = build(plan, { ...inputs, partial_out: partialOut, partial_lse: partialLse });
    if (forward.dispatches.every(d => d.uniforms.accumulate === 0)) {
      const whole = (buffer: GPUBuffer) => ({ buffer, offset: 0, size: buffer.size });
      const merge: ProgramRun = {
        spec: mergeProgram(c, 2),
        dispatches: [{
          workgroups: mergeGrid(c),
          buffers: { partial_out: whole(partialOut), partial_lse: whole(partialLse), out: whole(out), lse: whole(lse) },
          uniforms: { neg_inf_bits: NEG_INF_BITS, off_partial_out: 0, off_partial_lse: 0, off_out: 0, off_lse: 0 },
        }],
      };
      return [forward, merge];
    }
  }
  // Halves infeasible: whole pairs where heads are wide (H100, D = 128 causal: 2.95 ms paired
  // against 5.7–8.7 one block per workgroup), else one block per workgroup, heaviest first
  // (D = 64: 1.43 ms, against 1.40–2.61 for whole pairs); bench/RESULTS.md, webgpu section.
  const wide = c.headDim > 64 || c.headDimV > 64;
  return [build({ ...plan, halves: false, paired: plan.paired && wide }, buffers)];
}

/** The float32 forward's programs (attention_forward.ts) under ForwardSchedule (tuning.ts). */
function float32Forward(backend: WebGPUBackend, c: AttentionConfig, aux: AuxLayout, withAux: boolean,
  buffers: Record<string, GPUBuffer>, scratch: GPUBuffer[]): ProgramRun[] {
  const device = backend.device;
  const build = (plan: ForwardPlan, bound: Record<string, GPUBuffer>): ProgramRun => {
    const schedule = plan.halves ? 'halves' : plan.paired ? 'paired' : 'blocks';
    const { tiles, useSubgroups } = pickTiles(device, (tl, sg) => forwardWorkgroupBytes(c, tl, sg),
      forwardTileCandidates(c, schedule), webgpuAttentionTuning.forwardTiles);
    const spec = forwardProgram(c, aux, withAux, tiles, useSubgroups, plan);
    return { spec, dispatches: planDispatches(backend, c, bound,
      (units, g) => forwardGrid(c, tiles.rows, units * g.queryHeadsPerUnit, plan), g => g.queryHeadsPerUnit, spec.chunking) };
  };
  return pairedForward(backend, c, forwardPlan(c, webgpuAttentionTuning.forwardSchedule), buffers, scratch, build);
}

const flashAttentionWebGPU: KernelFunc = ({ inputs, backend: anyBackend, attrs }): TensorInfo[] => {
  if (!isAttentionConfig(attrs)) throw new Error('FlashAttention (webgpu): attributes are not an AttentionConfig');
  const c: AttentionConfig = attrs;
  const backend = webgpuBackendOf(anyBackend);
  const t = unpackAttentionInputs(c, inputs);
  // Decode shapes (few query rows, many keys) spread the keys over workgroups (src/split_kv.ts).
  const splits = keySplits(c, FORWARD_TILES[0].rows);
  if (splits > 1) return splitForwardWebGPU(backend, c, t, splits);
  const device = backend.device;
  const buffers = attentionInputBuffers(backend, t);
  const out = makeOutput(backend, outputShape(c));
  const lse = makeOutput(backend, [c.batch, c.headsQ, c.seqQ]);
  buffers.out = out.buffer;
  buffers.lse = lse.buffer;

  // Everything that can throw (tiles, splitting) runs before the GPU work; the outputs made above
  // are released on the way out so a refused problem leaks nothing.
  const withAux = auxNeeded(c, false);
  const aux = auxLayout(c, false);
  const scratch: GPUBuffer[] = [];
  const auxBuffer = withAux ? pooledScratch(backend, aux.size * 4) : undefined;
  if (auxBuffer) scratch.push(auxBuffer);
  try {
    if (auxBuffer) buffers.aux = auxBuffer;
    const f16 = c.precision === 'float16' ? forwardF16(device, c, aux, withAux) : undefined;
    const programs = f16
      ? pairedForward(backend, c, f16Pairing(c), buffers, scratch, (plan, bound) => {
        const spec = f16.program(plan);
        return { spec, dispatches: planDispatches(backend, c, bound,
          (units, g) => forwardGrid(c, f16.rows, units * g.queryHeadsPerUnit, plan), g => g.queryHeadsPerUnit, spec.chunking) };
      })
      : float32Forward(backend, c, aux, withAux, buffers, scratch);
    runPrograms(backend, programs, encoder => {
      if (auxBuffer) encodeAuxCopies(backend, encoder, aux, auxBuffer, t);
    });
  } catch (error) {
    backend.disposeData(out.info.dataId);
    backend.disposeData(lse.info.dataId);
    throw error;
  } finally {
    // Later users of these pooled buffers are queued after this call's submission.
    for (const b of scratch) backend.bufferManager.releaseBuffer(b);
  }
  return [out.info, lse.info];
};

export const flashAttentionWebGPUConfig: KernelConfig = {
  kernelName: FlashAttention,
  backendName: 'webgpu',
  kernelFunc: flashAttentionWebGPU,
};
