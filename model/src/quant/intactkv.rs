//! IntactKV's optional calibration of the pivot KV (Liu et al. 2024, §3.3):
//! the pivot's keys and values become parameters, tuned so that a quantized
//! model with them in front reproduces the full-precision model.
//!
//! What Lamina does, on the CPU reference in f32:
//! - The full-precision model runs every calibration window after its own
//!   pivot and keeps each layer's attention output (before o_proj): the
//!   targets.
//! - The quantized model runs the same windows after the same pivot and
//!   keeps each layer's queries, keys and values.
//! - Layer by layer, independently, Adam moves that layer's pivot K and V
//!   to minimise the mean squared error between the quantized model's
//!   attention output and the target, over every query of every window.
//!   The window's own keys and values are fixed, so their part of each
//!   softmax (running max, sum and weighted values) is computed once and
//!   a step costs only the pivot's columns.
//!
//! The paper tunes the pivot end to end through the whole model with its
//! training loop; this is the layer-wise form of the same objective, which
//! needs no backward pass through the network. A layer's inputs are the
//! quantized model's with the untuned pivot in front, so later layers do
//! not see earlier layers' tuning.

use std::thread;

use crate::checkpoint::LlamaWeights;
use crate::checkpoint::Pivot;
use crate::reference::Reference;
use crate::{LlamaConfig, ModelError, Result};

#[derive(Debug, Clone)]
pub struct PivotCalibOptions {
    /// Adam steps per layer.
    pub steps: usize,
    /// Adam step size, relative to the RMS of the layer's pivot K (for K)
    /// and V (for V).
    pub lr: f64,
}

impl Default for PivotCalibOptions {
    fn default() -> Self {
        PivotCalibOptions {
            steps: 150,
            lr: 0.01,
        }
    }
}

/// One layer's attention-output MSE with the pivot as it came and as tuned.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LayerFit {
    pub mse_before: f64,
    pub mse_after: f64,
}

/// One layer's calibration data: for every window, the quantized model's
/// queries `[n, q_dim]`, its keys and values `[n, kv_dim]` (after the
/// pivot) and the full-precision attention output `[n, q_dim]`.
struct LayerData {
    pub q: Vec<Vec<f32>>,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub target: Vec<Vec<f32>>,
}

/// The window's own part of one query's softmax: max score, sum of
/// exp(score - max) and the exp-weighted sum of values.
struct Partial {
    m: f32,
    l: f64,
    a: Vec<f32>,
}

/// Shape of the problem: heads, KV heads, head_dim.
#[derive(Clone, Copy)]
struct Shape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Shape {
    fn of(cfg: &LlamaConfig) -> Shape {
        Shape {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
        }
    }
    fn qd(&self) -> usize {
        self.n_heads * self.head_dim
    }
    fn kvd(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Causal partial softmax of every (window, token, head) over the window's
/// own keys.
fn partials(d: &LayerData, s: Shape) -> Vec<Partial> {
    let (hd, qd, kvd) = (s.head_dim, s.qd(), s.kvd());
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = Vec::new();
    for (w, q) in d.q.iter().enumerate() {
        let n = q.len() / qd;
        for t in 0..n {
            for h in 0..s.n_heads {
                let g = h / group;
                let qh = &q[t * qd + h * hd..][..hd];
                let sc: Vec<f32> = (0..=t)
                    .map(|j| dot(qh, &d.k[w][j * kvd + g * hd..][..hd]) * scale)
                    .collect();
                let m = sc.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
                let mut l = 0.0f64;
                let mut a = vec![0.0f32; hd];
                for (j, x) in sc.iter().enumerate() {
                    let e = (x - m).exp();
                    l += f64::from(e);
                    for (ai, vi) in a.iter_mut().zip(&d.v[w][j * kvd + g * hd..][..hd]) {
                        *ai += e * vi;
                    }
                }
                out.push(Partial { m, l, a });
            }
        }
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The MSE between the attention output with pivot `kp`, `vp` (`[P,
/// kv_dim]`) in front and the target, and its gradients with respect to
/// `kp` and `vp`.
fn loss_grad(
    d: &LayerData,
    parts: &[Partial],
    s: Shape,
    kp: &[f32],
    vp: &[f32],
) -> (f64, Vec<f64>, Vec<f64>) {
    let (hd, qd, kvd) = (s.head_dim, s.qd(), s.kvd());
    let group = s.n_heads / s.n_kv_heads;
    let np = kp.len() / kvd;
    let scale = 1.0 / (hd as f64).sqrt();
    let (mut gk, mut gv) = (vec![0.0f64; kp.len()], vec![0.0f64; vp.len()]);
    let mut loss = 0.0f64;
    let count: usize = d.q.iter().map(|q| q.len()).sum();
    let norm = 1.0 / count as f64;
    let mut it = parts.iter();
    let mut sp = vec![0.0f64; np];
    let mut o = vec![0.0f64; hd];
    for (w, q) in d.q.iter().enumerate() {
        for t in 0..q.len() / qd {
            for h in 0..s.n_heads {
                let part = it.next().expect("one partial per query");
                let g = h / group;
                let qh = &q[t * qd + h * hd..][..hd];
                for (p, x) in sp.iter_mut().enumerate() {
                    let k = &kp[p * kvd + g * hd..][..hd];
                    *x = scale
                        * qh.iter()
                            .zip(k)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum::<f64>();
                }
                let m = sp.iter().fold(f64::from(part.m), |a, b| a.max(*b));
                let e_seq = (f64::from(part.m) - m).exp();
                let mut denom = part.l * e_seq;
                for x in sp.iter_mut() {
                    *x = (*x - m).exp();
                    denom += *x;
                }
                for (i, oi) in o.iter_mut().enumerate() {
                    let mut acc = f64::from(part.a[i]) * e_seq;
                    for (p, e) in sp.iter().enumerate() {
                        acc += e * f64::from(vp[p * kvd + g * hd + i]);
                    }
                    *oi = acc / denom;
                }
                // r = o - target; dL/do = 2 r / count.
                let target = &d.target[w][t * qd + h * hd..][..hd];
                let mut r = vec![0.0f64; hd];
                for i in 0..hd {
                    r[i] = o[i] - f64::from(target[i]);
                    loss += r[i] * r[i];
                }
                for (p, e) in sp.iter().enumerate() {
                    let pw = e / denom;
                    let vrow = &vp[p * kvd + g * hd..][..hd];
                    let mut dot_rv = 0.0f64;
                    for i in 0..hd {
                        gv[p * kvd + g * hd + i] += 2.0 * norm * pw * r[i];
                        dot_rv += r[i] * (f64::from(vrow[i]) - o[i]);
                    }
                    let ds = 2.0 * norm * pw * dot_rv;
                    for i in 0..hd {
                        gk[p * kvd + g * hd + i] += ds * scale * f64::from(qh[i]);
                    }
                }
            }
        }
    }
    (loss * norm, gk, gv)
}

/// A layer's tuned pivot K and V and its fit.
type Tuned = (Vec<f32>, Vec<f32>, LayerFit);

/// Adam on one layer's pivot K and V; returns the best pair seen and the
/// fit.
fn fit_layer(d: &LayerData, s: Shape, k0: &[f32], v0: &[f32], o: &PivotCalibOptions) -> Tuned {
    let parts = partials(d, s);
    let rms = |x: &[f32]| {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64)
            .sqrt()
            .max(1e-6)
    };
    let (lr_k, lr_v) = (o.lr * rms(k0), o.lr * rms(v0));
    let (mut k, mut v) = (k0.to_vec(), v0.to_vec());
    let (mut mk, mut vk) = (vec![0.0f64; k.len()], vec![0.0f64; k.len()]);
    let (mut mv, mut vv) = (vec![0.0f64; v.len()], vec![0.0f64; v.len()]);
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-12f64);
    let mut best = (f64::INFINITY, k.clone(), v.clone());
    let mut before = f64::NAN;
    for step in 0..=o.steps {
        let (loss, gk, gv) = loss_grad(d, &parts, s, &k, &v);
        if step == 0 {
            before = loss;
        }
        if loss < best.0 {
            best = (loss, k.clone(), v.clone());
        }
        if step == o.steps {
            break;
        }
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (x, g, m1, m2, lr) in [
            (&mut k, &gk, &mut mk, &mut vk, lr_k),
            (&mut v, &gv, &mut mv, &mut vv, lr_v),
        ] {
            for i in 0..x.len() {
                m1[i] = b1 * m1[i] + (1.0 - b1) * g[i];
                m2[i] = b2 * m2[i] + (1.0 - b2) * g[i] * g[i];
                let upd = lr * (m1[i] / c1) / ((m2[i] / c2).sqrt() + eps);
                x[i] -= upd as f32;
            }
        }
    }
    let fit = LayerFit {
        mse_before: before,
        mse_after: best.0,
    };
    (best.1, best.2, fit)
}

/// Tunes `pivot` (the full-precision model's) for the quantized weights
/// `quant` on `windows`, layer by layer; `progress(phase, done, total)`.
pub fn calibrate_pivot(
    full: (&LlamaConfig, &LlamaWeights),
    quant: (&LlamaConfig, &LlamaWeights),
    pivot: &Pivot,
    windows: &[Vec<u32>],
    opts: &PivotCalibOptions,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(Pivot, Vec<LayerFit>)> {
    let cfg = quant.0;
    if !full.0.same_attention_shape(cfg) {
        return Err(ModelError::Input(
            "the full-precision and quantized models differ in shape".into(),
        ));
    }
    if windows.is_empty() || windows.iter().any(|w| w.is_empty()) {
        return Err(ModelError::Input(
            "pivot calibration needs non-empty calibration windows".into(),
        ));
    }
    pivot.check(cfg)?;
    let (p, kvd, nl) = (pivot.len(), cfg.kv_dim(), cfg.n_layers);
    let longest = windows.iter().map(Vec::len).max().unwrap_or(0);
    let ctx = p + longest;
    if ctx > cfg.max_seq_len {
        return Err(ModelError::Input(format!(
            "calibration windows of {longest} tokens after a pivot of {p} exceed the model's {} positions",
            cfg.max_seq_len
        )));
    }
    let mut data: Vec<LayerData> = (0..nl)
        .map(|_| LayerData {
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            target: Vec::new(),
        })
        .collect();
    let total = 2 * windows.len();
    {
        let mut r = Reference::new(full.0, full.1, ctx)?;
        for (i, w) in windows.iter().enumerate() {
            progress("full-precision model", i, total);
            r.load_prefix(pivot)?;
            let h = r.forward_attention(w, p)?;
            for (d, att) in data.iter_mut().zip(h.att) {
                d.target.push(att);
            }
        }
    }
    {
        let mut r = Reference::new(quant.0, quant.1, ctx)?;
        for (i, w) in windows.iter().enumerate() {
            progress("quantized model", windows.len() + i, total);
            r.load_prefix(pivot)?;
            let h = r.forward_attention(w, p)?;
            for (l, (d, q)) in data.iter_mut().zip(h.q).enumerate() {
                let (k, v) = r.layer_kv(l);
                d.q.push(q);
                d.k.push(k[p * kvd..(p + w.len()) * kvd].to_vec());
                d.v.push(v[p * kvd..(p + w.len()) * kvd].to_vec());
            }
        }
    }
    progress("tuning the pivot", 0, nl);
    let s = Shape::of(cfg);
    let threads = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(nl);
    let mut results: Vec<Option<Tuned>> = vec![None; nl];
    let mut done = 0;
    for chunk in (0..nl).collect::<Vec<_>>().chunks(threads.max(1)) {
        let out: Vec<_> = thread::scope(|sc| {
            let hs: Vec<_> = chunk
                .iter()
                .map(|&l| {
                    let (d, k0, v0) = (&data[l], &pivot.k[l], &pivot.v[l]);
                    sc.spawn(move || fit_layer(d, s, k0, v0, opts))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("calibration thread"))
                .collect()
        });
        for (&l, r) in chunk.iter().zip(out) {
            results[l] = Some(r);
        }
        done += chunk.len();
        progress("tuning the pivot", done, nl);
    }
    let mut tuned = pivot.clone();
    let mut fits = Vec::with_capacity(nl);
    for (l, r) in results.into_iter().enumerate() {
        let (k, v, fit) = r.expect("every layer tuned");
        tuned.k[l] = k;
        tuned.v[l] = v;
        fits.push(fit);
    }
    Ok((tuned, fits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, r: &mut rand::rngs::StdRng, amp: f32) -> Vec<f32> {
        (0..n).map(|_| r.random_range(-amp..amp)).collect()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let s = Shape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
        };
        let mut r = rand::rngs::StdRng::seed_from_u64(4);
        let (qd, kvd, np) = (s.qd(), s.kvd(), 2);
        let d = LayerData {
            q: vec![rand_vec(5 * qd, &mut r, 2.0), rand_vec(3 * qd, &mut r, 2.0)],
            k: vec![
                rand_vec(5 * kvd, &mut r, 2.0),
                rand_vec(3 * kvd, &mut r, 2.0),
            ],
            v: vec![
                rand_vec(5 * kvd, &mut r, 1.0),
                rand_vec(3 * kvd, &mut r, 1.0),
            ],
            target: vec![rand_vec(5 * qd, &mut r, 1.0), rand_vec(3 * qd, &mut r, 1.0)],
        };
        let parts = partials(&d, s);
        let kp = rand_vec(np * kvd, &mut r, 2.0);
        let vp = rand_vec(np * kvd, &mut r, 1.0);
        let (_, gk, gv) = loss_grad(&d, &parts, s, &kp, &vp);
        let h = 1e-2f32;
        for (which, x, g) in [("k", &kp, &gk), ("v", &vp, &gv)] {
            for i in [0, 5, kvd + 3, np * kvd - 1] {
                let (mut up, mut down) = (x.clone(), x.clone());
                up[i] += h;
                down[i] -= h;
                let f = |y: &Vec<f32>| {
                    if which == "k" {
                        loss_grad(&d, &parts, s, y, &vp).0
                    } else {
                        loss_grad(&d, &parts, s, &kp, y).0
                    }
                };
                let fd = (f(&up) - f(&down)) / (2.0 * f64::from(h));
                assert!(
                    (fd - g[i]).abs() <= 2e-3 * fd.abs().max(1e-2),
                    "{which}[{i}]: analytic {} against finite differences {fd}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn loss_is_attention_over_pivot_and_window() {
        // The loss against a direct softmax over [pivot; window] per query.
        let s = Shape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
        };
        let mut r = rand::rngs::StdRng::seed_from_u64(9);
        let (qd, kvd, n, np) = (s.qd(), s.kvd(), 3, 2);
        let d = LayerData {
            q: vec![rand_vec(n * qd, &mut r, 3.0)],
            k: vec![rand_vec(n * kvd, &mut r, 3.0)],
            v: vec![rand_vec(n * kvd, &mut r, 1.0)],
            target: vec![rand_vec(n * qd, &mut r, 1.0)],
        };
        let kp = rand_vec(np * kvd, &mut r, 3.0);
        let vp = rand_vec(np * kvd, &mut r, 1.0);
        let mut want = 0.0f64;
        for t in 0..n {
            for h in 0..2 {
                let qh = &d.q[0][t * qd + h * 4..][..4];
                let keys: Vec<&[f32]> = (0..np)
                    .map(|p| &kp[p * 4..][..4])
                    .chain((0..=t).map(|j| &d.k[0][j * 4..][..4]))
                    .collect();
                let vals: Vec<&[f32]> = (0..np)
                    .map(|p| &vp[p * 4..][..4])
                    .chain((0..=t).map(|j| &d.v[0][j * 4..][..4]))
                    .collect();
                let e: Vec<f64> = keys
                    .iter()
                    .map(|k| f64::from(dot(qh, k) * 0.5).exp())
                    .collect();
                let z: f64 = e.iter().sum();
                for i in 0..4 {
                    let o: f64 = e
                        .iter()
                        .zip(&vals)
                        .map(|(e, v)| e * f64::from(v[i]))
                        .sum::<f64>()
                        / z;
                    want += (o - f64::from(d.target[0][t * qd + h * 4 + i])).powi(2);
                }
            }
        }
        want /= (n * qd) as f64;
        let (got, _, _) = loss_grad(&d, &partials(&d, s), s, &kp, &vp);
        assert!(
            (got - want).abs() < 1e-5 * want.max(1.0),
            "loss {got}, want {want}"
        );
    }
}
