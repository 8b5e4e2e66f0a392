//! Static KV-cache scales (PrefixQuant's KV4): one symmetric scale per
//! layer, side and KV head ([`KvStatic`]), or for keys one `(scale, min)`
//! per channel of each head ([`KvScaleOptions::k_channel`]), fixed at
//! quantize time and found on calibration text with the prefix in the
//! cache.
//!
//! The windows run through the CPU reference of the quantized model (its
//! activation quantization simulated, keys and values rounded to f16 as the
//! GPU's window holds them) after the prefix's KV, which stays out of the
//! statistics and is never quantized. Per KV head, the scale is
//! `alpha * max|x| / qmax` (`qmax = 2^(b-1) - 1`; per-channel keys: each
//! channel's calibration range shrunk by `alpha` about its middle, split
//! into `2^b - 1` steps) with `alpha` searched on a
//! coarse grid (1.0 down to 0.30 in steps of 0.05), then a fine one (0.01
//! around the best), minimising:
//! - keys: the squared error of the attention probabilities
//!   `softmax(q Kᵀ / sqrt(d))` of every `query_every`-th query of each
//!   window, over all the keys it sees (the prefix's unquantized), for
//!   every query head of the KV head's group; the keys carry the online
//!   Hadamard when the model has one, which spreads their outlier channels;
//! - values: the squared error of the values themselves.

use crate::checkpoint::act::qmax;
use crate::checkpoint::{ActQuant, KvStatic, LlamaConfig, LlamaWeights, Pivot};
use crate::quant::act_scales::search_alpha;
use crate::reference::{Reference, dot};
use crate::{ModelError, Result};
use lamina_engine::kv::{affine_word, decode_row, encode_row, static_word};

#[derive(Debug, Clone)]
pub struct KvScaleOptions {
    /// 4 or 8.
    pub bits: u32,
    /// Keep every this-many-th query for the keys' search.
    pub query_every: usize,
    /// Most calibration windows read (the first ones given).
    pub windows: usize,
    /// Keys with one `(scale, min)` per channel of each head instead of one
    /// symmetric scale per head.
    pub k_channel: bool,
}

impl Default for KvScaleOptions {
    fn default() -> Self {
        KvScaleOptions {
            bits: 4,
            query_every: 8,
            windows: 4,
            k_channel: false,
        }
    }
}

/// One layer's calibration data, per window.
struct LayerData {
    /// Keys and values of the prefix then the window, `[len, kv_dim]`.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// The sampled queries `[n, q_dim]` and their positions.
    q: Vec<Vec<f32>>,
    q_pos: Vec<Vec<usize>>,
}

/// Head `h` of `rows` (`[n, kv_dim]`) quantized against `words` (the
/// head's one word, or one per channel) and decoded, `[n, hd]`.
fn quantized_head(
    rows: &[f32],
    kvd: usize,
    hd: usize,
    h: usize,
    words: &[u32],
    bits: u32,
) -> Vec<f32> {
    rows.chunks_exact(kvd)
        .flat_map(|r| {
            let x = &r[h * hd..(h + 1) * hd];
            decode_row(&encode_row(x, bits, words), bits, words, hd)
        })
        .collect()
}

/// `rows`' head `h`, `[n, hd]`.
fn head_rows(rows: &[f32], kvd: usize, hd: usize, h: usize) -> Vec<f32> {
    rows.chunks_exact(kvd)
        .flat_map(|r| r[h * hd..(h + 1) * hd].iter().copied())
        .collect()
}

/// Softmax of `q . keys / sqrt(hd)` over the first `n` keys (`[n, hd]`).
fn probs(q: &[f32], keys: &[f32], n: usize, hd: usize, out: &mut Vec<f32>) {
    let scale = 1.0 / (hd as f32).sqrt();
    out.clear();
    out.extend(keys[..n * hd].chunks_exact(hd).map(|k| dot(q, k) * scale));
    let m = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for s in out.iter_mut() {
        *s = (*s - m).exp();
        sum += f64::from(*s);
    }
    let inv = (1.0 / sum) as f32;
    for s in out.iter_mut() {
        *s *= inv;
    }
}

/// Lowest clipping factor of the coarse grid ([`search_alpha`]).
const LOWEST_CLIP: f32 = 0.30;

/// Each channel's (min, max) of head `h` over `rows` from row `from` on.
fn channel_ranges(
    rows: &[Vec<f32>],
    kvd: usize,
    hd: usize,
    h: usize,
    from: usize,
) -> Vec<(f32, f32)> {
    let mut r = vec![(f32::INFINITY, f32::NEG_INFINITY); hd];
    for x in rows {
        for row in x.chunks_exact(kvd).skip(from) {
            for (c, v) in row[h * hd..(h + 1) * hd].iter().enumerate() {
                r[c] = (r[c].0.min(*v), r[c].1.max(*v));
            }
        }
    }
    r
}

/// Largest |x| over channel ranges.
fn abs_max(ranges: &[(f32, f32)]) -> f32 {
    ranges
        .iter()
        .fold(0.0f32, |m, r| m.max(r.0.abs()).max(r.1.abs()))
}

/// Per-channel keys at clipping `alpha`: each channel's range shrunk about
/// its middle, as (scale, min) pairs.
fn channel_scales(ranges: &[(f32, f32)], alpha: f32, bits: u32) -> Vec<(f32, f32)> {
    let levels = ((1u32 << bits) - 1) as f32;
    ranges
        .iter()
        .map(|&(lo, hi)| {
            let (mid, half) = ((hi + lo) / 2.0, alpha * (hi - lo).max(1e-6) / 2.0);
            (2.0 * half / levels, mid - half)
        })
        .collect()
}

/// What [`head_scales`] found for one KV head: keys' scales (one, or one
/// per channel) and minima (per channel only), the value's scale, and both
/// clipping factors.
struct HeadScales {
    k: Vec<f32>,
    k_min: Vec<f32>,
    k_clip: f32,
    v: f32,
    v_clip: f32,
}

/// Key and value scales of KV head `h` of one layer.
fn head_scales(
    d: &LayerData,
    cfg: &LlamaConfig,
    h: usize,
    p: usize,
    bits: u32,
    k_channel: bool,
) -> HeadScales {
    let (hd, kvd) = (cfg.head_dim, cfg.kv_dim());
    let group = cfg.n_heads / cfg.n_kv_heads;
    let qm = qmax(bits);
    let ranges = channel_ranges(&d.k, kvd, hd, h, p);
    let kmax = abs_max(&ranges).max(1e-6);
    // The keys' words at clipping alpha.
    let key_words = |alpha: f32| -> Vec<u32> {
        if k_channel {
            channel_scales(&ranges, alpha, bits)
                .into_iter()
                .map(|(s, m)| affine_word(s, m))
                .collect()
        } else {
            vec![static_word(alpha * kmax / qm, bits)]
        }
    };
    let vmax = abs_max(&channel_ranges(&d.v, kvd, hd, h, p));
    // The window's exact values, once.
    let exact_values: Vec<Vec<f32>> =
        d.v.iter()
            .map(|v| head_rows(&v[p * kvd..], kvd, hd, h))
            .collect();
    // Exact probabilities, once.
    let exact_keys: Vec<Vec<f32>> = d.k.iter().map(|k| head_rows(k, kvd, hd, h)).collect();
    let mut exact: Vec<Vec<f32>> = Vec::new();
    let mut buf = Vec::new();
    for (w, keys) in exact_keys.iter().enumerate() {
        for (qi, &pos) in d.q_pos[w].iter().enumerate() {
            for g in 0..group {
                let q = &d.q[w][(qi * cfg.n_heads + h * group + g) * hd..][..hd];
                probs(q, keys, pos + 1, hd, &mut buf);
                exact.push(buf.clone());
            }
        }
    }
    let key_err = |alpha: f32| -> f64 {
        let words = key_words(alpha);
        let mut e = 0.0f64;
        let mut i = 0;
        let mut buf = Vec::new();
        for (w, keys) in exact_keys.iter().enumerate() {
            // The prefix's keys stay exact.
            let mut kq = keys[..p * hd].to_vec();
            kq.extend(quantized_head(&d.k[w][p * kvd..], kvd, hd, h, &words, bits));
            for (qi, &pos) in d.q_pos[w].iter().enumerate() {
                for g in 0..group {
                    let q = &d.q[w][(qi * cfg.n_heads + h * group + g) * hd..][..hd];
                    probs(q, &kq, pos + 1, hd, &mut buf);
                    e += buf
                        .iter()
                        .zip(&exact[i])
                        .map(|(a, b)| f64::from(a - b).powi(2))
                        .sum::<f64>();
                    i += 1;
                }
            }
        }
        e
    };
    let value_err = |alpha: f32| -> f64 {
        let words = [static_word(alpha * vmax / qm, bits)];
        d.v.iter()
            .zip(&exact_values)
            .map(|(v, x)| {
                let y = quantized_head(&v[p * kvd..], kvd, hd, h, &words, bits);
                x.iter()
                    .zip(&y)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum::<f64>()
            })
            .sum()
    };
    let ka = search_alpha(LOWEST_CLIP, key_err);
    let va = if vmax > 0.0 {
        search_alpha(LOWEST_CLIP, value_err)
    } else {
        1.0
    };
    let (k, k_min) = if k_channel {
        channel_scales(&ranges, ka, bits).into_iter().unzip()
    } else {
        (vec![ka * kmax / qm], Vec::new())
    };
    HeadScales {
        k,
        k_min,
        k_clip: ka,
        v: if vmax > 0.0 { va * vmax / qm } else { 1.0 },
        v_clip: va,
    }
}

/// Calibrates static KV scales of the model `(cfg, w)` (its quantized
/// weights, and `act`'s activation quantization when it has one) on
/// `windows`, each run after `prefix`'s KV.
pub fn calibrate(
    cfg: &LlamaConfig,
    w: &LlamaWeights,
    act: Option<&ActQuant>,
    prefix: Option<&Pivot>,
    windows: &[Vec<u32>],
    o: &KvScaleOptions,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<KvStatic> {
    if !crate::checkpoint::kv_static::KV_BITS.contains(&o.bits) {
        return Err(ModelError::Input(format!(
            "KV cache bits {} not supported (4 or 8)",
            o.bits
        )));
    }
    let windows = &windows[..windows.len().min(o.windows.max(1))];
    let seq = windows.iter().map(Vec::len).max().unwrap_or(0);
    if seq == 0 {
        return Err(ModelError::Input(
            "static KV scales need calibration windows".into(),
        ));
    }
    let p = prefix.map_or(0, Pivot::len);
    let (nl, kvd, qd) = (cfg.n_layers, cfg.kv_dim(), cfg.q_dim());
    let mut r = Reference::new(cfg, w, p + seq)?;
    r.set_act_quant(act.cloned())?;
    r.set_f16_cache(true);
    let every = o.query_every.max(1);
    let mut data: Vec<LayerData> = (0..nl)
        .map(|_| LayerData {
            k: Vec::new(),
            v: Vec::new(),
            q: Vec::new(),
            q_pos: Vec::new(),
        })
        .collect();
    for (i, win) in windows.iter().enumerate() {
        progress("keys and values", i, windows.len());
        r.reset();
        if let Some(pv) = prefix {
            r.load_prefix(pv)?;
        }
        let h = r.forward_attention(win, p)?;
        let n = p + win.len();
        for (l, d) in data.iter_mut().enumerate() {
            let (k, v) = r.layer_kv(l);
            d.k.push(k[..n * kvd].to_vec());
            d.v.push(v[..n * kvd].to_vec());
            let picks: Vec<usize> = (0..win.len()).step_by(every).collect();
            d.q.push(
                picks
                    .iter()
                    .flat_map(|&t| h.q[l][t * qd..(t + 1) * qd].iter().copied())
                    .collect(),
            );
            d.q_pos.push(picks.iter().map(|t| p + t).collect());
        }
    }
    let mut kv = KvStatic {
        bits: o.bits,
        k_channel: o.k_channel,
        ..Default::default()
    };
    for (l, d) in data.iter().enumerate() {
        progress("clipping", l, nl);
        // Heads are independent: one thread each.
        let found: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..cfg.n_kv_heads)
                .map(|h| sc.spawn(move || head_scales(d, cfg, h, p, o.bits, o.k_channel)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let found: Vec<HeadScales> = found;
        kv.k.push(found.iter().flat_map(|f| f.k.iter().copied()).collect());
        if o.k_channel {
            kv.k_min
                .push(found.iter().flat_map(|f| f.k_min.iter().copied()).collect());
        }
        kv.k_clip.push(found.iter().map(|f| f.k_clip).collect());
        kv.v.push(found.iter().map(|f| f.v).collect());
        kv.v_clip.push(found.iter().map(|f| f.v_clip).collect());
    }
    progress("clipping", nl, nl);
    kv.check(cfg)?;
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coarse-then-fine search lands within the fine step of a
    /// V-shaped error's minimum, never worse than no clipping.
    #[test]
    fn the_search_never_does_worse_than_no_clipping() {
        let e = |a: f32| f64::from((a - 0.63).abs()) + 0.1;
        let a = search_alpha(LOWEST_CLIP, e);
        assert!((a - 0.63).abs() < 0.011, "alpha {a}");
        assert!(e(a) <= e(1.0));
    }

    #[test]
    fn probabilities_sum_to_one_and_follow_the_scores() {
        let keys = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        let mut out = Vec::new();
        probs(&[2.0, 0.0], &keys, 3, 2, &mut out);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(out[0] > out[1] && out[1] > out[2], "{out:?}");
        probs(&[2.0, 0.0], &keys, 1, 2, &mut out);
        assert_eq!(out, vec![1.0]);
    }
}
