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
    let hd = x.len();
    let levels = ((1u32 << bits) - 1) as f32;
    let mut codes = vec![0u32; (hd * bits as usize).div_ceil(32)];
    let mut scales = Vec::with_capacity(hd / qgroup);
    for (gi, g) in x.chunks(qgroup).enumerate() {
        let mn = g.iter().copied().fold(f32::INFINITY, f32::min);
        let mx = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s16 = round_f16((mx - mn) / levels);
        let m16 = round_f16(mn);
        scales.push(scale_word(s16, m16));
        let inv = if s16 > 0.0 { 1.0 / s16 } else { 0.0 };
        for (i, &v) in g.iter().enumerate() {
            let c = gi * qgroup + i;
            let q = ((v - m16) * inv).round_ties_even().clamp(0.0, levels) as u32;
            let bit = c * bits as usize;
            codes[bit / 32] |= q << (bit % 32);
        }
    }
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

/// CPU reference of a row under static words: its code words only.
/// `words` holds the head's one word, or one per channel.
pub fn quantize_static(x: &[f32], bits: u32, words: &[u32]) -> Vec<u32> {
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

/// Decodes a row of `head_dim` codes against static words (one, or one
/// per channel).
pub fn dequantize_static(codes: &[u32], bits: u32, words: &[u32], head_dim: usize) -> Vec<f32> {
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
    let mut aux = Vec::with_capacity(hd);
    let mut sm = Vec::with_capacity(hd);
    for c in 0..hd {
        let mn = rows.iter().map(|r| r[c]).fold(f32::INFINITY, f32::min);
        let mx = rows.iter().map(|r| r[c]).fold(f32::NEG_INFINITY, f32::max);
        let (s16, m16) = (round_f16((mx - mn) / levels), round_f16(mn));
        aux.push(scale_word(s16, m16));
        sm.push((s16, m16));
    }
    let codes = rows
        .iter()
        .map(|r| {
            let mut w = vec![0u32; (hd * bits as usize).div_ceil(32)];
            for (c, (&v, &(s, m))) in r.iter().zip(&sm).enumerate() {
                let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                let q = ((v - m) * inv).round_ties_even().clamp(0.0, levels) as u32;
                let bit = c * bits as usize;
                w[bit / 32] |= q << (bit % 32);
            }
            w
        })
        .collect();
    (codes, aux)
}

/// Decodes a per-channel integer key row against its group's aux words.
pub fn dequantize_channels(codes: &[u32], aux: &[u32], bits: u32) -> Vec<f32> {
    let mask = (1u32 << bits) - 1;
    aux.iter()
        .enumerate()
        .map(|(c, &sw)| {
            let bit = c * bits as usize;
            let q = (codes[bit / 32] >> (bit % 32)) & mask;
            let [s, m] = unpack_f16x2(sw);
            m + s * q as f32
        })
        .collect()
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
    let mask = (1u32 << bits) - 1;
    (0..head_dim)
        .map(|c| {
            let bit = c * bits as usize;
            let q = (words[bit / 32] >> (bit % 32)) & mask;
            let [s, m] = unpack_f16x2(words[code_words + c / qgroup]);
            m + s * q as f32
        })
        .collect()
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
