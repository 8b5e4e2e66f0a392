//! QJL (Zandieh, Daliri and Han, "QJL: 1-Bit Quantized JL Transform for KV
//! Cache Quantization with Zero Overhead", arXiv 2406.03482): a key `k` is
//! stored as the signs of a Gaussian Johnson-Lindenstrauss projection `S k`
//! (one bit per sketch row) plus its norm; a query is projected at full
//! precision and the score `<q, k>` estimated as
//!
//! ```text
//! sqrt(pi/2) / m * ||k|| * <S q, sign(S k)>
//! ```
//!
//! which is unbiased for Gaussian `S` (each row `s` gives
//! `E[<s, q> sign(<s, k>)] = sqrt(2/pi) <q, k> / ||k||`), with variance
//! `(pi/2 ||q||^2 ||k||^2 - <q, k>^2) / m`.
//!
//! Outlier channels, as the paper's code does: for each group of tokens the
//! `outliers` channels with the largest norm over the group are split off;
//! a key's inlier part is sketched with all `m` rows and its outlier part,
//! separately, with the first `m_outlier` rows of the same `S`, each with
//! its own norm. The two estimates add up (each is unbiased), and a few
//! large channels no longer inflate the variance of the whole key.
//!
//! This is the CPU reference of the GPU kernels; `S` is `[head_dim, m]`,
//! row-major by channel (`s[c * m + j]`), from a seeded generator so the GPU
//! gets the same matrix. [`QjlSketch::new`] draws i.i.d. Gaussian rows;
//! [`QjlSketch::new_orthogonal`] (what the KV cache uses, as QJL's code does
//! by default) orthogonalizes each block of `head_dim` rows, which on
//! SmolLM2 halves the perplexity cost of QJL keys at the same bits.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::{ModelError, Result};

/// sqrt(pi / 2).
pub const SQRT_HALF_PI: f32 = 1.253_314_1;

#[derive(Debug, Clone, PartialEq)]
pub struct QjlSketch {
    pub head_dim: usize,
    /// Sketch rows (bits per key) for the inlier part; a multiple of 32.
    pub m: usize,
    /// Sketch rows for the outlier part (the first `m_outlier` of `S`); a
    /// multiple of 32, at most `m`; 0 when no channels are split off.
    pub m_outlier: usize,
    /// `[head_dim, m]`, `s[c * m + j]`.
    pub s: Vec<f32>,
}

/// One key as the cache stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct QjlKey {
    /// sign(S k_inlier) > 0 as bits, row j at bit j % 32 of word j / 32.
    pub signs: Vec<u32>,
    /// The outlier part's signs over the first `m_outlier` rows.
    pub outlier_signs: Vec<u32>,
    pub norm: f32,
    pub outlier_norm: f32,
}

/// A query prepared against one token group's outlier channels.
#[derive(Debug, Clone, PartialEq)]
pub struct QjlQuery {
    /// S q_inlier, `m` values.
    pub inlier: Vec<f32>,
    /// S q_outlier over the first `m_outlier` rows.
    pub outlier: Vec<f32>,
}

impl QjlSketch {
    pub fn new(head_dim: usize, m: usize, m_outlier: usize, seed: u64) -> Result<Self> {
        if head_dim == 0
            || m == 0
            || !m.is_multiple_of(32)
            || !m_outlier.is_multiple_of(32)
            || m_outlier > m
        {
            return Err(ModelError::Input(format!(
                "QJL sketch of {m} rows ({m_outlier} for outliers) over {head_dim} channels: \
                 rows must be positive multiples of 32, outlier rows at most the rows"
            )));
        }
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let s = (0..head_dim * m)
            .map(|_| StandardNormal.sample(&mut r))
            .collect();
        Ok(QjlSketch {
            head_dim,
            m,
            m_outlier,
            s,
        })
    }

    /// As [`QjlSketch::new`], then each block of `head_dim` sketch rows
    /// orthogonalized (Gram-Schmidt in f64, as QJL's code does with a QR
    /// per block) and every row scaled to the norm that keeps the estimator
    /// unbiased: a row uniform on the sphere of radius `r` gives
    /// `E[<s, q> sign(<s, k>)] = r E|u_1| <q, k> / |k|` (`u` uniform on the
    /// unit sphere), so `r = sqrt(2/pi) / E|u_1|`, with
    /// `E|u_1| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))`. Orthogonal rows
    /// within a block make their errors cancel: a lower variance than
    /// independent Gaussian rows for the same bits.
    pub fn new_orthogonal(head_dim: usize, m: usize, m_outlier: usize, seed: u64) -> Result<Self> {
        let mut sk = Self::new(head_dim, m, m_outlier, seed)?;
        let d = head_dim;
        let radius = (2.0 / std::f64::consts::PI).sqrt() / mean_abs_coordinate(d);
        for b0 in (0..m).step_by(d) {
            let rows = (b0..(b0 + d).min(m)).collect::<Vec<_>>();
            let mut basis: Vec<Vec<f64>> = Vec::with_capacity(rows.len());
            for &j in &rows {
                let mut v: Vec<f64> = (0..d).map(|c| f64::from(sk.s[c * m + j])).collect();
                for _ in 0..2 {
                    for u in &basis {
                        let p: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                        for (a, b) in v.iter_mut().zip(u) {
                            *a -= p * b;
                        }
                    }
                }
                let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                for a in &mut v {
                    *a /= n;
                }
                for (c, a) in v.iter().enumerate() {
                    sk.s[c * m + j] = (a * radius) as f32;
                }
                basis.push(v);
            }
        }
        Ok(sk)
    }

    /// S x over the first `rows` sketch rows, for the channels `take` accepts.
    fn project(&self, x: &[f32], rows: usize, take: impl Fn(usize) -> bool) -> Vec<f32> {
        let mut out = vec![0.0f32; rows];
        for (c, &v) in x.iter().enumerate() {
            if v == 0.0 || !take(c) {
                continue;
            }
            let row = &self.s[c * self.m..c * self.m + rows];
            for (o, &sv) in out.iter_mut().zip(row) {
                *o += sv * v;
            }
        }
        out
    }

    fn signs(p: &[f32]) -> Vec<u32> {
        let mut w = vec![0u32; p.len().div_ceil(32)];
        for (j, &v) in p.iter().enumerate() {
            if v > 0.0 {
                w[j / 32] |= 1 << (j % 32);
            }
        }
        w
    }

    /// Encodes key `k` (`head_dim` values) of a group whose outlier channels are `outliers`.
    pub fn encode(&self, k: &[f32], outliers: &[u8]) -> QjlKey {
        let is_out = |c: usize| outliers.contains(&(c as u8));
        let norm2 = |take: &dyn Fn(usize) -> bool| {
            k.iter()
                .enumerate()
                .filter(|(c, _)| take(*c))
                .map(|(_, v)| v * v)
                .sum::<f32>()
                .sqrt()
        };
        let inl = self.project(k, self.m, |c| !is_out(c));
        let out = if outliers.is_empty() {
            Vec::new()
        } else {
            self.project(k, self.m_outlier, is_out)
        };
        QjlKey {
            signs: Self::signs(&inl),
            outlier_signs: Self::signs(&out),
            norm: norm2(&|c| !is_out(c)),
            outlier_norm: norm2(&is_out),
        }
    }

    /// Projects query `q` for a group with outlier channels `outliers`.
    pub fn query(&self, q: &[f32], outliers: &[u8]) -> QjlQuery {
        let is_out = |c: usize| outliers.contains(&(c as u8));
        QjlQuery {
            inlier: self.project(q, self.m, |c| !is_out(c)),
            outlier: if outliers.is_empty() {
                Vec::new()
            } else {
                self.project(q, self.m_outlier, is_out)
            },
        }
    }

    /// The estimate of `<q, k>`.
    pub fn score(&self, q: &QjlQuery, k: &QjlKey) -> f32 {
        let signed = |p: &[f32], bits: &[u32]| -> f32 {
            p.iter()
                .enumerate()
                .map(|(j, &v)| {
                    if bits[j / 32] >> (j % 32) & 1 == 1 {
                        v
                    } else {
                        -v
                    }
                })
                .sum()
        };
        let mut s = SQRT_HALF_PI / self.m as f32 * k.norm * signed(&q.inlier, &k.signs);
        if !q.outlier.is_empty() && self.m_outlier > 0 {
            s += SQRT_HALF_PI / self.m_outlier as f32
                * k.outlier_norm
                * signed(&q.outlier, &k.outlier_signs);
        }
        s
    }
}

/// `E|u_1|` for `u` uniform on the unit sphere in `d` dimensions:
/// `Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))`, by the recurrence
/// `R(d + 2) = d / (d + 1) R(d)` on `R(d) = Gamma(d/2) / Gamma((d+1)/2)`.
fn mean_abs_coordinate(d: usize) -> f64 {
    let pi = std::f64::consts::PI;
    let (mut r, mut k) = if d % 2 == 1 {
        (pi.sqrt(), 1)
    } else {
        (2.0 / pi.sqrt(), 2)
    };
    while k < d {
        r *= k as f64 / (k as f64 + 1.0);
        k += 2;
    }
    r / pi.sqrt()
}

/// The `count` channels with the largest norm over a group of keys
/// (`[n, head_dim]`), largest first.
pub fn outlier_channels(keys: &[f32], head_dim: usize, count: usize) -> Vec<u8> {
    let mut norms = vec![0.0f32; head_dim];
    for k in keys.chunks_exact(head_dim) {
        for (n, v) in norms.iter_mut().zip(k) {
            *n += v * v;
        }
    }
    let mut idx: Vec<usize> = (0..head_dim).collect();
    idx.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(count.min(head_dim))
        .map(|c| c as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64) * (*y as f64))
            .sum()
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    /// Mean and variance of the estimate over `trials` seeded sketches made by `make`.
    fn trials(
        make: fn(usize, usize, usize, u64) -> Result<QjlSketch>,
        q: &[f32],
        k: &[f32],
        outliers: &[u8],
        m: usize,
        mo: usize,
        trials: u64,
    ) -> (f64, f64) {
        let (mut s1, mut s2) = (0.0, 0.0);
        for t in 0..trials {
            let sk = make(q.len(), m, mo, 1000 + t).unwrap();
            let e = sk.score(&sk.query(q, outliers), &sk.encode(k, outliers)) as f64;
            s1 += e;
            s2 += e * e;
        }
        let n = trials as f64;
        let mean = s1 / n;
        (mean, (s2 / n - mean * mean) * n / (n - 1.0))
    }

    #[test]
    fn estimator_is_unbiased_with_the_stated_variance() {
        let d = 64;
        let (q, k) = (random(d, 1), random(d, 2));
        let truth = dot(&q, &k);
        let n = 3000;
        for m in [64, 128, 256] {
            let (mean, var) = trials(QjlSketch::new, &q, &k, &[], m, 0, n);
            let theory = (std::f64::consts::FRAC_PI_2 * dot(&q, &q) * dot(&k, &k) - truth * truth)
                / m as f64;
            let se = (theory / n as f64).sqrt();
            assert!(
                (mean - truth).abs() < 4.0 * se,
                "m {m}: mean {mean} truth {truth} (se {se})"
            );
            assert!(
                (var / theory - 1.0).abs() < 0.15,
                "m {m}: variance {var}, theory {theory}"
            );
        }
    }

    #[test]
    fn orthogonal_sketch_is_unbiased_with_less_variance() {
        // Rows orthonormal per block of head_dim, at the unbiased radius.
        let sk = QjlSketch::new_orthogonal(16, 64, 0, 3).unwrap();
        let row = |j: usize| (0..16).map(|c| sk.s[c * 64 + j] as f64).collect::<Vec<_>>();
        let dotr = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let r2 = (2.0 / std::f64::consts::PI) / mean_abs_coordinate(16).powi(2);
        for (a, b) in [(0, 0), (0, 5), (15, 15), (16, 17), (40, 47), (63, 63)] {
            let want = if a == b { r2 } else { 0.0 };
            assert!((dotr(&row(a), &row(b)) - want).abs() < 1e-4, "rows {a} {b}");
        }
        // E|u_1| on the unit circle is 2/pi, on the unit sphere in 3-D 1/2.
        assert!((mean_abs_coordinate(2) - 2.0 / std::f64::consts::PI).abs() < 1e-12);
        assert!((mean_abs_coordinate(3) - 0.5).abs() < 1e-12);
        let d = 64;
        let (q, k) = (random(d, 11), random(d, 12));
        let truth = dot(&q, &k);
        let n = 3000;
        let (mg, vg) = trials(QjlSketch::new, &q, &k, &[], 128, 0, n);
        let (mo, vo) = trials(QjlSketch::new_orthogonal, &q, &k, &[], 128, 0, n);
        for (mean, var) in [(mg, vg), (mo, vo)] {
            assert!(
                (mean - truth).abs() < 4.0 * (var / n as f64).sqrt(),
                "mean {mean} truth {truth} var {var}"
            );
        }
        assert!(vo < 0.8 * vg, "orthogonal variance {vo} vs Gaussian {vg}");
    }

    #[test]
    fn outlier_split_stays_unbiased_and_cuts_variance() {
        let d = 64;
        let q = random(d, 3);
        let mut k = random(d, 4);
        // Four channels an order of magnitude larger than the rest, as in real keys.
        for (c, v) in [(3, 12.0), (17, -15.0), (40, 10.0), (63, -11.0)] {
            k[c] = v;
        }
        let outliers = outlier_channels(&k, d, 4);
        let mut sorted = outliers.clone();
        sorted.sort();
        assert_eq!(sorted, vec![3, 17, 40, 63]);
        let truth = dot(&q, &k);
        let n = 3000;
        let (m0, v0) = trials(QjlSketch::new, &q, &k, &[], 128, 0, n);
        let (m1, v1) = trials(QjlSketch::new, &q, &k, &outliers, 128, 64, n);
        for (mean, var) in [(m0, v0), (m1, v1)] {
            assert!(
                (mean - truth).abs() < 4.0 * (var / n as f64).sqrt(),
                "mean {mean} truth {truth} var {var}"
            );
        }
        assert!(v1 < 0.5 * v0, "split variance {v1} vs whole {v0}");
    }

    #[test]
    fn signs_norms_and_bad_shapes() {
        let sk = QjlSketch::new(7, 64, 32, 5).unwrap();
        let k = random(7, 6);
        let e = sk.encode(&k, &[]);
        assert_eq!((e.signs.len(), e.outlier_signs.len()), (2, 0));
        let p = sk.project(&k, 64, |_| true);
        for (j, v) in p.iter().enumerate() {
            assert_eq!(e.signs[j / 32] >> (j % 32) & 1 == 1, *v > 0.0, "row {j}");
        }
        assert!((e.norm as f64 - dot(&k, &k).sqrt()).abs() < 1e-6);
        assert_eq!(e.outlier_norm, 0.0);
        // A key scored against itself is close to its squared norm for a large sketch.
        let big = QjlSketch::new(7, 4096, 0, 7).unwrap();
        let s = big.score(&big.query(&k, &[]), &big.encode(&k, &[])) as f64;
        assert!((s / dot(&k, &k) - 1.0).abs() < 0.1, "{s}");
        for (m, mo) in [(0, 0), (48, 0), (64, 96), (64, 16)] {
            assert!(QjlSketch::new(7, m, mo, 0).is_err(), "{m} {mo}");
        }
        assert_eq!(outlier_channels(&[1.0, -5.0, 2.0], 3, 9), vec![1, 2, 0]);
    }
}
