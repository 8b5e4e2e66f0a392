// rmsnorm.wgsl: out = x / sqrt(mean(x^2) + eps) * w, one workgroup per row.
// Uses lib/reduce.wgsl and lib/rownorm.wgsl (row_inv_rms, NORM_WG).

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

@compute @workgroup_size(NORM_WG)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows { return; }
    let base = row * p.dim;
    let inv = row_inv_rms(base, p.dim, p.eps, lid);
    for (var i = lid; i < p.dim; i += NORM_WG) {
        out[base + i] = x[base + i] * inv * w[i];
    }
}
