//! Host helpers for both caches: f16 values and rows as the shaders store
//! them, and the CPU quantizers and decoders of the integer formats (the
//! references the store's kernels are tested against; model/ uses them to
//! fill the pivot segment).

/// Largest finite f16; larger magnitudes saturate.
pub const F16_MAX: f32 = 65504.0;

/// `x` rounded to f16 as the shaders store it: saturated, nearest even
/// (WGSL leaves out-of-range `pack2x16float` indeterminate, so the shaders
/// clamp first).
pub fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x.clamp(-F16_MAX, F16_MAX)).to_f32()
}

/// CPU reference of an integer row: quantizes `x` (head_dim values, already
/// f16-rounded) to `bits` with groups of `qgroup` channels; returns the
/// row's words (codes, then scale words).
pub fn quantize_row(x: &[f32], bits: u32, qgroup: usize) -> Vec<u32> {
    let levels = ((1u32 << bits) - 1) as f32;
    let scales: Vec<u32> = x
        .chunks(qgroup)
        .map(|g| {
            let mn = g.iter().copied().fold(f32::INFINITY, f32::min);
            let mx = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            scale_word(round_f16((mx - mn) / levels), round_f16(mn))
        })
        .collect();
    let per_channel: Vec<u32> = (0..x.len()).map(|c| scales[c / qgroup]).collect();
    let mut codes = encode_row(x, bits, &per_channel);
    codes.extend(scales);
    codes
}

/// A KV head's static `(scale, min)` word (`static_scales` layouts): the
/// symmetric `scale` rounded to f16, and `min = -2^(bits-1) * scale`, so a
/// code `c` in `0..2^bits` decodes to `scale * (c - 2^(bits-1))` (signed
/// codes -8..=7 at 4 bits). `scale` must be positive.
pub fn static_word(scale: f32, bits: u32) -> u32 {
    let s16 = round_f16(scale);
    scale_word(s16, -((1u32 << (bits - 1)) as f32) * s16)
}

/// A static per-channel key word (`static_scales` with `k_channel`):
/// `pack2x16float(scale, min)` of both rounded to f16.
pub fn affine_word(scale: f32, min: f32) -> u32 {
    scale_word(round_f16(scale), round_f16(min))
}

/// The code words of row `x` against `(scale, min)` words: one for every
/// channel, or one per channel: `c = clamp(round((x - min) / scale), 0,
/// 2^bits - 1)`, by the reciprocal as the shaders compute it. Every integer
/// format's CPU quantizer ends here (a static cache's rows directly).
pub fn encode_row(x: &[f32], bits: u32, words: &[u32]) -> Vec<u32> {
    let levels = ((1u32 << bits) - 1) as f32;
    let mut codes = vec![0u32; (x.len() * bits as usize).div_ceil(32)];
    for (c, &v) in x.iter().enumerate() {
        let [s, m] = unpack_f16x2(words[c % words.len()]);
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        let q = ((v - m) * inv).round_ties_even().clamp(0.0, levels) as u32;
        let bit = c * bits as usize;
        codes[bit / 32] |= q << (bit % 32);
    }
    codes
}

/// Decodes a row of `head_dim` codes against `(scale, min)` words (one, or
/// one per channel): `min + scale * c`, the inverse of [`encode_row`].
pub fn decode_row(codes: &[u32], bits: u32, words: &[u32], head_dim: usize) -> Vec<f32> {
    let mask = (1u32 << bits) - 1;
    (0..head_dim)
        .map(|c| {
            let [s, m] = unpack_f16x2(words[c % words.len()]);
            let bit = c * bits as usize;
            m + s * ((codes[bit / 32] >> (bit % 32)) & mask) as f32
        })
        .collect()
}

/// CPU reference of per-channel integer keys (`k_channel`): quantizes a
/// token group (`rows`, each `head_dim` f16-rounded values) with one
/// `(scale, min)` per channel over the group; returns each row's code words
/// and the group's `head_dim` scale words (its aux words).
pub fn quantize_channels(rows: &[Vec<f32>], bits: u32) -> (Vec<Vec<u32>>, Vec<u32>) {
    let hd = rows.first().map_or(0, Vec::len);
    let levels = ((1u32 << bits) - 1) as f32;
    let aux: Vec<u32> = (0..hd)
        .map(|c| {
            let mn = rows.iter().map(|r| r[c]).fold(f32::INFINITY, f32::min);
            let mx = rows.iter().map(|r| r[c]).fold(f32::NEG_INFINITY, f32::max);
            scale_word(round_f16((mx - mn) / levels), round_f16(mn))
        })
        .collect();
    let codes = rows.iter().map(|r| encode_row(r, bits, &aux)).collect();
    (codes, aux)
}

/// Decodes a per-channel integer key row against its group's aux words.
pub fn dequantize_channels(codes: &[u32], aux: &[u32], bits: u32) -> Vec<f32> {
    decode_row(codes, bits, aux, aux.len())
}

/// `pack2x16float(scale, min)` of f16-exact values.
fn scale_word(s: f32, m: f32) -> u32 {
    u32::from(half::f16::from_f32(s).to_bits())
        | (u32::from(half::f16::from_f32(m).to_bits()) << 16)
}

/// `unpack2x16float`.
pub fn unpack_f16x2(w: u32) -> [f32; 2] {
    [
        half::f16::from_bits(w as u16).to_f32(),
        half::f16::from_bits((w >> 16) as u16).to_f32(),
    ]
}

/// Decodes an integer row of `head_dim` values.
pub fn dequantize_row(words: &[u32], bits: u32, qgroup: usize, head_dim: usize) -> Vec<f32> {
    let code_words = (head_dim * bits as usize).div_ceil(32);
    let per_channel: Vec<u32> = (0..head_dim)
        .map(|c| words[code_words + c / qgroup])
        .collect();
    decode_row(&words[..code_words], bits, &per_channel, head_dim)
}

/// Decodes an f16 row.
pub fn f16_row(words: &[u32]) -> Vec<f32> {
    words.iter().flat_map(|w| unpack_f16x2(*w)).collect()
}

/// Encodes an f16 row (values saturated and rounded to nearest even).
pub fn f16_words(x: &[f32]) -> Vec<u32> {
    x.chunks_exact(2)
        .map(|p| {
            u32::from(half::f16::from_f32(round_f16(p[0])).to_bits())
                | (u32::from(half::f16::from_f32(round_f16(p[1])).to_bits()) << 16)
        })
        .collect()
}
