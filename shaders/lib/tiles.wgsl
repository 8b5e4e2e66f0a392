// lib/tiles.wgsl: helpers of the matmul kernels (lib/qmatmul.wgsl,
// lib/mxmatmul.wgsl; XBlock comes from lib/xload.wgsl or lib/xload_sg.wgsl).

// acc + (dot(x0, w), dot(x1, w), dot(x2, w), dot(x3, w)), as fma chains.
fn fma_tok(acc: vec4<f32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
           w: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(fma(x0.x, w.x, fma(x0.y, w.y, fma(x0.z, w.z, fma(x0.w, w.w, acc.x)))),
                     fma(x1.x, w.x, fma(x1.y, w.y, fma(x1.z, w.z, fma(x1.w, w.w, acc.y)))),
                     fma(x2.x, w.x, fma(x2.y, w.y, fma(x2.z, w.z, fma(x2.w, w.w, acc.z)))),
                     fma(x3.x, w.x, fma(x3.y, w.y, fma(x3.z, w.z, fma(x3.w, w.w, acc.w)))));
}

// 4-bit codes (8 to a word, code k at bit 4k) masked in place: component k
// of nibs_lo / nibs_hi is nibble k (or 4 + k) of the word times 16^k, except
// nibble 7, shifted down (a mask would leave it above i32's range). x is
// pre-scaled to match (nib_scale), which saves a shift per weight; the
// products are exact, so nothing is lost.
fn nibs_lo(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(vec4<u32>(w) & vec4<u32>(0xfu, 0xf0u, 0xf00u, 0xf000u)));
}
fn nibs_hi(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(vec4<u32>(w & 0xf0000u, w & 0xf00000u, w & 0xf000000u, w >> 28u)));
}
const X_LO = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const X_HI = vec4<f32>(0.0000152587890625, 9.5367431640625e-7, 5.9604644775390625e-8, 1.0);


// An x block pre-scaled for nib_dot.
fn nib_scale(b: XBlock) -> XBlock {
    var r: XBlock;
    r.v[0] = b.v[0] * X_LO;
    r.v[1] = b.v[1] * X_HI;
    r.v[2] = b.v[2] * X_LO;
    r.v[3] = b.v[3] * X_HI;
    r.v[4] = b.v[4] * X_LO;
    r.v[5] = b.v[5] * X_HI;
    r.v[6] = b.v[6] * X_LO;
    r.v[7] = b.v[7] * X_HI;
    return r;
}

// sum(q x) over 32 4-bit codes in four words, x from nib_scale; four
// accumulation chains.
fn nib_dot(w: vec4<u32>, xs: XBlock) -> f32 {
    var a = nibs_lo(w[0]) * xs.v[0];
    a = fma(nibs_hi(w[0]), xs.v[1], a);
    a = fma(nibs_lo(w[1]), xs.v[2], a);
    a = fma(nibs_hi(w[1]), xs.v[3], a);
    a = fma(nibs_lo(w[2]), xs.v[4], a);
    a = fma(nibs_hi(w[2]), xs.v[5], a);
    a = fma(nibs_lo(w[3]), xs.v[6], a);
    a = fma(nibs_hi(w[3]), xs.v[7], a);
    return (a.x + a.y) + (a.z + a.w);
}

// The sum of an x block's 32 values.
fn x_sum(b: XBlock) -> f32 {
    let s = ((b.v[0] + b.v[1]) + (b.v[2] + b.v[3])) + ((b.v[4] + b.v[5]) + (b.v[6] + b.v[7]));
    return (s.x + s.y) + (s.z + s.w);
}
