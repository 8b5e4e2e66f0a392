// rmsnorm_quant.wgsl: RMSNorm whose output goes straight to int8 codes, one
// workgroup per row: v = x / sqrt(mean(x^2) + eps) * w, then the quantizer
// of lib/actq.wgsl (static or dynamic scale), so the norm and act_quant are
// one dispatch and v never reaches memory. The sum of squares is
// lib/rownorm.wgsl's, as in rmsnorm.wgsl, so the codes equal rmsnorm then
// act_quant bit for bit.
// Uses lib/reduce.wgsl (wg_sum, wg_max), lib/rownorm.wgsl and lib/actq.wgsl.
// Mirrors engine/src/ops/rmsnorm_quant.rs (RmsNormQuantParams).

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
    act: ActParams,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> scales: array<f32>;

// Normalized columns 4k .. 4k + 3 of the row at `base`.
fn norm4(base: u32, k: u32, inv: f32) -> vec4<f32> {
    let c = 4u * k;
    let xv = vec4<f32>(x[base + c], x[base + c + 1u], x[base + c + 2u], x[base + c + 3u]);
    return xv * inv * vec4<f32>(w[c], w[c + 1u], w[c + 2u], w[c + 3u]);
}

@compute @workgroup_size(NORM_WG)
fn rmsnorm_quant(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.dim;
    let inv = row_inv_rms(base, p.dim, p.eps, lid);
    let words = p.dim / 4u;
    var amax = 0.0;
    if p.act.dynamic != 0u {
        var m = 0.0;
        for (var k = lid; k < words; k += NORM_WG) {
            m = max(m, amax4(norm4(base, k, inv)));
        }
        amax = wg_max(lid, m, NORM_WG);
    }
    let s = act_scale(p.act, amax);
    for (var k = lid; k < words; k += NORM_WG) {
        codes[row * words + k] = act_codes4(norm4(base, k, inv), s.y, p.act.qmax);
    }
    if lid == 0u {
        scales[row] = s.x;
    }
}
