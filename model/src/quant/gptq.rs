//! GPTQ (Frantar et al., 2022): quantize a weight one input column at a
//! time, folding each column's rounding error into the columns not yet
//! quantized through the inverse Hessian of the layer's inputs, so that the
//! layer's output on the calibration data moves as little as possible.
//!
//! `H = 2/N Σ x xᵀ` over the calibration inputs `x` (`[cols, cols]`). As in
//! the reference implementation: columns never activated (`H_jj = 0`) are
//! zeroed; `H` is damped by `damp` times its mean diagonal; `U`, the upper
//! Cholesky factor of `H⁻¹`, drives the updates; columns go in blocks of
//! [`GptqOptions::block`], each block's error reaching the later columns in
//! one deferred update (lazy batch). With act-order, columns go by
//! decreasing `H_jj` and group parameters are fixed from the original
//! weight first (static groups), since a group's columns are then no longer
//! quantized together. Without it, a group's parameters come from the
//! updated weight when its first column is reached.
//!
//! Cholesky factorizations and the inverse use `faer`.

use std::sync::Arc;

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use lamina_engine::weight::MixedLayout;

use crate::checkpoint::MixedTensor;
use crate::quant::rtn::{GroupParams, MixedBuilder, group_params, search_params};
use crate::{ModelError, Result};

#[derive(Debug, Clone, Copy)]
pub struct GptqOptions {
    /// Damping as a fraction of the mean diagonal of H (the paper's 1%).
    pub damp: f64,
    /// Columns per lazy-batch block.
    pub block: usize,
    /// Quantize columns by decreasing H_jj.
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp: 0.01,
            block: 128,
            act_order: false,
        }
    }
}

/// How each (row, group)'s scale and min are chosen.
#[derive(Debug, Clone, Copy)]
pub enum ParamChoice<'a> {
    /// Min-max of the group.
    MinMax,
    /// Clipping searched to minimize the error weighted per element by
    /// `weights` (`[rows, cols]`; SliM-LLM's salience-weighted calibration).
    Search(Option<&'a [f32]>),
}

impl ParamChoice<'_> {
    fn params(
        &self,
        vals: &[f32],
        row: usize,
        start: usize,
        cols: usize,
        bits: u32,
    ) -> GroupParams {
        match self {
            ParamChoice::MinMax => group_params(vals, None, bits, 1.0),
            ParamChoice::Search(w) => {
                let wt = w.map(|w| &w[row * cols + start..row * cols + start + vals.len()]);
                search_params(vals, wt, bits)
            }
        }
    }
}

/// `H` with dead columns given a unit diagonal and damping added, as f64.
/// Returns the matrix and the indices of the dead columns.
pub fn damped_hessian(h: &[f64], cols: usize, damp: f64) -> Result<(Mat<f64>, Vec<usize>)> {
    if h.len() != cols * cols {
        return Err(ModelError::Input(format!(
            "Hessian has {} entries, expected {cols}x{cols}",
            h.len()
        )));
    }
    let mut m = Mat::<f64>::from_fn(cols, cols, |i, j| h[i * cols + j]);
    let mut dead = Vec::new();
    let mut mean = 0.0;
    for i in 0..cols {
        if m[(i, i)] <= 0.0 {
            dead.push(i);
            m[(i, i)] = 1.0;
        }
        mean += m[(i, i)];
    }
    mean /= cols as f64;
    for i in 0..cols {
        m[(i, i)] += damp * mean;
    }
    Ok((m, dead))
}

/// `H⁻¹` of a damped Hessian; the damping grows tenfold (up to 4 times)
/// while `H` is not numerically positive definite.
pub fn inverse(h: &Mat<f64>) -> Result<Mat<f64>> {
    let n = h.nrows();
    let mean = (0..n).map(|i| h[(i, i)]).sum::<f64>() / n.max(1) as f64;
    let mut extra = 0.0;
    for _ in 0..5 {
        let mut hh = h.clone();
        for i in 0..n {
            hh[(i, i)] += extra;
        }
        if let Ok(llt) = hh.llt(Side::Lower) {
            return Ok(llt.inverse());
        }
        extra = if extra == 0.0 {
            0.01 * mean
        } else {
            extra * 10.0
        };
    }
    Err(ModelError::Invalid(
        "Hessian is not positive definite even with extra damping".into(),
    ))
}

/// Quantizes `w` (`[rows, cols]`) to `layout` with GPTQ against the
/// Hessian `h` (`[cols, cols]`, row-major).
pub fn quantize_gptq(
    w: &[f32],
    rows: usize,
    layout: &Arc<MixedLayout>,
    h: &[f64],
    opts: &GptqOptions,
    choice: ParamChoice<'_>,
) -> Result<MixedTensor> {
    let cols = layout.cols as usize;
    if w.len() != rows * cols {
        return Err(ModelError::Input(format!(
            "weight has {} values, expected {rows}x{cols}",
            w.len()
        )));
    }
    let (hd, dead) = damped_hessian(h, cols, opts.damp)?;
    // Column order.
    let mut perm: Vec<usize> = (0..cols).collect();
    if opts.act_order {
        perm.sort_by(|&a, &b| hd[(b, b)].total_cmp(&hd[(a, a)]));
    }
    let hp = Mat::<f64>::from_fn(cols, cols, |i, j| hd[(perm[i], perm[j])]);
    let hinv = inverse(&hp)?;
    let u = hinv
        .llt(Side::Lower)
        .map_err(|_| ModelError::Invalid("inverse Hessian is not positive definite".into()))?;
    let l = u.L();
    // U[i][k] = L[k][i]; keep the rows of U as f32 for the updates.
    let urow = |i: usize| -> Vec<f32> {
        (0..cols)
            .map(|k| if k < i { 0.0 } else { l[(k, i)] as f32 })
            .collect()
    };

    // Column-major working copy in quantization order: wt[j] = column perm[j].
    let mut wt: Vec<Vec<f32>> = perm
        .iter()
        .map(|&c| {
            if dead.contains(&c) {
                vec![0.0; rows]
            } else {
                (0..rows).map(|r| w[r * cols + c]).collect()
            }
        })
        .collect();

    let group_of = |c: usize| c / layout.group as usize;
    let bits_of = |c: usize| u32::from(layout.bits[group_of(c)]);
    let mut out = MixedBuilder::new(layout.clone(), rows);
    let mut params: Vec<Option<GroupParams>> = vec![None; rows * layout.n_groups() as usize];
    let ng = layout.n_groups() as usize;
    let group_vals = |src: &dyn Fn(usize, usize) -> f32, r: usize, g: usize| -> Vec<f32> {
        let start = g * layout.group as usize;
        (start..start + layout.group_len(g as u32) as usize)
            .map(|c| src(r, c))
            .collect()
    };
    if opts.act_order {
        // Static groups from the original weight.
        let orig = |r: usize, c: usize| {
            if dead.contains(&c) {
                0.0
            } else {
                w[r * cols + c]
            }
        };
        for r in 0..rows {
            for g in 0..ng {
                let vals = group_vals(&orig, r, g);
                let p = choice.params(
                    &vals,
                    r,
                    g * layout.group as usize,
                    cols,
                    u32::from(layout.bits[g]),
                );
                out.set_params(r, g, &p);
                params[r * ng + g] = Some(p);
            }
        }
    }
    // Position of each original column in the order.
    let mut pos = vec![0usize; cols];
    for (j, &c) in perm.iter().enumerate() {
        pos[c] = j;
    }

    let bs = opts.block.max(1);
    let mut err_block = vec![vec![0.0f32; rows]; bs];
    // The block's rows of U, kept for the deferred update.
    let mut u_block: Vec<Vec<f32>> = vec![Vec::new(); bs];
    for i1 in (0..cols).step_by(bs) {
        let i2 = (i1 + bs).min(cols);
        for i in i1..i2 {
            let c = perm[i];
            let g = group_of(c);
            if !opts.act_order && c == g * layout.group as usize {
                // First column of a group (in order, as no act-order): params
                // from the current, already updated weights of the group.
                for r in 0..rows {
                    let cur = |r: usize, cc: usize| wt[pos[cc]][r];
                    let vals = group_vals(&cur, r, g);
                    let p = choice.params(&vals, r, g * layout.group as usize, cols, bits_of(c));
                    out.set_params(r, g, &p);
                    params[r * ng + g] = Some(p);
                }
            }
            let ui = urow(i);
            let d = ui[i];
            let mut err = vec![0.0f32; rows];
            for r in 0..rows {
                let p = params[r * ng + g].unwrap_or(GroupParams {
                    d: 0.0,
                    m: 0.0,
                    maxq: 1,
                });
                let v = wt[i][r];
                let q = p.code(v);
                out.set_code(r, c, q);
                err[r] = (v - p.value(q)) / d;
            }
            // Immediate update of the rest of this block.
            for k in i + 1..i2 {
                let f = ui[k];
                if f != 0.0 {
                    for (x, e) in wt[k].iter_mut().zip(&err) {
                        *x -= f * e;
                    }
                }
            }
            err_block[i - i1] = err;
            u_block[i - i1] = ui;
        }
        // Lazy batch: the block's errors reach every later column at once.
        for i in i1..i2 {
            let ui = &u_block[i - i1];
            let e = &err_block[i - i1];
            for k in i2..cols {
                let f = ui[k];
                if f != 0.0 {
                    for (x, ev) in wt[k].iter_mut().zip(e) {
                        *x -= f * ev;
                    }
                }
            }
        }
    }
    Ok(out.finish())
}

/// `2/N Σ x xᵀ` of `n` rows of `x` (`[n, cols]`), on the CPU (tests; the
/// quantizer accumulates on the GPU).
pub fn hessian_cpu(x: &[f32], cols: usize) -> Vec<f64> {
    let n = x.len() / cols.max(1);
    let mut h = vec![0.0f64; cols * cols];
    for t in 0..n {
        let row = &x[t * cols..(t + 1) * cols];
        for i in 0..cols {
            let xi = f64::from(row[i]);
            for j in 0..cols {
                h[i * cols + j] += xi * f64::from(row[j]);
            }
        }
    }
    let s = 2.0 / n.max(1) as f64;
    h.iter_mut().for_each(|v| *v *= s);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::rtn::{dequantize, quantize_rtn};
    use rand::{Rng, SeedableRng};

    /// Correlated inputs (a low-rank part plus noise, varied scales), where
    /// GPTQ's error feedback has something to use.
    fn inputs(n: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let basis: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..cols).map(|_| r.random_range(-1.0f32..1.0)).collect())
            .collect();
        let scale: Vec<f32> = (0..cols).map(|_| r.random_range(0.2f32..2.0)).collect();
        let mut x = vec![0.0f32; n * cols];
        for t in 0..n {
            let coef: Vec<f32> = (0..8).map(|_| r.random_range(-1.0f32..1.0)).collect();
            for c in 0..cols {
                let low: f32 = (0..8).map(|k| coef[k] * basis[k][c]).sum();
                x[t * cols + c] = (low + 0.3 * r.random_range(-1.0f32..1.0)) * scale[c];
            }
        }
        x
    }

    /// ‖X Wᵀ − X Ŵᵀ‖² / n.
    fn output_error(x: &[f32], w: &[f32], wq: &[f32], rows: usize, cols: usize) -> f64 {
        let n = x.len() / cols;
        let mut e = 0.0;
        for t in 0..n {
            for r in 0..rows {
                let d: f32 = (0..cols)
                    .map(|c| x[t * cols + c] * (w[r * cols + c] - wq[r * cols + c]))
                    .sum();
                e += f64::from(d).powi(2);
            }
        }
        e / n as f64
    }

    #[test]
    fn gptq_beats_rtn_on_the_layer_output() {
        let (rows, cols) = (48usize, 160u32);
        let mut r = rand::rngs::StdRng::seed_from_u64(1);
        let w: Vec<f32> = (0..rows * cols as usize)
            .map(|_| r.random_range(-0.1f32..0.1))
            .collect();
        let x = inputs(512, cols as usize, 2);
        let h = hessian_cpu(&x, cols as usize);
        for bits in [2u8, 3, 4] {
            // 160 columns in groups of 64: a short last group of 32.
            let l = Arc::new(MixedLayout::new(64, cols, vec![bits; 3]).unwrap());
            let rtn = dequantize(&quantize_rtn(&w, rows, &l), rows);
            for act_order in [false, true] {
                let opts = GptqOptions {
                    act_order,
                    block: 48, // blocks that do not line up with groups
                    ..Default::default()
                };
                let g = quantize_gptq(&w, rows, &l, &h, &opts, ParamChoice::MinMax).unwrap();
                let gq = dequantize(&g, rows);
                let (e_rtn, e_gptq) = (
                    output_error(&x, &w, &rtn, rows, cols as usize),
                    output_error(&x, &w, &gq, rows, cols as usize),
                );
                assert!(
                    e_gptq < 0.8 * e_rtn,
                    "{bits} bits act_order {act_order}: gptq {e_gptq} rtn {e_rtn}"
                );
            }
        }
    }

    #[test]
    fn dead_columns_and_bad_sizes() {
        let (rows, cols) = (4usize, 64u32);
        let w = vec![0.05f32; rows * cols as usize];
        let mut x = inputs(64, cols as usize, 3);
        for t in 0..64 {
            x[t * cols as usize + 7] = 0.0; // column 7 never active
        }
        let h = hessian_cpu(&x, cols as usize);
        let l = Arc::new(MixedLayout::new(32, cols, vec![4, 4]).unwrap());
        let t = quantize_gptq(
            &w,
            rows,
            &l,
            &h,
            &GptqOptions::default(),
            ParamChoice::MinMax,
        )
        .unwrap();
        assert!(dequantize(&t, rows).iter().all(|v| v.is_finite()));
        assert!(
            quantize_gptq(
                &w[1..],
                rows,
                &l,
                &h,
                &GptqOptions::default(),
                ParamChoice::MinMax
            )
            .is_err()
        );
        assert!(
            quantize_gptq(
                &w,
                rows,
                &l,
                &h[1..],
                &GptqOptions::default(),
                ParamChoice::MinMax
            )
            .is_err()
        );
    }
}
