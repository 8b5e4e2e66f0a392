//! CPU dequantization of packed weights: the reference the matmul and
//! embedding kernels are tested against.

use half::f16;

use super::kquant;
use super::layout::{GROUP, MixedLayout, code_words_per_row};
use super::pack::{PackedWeight, mixed_code};
use crate::tensor::WeightFormat;

/// CPU reference: the values the planes encode, row-major `[rows, cols]`.
pub fn dequantize_packed(p: &PackedWeight) -> Vec<f32> {
    if let Some(l) = p.mixed.as_deref() {
        return dequantize_mixed(p, l);
    }
    if kquant::is_kquant(p.format) {
        return kquant::dequantize_kquant(p);
    }
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    let wpr = code_words_per_row(p.format, p.cols) as usize;
    let groups = cols / GROUP as usize;
    let half = |base: u32, g: usize| {
        let w = p.words[base as usize + g / 2];
        f16::from_bits((w >> (16 * (g % 2))) as u16).to_f32()
    };
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        let codes = &p.words[r * wpr..(r + 1) * wpr];
        for c in 0..cols {
            let g = r * groups + c / GROUP as usize;
            out[r * cols + c] = match p.format {
                WeightFormat::F32 => f32::from_bits(codes[c]),
                WeightFormat::F16 => {
                    f16::from_bits((codes[c / 2] >> (16 * (c % 2))) as u16).to_f32()
                }
                WeightFormat::Q4_0 => {
                    let q = (codes[c / 8] >> (4 * (c % 8))) & 0xf;
                    half(p.planes.scales, g) * (q as f32 - 8.0)
                }
                WeightFormat::Q4_1 => {
                    let q = (codes[c / 8] >> (4 * (c % 8))) & 0xf;
                    half(p.planes.scales, g) * q as f32 + half(p.planes.mins, g)
                }
                WeightFormat::Q8_0 => {
                    let q = (codes[c / 4] >> (8 * (c % 4))) as u8 as i8;
                    half(p.planes.scales, g) * f32::from(q)
                }
                // Handled above (a Mixed weight always has its layout).
                _ => f32::NAN,
            };
        }
    }
    out
}

fn dequantize_mixed(p: &PackedWeight, l: &MixedLayout) -> Vec<f32> {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    let ng = l.n_groups() as usize;
    let half = |base: u32, i: usize| {
        let w = p.words[base as usize + i / 2];
        f16::from_bits((w >> (16 * (i % 2))) as u16).to_f32()
    };
    let mut out = vec![0.0f32; rows * cols];
    let mut chunk = Vec::with_capacity(8);
    let bases: Vec<u32> = (0..ng as u32).map(|g| l.group_base(p.rows, g)).collect();
    for r in 0..rows {
        for (g, &base) in bases.iter().enumerate() {
            let (d, m) = (
                half(p.planes.scales, r * ng + g),
                half(p.planes.mins, r * ng + g),
            );
            let bits = u32::from(l.bits[g]);
            for j in 0..l.group_len(g as u32) / GROUP {
                // Gather the chunk's words back into the host order.
                chunk.clear();
                for (seg, &width) in MixedLayout::segments(bits).iter().enumerate() {
                    let at = l.gpu_segment(base, r as u32, g as u32, j, seg);
                    chunk.extend_from_slice(&p.words[at..at + width as usize]);
                }
                for k in 0..32 {
                    let c = g * l.group as usize + j as usize * 32 + k;
                    out[r * cols + c] = d * mixed_code(&chunk, bits, k) as f32 + m;
                }
            }
        }
    }
    out
}
