// The merge pass of the split-KV forward (src/split_kv.ts): one workgroup per query row, thread t
// owning output column t (vec4). It combines the key ranges' partial outputs O_s and lse_s:
//   lse = M + ln Σ_s exp(lse_s − M) (M = max_s lse_s),   O = Σ_s exp(lse_s − lse) · O_s
// Empty ranges (lse_s = −∞) weigh 0; a row whose ranges are all empty gets output 0 and lse −∞.
// Non-finite statistics are decided by their bits, not by max() (implementation-defined for NaN
// in WGSL): any NaN lse_s makes the row NaN, and a +∞ one gives lse +∞ with a NaN output, which is
// what the one-pass program writes for such rows.
import type { AttentionConfig } from '../../src/config';
import { constants, storageBinding, tensorAccess, vec4V } from './attention_wgsl';
import type { BindingSpec, ProgramSpec } from './runtime';

const WG = 64;

/** The config fields the shader depends on (the dropout seed does not matter here). */
function shaderFields(c: AttentionConfig): Omit<AttentionConfig, 'dropoutSeed'> {
  const { dropoutSeed: _seed, ...rest } = c;
  return rest;
}
const MAX_X = 65535;

export function mergeBindings(c: AttentionConfig): BindingSpec[] {
  return [
    { name: 'partial_out', type: 'vec4<f32>', write: false },
    { name: 'partial_lse', type: 'f32', write: false },
    storageBinding('out', vec4V(c), true),
    storageBinding('lse', false, true),
  ];
}

/** One workgroup per row of [B·Hq·Nq], wrapped onto y past the x limit. */
export function mergeGrid(c: AttentionConfig): [number, number, number] {
  const rows = c.batch * c.headsQ * c.seqQ;
  return [Math.min(rows, MAX_X), Math.ceil(rows / MAX_X), 1];
}

export function mergeProgram(c: AttentionConfig, splits: number): ProgramSpec {
  const bindings = mergeBindings(c);
  const uniforms = ['neg_inf_bits', ...bindings.map(b => `off_${b.name}`)];
  const body = () => `
${constants(c)}
const SPLITS = ${splits}u;
const ROWS = ${c.batch * c.headsQ * c.seqQ}u;
${tensorAccess(c, 'out', c.headsQ, c.seqQ, c.headDimV, vec4V(c), 'store')}
fn isNan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let row = wid.y * ${MAX_X}u + wid.x;
  if (row >= ROWS) { return; }
  var m = negInf();
  var nan = false;
  for (var s = 0u; s < SPLITS; s++) {
    let x = partial_lse[s * ROWS + row - u.off_partial_lse];
    nan = nan | isNan(x);
    if (!isNan(x)) { m = max(m, x); }
  }
  let empty = m == negInf();
  let special = nan | (m == -negInf());
  let mUse = select(m, 0.0, empty | special);
  var sum = 0.0;
  var acc = vec4<f32>(0.0);
  for (var s = 0u; s < SPLITS; s++) {
    let x = partial_lse[s * ROWS + row - u.off_partial_lse];
    if (special | isNan(x) | (x == negInf())) { continue; }
    let w = exp(x - mUse);
    sum += w;
    if (lidx < DV4) { acc += w * partial_out[(s * ROWS + row) * DV4 + lidx - u.off_partial_out]; }
  }
  let b = row / (HQ * SEQQ);
  let h = (row / SEQQ) % HQ;
  let i = row % SEQQ;
  let nanValue4 = vec4<f32>(bitcast<f32>(u.neg_inf_bits | 0x7fc00000u));
  if (lidx < DV4) {
    let o = select(select(acc / sum, vec4<f32>(0.0), empty), nanValue4, special);
    store_out(b, h, i, lidx, o);
  }
  if (lidx == 0u) {
    let value = select(select(mUse + log(sum), negInf(), empty), select(-negInf(), nanValue4.x, nan), special);
    lse[row - u.off_lse] = value;
  }
}
`;
  return {
    key: JSON.stringify({ program: 'merge_splits', config: shaderFields(c), splits }),
    bindings, uniforms, body,
  };
}
