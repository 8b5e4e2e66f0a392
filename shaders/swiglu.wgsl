// swiglu.wgsl: out = silu(gate) * up (silu: lib/glu.wgsl). Each invocation handles 4 elements
// spaced a workgroup apart, so loads stay coalesced.

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const PER_THREAD: u32 = 4u;

@compute @workgroup_size(WG)
fn swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let base = (wid.x + wid.y * nwg.x) * WG * PER_THREAD + lid;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = base + k * WG;
        if i < p.n {
            out[i] = silu(gate[i]) * up[i];
        }
    }
}
