// lib/f16.wgsl: f16 values stored two per u32 word (low half first), so that
// no optional SHADER_F16 feature is needed to read them.

// Element i of an f16 array packed in u32 words.
fn f16_at(words: u32, i: u32) -> f32 {
    return unpack2x16float(words)[i & 1u];
}
