//! Block decoders for the GGUF formats beyond Q4_0 / Q4_1 / Q8_0: the
//! 5-bit legacy formats, the k-quants and the IQ4 lookup formats, on the CPU.
//!
//! One function per format decodes one block. Each follows ggml's reference
//! `dequantize_row_*` (ggml-quants.c; block structs in ggml-common.h) and
//! gguf-py's `gguf.quants.dequantize`, including the order of the f32
//! operations, so the values are bit-identical to theirs (checked against
//! gguf-py's output by tests/tests/kquant_blocks.rs).
//!
//! Blocks of 32 elements; `e` is the element, `j` in `0..16`:
//!
//! | format | bytes | layout | element order | value |
//! |---|---|---|---|---|
//! | Q5_0 | 22 | f16 d, qh u32 LE, qs[16] | e = j: low nibble of qs[j], high bit = bit j of qh; e = j+16: high nibble, bit j+16 | d * (q - 16) |
//! | Q5_1 | 24 | f16 d, f16 m, qh u32 LE, qs[16] | as Q5_0 | d * q + m |
//! | IQ4_NL | 18 | f16 d, qs[16] | e = j: low nibble of qs[j]; e = j+16: high nibble | d * K[q] |
//!
//! Super-blocks of 256 elements, in sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or
//! 32 (Q4_K, Q5_K, IQ4_XS) with their own scale `s` (and min `m`):
//!
//! | format | bytes | layout | value |
//! |---|---|---|---|
//! | Q2_K | 84 | scales[16] (low nibble s, high nibble m), qs[64], f16 d, f16 dmin | (d * s) * q - (dmin * m), q in 0..4 |
//! | Q3_K | 110 | hmask[32], qs[64], scales[12] (16 x 6 bits), f16 d | (d * (s - 32)) * q, q in -4..4 |
//! | Q4_K | 144 | f16 d, f16 dmin, scales[12] (8 x 6-bit s and m), qs[128] | (d * s) * q - (dmin * m), q in 0..16 |
//! | Q5_K | 176 | f16 d, f16 dmin, scales[12] as Q4_K, qh[32], qs[128] | as Q4_K, q in 0..32 |
//! | Q6_K | 210 | ql[128], qh[64], scales[16] i8, f16 d | (d * s) * (q - 32), q in 0..64 |
//! | IQ4_XS | 136 | f16 d, scales_h u16 LE, scales_l[4], qs[128] | (d * (s - 32)) * K[q] |
//!
//! K is the IQ4 table [`IQ4_LEVELS`]. Element order within a super-block
//! (`e` in 0..256, `h = e / 128`, `l = e % 32`):
//!
//! - Q2_K: the 2 bits at shift `2 * ((e % 128) / 32)` of `qs[32h + l]`;
//!   scale byte `e / 16`.
//! - Q3_K: the low 2 bits as Q2_K; bit `e / 32` of `hmask[l]` clear means
//!   subtract 4. Scale `i = e / 16`: its low 4 bits are the low nibble of
//!   `scales[i]` (i < 8) or the high nibble of `scales[i - 8]`; its high 2
//!   bits are at shift `2 * (i / 4)` of `scales[8 + i % 4]`.
//! - Q4_K: sub-block `j = e / 32`: the low (j even) or high (j odd) nibble of
//!   `qs[32 * (j / 2) + l]`. Scales ([`scale_min_k4`], ggml's
//!   `get_scale_min_k4`): for j < 4, s and m are the low 6 bits of bytes `j`
//!   and `j + 4`; for j >= 4, byte `j + 4` holds the low nibbles of s (low)
//!   and m (high), and the top 2 bits of bytes `j - 4` and `j` their high
//!   2 bits.
//! - Q5_K: as Q4_K, plus bit `j` of `qh[l]` as the fifth bit.
//! - Q6_K: quarter `k = (e % 128) / 32`: the low 4 bits are the low (k < 2)
//!   or high (k >= 2) nibble of `ql[64h + 32 * (k % 2) + l]`, the high 2
//!   bits those at shift `2k` of `qh[32h + l]`; scale `e / 16`.
//! - IQ4_XS: sub-block `j = e / 32`: element `32j + i` is the low (i < 16)
//!   or high nibble of `qs[16j + i % 16]`; its scale's low 4 bits are nibble
//!   `j % 2` of `scales_l[j / 2]`, its high 2 bits bits `2j, 2j + 1` of
//!   `scales_h`.
//!
//! Codes become f32 exactly; the scale products are rounded once each, in
//! the order the value column writes them (Rust never fuses `a * b - c`).

use half::f16;

/// IQ4_NL's and IQ4_XS's 16 non-uniform levels (ggml's `kvalues_iq4nl`).
pub const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Elements per k-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// Decodes `bytes` block by block into `out` with a one-block decoder; the
/// caller has checked that both hold the same whole number of blocks.
pub fn each_block<const B: usize, const N: usize>(
    bytes: &[u8],
    out: &mut [f32],
    decode: impl Fn(&[u8; B], &mut [f32; N]),
) {
    let blocks = bytes.as_chunks::<B>().0;
    for (b, y) in blocks.iter().zip(out.as_chunks_mut::<N>().0) {
        decode(b, y);
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The 5-bit codes of Q5_0 / Q5_1: nibbles of `qs`, fifth bits from `qh`.
fn codes_5bit(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for (j, &b) in qs.iter().enumerate() {
        q[j] = (b & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (b >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// Q5_0: `d * (q - 16)`.
pub fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let q = codes_5bit(u32_at(b, 2), &b[6..]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = d * (i32::from(q) - 16) as f32;
    }
}

/// Q5_1: `d * q + m`.
pub fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let q = codes_5bit(u32_at(b, 4), &b[8..]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = d * f32::from(q) + m;
    }
}

/// IQ4_NL: `d * K[q]`.
pub fn iq4_nl(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = y.split_at_mut(16);
    for (j, &q) in b[2..].iter().enumerate() {
        lo[j] = d * f32::from(IQ4_LEVELS[usize::from(q & 0x0f)]);
        hi[j] = d * f32::from(IQ4_LEVELS[usize::from(q >> 4)]);
    }
}

/// The 2-bit codes of Q2_K and Q3_K, element order: byte `32h + l` holds
/// elements `128h + 32k + l` at shift `2k`.
fn codes_2bit(qs: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (e, q) in q.iter_mut().enumerate() {
        let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
        *q = (qs[32 * h + l] >> (2 * k)) & 3;
    }
    q
}

/// Q2_K: `(d * s) * q - (dmin * m)` per sub-block of 16.
pub fn q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let q = codes_2bit(qs);
    for ((y, q), &sm) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).zip(scales) {
        let dl = d * f32::from(sm & 0x0f);
        let ml = dmin * f32::from(sm >> 4);
        for (y, &q) in y.iter_mut().zip(q) {
            *y = dl * f32::from(q) - ml;
        }
    }
}

/// Q3_K's 16 6-bit scales, unpacked from 12 bytes (still offset by 32).
fn q3_k_scales(s: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = low | (high << 4);
    }
    out
}

/// Q3_K: `(d * (s - 32)) * q` per sub-block of 16, `q` in -4..4.
pub fn q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let low = codes_2bit(qs);
    let scales = q3_k_scales(scales);
    for (i, y) in y.chunks_exact_mut(16).enumerate() {
        let dl = d * (i32::from(scales[i]) - 32) as f32;
        for (t, y) in y.iter_mut().enumerate() {
            let e = 16 * i + t;
            // A set hmask bit is the code's third bit (q = low); clear, q = low - 4.
            let high = (hmask[e % 32] >> (e / 32)) & 1;
            let q = i32::from(low[e]) - if high == 0 { 4 } else { 0 };
            *y = dl * q as f32;
        }
    }
}

/// Scale and min of sub-block `j` (0..8) from Q4_K / Q5_K's 12 packed bytes
/// (ggml's `get_scale_min_k4`).
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K and Q5_K: `(d * s) * q - (dmin * m)` per sub-block of 32, the low
/// 4 bits of `q` from `qs`, the fifth from `qh` (Q5_K).
fn k4_k5(head: &[u8], qh: Option<&[u8]>, qs: &[u8], y: &mut [f32; QK_K]) {
    let (d, dmin, scales) = (f16_at(head, 0), f16_at(head, 2), &head[4..16]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (s, m) = scale_min_k4(j, scales);
        let d1 = d * f32::from(s);
        let m1 = dmin * f32::from(m);
        let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        for (l, y) in y.iter_mut().enumerate() {
            let mut q = (bytes[l] >> (4 * (j % 2))) & 0x0f;
            if let Some(qh) = qh {
                q |= ((qh[l] >> j) & 1) << 4;
            }
            *y = d1 * f32::from(q) - m1;
        }
    }
}

/// Q4_K: `(d * s) * q - (dmin * m)` per sub-block of 32.
pub fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    k4_k5(&b[..16], None, &b[16..], y);
}

/// Q5_K: as Q4_K with a fifth code bit from `qh`.
pub fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    k4_k5(&b[..16], Some(&b[16..48]), &b[48..], y);
}

/// Q6_K: `(d * s) * (q - 32)` per sub-block of 16.
pub fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (i, y) in y.chunks_exact_mut(16).enumerate() {
        let dl = d * f32::from(scales[i] as i8);
        for (t, y) in y.iter_mut().enumerate() {
            let e = 16 * i + t;
            let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = (ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0f;
            let high = (qh[32 * h + l] >> (2 * k)) & 3;
            let q = i32::from(low | (high << 4)) - 32;
            *y = dl * q as f32;
        }
    }
}

/// IQ4_XS: `(d * (s - 32)) * K[q]` per sub-block of 32.
pub fn iq4_xs(b: &[u8; 136], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let low = (scales_l[j / 2] >> (4 * (j % 2))) & 0x0f;
        let high = ((scales_h >> (2 * j)) & 3) as u8;
        let dl = d * (i32::from(low | (high << 4)) - 32) as f32;
        let (lo, hi) = y.split_at_mut(16);
        for (i, &q) in qs[16 * j..16 * j + 16].iter().enumerate() {
            lo[i] = dl * f32::from(IQ4_LEVELS[usize::from(q & 0x0f)]);
            hi[i] = dl * f32::from(IQ4_LEVELS[usize::from(q >> 4)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ggml::ggml_type_layout;

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// Copies `parts` into a block of `B` bytes, in order.
    fn block<const B: usize>(parts: &[&[u8]]) -> [u8; B] {
        let v = parts.concat();
        v.try_into().expect("block size")
    }

    /// Decodes one block.
    fn run<const B: usize, const N: usize>(
        decode: fn(&[u8; B], &mut [f32; N]),
        b: &[u8; B],
    ) -> [f32; N] {
        let mut y = [f32::NAN; N];
        decode(b, &mut y);
        y
    }

    /// (elements, bytes) of a decoder's block.
    fn layout<const B: usize, const N: usize>(_: fn(&[u8; B], &mut [f32; N])) -> (usize, usize) {
        (N, B)
    }

    #[test]
    fn block_sizes_match_ggml_table() {
        let pairs = [
            (6, layout(q5_0)),
            (7, layout(q5_1)),
            (10, layout(q2_k)),
            (11, layout(q3_k)),
            (12, layout(q4_k)),
            (13, layout(q5_k)),
            (14, layout(q6_k)),
            (20, layout(iq4_nl)),
            (23, layout(iq4_xs)),
        ];
        for (id, l) in pairs {
            assert_eq!(ggml_type_layout(id), Some(l), "ggml type {id}");
        }
    }

    #[test]
    fn q5_0_high_bits() {
        // qs[j] = j | (15 - j) << 4; qh sets the fifth bit of elements 0, 15, 16, 31.
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let qh = 0x8001_8001u32.to_le_bytes();
        let y = run(q5_0, &block(&[&f16b(0.5), &qh, &qs]));
        assert_eq!(y[0], 0.0); // 0 + 16 - 16
        assert_eq!(y[1], -7.5); // 0.5 * (1 - 16)
        assert_eq!(y[14], -1.0); // 0.5 * (14 - 16)
        assert_eq!(y[15], 7.5); // 0.5 * (15 + 16 - 16)
        assert_eq!(y[16], 7.5); // high nibble of qs[0] = 15, + 16
        assert_eq!(y[17], -1.0); // 14 - 16
        assert_eq!(y[30], -7.5); // high nibble of qs[14] = 1
        assert_eq!(y[31], 0.0); // 0 + 16 - 16
    }

    #[test]
    fn q5_1_scale_min_and_high_bit() {
        let qs: Vec<u8> = (0..16u8).map(|j| j | (j << 4)).collect();
        let qh = 0x8000_0000u32.to_le_bytes(); // element 31 only
        let y = run(q5_1, &block(&[&f16b(0.25), &f16b(-2.0), &qh, &qs]));
        assert_eq!(y[0], -2.0);
        assert_eq!(y[15], 1.75); // 0.25 * 15 - 2
        assert_eq!(y[16], -2.0);
        assert_eq!(y[30], 1.5); // 0.25 * 14 - 2
        assert_eq!(y[31], 5.75); // 0.25 * 31 - 2
    }

    #[test]
    fn iq4_nl_levels_and_nibbles() {
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let y = run(iq4_nl, &block(&[&f16b(2.0), &qs]));
        assert_eq!(y[0], -254.0); // 2 * K[0]
        assert_eq!(y[8], 2.0); // 2 * K[8] = 2 * 1
        assert_eq!(y[15], 226.0); // 2 * K[15]
        assert_eq!(y[16], 226.0); // high nibble of qs[0] = 15
        assert_eq!(y[31], -254.0);
    }

    #[test]
    fn q2_k_code_order() {
        // Every scale 1, every min 0, d = 1: y = q.
        let mut qs = [0u8; 64];
        qs[0] = 0b11_10_01_00; // elements 0, 32, 64, 96 = 0, 1, 2, 3
        qs[32 + 17] = 0b00_00_11_00; // element 128 + 32 + 17 = 177 = 3
        let y = run(q2_k, &block(&[&[1u8; 16], &qs, &f16b(1.0), &f16b(1.0)]));
        let mut want = [0.0f32; QK_K];
        (want[32], want[64], want[96], want[177]) = (1.0, 2.0, 3.0, 3.0);
        assert_eq!(y, want);
    }

    #[test]
    fn q2_k_scales_and_mins() {
        // All codes 3; scale byte i = (15 - i) << 4 | i: y = 3i - (15 - i) = 4i - 15.
        let scales: Vec<u8> = (0..16u8).map(|i| ((15 - i) << 4) | i).collect();
        let y = run(
            q2_k,
            &block(&[&scales, &[0xff; 64], &f16b(1.0), &f16b(1.0)]),
        );
        assert_eq!(y[0], -15.0);
        assert_eq!(y[15], -15.0);
        assert_eq!(y[16], -11.0);
        assert_eq!(y[255], 45.0);
    }

    #[test]
    fn q3_k_scale_packing() {
        // Codes 1 (low bits 01, hmask set): y = d * (s - 32).
        let mut s = [0u8; 12];
        s[0] = 0x5a; // low nibbles of scale 0 (0xa) and scale 8 (5)
        s[4] = 0x3c; // scale 4 (0xc) and scale 12 (3)
        s[7] = 0xf1; // scale 7 (1) and scale 15 (0xf)
        s[8] = 0b11_10_01_00; // high 2 bits of scales 0, 4, 8, 12
        s[11] = 0b11_00_00_10; // high 2 bits of scales 3, 7, 11, 15
        let y = run(q3_k, &block(&[&[0xff; 32], &[0x55; 64], &s, &f16b(0.5)]));
        let scale = |i: usize| y[16 * i] / 0.5 + 32.0;
        assert_eq!(scale(0), 10.0); // 0xa | 0 << 4
        assert_eq!(scale(4), 28.0); // 0xc | 1 << 4
        assert_eq!(scale(8), 37.0); // 5 | 2 << 4
        assert_eq!(scale(12), 51.0); // 3 | 3 << 4
        assert_eq!(scale(3), 32.0); // 0 | 2 << 4
        assert_eq!(scale(7), 1.0); // 1 | 0 << 4
        assert_eq!(scale(15), 63.0); // 0xf | 3 << 4
        assert_eq!(scale(1), 0.0);
        assert_eq!(y[0], -11.0); // 0.5 * (10 - 32)
        assert_eq!(y[16 * 15 + 15], 15.5);
    }

    #[test]
    fn q3_k_hmask_and_code_order() {
        // Every scale 33 (low nibble 1, high bits 2): d * (s - 32) = 1.
        let s = [[0x11u8; 8].as_slice(), &[0xaa; 4]].concat();
        let mut hmask = [0xffu8; 32];
        hmask[5] &= !(1 << 3); // element 3 * 32 + 5 = 101: q = 0 - 4
        hmask[7] &= !(1 << 5); // element 167: q = 2 - 4
        let mut qs = [0u8; 64];
        qs[32 + 7] = 0b11_00_10_01; // elements 135, 167, 199, 231 = 1, 2, 0, 3
        let y = run(q3_k, &block(&[&hmask, &qs, &s, &f16b(1.0)]));
        let mut want = [0.0f32; QK_K];
        want[101] = -4.0;
        (want[135], want[167], want[199], want[231]) = (1.0, -2.0, 0.0, 3.0);
        assert_eq!(y, want);
    }

    #[test]
    fn scale_min_k4_unpacks_both_halves() {
        // Bytes 0..4: scales 0..4 = 1, 2, 3, 4 with top bits 3, 1, 2, 0;
        // bytes 4..8: mins 0..4 = 5, 6, 7, 8 with top bits 1, 2, 3, 0;
        // bytes 8..12: low nibble scale 4 + k, high nibble min 4 + k.
        let s = [
            0xc1, 0x42, 0x83, 0x04, 0x45, 0x86, 0xc7, 0x08, 0x9a, 0x0f, 0xf0, 0x21,
        ];
        let got: Vec<(u8, u8)> = (0..8).map(|j| scale_min_k4(j, &s)).collect();
        let want = [
            (1, 5),
            (2, 6),
            (3, 7),
            (4, 8),
            (0xa | (3 << 4), 9 | (1 << 4)), // 58, 25
            (0xf | (1 << 4), 2 << 4),       // 31, 32
            (2 << 4, 0xf | (3 << 4)),       // 32, 63
            (1, 2),
        ];
        assert_eq!(got, want);

        // Through the decoder: codes 1 and dmin 0 give y = s; codes 0 and
        // dmin 1 give y = -m.
        let y = run(q4_k, &block(&[&f16b(1.0), &f16b(0.0), &s, &[0x11; 128]]));
        let y2 = run(q4_k, &block(&[&f16b(1.0), &f16b(1.0), &s, &[0; 128]]));
        for (j, &(sc, m)) in want.iter().enumerate() {
            assert_eq!(y[32 * j + 31], f32::from(sc), "scale {j}");
            assert_eq!(y2[32 * j], -f32::from(m), "min {j}");
        }
    }

    /// Q4_K / Q5_K scale bytes giving every sub-block s = 1, m = 0.
    const UNIT_K4: [u8; 12] = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1];

    #[test]
    fn q4_k_nibble_order() {
        let mut qs = [0u8; 128];
        qs[0] = 0x21; // elements 0, 32 = 1, 2
        qs[33] = 0x43; // group 1, byte 1: elements 65, 97 = 3, 4
        qs[127] = 0xf5; // group 3, byte 31: elements 223, 255 = 5, 15
        let head = [f16b(1.0), f16b(1.0)].concat();
        let y = run(q4_k, &block(&[&head, &UNIT_K4, &qs]));
        let mut want = [0.0f32; QK_K];
        (want[0], want[32], want[65], want[97]) = (1.0, 2.0, 3.0, 4.0);
        (want[223], want[255]) = (5.0, 15.0);
        assert_eq!(y, want);

        // Q5_K: the same nibbles, and bit j of qh[l] adds 16 to element 32j + l.
        let mut qh = [0u8; 32];
        qh[0] = 0x01; // element 0
        qh[1] = 0x04; // element 65
        qh[31] = 0x80; // element 255
        qh[2] = 0x02; // element 34
        let y = run(q5_k, &block(&[&head, &UNIT_K4, &qh, &qs]));
        (want[0], want[65], want[255], want[34]) = (17.0, 19.0, 31.0, 16.0);
        assert_eq!(y, want);
    }

    #[test]
    fn q6_k_ql_qh_order() {
        // d = 1, every scale 1: y = q - 32.
        let mut ql = [0u8; 128];
        ql[0] = 0x21; // elements 0, 64: low bits 1, 2
        ql[32 + 5] = 0x43; // elements 37, 101: low bits 3, 4
        ql[64] = 0x65; // elements 128, 192: low bits 5, 6
        let mut qh = [0u8; 64];
        qh[0] = 0b11_10_01_00; // elements 0, 32, 64, 96: high bits 0, 1, 2, 3
        qh[5] = 0b11_00_00_00; // element 101: high bits 3
        qh[32] = 0b00_01_00_11; // elements 128, 160, 192, 224: 3, 0, 1, 0
        let y = run(q6_k, &block(&[&ql, &qh, &[1; 16], &f16b(1.0)]));
        let mut want = [-32.0f32; QK_K];
        want[0] = -31.0; // 1
        want[32] = -16.0; // 16
        want[64] = 2.0; // 2 + 32
        want[96] = 16.0; // 48
        want[37] = -29.0; // 3
        want[101] = 20.0; // 4 + 48
        want[128] = 21.0; // 5 + 48
        want[192] = -10.0; // 6 + 16
        assert_eq!(y, want);
    }

    #[test]
    fn q6_k_signed_scales() {
        // All codes 0 (q = -32); scale i = i - 8, d = 0.5: y = 0.5 * (i - 8) * -32.
        let scales: Vec<u8> = (0..16i8).map(|i| (i - 8) as u8).collect();
        let y = run(q6_k, &block(&[&[0; 128], &[0; 64], &scales, &f16b(0.5)]));
        assert_eq!(y[0], 128.0); // scale -8
        assert_eq!(y[16 * 8], 0.0); // scale 0
        assert_eq!(y[255], -112.0); // scale 7: 3.5 * -32
    }

    #[test]
    fn iq4_xs_scales() {
        // Codes 8 (K = 1): y = d * (s - 32). Low nibbles 1..=8; high bits 0, 1, 2, 3, 0, 1, 2, 3.
        let y = run(
            iq4_xs,
            &block(&[
                &f16b(1.0),
                &0xe4e4u16.to_le_bytes(),
                &[0x21, 0x43, 0x65, 0x87],
                &[0x88; 128],
            ]),
        );
        let s: Vec<f32> = (0..8).map(|j| y[32 * j + 31]).collect();
        // 1, 2 + 16, 3 + 32, 4 + 48, 5, 6 + 16, 7 + 32, 8 + 48, each - 32
        assert_eq!(s, [-31.0, -14.0, 3.0, 20.0, -27.0, -10.0, 7.0, 24.0]);
    }

    #[test]
    fn iq4_xs_nibble_order() {
        // Every scale 33 (low nibble 1, high bits 2): dl = 1, y = K[q].
        let mut qs = [0x88u8; 128];
        qs[16] = 0xf0; // sub-block 1: elements 32 (K[0]), 48 (K[15])
        qs[127] = 0x7e; // sub-block 7, byte 15: elements 239 (K[14]), 255 (K[7])
        let y = run(
            iq4_xs,
            &block(&[&f16b(1.0), &0xaaaau16.to_le_bytes(), &[0x11; 4], &qs]),
        );
        let mut want = [1.0f32; QK_K];
        (want[32], want[48], want[239], want[255]) = (-127.0, 113.0, 89.0, -10.0);
        assert_eq!(y, want);
    }
}
