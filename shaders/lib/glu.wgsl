// lib/glu.wgsl: SwiGLU's gate activation (engine/src/ops/swiglu.rs): silu(x)
// = x * sigmoid(x), with the sigmoid as 1 / (1 + e) or e / (1 + e), e =
// exp(-|x|) in (0, 1]: no overflow, no x / inf. Used by swiglu.wgsl and by
// the matmul kernels that apply SwiGLU while loading their input (the down
// projection's GLU override, lib/xload.wgsl).

fn silu(x: f32) -> f32 {
    let e = exp(-abs(x));
    let s = select(e, 1.0, x >= 0.0) / (1.0 + e);
    return x * s;
}

fn silu4(x: vec4<f32>) -> vec4<f32> {
    let e = exp(-abs(x));
    let s = select(e, vec4<f32>(1.0), x >= vec4<f32>(0.0)) / (1.0 + e);
    return x * s;
}
