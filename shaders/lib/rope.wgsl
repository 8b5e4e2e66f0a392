// lib/rope.wgsl: RoPE's angles and pairs, shared by rope.wgsl and
// rope_kv_f16.wgsl (engine/src/ops/rope.rs). The including shader's `p`
// has head_dim, pos, style (0 interleaved, 1 neox) and log2_theta; uses
// lib/trig.wgsl (sincos, exp2_accurate).

// (sin, cos) of position pos's angle for pair j, its frequency divided by
// `div`.
fn angle_sincos(pos: u32, j: u32, div: f32) -> vec2<f32> {
    // freq = theta^(-2j/d); the exponent's quotient is rounded as the host's is.
    let freq = exp2_accurate(-(f32(2u * j) / f32(p.head_dim)) * p.log2_theta) / div;
    // The angle as the CPU reference rounds it: one f32 product.
    return sincos(f32(pos) * freq);
}

// The elements of pair j within a head.
fn pair(j: u32) -> vec2<u32> {
    if p.style == 1u {
        return vec2<u32>(j, j + p.head_dim / 2u);
    }
    return vec2<u32>(2u * j, 2u * j + 1u);
}

// A pair rotated by the angle whose (sin, cos) is sc.
fn rotate(x: vec2<f32>, sc: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(x.x * sc.y - x.y * sc.x, x.x * sc.x + x.y * sc.y);
}

