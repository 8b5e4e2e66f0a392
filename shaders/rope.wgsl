// rope.wgsl: rotary position embedding in place. One invocation per
// (token, pair j): the angle's sin/cos are computed once and applied to
// pair j of every head. Uses lib/trig.wgsl (sincos).

struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    pos: u32,
    style: u32,
    log2_theta: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half = p.head_dim / 2u;
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if idx >= p.n_tokens * half { return; }
    let t = idx / half;
    let j = idx % half;
    // freq = theta^(-2j/d); the exponent's quotient is rounded as the host's is.
    let freq = exp2_accurate(-(f32(2u * j) / f32(p.head_dim)) * p.log2_theta);
    // The angle as the CPU reference rounds it: one f32 product.
    let sc = sincos(f32(p.pos + t) * freq);
    var a = 2u * j;
    var b = 2u * j + 1u;
    if p.style == 1u {
        a = j;
        b = j + half;
    }
    for (var h = 0u; h < p.n_heads; h++) {
        let base = (t * p.n_heads + h) * p.head_dim;
        let x0 = x[base + a];
        let x1 = x[base + b];
        x[base + a] = x0 * sc.y - x1 * sc.x;
        x[base + b] = x0 * sc.x + x1 * sc.y;
    }
}
