// lib/tiles.wgsl: a helper of the tiled matmul kernels (lib/qmatmul.wgsl,
// lib/mxmatmul.wgsl).

// acc + (dot(x0, w), dot(x1, w), dot(x2, w), dot(x3, w)), as fma chains.
fn fma_tok(acc: vec4<f32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
           w: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(fma(x0.x, w.x, fma(x0.y, w.y, fma(x0.z, w.z, fma(x0.w, w.w, acc.x)))),
                     fma(x1.x, w.x, fma(x1.y, w.y, fma(x1.z, w.z, fma(x1.w, w.w, acc.y)))),
                     fma(x2.x, w.x, fma(x2.y, w.y, fma(x2.z, w.z, fma(x2.w, w.w, acc.z)))),
                     fma(x3.x, w.x, fma(x3.y, w.y, fma(x3.z, w.z, fma(x3.w, w.w, acc.w)))));
}
