// rmsnorm.wgsl: out = x / sqrt(mean(x^2) + eps) * w, one workgroup per row.
// Uses lib/reduce.wgsl (wg_sum).

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// 64: each invocation sums dim / 64 values; a wider group only adds
// barrier rounds (on llvmpipe every barrier switches all of the group's
// SIMD batches: with 256, RMSNorm took 9.2-9.7% of an 8-token prefill step
// of the default model, with 64 5.7-6.2%). A row is a few KiB, so 64
// invocations keep a GPU's memory busy too.
const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows { return; }
    let base = row * p.dim;
    var ss = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = x[base + i];
        ss += v * v;
    }
    let total = wg_sum(lid, ss, WG);
    let inv = inverseSqrt(total / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        out[base + i] = x[base + i] * inv * w[i];
    }
}
