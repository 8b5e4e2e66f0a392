// lib/actq.wgsl: int8 activation codes (engine/src/act.rs has the math and
// the CPU reference): q = clamp(round(v * inv), -qmax, qmax), round half to
// even, four codes to a word with pack4xI8 (lane 0 in the low byte). Used by
// act_quant.wgsl and rmsnorm_quant.wgsl, whose parameter blocks carry an
// `act: ActParams` member.

struct ActParams {
    // 1: per-row scale from the row's max |v|; 0: `scale` / `inv_scale`.
    dynamic: u32,
    qmax: f32,
    scale: f32,
    inv_scale: f32,
}

// A row's (scale, inv) given its max |v| (read only in the dynamic mode;
// both 0 for a row of zeros).
fn act_scale(a: ActParams, amax: f32) -> vec2<f32> {
    if a.dynamic == 0u {
        return vec2<f32>(a.scale, a.inv_scale);
    }
    return select(vec2<f32>(0.0), vec2<f32>(amax / a.qmax, a.qmax / amax), amax > 0.0);
}

// Four values as one word of codes.
fn act_codes4(v: vec4<f32>, inv: f32, qmax: f32) -> u32 {
    return pack4xI8(vec4<i32>(clamp(round(v * inv), vec4<f32>(-qmax), vec4<f32>(qmax))));
}

// The largest magnitude of four values.
fn amax4(v: vec4<f32>) -> f32 {
    let a = abs(v);
    return max(max(a.x, a.y), max(a.z, a.w));
}
