// act_quant.wgsl: symmetric int8 codes of f32 activations, one workgroup per
// row (PrefixQuant, arXiv 2410.05265: static per-tensor scales; or a dynamic
// per-token scale). q = clamp(round(x * inv), -qmax, qmax) with WGSL's round
// (half to even), packed four to a word with pack4xI8 (lane 0 in the low
// byte). Static: inv = 1 / scale from the host, `scale` written to every
// row's slot. Dynamic: scale = amax / qmax, inv = qmax / amax (both 0 when
// the row is all zeros). Uses lib/reduce.wgsl (wg_max).
// Mirrors engine/src/ops/act_quant.rs (ActQuantParams, reference()).

struct Params {
    rows: u32,
    // Words per row: cols / 4.
    words: u32,
    // 1: per-row scale from the row's max |x|; 0: `scale` / `inv_scale`.
    dynamic: u32,
    qmax: f32,
    scale: f32,
    inv_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn act_quant(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.words;
    var scale = p.scale;
    var inv = p.inv_scale;
    if p.dynamic != 0u {
        var m = 0.0;
        for (var i = lid; i < p.words; i += WG) {
            let a = abs(x[base + i]);
            m = max(m, max(max(a.x, a.y), max(a.z, a.w)));
        }
        let amax = wg_max(lid, m, WG);
        scale = select(0.0, amax / p.qmax, amax > 0.0);
        inv = select(0.0, p.qmax / amax, amax > 0.0);
    }
    let qmax = vec4<f32>(p.qmax);
    for (var i = lid; i < p.words; i += WG) {
        let q = clamp(round(x[base + i] * inv), -qmax, qmax);
        codes[base + i] = pack4xI8(vec4<i32>(q));
    }
    if lid == 0u {
        scales[row] = scale;
    }
}
