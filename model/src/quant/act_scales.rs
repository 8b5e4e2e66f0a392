//! Static activation scales (PrefixQuant): one symmetric scale per layer
//! and [`ActSite`], fixed at quantize time, found on calibration text with
//! the prefix in the cache.
//!
//! 1. Calibration maxima: the windows run through the CPU reference of the
//!    quantized weights with f32 activations, after the prefix's KV
//!    ([`Reference::load_prefix`]), so the prefix's own activations (the
//!    outliers) are never seen; each site's max |x| over all tokens, and
//!    every `sample_every`-th token's activations, are kept.
//! 2. Clipping: the scale is `alpha * max / qmax`, with `alpha` searched on a
//!    coarse grid (1.0 down to 0.20 in steps of 0.05), then a fine one (0.01
//!    steps around the best), minimising the squared error the quantized
//!    activations cause in the outputs of the linear layers that read them,
//!    `‖(Q(X) − X) Wᵀ‖²` over the kept tokens (q, k and v stacked for the
//!    attention input, gate and up for the FFN input).
//!
//! The paper searches the clipping on the whole block's output, with the
//! blocks before it quantized; this per-site search is cheaper (the CPU
//! only) and is what `lamina quantize` does.

use crate::checkpoint::act::{dynamic_scale, fake_quant_row, qmax};
use crate::checkpoint::{ActQuant, ActSite, LayerWeights, LlamaConfig, LlamaWeights, Pivot};
use crate::reference::{Reference, dot};
use crate::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct ActScaleOptions {
    /// 8 or 4.
    pub bits: u32,
    /// Per-token scales at run time instead (no calibration of scales).
    pub dynamic: bool,
    /// Keep every this-many-th token's activations for the clipping search.
    pub sample_every: usize,
}

impl Default for ActScaleOptions {
    fn default() -> Self {
        ActScaleOptions {
            bits: 8,
            dynamic: false,
            sample_every: 16,
        }
    }
}

/// The weights reading `site` in layer `lw`, dequantized and stacked by rows.
fn site_weights(lw: &LayerWeights, site: ActSite) -> Result<Vec<f32>> {
    let ts = match site {
        ActSite::QkvIn => vec![&lw.wq, &lw.wk, &lw.wv],
        ActSite::OIn => vec![&lw.wo],
        ActSite::FfnIn => vec![&lw.w_gate, &lw.w_up],
        ActSite::DownIn => vec![&lw.w_down],
    };
    let mut w = Vec::new();
    for t in ts {
        w.extend(t.to_f32()?);
    }
    Ok(w)
}

/// `‖(Q(X) − X) Wᵀ‖²` at scale `s`; X `[m, width]`, W `[rows, width]`.
fn output_error(x: &[f32], w: &[f32], width: usize, s: f32, qm: f32) -> f64 {
    let mut e = vec![0.0f32; width];
    let mut total = 0.0f64;
    for row in x.chunks_exact(width) {
        e.copy_from_slice(row);
        fake_quant_row(&mut e, s, qm);
        for (d, v) in e.iter_mut().zip(row) {
            *d -= v;
        }
        for wr in w.chunks_exact(width) {
            let y = f64::from(dot(&e, wr));
            total += y * y;
        }
    }
    total
}

/// The clipping factor minimising [`output_error`].
fn search_clip(x: &[f32], w: &[f32], width: usize, max: f32, qm: f32) -> f32 {
    search_alpha(0.20, |a| output_error(x, w, width, a * max / qm, qm))
}

/// The clipping factor `alpha` in `(0, 1]` minimising `err`: a coarse grid
/// from 1.0 down to `lowest` in steps of 0.05, then 0.01 steps around the
/// best (PrefixQuant's grid search; the KV scales' too).
pub(crate) fn search_alpha(lowest: f32, err: impl Fn(f32) -> f64) -> f32 {
    let best_of = |grid: Vec<f32>| {
        grid.into_iter()
            .map(|a| (a, err(a)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(1.0, |(a, _)| a)
    };
    let steps = ((1.0 - lowest) / 0.05).round() as usize;
    let coarse = best_of((0..=steps).map(|i| 1.0 - 0.05 * i as f32).collect());
    let fine = (-4..=4)
        .map(|i| coarse + 0.01 * i as f32)
        .filter(|a| *a > 0.0 && *a <= 1.0)
        .collect();
    best_of(fine)
}

/// Calibrates the activation quantization of the model `(cfg, w)` (its
/// quantized weights) on `windows`, each run after `prefix`'s KV.
pub fn calibrate(
    cfg: &LlamaConfig,
    w: &LlamaWeights,
    prefix: Option<&Pivot>,
    windows: &[Vec<u32>],
    o: &ActScaleOptions,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<ActQuant> {
    let probe = ActQuant {
        bits: o.bits,
        dynamic: true,
        ..Default::default()
    };
    probe.check(cfg)?;
    if o.dynamic {
        return Ok(probe);
    }
    let seq = windows.iter().map(Vec::len).max().unwrap_or(0);
    if seq == 0 {
        return Err(ModelError::Input(
            "static activation scales need calibration windows".into(),
        ));
    }
    let p = prefix.map_or(0, Pivot::len);
    let mut r = Reference::new(cfg, w, p + seq)?;
    let nl = cfg.n_layers;
    let mut maxes = vec![[0.0f32; 4]; nl];
    let mut rows: Vec<[Vec<f32>; 4]> = vec![Default::default(); nl];
    for (i, win) in windows.iter().enumerate() {
        progress("activations", i, windows.len());
        r.reset();
        if let Some(pv) = prefix {
            r.load_prefix(pv)?;
        }
        let h = r.forward_site_max(win, p, o.sample_every.max(1))?;
        for l in 0..nl {
            for s in ActSite::ALL {
                let m = h.site_max[l][s.index()]
                    .iter()
                    .fold(0.0f32, |a, &b| a.max(b));
                maxes[l][s.index()] = maxes[l][s.index()].max(m);
                rows[l][s.index()].extend_from_slice(&h.site_rows[l][s.index()]);
            }
        }
    }
    let qm = qmax(o.bits);
    let mut scales = vec![[0.0f32; 4]; nl];
    let mut clip = vec![[1.0f32; 4]; nl];
    for l in 0..nl {
        progress("clipping", l, nl);
        let lw = &w.layers[l];
        // The sites of a layer are independent: one thread each.
        let found: Vec<Result<f32>> = std::thread::scope(|sc| {
            let hs: Vec<_> = ActSite::ALL
                .into_iter()
                .map(|s| {
                    let (x, max) = (&rows[l][s.index()], maxes[l][s.index()]);
                    sc.spawn(move || -> Result<f32> {
                        if max <= 0.0 {
                            return Ok(1.0);
                        }
                        let ws = site_weights(lw, s)?;
                        Ok(search_clip(x, &ws, s.width(cfg), max, qm))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        for (s, a) in ActSite::ALL.into_iter().zip(found) {
            let a = a?;
            let max = maxes[l][s.index()];
            clip[l][s.index()] = a;
            scales[l][s.index()] = if max > 0.0 {
                a * max / qm
            } else {
                dynamic_scale(&[], qm)
            };
        }
    }
    progress("clipping", nl, nl);
    let act = ActQuant {
        bits: o.bits,
        dynamic: false,
        scales,
        clip,
    };
    act.check(cfg)?;
    Ok(act)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One large value among small ones at 4 bits: clipping it costs less
    /// than the resolution it takes from the rest, so the search clips.
    #[test]
    fn an_outlier_is_clipped() {
        let width = 32;
        let mut x: Vec<f32> = (0..width * 64)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        x[5] = 3.0;
        let w: Vec<f32> = (0..width * 8)
            .map(|i| ((i * 13 % 7) as f32) - 3.0)
            .collect();
        let a = search_clip(&x, &w, width, 3.0, qmax(4));
        assert!(a < 0.95, "alpha {a}");
        let e1 = output_error(&x, &w, width, 3.0 / 7.0, 7.0);
        let ea = output_error(&x, &w, width, a * 3.0 / 7.0, 7.0);
        assert!(ea < e1, "{ea} >= {e1}");
    }
}
