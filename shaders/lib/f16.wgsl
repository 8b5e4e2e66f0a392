// lib/f16.wgsl: f16 values stored two per u32 word (low half first), so that
// no optional SHADER_F16 feature is needed to read them.

// Element i of an f16 array packed in u32 words.
fn f16_at(words: u32, i: u32) -> f32 {
    return unpack2x16float(words)[i & 1u];
}

// pack2x16float is indeterminate outside the f16 range, so saturate first.
const F16_MAX: f32 = 65504.0;

// Two values as an f16 pair (low half first), saturated, nearest even.
fn to_f16x2(x: vec2<f32>) -> u32 {
    return pack2x16float(clamp(x, vec2(-F16_MAX), vec2(F16_MAX)));
}
