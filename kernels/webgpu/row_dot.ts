// The backward's row pass: for every query row, D = rowsum(dO ∘ O) − dLse (the gradient of lse
// folds in here for free) and lse·log2 e (the base-2 log-sum-exp the other passes recompute P
// from), both written into the `aux` buffer's row-statistics regions. One thread per row.
import type { AttentionConfig } from '../../src/config';
import type { AuxLayout } from './aux';
import { COMMON_UNIFORMS, constants, storageBinding, tensorAccess, vec4V } from './attention_wgsl';
import { shaderConfig } from './attention_forward';
import { BindingSpec, ProgramSpec } from './runtime';

export const ROW_DOT_ROWS = 64;

export function rowDotBindings(c: AttentionConfig): BindingSpec[] {
  return [
    storageBinding('out', vec4V(c), false),
    storageBinding('dout', vec4V(c), false),
    storageBinding('lse', false, false),
    storageBinding('dlse', false, false),
    { name: 'aux', type: 'u32', write: true },
  ];
}

export function rowDotProgram(c: AttentionConfig, aux: AuxLayout): ProgramSpec {
  const bindings = rowDotBindings(c);
  const body = () => `
${constants(c)}
${tensorAccess(c, 'out', c.headsQ, c.seqQ, c.headDimV, vec4V(c), 'load')}
${tensorAccess(c, 'dout', c.headsQ, c.seqQ, c.headDimV, vec4V(c), 'load')}
@compute @workgroup_size(${ROW_DOT_ROWS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let i = u.row_start + wid.x * ${ROW_DOT_ROWS}u + lidx;
  let bh = u.unit_start * ${c.layout === 'BHSD' ? 'GROUP' : 'HQ'} + u.group_start + wid.y;
  if ((i >= u.row_end) | (wid.y >= u.heads_in_chunk)) { return; }
  let b = bh / HQ;
  let h = bh % HQ;
  var acc = vec4<f32>(0.0);
  for (var c = 0u; c < DV4; c++) { acc += load_out(b, h, i, c) * load_dout(b, h, i, c); }
  let row = bh * SEQQ + i;
  aux[${aux.rowTerm}u + row] = bitcast<u32>(acc.x + acc.y + acc.z + acc.w - dlse[row - u.off_dlse]);
  aux[${aux.lse}u + row] = bitcast<u32>(lse[row - u.off_lse] * LOG2E);
}
`;
  return {
    key: JSON.stringify({ program: 'row_dot', config: shaderConfig(c) }),
    bindings, uniforms: [...COMMON_UNIFORMS, ...bindings.map(b => `off_${b.name}`)], body,
    chunking: { rows: 1, keys: 1, accumulates: 'none' },
  };
}
