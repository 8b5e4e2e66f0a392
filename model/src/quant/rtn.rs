//! The group quantizer shared by RTN, GPTQ and SliM-LLM: asymmetric min-max
//! over one row's slice of a column group, `w ≈ d * q + m` with
//! `q ∈ 0 ..= 2^b - 1` and `d`, `m` stored as f16 (Lamina's Mixed format;
//! see `lamina_engine::weight`).
//!
//! **1-bit convention: sign with mean and scale.** A 1-bit group stores
//! `w ≈ μ + α · sign(w - μ)` with `μ` the (weighted) mean of the group and
//! `α` the (weighted) mean of `|w - μ|`, the L2-optimal scale for those
//! signs. In the `d * q + m` form that is `m = μ - α`, `d = 2α`, and the
//! code `q = 1` exactly when `w ≥ μ` (rounding `(w - m) / d` does the same).
//!
//! Clipping: for `b ≥ 2` the range can be shrunk by a factor `c ≤ 1` about
//! its midpoint before computing `d` and `m` (SliM-LLM's quantizer
//! calibration searches `c`); values outside clamp to the end codes.
//!
//! [`quantize_rtn`] quantizes a whole matrix to a [`MixedLayout`] by
//! round-to-nearest, the baseline.

use std::sync::Arc;

use half::f16;
use lamina_engine::weight::{MixedLayout, mixed_chunk};

use crate::checkpoint::MixedTensor;

/// Scale and min of one (row, group), already rounded to f16.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupParams {
    pub d: f32,
    pub m: f32,
    pub maxq: u32,
}

impl GroupParams {
    /// The code for `w`.
    #[inline]
    pub fn code(&self, w: f32) -> u32 {
        if self.d <= 0.0 {
            return 0;
        }
        let q = ((w - self.m) / self.d).round();
        q.clamp(0.0, self.maxq as f32) as u32
    }
    #[inline]
    pub fn value(&self, q: u32) -> f32 {
        self.d * q as f32 + self.m
    }
    /// `w` quantized and dequantized.
    #[inline]
    pub fn round_trip(&self, w: f32) -> f32 {
        self.value(self.code(w))
    }
    pub fn d_bits(&self) -> u16 {
        f16::from_f32(self.d).to_bits()
    }
    pub fn m_bits(&self) -> u16 {
        f16::from_f32(self.m).to_bits()
    }
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Parameters for `vals` at `bits` with clip factor `clip` (ignored at 1 bit),
/// weighting each value's error by `weights` where given (1-bit mean and
/// scale). `d` and `m` are rounded to f16 so that the codes chosen here are
/// the ones the kernels decode.
pub fn group_params(vals: &[f32], weights: Option<&[f32]>, bits: u32, clip: f32) -> GroupParams {
    let maxq = (1u32 << bits) - 1;
    if vals.is_empty() {
        return GroupParams {
            d: 0.0,
            m: 0.0,
            maxq,
        };
    }
    if bits == 1 {
        let wsum: f64 =
            weights.map_or(vals.len() as f64, |w| w.iter().map(|&v| f64::from(v)).sum());
        let wt = |i: usize| weights.map_or(1.0, |w| f64::from(w[i]));
        let mu = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| wt(i) * f64::from(v))
            .sum::<f64>()
            / wsum;
        let alpha = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| wt(i) * (f64::from(v) - mu).abs())
            .sum::<f64>()
            / wsum;
        let d = f16_round((2.0 * alpha) as f32);
        let m = f16_round((mu - alpha) as f32);
        return GroupParams { d, m, maxq };
    }
    let lo = vals.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mid, half) = (0.5 * (lo + hi), 0.5 * (hi - lo) * clip);
    let (lo, hi) = (mid - half, mid + half);
    let d = f16_round((hi - lo) / maxq as f32);
    let m = f16_round(lo);
    GroupParams { d, m, maxq }
}

/// Sum of `weights[i] * (vals[i] - round_trip(vals[i]))^2`.
pub fn weighted_error(vals: &[f32], weights: Option<&[f32]>, p: &GroupParams) -> f64 {
    vals.iter()
        .enumerate()
        .map(|(i, &v)| {
            let e = f64::from(v - p.round_trip(v));
            weights.map_or(1.0, |w| f64::from(w[i])) * e * e
        })
        .sum()
}

/// Clip factors searched by the quantizer calibration (1.0 = min-max).
pub const CLIP_GRID: [f32; 11] = [
    1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.88, 0.86, 0.84, 0.82, 0.8,
];

/// The parameters minimizing [`weighted_error`] over [`CLIP_GRID`] (at
/// 1 bit: the weighted mean and scale, which are already L2-optimal).
pub fn search_params(vals: &[f32], weights: Option<&[f32]>, bits: u32) -> GroupParams {
    if bits == 1 {
        return group_params(vals, weights, 1, 1.0);
    }
    let mut best = group_params(vals, weights, bits, 1.0);
    let mut best_err = weighted_error(vals, weights, &best);
    for &c in &CLIP_GRID[1..] {
        let p = group_params(vals, weights, bits, c);
        let e = weighted_error(vals, weights, &p);
        if e < best_err {
            best = p;
            best_err = e;
        }
    }
    best
}

/// Collects per-(row, group) parameters and codes into a [`MixedTensor`].
#[derive(Debug)]
pub struct MixedBuilder {
    layout: Arc<MixedLayout>,
    rows: usize,
    /// `[rows, cols]` codes.
    codes: Vec<u32>,
    scales: Vec<u16>,
    mins: Vec<u16>,
}

impl MixedBuilder {
    pub fn new(layout: Arc<MixedLayout>, rows: usize) -> MixedBuilder {
        let (cols, ng) = (layout.cols as usize, layout.n_groups() as usize);
        MixedBuilder {
            layout,
            rows,
            codes: vec![0; rows * cols],
            scales: vec![0; rows * ng],
            mins: vec![0; rows * ng],
        }
    }
    pub fn layout(&self) -> &Arc<MixedLayout> {
        &self.layout
    }
    pub fn set_params(&mut self, row: usize, group: usize, p: &GroupParams) {
        let i = row * self.layout.n_groups() as usize + group;
        self.scales[i] = p.d_bits();
        self.mins[i] = p.m_bits();
    }
    pub fn set_code(&mut self, row: usize, col: usize, q: u32) {
        self.codes[row * self.layout.cols as usize + col] = q;
    }
    /// Packs the codes into the Mixed chunk layout.
    pub fn finish(self) -> MixedTensor {
        let l = &self.layout;
        let cols = l.cols as usize;
        let mut words = Vec::with_capacity(self.rows * l.row_words() as usize);
        for r in 0..self.rows {
            let row = &self.codes[r * cols..(r + 1) * cols];
            for g in 0..l.n_groups() {
                let bits = u32::from(l.bits[g as usize]);
                let start = (g * l.group) as usize;
                for ch in row[start..start + l.group_len(g) as usize].chunks_exact(32) {
                    let chunk: &[u32; 32] = ch.try_into().unwrap_or(&[0; 32]);
                    words.extend(mixed_chunk(chunk, bits));
                }
            }
        }
        MixedTensor {
            layout: self.layout,
            codes: words,
            scales: self.scales,
            mins: self.mins,
        }
    }
}

/// Round-to-nearest of `w` (`[rows, cols]` row-major) to `layout`, min-max
/// ranges (no clipping search).
pub fn quantize_rtn(w: &[f32], rows: usize, layout: &Arc<MixedLayout>) -> MixedTensor {
    let cols = layout.cols as usize;
    let mut b = MixedBuilder::new(layout.clone(), rows);
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        for g in 0..layout.n_groups() {
            let start = (g * layout.group) as usize;
            let vals = &row[start..start + layout.group_len(g) as usize];
            let p = group_params(vals, None, u32::from(layout.bits[g as usize]), 1.0);
            b.set_params(r, g as usize, &p);
            for (j, &v) in vals.iter().enumerate() {
                b.set_code(r, start + j, p.code(v));
            }
        }
    }
    b.finish()
}

/// The values a [`MixedTensor`] encodes, `[rows, cols]`.
pub fn dequantize(t: &MixedTensor, rows: usize) -> Vec<f32> {
    match lamina_engine::weight::pack_mixed(rows as u32, &t.data()) {
        Ok(p) => lamina_engine::weight::dequantize_packed(&p),
        Err(_) => vec![f32::NAN; rows * t.layout.cols as usize],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bit_is_mean_plus_scaled_sign() {
        let v = [1.0f32, 2.0, 3.0, 6.0];
        let p = group_params(&v, None, 1, 1.0);
        // mu = 3, alpha = mean(|v - 3|) = (2 + 1 + 0 + 3) / 4 = 1.5.
        assert_eq!((p.m, p.d), (1.5, 3.0));
        let rt: Vec<f32> = v.iter().map(|&x| p.round_trip(x)).collect();
        assert_eq!(rt, [1.5, 1.5, 4.5, 4.5]);
    }

    #[test]
    fn min_max_hits_the_ends_and_clipping_helps_outliers() {
        let v: Vec<f32> = (0..32).map(|i| i as f32 / 31.0).collect();
        let p = group_params(&v, None, 4, 1.0);
        assert_eq!(p.round_trip(0.0), 0.0);
        assert!((p.round_trip(1.0) - 1.0).abs() < 1e-3);
        // One outlier among small values: a clipped range fits the rest better.
        let mut w: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.1)
            .collect();
        w[5] = 1.0;
        let base = weighted_error(&w, None, &group_params(&w, None, 2, 1.0));
        let best = weighted_error(&w, None, &search_params(&w, None, 2));
        assert!(best <= base);
    }

    #[test]
    fn rtn_error_shrinks_with_bits_and_matches_the_packed_decode() {
        let (rows, cols) = (3usize, 576u32);
        let w: Vec<f32> = (0..rows * cols as usize)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2)
            .collect();
        let mut last = f64::INFINITY;
        for bits in 1..=8u8 {
            let l = Arc::new(MixedLayout::new(128, cols, vec![bits; 5]).unwrap());
            let t = quantize_rtn(&w, rows, &l);
            let dq = dequantize(&t, rows);
            let err: f64 = w
                .iter()
                .zip(&dq)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            assert!(err < last, "{bits} bits: {err} >= {last}");
            last = err;
        }
    }
}
