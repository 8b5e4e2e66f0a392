//! SliM-LLM (Huang et al., 2024): salience-driven mixed precision.
//!
//! - **Salience** of weight `w_ij` (row i, input column j): `w_ij² /
//!   [H⁻¹]_jj²`, with `H⁻¹` the inverse of the damped Hessian GPTQ uses. A
//!   group (a block of input columns across all rows) is as salient as the
//!   sum over its elements.
//! - **Salience-Determined Bit Allocation** (SBA): groups sorted by
//!   salience; candidate `i` gives the `i` least salient groups one bit less
//!   and the `i` most salient one bit more than the base allocation, so the
//!   average is unchanged; `i` runs over `0 ..= n/2 - 1` (`n` full-length
//!   groups; a short last group keeps its base width so that the average
//!   stays exact). Each candidate is scored by the KL divergence between
//!   `softmax(X Wᵀ)` and `softmax(X Ŵᵀ)` over sampled calibration inputs
//!   `X` (rows = tokens, softmax over the layer's outputs), with `Ŵ` the
//!   round-to-nearest weight at that allocation; the lowest KL wins.
//!   The base allocation for an integer target `N` is `N` everywhere; for a
//!   fractional one (2.5) the most salient groups get `ceil(N)` and the rest
//!   `floor(N)`, as many as keep the column-weighted mean at the target.
//! - **Salience-Weighted Quantizer Calibration** (SQC): each (row, group)'s
//!   clipping is searched to minimize the squared error with elements whose
//!   salience z-score within the group exceeds [`SALIENT_Z`] weighted
//!   [`SALIENT_WEIGHT`] times more; GPTQ quantizes with those widths and
//!   searches each group's range when it reaches the group (or up front,
//!   from the original weight, with act-order).

use std::sync::Arc;

use lamina_engine::weight::MixedLayout;

use crate::checkpoint::MixedTensor;
use crate::quant::gptq::{self, GptqOptions, ParamChoice};
use crate::quant::rtn::{dequantize, quantize_rtn};
use crate::{ModelError, Result};

/// Salience z-score above which an element counts as salient in SQC.
pub const SALIENT_Z: f32 = 2.0;
/// Error weight of a salient element in SQC (others weigh 1).
pub const SALIENT_WEIGHT: f32 = 4.0;

/// Per-element salience `w² / [H⁻¹]_jj²`, `[rows, cols]`.
pub fn salience(w: &[f32], rows: usize, hinv_diag: &[f64]) -> Vec<f32> {
    let cols = hinv_diag.len();
    let mut s = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let v = f64::from(w[r * cols + c]);
            s[r * cols + c] = (v * v / (hinv_diag[c] * hinv_diag[c])) as f32;
        }
    }
    s
}

/// Salience summed per column group.
pub fn group_salience(sal: &[f32], rows: usize, cols: usize, group: usize) -> Vec<f64> {
    let n = cols.div_ceil(group);
    let mut g = vec![0.0f64; n];
    for r in 0..rows {
        for c in 0..cols {
            g[c / group] += f64::from(sal[r * cols + c]);
        }
    }
    g
}

/// SQC error weights: [`SALIENT_WEIGHT`] where the element's salience
/// z-score within its group exceeds [`SALIENT_Z`], else 1.
pub fn sqc_weights(sal: &[f32], rows: usize, cols: usize, group: usize) -> Vec<f32> {
    let mut out = vec![1.0f32; sal.len()];
    for g0 in (0..cols).step_by(group) {
        let g1 = (g0 + group).min(cols);
        let n = (rows * (g1 - g0)) as f64;
        let (mut sum, mut sq) = (0.0f64, 0.0f64);
        for r in 0..rows {
            for &v in &sal[r * cols + g0..r * cols + g1] {
                sum += f64::from(v);
                sq += f64::from(v) * f64::from(v);
            }
        }
        let mean = sum / n;
        let sd = (sq / n - mean * mean).max(0.0).sqrt();
        if sd == 0.0 {
            continue;
        }
        for r in 0..rows {
            for c in g0..g1 {
                let z = (f64::from(sal[r * cols + c]) - mean) / sd;
                if z > f64::from(SALIENT_Z) {
                    out[r * cols + c] = SALIENT_WEIGHT;
                }
            }
        }
    }
    out
}

/// Group indices from most to least salient.
fn by_salience(gs: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..gs.len()).collect();
    order.sort_by(|&a, &b| gs[b].total_cmp(&gs[a]).then(a.cmp(&b)));
    order
}

/// The base allocation for `target` bits: `floor` everywhere, then `ceil`
/// for the most salient groups while the column-weighted mean stays at or
/// below the target (full-length groups first, then a short last group).
pub fn base_allocation(target: f64, cols: u32, group: u32, gs: &[f64]) -> Result<Vec<u8>> {
    if !(1.0..=8.0).contains(&target) {
        return Err(ModelError::Input(format!(
            "target bits {target} outside 1..=8"
        )));
    }
    let lo = target.floor() as u8;
    let n = gs.len();
    let len = |g: usize| f64::from((cols - g as u32 * group).min(group));
    let mut bits = vec![lo; n];
    if target > f64::from(lo) {
        let budget = (target - f64::from(lo)) * f64::from(cols);
        // Full-length groups first (by salience), then a short last group
        // if it still fits: the mean lands closer to the target.
        let mut used = 0.0;
        let order = by_salience(gs);
        let full = |g: usize| len(g) == f64::from(group);
        for g in order
            .iter()
            .copied()
            .filter(|&g| full(g))
            .chain(order.iter().copied().filter(|&g| !full(g)))
        {
            if used + len(g) <= budget + 1e-9 {
                bits[g] = lo + 1;
                used += len(g);
            }
        }
    }
    Ok(bits)
}

/// Candidate `i` of SBA applied to `base`: `None` when a width would leave 1..=8.
pub fn candidate(base: &[u8], gs: &[f64], full: &[bool], i: usize) -> Option<Vec<u8>> {
    let order: Vec<usize> = by_salience(gs).into_iter().filter(|&g| full[g]).collect();
    if 2 * i > order.len() {
        return None;
    }
    let mut bits = base.to_vec();
    for &g in &order[..i] {
        bits[g] = bits[g].checked_add(1).filter(|&b| b <= 8)?;
    }
    for &g in &order[order.len() - i..] {
        bits[g] = bits[g].checked_sub(1).filter(|&b| b >= 1)?;
    }
    Some(bits)
}

/// Mean over tokens of KL(softmax(x Wᵀ) ‖ softmax(x Ŵᵀ)), softmax over the
/// `rows` outputs; `x` is `[n, cols]`.
pub fn output_kl(x: &[f32], w: &[f32], wq: &[f32], rows: usize, cols: usize) -> f64 {
    let n = x.len() / cols.max(1);
    if n == 0 {
        return 0.0;
    }
    let xm = faer::Mat::<f32>::from_fn(n, cols, |t, c| x[t * cols + c]);
    let logits = |m: &[f32]| {
        let wt = faer::Mat::<f32>::from_fn(cols, rows, |c, r| m[r * cols + c]);
        &xm * &wt
    };
    let (a, b) = (logits(w), logits(wq));
    let mut total = 0.0f64;
    for t in 0..n {
        let lse = |m: &faer::Mat<f32>| {
            let mx = (0..rows)
                .map(|r| m[(t, r)])
                .fold(f32::NEG_INFINITY, f32::max);
            let s: f64 = (0..rows).map(|r| f64::from(m[(t, r)] - mx).exp()).sum();
            f64::from(mx) + s.ln()
        };
        let (la, lb) = (lse(&a), lse(&b));
        let mut kl = 0.0f64;
        for r in 0..rows {
            let lp = f64::from(a[(t, r)]) - la;
            let lq = f64::from(b[(t, r)]) - lb;
            kl += lp.exp() * (lp - lq);
        }
        total += kl.max(0.0);
    }
    total / n as f64
}

#[derive(Debug, Clone)]
pub struct SlimOptions {
    /// Target mean code width (e.g. 2, 2.5, 3, 4).
    pub bits: f64,
    pub group: u32,
    pub gptq: GptqOptions,
}

/// What the search chose for one matrix.
#[derive(Debug, Clone)]
pub struct SlimReport {
    pub bits: Vec<u8>,
    /// The chosen candidate `i` (0 = uniform base allocation).
    pub shift: usize,
    /// KL of each candidate tried, by `i`.
    pub kl: Vec<f64>,
}

/// SliM-LLM for one weight `w` (`[rows, cols]`) given its input Hessian `h`
/// and sampled inputs `x` (`[n, cols]`).
pub fn quantize_slim(
    w: &[f32],
    rows: usize,
    cols: u32,
    h: &[f64],
    x: &[f32],
    opts: &SlimOptions,
) -> Result<(MixedTensor, SlimReport)> {
    let c = cols as usize;
    let (hd, _) = gptq::damped_hessian(h, c, opts.gptq.damp)?;
    let hinv = gptq::inverse(&hd)?;
    let diag: Vec<f64> = (0..c).map(|j| hinv[(j, j)]).collect();
    let sal = salience(w, rows, &diag);
    let gs = group_salience(&sal, rows, c, opts.group as usize);
    let base = base_allocation(opts.bits, cols, opts.group, &gs)?;
    let full: Vec<bool> = (0..gs.len())
        .map(|g| (cols - g as u32 * opts.group) >= opts.group)
        .collect();
    let n_full = full.iter().filter(|&&f| f).count();
    let mut best: Option<(f64, usize, Vec<u8>)> = None;
    let mut kls = Vec::new();
    for i in 0..(n_full / 2).max(1) {
        let Some(bits) = candidate(&base, &gs, &full, i) else {
            break;
        };
        let layout =
            Arc::new(MixedLayout::new(opts.group, cols, bits.clone()).map_err(ModelError::from)?);
        let wq = dequantize(&quantize_rtn(w, rows, &layout), rows);
        let kl = output_kl(x, w, &wq, rows, c);
        kls.push(kl);
        if best.as_ref().is_none_or(|b| kl < b.0) {
            best = Some((kl, i, bits));
        }
    }
    let (_, shift, bits) =
        best.ok_or_else(|| ModelError::Invalid("no bit allocation fits 1..=8 bits".into()))?;
    let layout =
        Arc::new(MixedLayout::new(opts.group, cols, bits.clone()).map_err(ModelError::from)?);
    let weights = sqc_weights(&sal, rows, c, opts.group as usize);
    let t = gptq::quantize_gptq(
        w,
        rows,
        &layout,
        h,
        &opts.gptq,
        ParamChoice::Search(Some(&weights)),
    )?;
    Ok((
        t,
        SlimReport {
            bits,
            shift,
            kl: kls,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_keep_the_mean() {
        let gs = [5.0, 1.0, 9.0, 3.0, 7.0];
        // 576 columns in groups of 128: four full groups, one of 64.
        let base = base_allocation(2.0, 576, 128, &gs).unwrap();
        assert_eq!(base, vec![2; 5]);
        let full = [true, true, true, true, false];
        let c1 = candidate(&base, &gs, &full, 1).unwrap();
        // Most salient full group (2) up, least salient full group (1) down.
        assert_eq!(c1, vec![2, 1, 3, 2, 2]);
        let l = MixedLayout::new(128, 576, c1).unwrap();
        assert_eq!(l.mean_bits(), 2.0);
        assert!(candidate(&base, &gs, &full, 3).is_none());
        // 2.5 bits: 288 of 576 columns at 3 bits.
        let half = base_allocation(2.5, 576, 128, &gs).unwrap();
        let l = MixedLayout::new(128, 576, half.clone()).unwrap();
        assert!(l.mean_bits() <= 2.5 && l.mean_bits() >= 2.4, "{half:?}");
        assert_eq!(half[2], 3); // the most salient
        assert!(base_allocation(0.5, 576, 128, &gs).is_err());
        // 1-bit floor: the least salient cannot go to 0.
        let ones = vec![1u8; 5];
        assert!(candidate(&ones, &gs, &full, 1).is_none());
    }

    #[test]
    fn kl_is_zero_for_the_same_weight_and_grows_with_error() {
        let (rows, cols) = (16usize, 64usize);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.05)
            .collect();
        let x: Vec<f32> = (0..8 * cols)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        assert!(output_kl(&x, &w, &w, rows, cols).abs() < 1e-9);
        // Perturbations that differ across rows (a shift common to all rows
        // would leave the softmax unchanged).
        let noise = |s: f32| -> Vec<f32> {
            w.iter()
                .enumerate()
                .map(|(i, v)| v + s * ((((i / cols) * 7 + (i % cols) * 3) % 5) as f32 - 2.0))
                .collect()
        };
        let (small, big) = (noise(0.01), noise(0.2));
        let (a, b) = (
            output_kl(&x, &w, &small, rows, cols),
            output_kl(&x, &w, &big, rows, cols),
        );
        assert!(a < b, "{a} {b}");
    }

    #[test]
    fn salient_elements_are_flagged() {
        let (rows, cols) = (4usize, 64usize);
        let mut sal = vec![1.0f32; rows * cols];
        sal[3] = 1000.0;
        let w = sqc_weights(&sal, rows, cols, 32);
        assert_eq!(w[3], SALIENT_WEIGHT);
        assert_eq!(w.iter().filter(|&&v| v != 1.0).count(), 1);
    }
}
