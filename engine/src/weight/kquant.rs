//! The GGUF types beyond Q4_0 / Q4_1 / Q8_0 on the GPU: Q5_0, Q5_1, IQ4_NL
//! (32-element blocks) and the K-quants Q2_K .. Q6_K and IQ4_XS (256-element
//! super-blocks), kept at the file's size.
//!
//! Every type is one shape: a 32-element block of a row holds `b`-bit codes
//! `q` and its values are, per half of 16 elements,
//! `w = a * t(q) - m`, where `t(q) = q - z` (an integer offset) or, for the
//! IQ4 types, [`IQ4_VALUES`]`[q]`. What differs is where `a` and `m` come
//! from:
//!
//! | format | bits | a, m per half | z |
//! |---|---|---|---|
//! | Q5_0 | 5 | d, 0 (block f16) | 16 |
//! | Q5_1 | 5 | d, -m (block f16s) | 0 |
//! | IQ4_NL | 4 | d, 0 (block f16) | table |
//! | Q2_K | 2 | d·(s & 15), dmin·(s >> 4) per 16 (s a byte) | 0 |
//! | Q3_K | 3 | d·(s - 32) per 16 (s 6-bit, packed in 12 bytes) | 4 |
//! | Q4_K, Q5_K | 4, 5 | d·s, dmin·m per 32 (6-bit s, m packed in 12 bytes) | 0 |
//! | Q6_K | 6 | d·s per 16 (s an i8) | 32 |
//! | IQ4_XS | 4 | d·(s - 32) per 32 (6-bit s: 4 bits + 2 high bits) | table |
//!
//! (`d`, `dmin`: the super-block's f16s.) The products are f32, in ggml's
//! order, so [`dequantize_kquant`] gives ggml's values exactly.
//!
//! # Planes
//! - codes: each 32-element block as `b` words in the Mixed chunk layout
//!   (`weight/mod.rs`: segments of 4, 2 and 1 bits, lowest bits first),
//!   split in two parts: the first segment's words ([`low_words`]: 4 for
//!   the 4-bit segment, 2 for the 2-bit one) of every block, block
//!   `blk = row * cols / 32 + k` at `low_words * blk`, then the remaining
//!   words (`b - low_words`: Q6_K 2, Q5 1, Q3_K 1) of every block at
//!   `low_words * blocks + (b - low_words) * blk`. So a block's low part is
//!   one aligned vec4 (or half of one) and its high part one word or half
//!   a vec4: two aligned loads for any width. The file's scattered bit
//!   order (Q3_K's high-bit mask, Q6_K's quarter-interleaved nibbles)
//!   becomes element order here.
//! - scales: the 32-element types, one f16 `d` per block, two per word (as
//!   Q4_0); the super-block types, the file's sub-block scale bytes verbatim,
//!   [`sub_scale_words`] words per super-block (Q2_K 16 bytes, Q3_K / Q4_K /
//!   Q5_K 12, Q6_K 16, IQ4_XS its 4 low-bit bytes).
//! - mins: Q5_1, one f16 `m` per block; Q2_K, Q4_K, Q5_K one word per
//!   super-block (`d | dmin << 16`), IQ4_XS too (`d | scales_h << 16`);
//!   Q3_K and Q6_K their f16 `d`, two super-blocks per word.
//!
//! Bytes per 256 elements equal the file's: Q2_K 84, Q3_K 110, Q4_K 144,
//! Q5_K 176, Q6_K 210, IQ4_XS 136 (plus plane padding).
//!
//! The WGSL side is `shaders/lib/kblock.wgsl`.

use half::f16;

use super::layout::GROUP;
use super::pack::{PackedWeight, mixed_chunk, mixed_code};
use crate::tensor::WeightFormat;
use crate::{EngineError, Result};

/// Elements per super-block of the K-quants and IQ4_XS.
pub const SUPER: u32 = 256;

/// IQ4_NL's and IQ4_XS's code values (ggml's `kvalues_iq4nl`).
pub const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The format's id in shaders/lib/kblock.wgsl (`Q5_0` .. `IQ4_XS`), used
/// as a literal by the matmul entry points and as the embedding's `FORMAT`.
pub fn wgsl_id(format: WeightFormat) -> Option<u32> {
    Some(match format {
        WeightFormat::Q5_0 => 5,
        WeightFormat::Q5_1 => 6,
        WeightFormat::IQ4_NL => 7,
        WeightFormat::Q2_K => 8,
        WeightFormat::Q3_K => 9,
        WeightFormat::Q4_K => 10,
        WeightFormat::Q5_K => 11,
        WeightFormat::Q6_K => 12,
        WeightFormat::IQ4_XS => 13,
        _ => return None,
    })
}

/// Whether `format` is one of this module's.
pub fn is_kquant(format: WeightFormat) -> bool {
    code_bits(format).is_some()
}

/// Code bits per element (= words per 32-element block) of this module's formats.
pub fn code_bits(format: WeightFormat) -> Option<u32> {
    Some(match format {
        WeightFormat::Q2_K => 2,
        WeightFormat::Q3_K => 3,
        WeightFormat::Q4_K | WeightFormat::IQ4_NL | WeightFormat::IQ4_XS => 4,
        WeightFormat::Q5_K | WeightFormat::Q5_0 | WeightFormat::Q5_1 => 5,
        WeightFormat::Q6_K => 6,
        _ => return None,
    })
}

/// Words of a block's first code segment: 2 for the 2- and 3-bit types, 4
/// for the others (module docs, codes).
pub fn low_words(format: WeightFormat) -> u32 {
    match code_bits(format) {
        Some(2 | 3) => 2,
        _ => 4,
    }
}

/// Word offsets of block `blk`'s low and high code parts in a codes plane
/// of `blocks` blocks.
fn code_at(format: WeightFormat, blocks: usize, blk: usize) -> (usize, usize) {
    let (bits, low) = (
        code_bits(format).unwrap_or(0) as usize,
        low_words(format) as usize,
    );
    (low * blk, low * blocks + (bits - low) * blk)
}

/// Whether `format` is organised in 256-element super-blocks.
pub fn is_super(format: WeightFormat) -> bool {
    matches!(
        format,
        WeightFormat::Q2_K
            | WeightFormat::Q3_K
            | WeightFormat::Q4_K
            | WeightFormat::Q5_K
            | WeightFormat::Q6_K
            | WeightFormat::IQ4_XS
    )
}

/// Words of sub-block scales per super-block in the scales plane.
pub fn sub_scale_words(format: WeightFormat) -> u32 {
    match format {
        WeightFormat::Q2_K | WeightFormat::Q6_K => 4,
        WeightFormat::Q3_K | WeightFormat::Q4_K | WeightFormat::Q5_K => 3,
        WeightFormat::IQ4_XS => 1,
        _ => 0,
    }
}

/// Words of the scales and mins planes of `rows x cols` in `format`
/// (without padding).
pub fn plane_words(format: WeightFormat, rows: u32, cols: u32) -> (u64, u64) {
    let rows = u64::from(rows);
    let halves = |per_row: u32| (rows * u64::from(per_row)).div_ceil(2);
    let (nb, ns) = (cols / GROUP, cols / SUPER);
    match format {
        WeightFormat::Q5_0 | WeightFormat::IQ4_NL => (halves(nb), 0),
        WeightFormat::Q5_1 => (halves(nb), halves(nb)),
        WeightFormat::Q3_K | WeightFormat::Q6_K => {
            (rows * u64::from(ns * sub_scale_words(format)), halves(ns))
        }
        _ => (
            rows * u64::from(ns * sub_scale_words(format)),
            rows * u64::from(ns),
        ),
    }
}

/// Bytes of one row of `cols` elements in the file.
pub(super) fn file_row_bytes(format: WeightFormat, cols: u32) -> usize {
    let (block, bytes) = file_block(format);
    cols as usize / block * bytes
}

/// (elements, bytes) of one file block.
fn file_block(format: WeightFormat) -> (usize, usize) {
    match format {
        WeightFormat::Q5_0 => (32, 22),
        WeightFormat::Q5_1 => (32, 24),
        WeightFormat::IQ4_NL => (32, 18),
        WeightFormat::Q2_K => (256, 84),
        WeightFormat::Q3_K => (256, 110),
        WeightFormat::Q4_K => (256, 144),
        WeightFormat::Q5_K => (256, 176),
        WeightFormat::Q6_K => (256, 210),
        WeightFormat::IQ4_XS => (256, 136),
        _ => (1, 0),
    }
}

/// Byte offsets of the f16 fields in one file block: `d`, then `dmin` (Q2_K,
/// Q4_K, Q5_K) or `m` (Q5_1). Every other byte of a block is a valid code or
/// sub-block scale whatever its value.
pub fn f16_offsets(format: WeightFormat) -> &'static [usize] {
    match format {
        WeightFormat::Q5_0 | WeightFormat::IQ4_NL | WeightFormat::IQ4_XS => &[0],
        WeightFormat::Q5_1 | WeightFormat::Q4_K | WeightFormat::Q5_K => &[0, 2],
        WeightFormat::Q2_K => &[80, 82],
        WeightFormat::Q3_K => &[108],
        WeightFormat::Q6_K => &[208],
        _ => &[],
    }
}

/// One file block split into element-order codes, its sub-block scale bytes
/// and its f16 words (d, then dmin / m / IQ4_XS's scales_h).
struct Split<'a> {
    codes: Vec<u32>,
    sub: &'a [u8],
    halves: [u16; 2],
}

fn le16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Reads one file block of `format` (llama.cpp's ggml-common.h layouts).
fn split_block(format: WeightFormat, b: &[u8]) -> Split<'_> {
    let lo_hi = |qs: &[u8], j: usize| {
        // 32 elements from 16 bytes: element j low nibble, j + 16 high.
        if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 }
    };
    let mut codes = vec![0u32; file_block(format).0];
    match format {
        WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
            let o = if format == WeightFormat::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            for (j, c) in codes.iter_mut().enumerate() {
                *c = u32::from(lo_hi(&b[o + 4..], j)) | ((qh >> j) & 1) << 4;
            }
            Split {
                codes,
                sub: &[],
                halves: [le16(b, 0), if o == 4 { le16(b, 2) } else { 0 }],
            }
        }
        WeightFormat::IQ4_NL => {
            for (j, c) in codes.iter_mut().enumerate() {
                *c = u32::from(lo_hi(&b[2..], j));
            }
            Split {
                codes,
                sub: &[],
                halves: [le16(b, 0), 0],
            }
        }
        WeightFormat::Q2_K | WeightFormat::Q3_K => {
            // Element 128n + 32j + 16h + l: bits 2j.. of qs[32n + 16h + l];
            // Q3_K's third bit is bit 4n + j of hmask[16h + l].
            let q3 = format == WeightFormat::Q3_K;
            let qs = if q3 { &b[32..96] } else { &b[16..80] };
            for (e, c) in codes.iter_mut().enumerate() {
                let (n, j, hl) = (e / 128, (e / 32) % 4, e % 32);
                *c = u32::from((qs[32 * n + hl] >> (2 * j)) & 3);
                if q3 {
                    *c |= u32::from((b[hl] >> (4 * n + j)) & 1) << 2;
                }
            }
            if q3 {
                Split {
                    codes,
                    sub: &b[96..108],
                    halves: [le16(b, 108), 0],
                }
            } else {
                Split {
                    codes,
                    sub: &b[0..16],
                    halves: [le16(b, 80), le16(b, 82)],
                }
            }
        }
        WeightFormat::Q4_K | WeightFormat::Q5_K => {
            // Element 64c + 32h + l: nibble h of qs[32c + l]; Q5_K's fifth bit
            // is bit 2c + h of qh[l].
            let q5 = format == WeightFormat::Q5_K;
            let qs = if q5 { &b[48..176] } else { &b[16..144] };
            for (e, c) in codes.iter_mut().enumerate() {
                let (ch, h, l) = (e / 64, (e / 32) % 2, e % 32);
                *c = u32::from((qs[32 * ch + l] >> (4 * h)) & 15);
                if q5 {
                    *c |= u32::from((b[16 + l] >> (2 * ch + h)) & 1) << 4;
                }
            }
            Split {
                codes,
                sub: &b[4..16],
                halves: [le16(b, 0), le16(b, 2)],
            }
        }
        WeightFormat::Q6_K => {
            // Element 128n + 32k + l: nibble k / 2 of ql[64n + 32(k % 2) + l],
            // high bits 2k.. of qh[32n + l].
            for (e, c) in codes.iter_mut().enumerate() {
                let (n, k, l) = (e / 128, (e / 32) % 4, e % 32);
                let lo = (b[64 * n + 32 * (k % 2) + l] >> (4 * (k / 2))) & 15;
                let hi = (b[128 + 32 * n + l] >> (2 * k)) & 3;
                *c = u32::from(lo | hi << 4);
            }
            Split {
                codes,
                sub: &b[192..208],
                halves: [le16(b, 208), 0],
            }
        }
        WeightFormat::IQ4_XS => {
            for (e, c) in codes.iter_mut().enumerate() {
                *c = u32::from(lo_hi(&b[8 + 16 * (e / 32)..], e % 32));
            }
            Split {
                codes,
                sub: &b[4..8],
                halves: [le16(b, 0), le16(b, 2)],
            }
        }
        _ => Split {
            codes,
            sub: &[],
            halves: [0; 2],
        },
    }
}

/// Repacks `rows` rows of file blocks into `p` (zeroed, laid out for `format`).
pub(super) fn pack_rows(p: &mut PackedWeight, bytes: &[u8]) -> Result<()> {
    let format = p.format;
    let bits = code_bits(format).ok_or_else(|| EngineError::Shape {
        op: "pack_ggml",
        msg: format!("{} is not a K-quant-style format", format.name()),
    })? as usize;
    let (block, block_bytes) = file_block(format);
    let (scales, mins) = (p.planes.scales as usize, p.planes.mins as usize);
    let sw = sub_scale_words(format) as usize;
    let pair_halves = matches!(format, WeightFormat::Q3_K | WeightFormat::Q6_K);
    let blocks = p.rows as usize * p.cols as usize / 32;
    let low = low_words(format) as usize;
    for (i, blk) in bytes.chunks_exact(block_bytes).enumerate() {
        let s = split_block(format, blk);
        for (k, chunk) in s.codes.chunks_exact(32).enumerate() {
            let chunk: &[u32; 32] = chunk.try_into().expect("32 codes");
            let words = mixed_chunk(chunk, bits as u32);
            let (lo, hi) = code_at(format, blocks, i * block / 32 + k);
            p.words[lo..lo + low].copy_from_slice(&words[..low]);
            p.words[hi..hi + bits - low].copy_from_slice(&words[low..]);
        }
        if block == 32 {
            p.put_half(p.planes.scales, i, s.halves[0]);
            if format == WeightFormat::Q5_1 {
                p.put_half(p.planes.mins, i, s.halves[1]);
            }
            continue;
        }
        for (w, c) in s.sub.chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word[..c.len()].copy_from_slice(c);
            p.words[scales + i * sw + w] = u32::from_le_bytes(word);
        }
        if pair_halves {
            p.put_half(p.planes.mins, i, s.halves[0]);
        } else {
            p.words[mins + i] = u32::from(s.halves[0]) | u32::from(s.halves[1]) << 16;
        }
    }
    Ok(())
}

/// How block `blk`'s two halves decode: `w = a * t(q) - m` (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockScales {
    pub a: [f32; 2],
    pub m: [f32; 2],
}

/// 6-bit scale and min `j` (0..8) of Q4_K / Q5_K's 12 packed bytes.
fn scale_min_k4(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// 6-bit scale `i` (0..16) of Q3_K's 12 packed bytes, unbiased.
fn scale_q3k(s: &[u8], i: usize) -> i32 {
    let lo = if i < 8 { s[i] & 15 } else { s[i - 8] >> 4 };
    let hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    i32::from(lo | hi << 4) - 32
}

/// The scales of block `blk` (`row * cols / 32 + k`) of packed weight `p`.
pub fn block_scales(p: &PackedWeight, blk: usize) -> BlockScales {
    let word = |base: u32, i: usize| p.words[base as usize + i];
    let half =
        |base: u32, i: usize| f16::from_bits((word(base, i / 2) >> (16 * (i % 2))) as u16).to_f32();
    let (sb, j) = (blk / 8, blk % 8);
    let sw = sub_scale_words(p.format) as usize;
    let sub: Vec<u8> = (0..sw)
        .flat_map(|w| word(p.planes.scales, sb * sw + w).to_le_bytes())
        .collect();
    let pair = |v: u32| {
        (
            f16::from_bits(v as u16).to_f32(),
            f16::from_bits((v >> 16) as u16).to_f32(),
        )
    };
    let same = |a: f32, m: f32| BlockScales {
        a: [a; 2],
        m: [m; 2],
    };
    match p.format {
        WeightFormat::Q5_0 | WeightFormat::IQ4_NL => same(half(p.planes.scales, blk), 0.0),
        WeightFormat::Q5_1 => same(half(p.planes.scales, blk), -half(p.planes.mins, blk)),
        WeightFormat::Q2_K => {
            let (d, dmin) = pair(word(p.planes.mins, sb));
            let f = |s: u8| (d * f32::from(s & 15), dmin * f32::from(s >> 4));
            let (a0, m0) = f(sub[2 * j]);
            let (a1, m1) = f(sub[2 * j + 1]);
            BlockScales {
                a: [a0, a1],
                m: [m0, m1],
            }
        }
        WeightFormat::Q3_K => {
            let d = half(p.planes.mins, sb);
            let a = |i: usize| d * scale_q3k(&sub, i) as f32;
            BlockScales {
                a: [a(2 * j), a(2 * j + 1)],
                m: [0.0; 2],
            }
        }
        WeightFormat::Q4_K | WeightFormat::Q5_K => {
            let (d, dmin) = pair(word(p.planes.mins, sb));
            let (s, m) = scale_min_k4(&sub, j);
            same(d * f32::from(s), dmin * f32::from(m))
        }
        WeightFormat::Q6_K => {
            let d = half(p.planes.mins, sb);
            let a = |i: usize| d * f32::from(sub[i] as i8);
            BlockScales {
                a: [a(2 * j), a(2 * j + 1)],
                m: [0.0; 2],
            }
        }
        WeightFormat::IQ4_XS => {
            let v = word(p.planes.mins, sb);
            let d = f16::from_bits(v as u16).to_f32();
            let hi = (v >> 16) as u16;
            let ls = ((sub[j / 2] >> (4 * (j % 2))) & 15) | (((hi >> (2 * j)) & 3) as u8) << 4;
            same(d * (i32::from(ls) - 32) as f32, 0.0)
        }
        _ => same(f32::NAN, f32::NAN),
    }
}

/// The integer offset `z` of `t(q) = q - z` (module docs); `None` for the
/// IQ4 types' table.
pub fn code_offset(format: WeightFormat) -> Option<i32> {
    match format {
        WeightFormat::Q5_0 => Some(16),
        WeightFormat::Q3_K => Some(4),
        WeightFormat::Q6_K => Some(32),
        WeightFormat::IQ4_NL | WeightFormat::IQ4_XS => None,
        _ => Some(0),
    }
}

/// CPU reference: the values a packed weight of this module's formats
/// encodes, row-major, equal to ggml's dequantization of the file's bytes.
pub fn dequantize_kquant(p: &PackedWeight) -> Vec<f32> {
    let Some(bits) = code_bits(p.format) else {
        return vec![f32::NAN; p.rows as usize * p.cols as usize];
    };
    let bits = bits as usize;
    let z = code_offset(p.format);
    let mut out = vec![0.0f32; p.rows as usize * p.cols as usize];
    let (blocks, low) = (out.len() / 32, low_words(p.format) as usize);
    for (blk, o) in out.chunks_exact_mut(32).enumerate() {
        let s = block_scales(p, blk);
        let (lo, hi) = code_at(p.format, blocks, blk);
        let words: Vec<u32> = p.words[lo..lo + low]
            .iter()
            .chain(&p.words[hi..hi + bits - low])
            .copied()
            .collect();
        for (k, v) in o.iter_mut().enumerate() {
            let q = mixed_code(&words, bits as u32, k);
            let h = k / 16;
            let t = match z {
                Some(z) => (q as i32 - z) as f32,
                None => f32::from(IQ4_VALUES[q as usize]),
            };
            // Q5_1's m holds -min: subtracting it adds the min, as ggml does.
            *v = s.a[h] * t - s.m[h];
        }
    }
    out
}
