// act_quant.wgsl: symmetric int8 codes of f32 activations and a scale per
// row (PrefixQuant, arXiv 2410.05265), one workgroup per row; the quantizer
// (static or dynamic scale, round half to even, pack4xI8) is lib/actq.wgsl.
// Uses lib/reduce.wgsl (wg_max) and lib/actq.wgsl.
// Mirrors engine/src/ops/act_quant.rs (ActQuantParams).

struct Params {
    rows: u32,
    // Words per row: cols / 4.
    words: u32,
    _pad0: u32,
    _pad1: u32,
    act: ActParams,
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
    var amax = 0.0;
    if p.act.dynamic != 0u {
        var m = 0.0;
        for (var i = lid; i < p.words; i += WG) {
            m = max(m, amax4(x[base + i]));
        }
        amax = wg_max(lid, m, WG);
    }
    let s = act_scale(p.act, amax);
    for (var i = lid; i < p.words; i += WG) {
        codes[base + i] = act_codes4(x[base + i], s.y, p.act.qmax);
    }
    if lid == 0u {
        scales[row] = s.x;
    }
}
