//! The reference's arithmetic: dense f32 kernels with a fixed summation
//! order (see the parent module's numerics), and the RoPE table.

use std::thread;

use crate::checkpoint::{LlamaConfig, RopeStyle};

use super::PARALLEL_MIN_WORK;

/// A dense row-major f32 matrix `[rows, cols]` (`y = W x`, `x: [cols]`).
pub(super) struct Matrix {
    pub(super) data: Vec<f32>,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl Matrix {
    pub(super) fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// RoPE rotation table: `cos[p, i]`, `sin[p, i]` for the angle `p * theta^(-2i/head_dim)`.
pub(super) struct RopeTable {
    half: usize,
    cos: Vec<f32>, // [max_ctx, head_dim / 2]
    sin: Vec<f32>, // [max_ctx, head_dim / 2]
}

/// `out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w` for each row `t` of `[n, dim]`.
pub(super) fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let dim = w.len();
    for (o, xr) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        let mean_sq = xr
            .iter()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            / dim as f64;
        let inv = (1.0 / (mean_sq + f64::from(eps)).sqrt()) as f32;
        for ((o, xv), wv) in o.iter_mut().zip(xr).zip(w) {
            // (x * inv) * w: the same order as transformers' LlamaRMSNorm.
            *o = (xv * inv) * wv;
        }
    }
}

pub(super) fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `a · b` in f32 with 8 interleaved partial sums, added pairwise at the end.
/// The partial sums let the compiler vectorize and keep the rounding error
/// lower than one long serial sum; the order is fixed, so the result is
/// reproducible.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a8, a_tail) = a.as_chunks::<8>();
    let (b8, b_tail) = b.as_chunks::<8>();
    let mut acc = [0.0f32; 8];
    for (x, y) in a8.iter().zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a_tail.iter().zip(b_tail) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out[t, r] = W[r, :] · x[t, :]`: `out: [n, rows]`, `x: [n, cols]`, `W: [rows, cols]`.
///
/// One token (decoding) splits the rows of `W` over threads; several tokens
/// split the tokens, so each thread owns whole rows of `out` and no unsafe
/// sharing is needed. Each dot product is the same either way.
pub(super) fn matmul(out: &mut [f32], x: &[f32], w: &Matrix, threads: usize) {
    let (rows, cols) = (w.rows, w.cols);
    let n = x.len() / cols;
    debug_assert_eq!(out.len(), n * rows);
    let threads = if n * rows * cols < PARALLEL_MIN_WORK {
        1
    } else {
        threads.max(1)
    };
    if n == 1 {
        let chunk = rows.div_ceil(threads);
        let run = |r0: usize, out: &mut [f32]| {
            for (j, y) in out.iter_mut().enumerate() {
                *y = dot(x, w.row(r0 + j));
            }
        };
        if threads == 1 {
            return run(0, out);
        }
        thread::scope(|s| {
            for (i, o) in out.chunks_mut(chunk).enumerate() {
                s.spawn(move || run(i * chunk, o));
            }
        });
    } else {
        // Loop order: each weight row is read once per thread and reused for
        // all its tokens while it sits in L1.
        let run = |out: &mut [f32], x: &[f32]| {
            for r in 0..rows {
                let wr = w.row(r);
                for (t, xt) in x.chunks_exact(cols).enumerate() {
                    out[t * rows + r] = dot(xt, wr);
                }
            }
        };
        let chunk = n.div_ceil(threads.min(n));
        if chunk == n {
            return run(out, x);
        }
        thread::scope(|s| {
            for (o, xs) in out.chunks_mut(chunk * rows).zip(x.chunks(chunk * cols)) {
                s.spawn(move || run(o, xs));
            }
        });
    }
}

/// Causal multi-head attention with grouped KV heads.
///
/// For new token `t` (at position `pos + t`) and query head `h`, with KV head
/// `g = h / (n_heads / n_kv_heads)` (as transformers' `repeat_kv`):
/// `out[t, h] = sum_{j <= pos+t} softmax_j(q[t,h] · k[j,g] / sqrt(head_dim)) v[j,g]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    out: &mut [f32], // [n, n_heads * head_dim]
    q: &[f32],       // [n, n_heads * head_dim]
    keys: &[f32],    // [pos + n, n_kv_heads * head_dim]
    values: &[f32],  // [pos + n, n_kv_heads * head_dim]
    pos: usize,
    cfg: &LlamaConfig,
    scores: &mut [f32], // [threads, max_ctx]
    threads: usize,
) {
    let (hd, qd, kvd, group) = (cfg.head_dim, cfg.q_dim(), cfg.kv_dim(), cfg.gqa_group());
    let n = q.len() / qd;
    let ctx_max = scores.len() / threads.max(1);
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    // Tokens `t0..` of this slice; `att` is one thread's score row.
    let run = |t0: usize, out: &mut [f32], q: &[f32], att: &mut [f32]| {
        for (t, (o_t, q_t)) in out.chunks_exact_mut(qd).zip(q.chunks_exact(qd)).enumerate() {
            let ctx = pos + t0 + t + 1; // causal: keys 0..=pos+t
            for h in 0..cfg.n_heads {
                let g = h / group;
                let q_h = &q_t[h * hd..(h + 1) * hd]; // [head_dim]
                let att = &mut att[..ctx]; // [ctx]
                for (j, a) in att.iter_mut().enumerate() {
                    *a = dot(q_h, &keys[j * kvd + g * hd..j * kvd + (g + 1) * hd]) * scale;
                }
                softmax(att);
                let o_h = &mut o_t[h * hd..(h + 1) * hd]; // [head_dim]
                o_h.fill(0.0);
                for (j, a) in att.iter().enumerate() {
                    let v = &values[j * kvd + g * hd..j * kvd + (g + 1) * hd];
                    for (o, v) in o_h.iter_mut().zip(v) {
                        *o += a * v;
                    }
                }
            }
        }
    };
    let work = n * cfg.n_heads * (pos + n) * hd;
    let threads = if work < PARALLEL_MIN_WORK {
        1
    } else {
        threads.clamp(1, n)
    };
    let chunk = n.div_ceil(threads);
    if threads == 1 {
        return run(0, out, q, &mut scores[..ctx_max]);
    }
    thread::scope(|s| {
        let parts = out
            .chunks_mut(chunk * qd)
            .zip(q.chunks(chunk * qd))
            .zip(scores.chunks_mut(ctx_max));
        for (i, ((o, qs), att)) in parts.enumerate() {
            s.spawn(move || run(i * chunk, o, qs, att));
        }
    });
}

/// In-place softmax: exp in f32 after subtracting the max, denominator in f64.
pub(super) fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

impl RopeTable {
    /// `factors`: each pair's frequency divisor (Llama 3.x), empty if unscaled.
    pub(super) fn new(head_dim: usize, theta: f32, factors: &[f32], max_ctx: usize) -> Self {
        let half = head_dim / 2;
        // transformers: inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim)),
        // (llama3: divided by the pair's factor), freqs = position.float() *
        // inv_freq, then cos/sin, all in f32.
        let inv_freq = lamina_engine::ops::rope::inv_freqs(head_dim, theta, factors);
        let mut cos = Vec::with_capacity(max_ctx * half);
        let mut sin = Vec::with_capacity(max_ctx * half);
        for p in 0..max_ctx {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeTable { half, cos, sin }
    }

    /// Rotates each head of `x: [n, heads, head_dim]`, token `t` by position `pos + t`.
    /// Pair `i` is (2i, 2i+1) for [`RopeStyle::Interleaved`] and (i, i + head_dim/2)
    /// for [`RopeStyle::Neox`]; both rotate by the angle `pos * theta^(-2i/head_dim)`.
    pub(super) fn rotate(&self, x: &mut [f32], heads: usize, pos: usize, style: RopeStyle) {
        let hd = 2 * self.half;
        for (t, x_t) in x.chunks_exact_mut(heads * hd).enumerate() {
            let p = pos + t;
            let cos = &self.cos[p * self.half..(p + 1) * self.half];
            let sin = &self.sin[p * self.half..(p + 1) * self.half];
            for head in x_t.chunks_exact_mut(hd) {
                for i in 0..self.half {
                    let (a, b) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + self.half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}
