//! Static KV-cache scales (PrefixQuant's KV4 and KV8): one symmetric scale
//! per layer, side (K, V) and KV head, or for keys one `(scale, min)` per
//! channel of each head (`k_channel`), fixed at quantize time
//! (`crate::quant::kv_scales` finds them with the prefix in the cache), so
//! no token pays for scale words and none waits for a group to fill.
//! `lamina quantize --kv-bits` stores them in the recipe; the GPU cache runs
//! them as a `static_scales` layout (`lamina_engine::kv`) and the CPU
//! reference simulates them exactly ([`KvStatic::fake_quant`]).
//!
//! A KV head's values `x` (f16-rounded first, as the cache's window stores
//! them) become `s * (c - 2^(b-1))` with `c = clamp(round((x - m) / s), 0,
//! 2^b - 1)`, `m = -2^(b-1) s`, and `s` rounded to f16
//! (`lamina_engine::kv::static_word`); per-channel keys use their own
//! `(s, m)` per channel, both rounded to f16 (`affine_word`).

use lamina_engine::kv::{affine_word, decode_row, encode_row, round_f16, static_word};
use serde::{Deserialize, Serialize};

use crate::checkpoint::LlamaConfig;
use crate::{ModelError, Result};

/// The KV widths a static cache takes.
pub const KV_BITS: [u32; 2] = [4, 8];

/// A model's static KV quantization (stored in its recipe).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KvStatic {
    /// 4 or 8.
    pub bits: u32,
    /// Keys with one `(scale, min)` per channel of each head instead of
    /// one symmetric scale per head.
    pub k_channel: bool,
    /// Per layer, one scale per KV head (`[n_kv_heads]`), or with
    /// `k_channel` per channel (`[n_kv_heads * head_dim]`): keys (RoPE'd,
    /// after the online Hadamard when the model has one) and values.
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// With `k_channel`: each channel's minimum, shaped as `k`.
    pub k_min: Vec<Vec<f32>>,
    /// The clipping factors chosen (scale / calibration max), one per KV head.
    pub k_clip: Vec<Vec<f32>>,
    pub v_clip: Vec<Vec<f32>>,
}

impl KvStatic {
    /// Checks the width and one positive scale per KV head of every layer
    /// that stays positive in f16.
    pub fn check(&self, c: &LlamaConfig) -> Result<()> {
        if !KV_BITS.contains(&self.bits) {
            return Err(ModelError::Input(format!(
                "KV cache bits {} not supported (4 or 8)",
                self.bits
            )));
        }
        let per_head = if self.k_channel { c.head_dim } else { 1 };
        let k_min: &[Vec<f32>] = if self.k_channel { &self.k_min } else { &[] };
        for (side, scales, n) in [("key", &self.k, per_head), ("value", &self.v, 1)] {
            if scales.len() != c.n_layers || scales.iter().any(|s| s.len() != c.n_kv_heads * n) {
                return Err(ModelError::Invalid(format!(
                    "static {side} scales are not {n} per KV head ({}) of each of {} layers",
                    c.n_kv_heads, c.n_layers
                )));
            }
            if let Some((l, s)) = scales
                .iter()
                .enumerate()
                .find(|(_, s)| s.iter().any(|v| !(round_f16(*v) > 0.0 && v.is_finite())))
            {
                return Err(ModelError::Invalid(format!(
                    "layer {l}: static {side} scales {s:?} are not all positive in f16"
                )));
            }
        }
        if self.k_channel
            && (k_min.len() != c.n_layers
                || k_min.iter().zip(&self.k).any(|(m, s)| m.len() != s.len())
                || k_min.iter().flatten().any(|m| !m.is_finite()))
        {
            return Err(ModelError::Invalid(
                "static per-channel key minima do not match their scales".into(),
            ));
        }
        Ok(())
    }

    /// Layer `l`'s `(scale, min)` words, keys then values, one per KV head
    /// (keys per channel: one per channel of each head): what the GPU
    /// cache's stores hold after their rows.
    pub fn words(&self, l: usize) -> (Vec<u32>, Vec<u32>) {
        let sym = |s: &[f32]| s.iter().map(|&s| static_word(s, self.bits)).collect();
        let k = if self.k_channel {
            self.k[l]
                .iter()
                .zip(&self.k_min[l])
                .map(|(&s, &m)| affine_word(s, m))
                .collect()
        } else {
            sym(&self.k[l])
        };
        (k, sym(&self.v[l]))
    }

    /// Rounds K and V rows (`[n, n_kv_heads * head_dim]`) of layer `l` to
    /// f16 and quantizes them in place exactly as the GPU cache stores them.
    pub fn fake_quant(&self, k: &mut [f32], v: &mut [f32], l: usize, head_dim: usize) {
        let (kw, vw) = self.words(l);
        let k_per_head = if self.k_channel { head_dim } else { 1 };
        for (x, words, per_head) in [(k, &kw, k_per_head), (v, &vw, 1)] {
            // Each row's head: its one word, or one per channel.
            for (row, hw) in x
                .chunks_exact_mut(head_dim)
                .zip(words.chunks(per_head).cycle())
            {
                for e in row.iter_mut() {
                    *e = round_f16(*e);
                }
                let codes = encode_row(row, self.bits, hw);
                row.copy_from_slice(&decode_row(&codes, self.bits, hw, head_dim));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4-bit codes are the signed range -8..=7 times the f16 scale, rounded
    /// to the nearest even on ties, and clamped.
    #[test]
    fn codes_are_symmetric_and_clamped() {
        let kv = KvStatic {
            bits: 4,
            k: vec![vec![0.5]],
            v: vec![vec![0.25]],
            ..Default::default()
        };
        let mut k = vec![0.26, -0.74, 10.0, -10.0, 0.25, 0.75, 3.4, -3.9];
        let mut v = vec![0.1; 8];
        kv.fake_quant(&mut k, &mut v, 0, 8);
        assert_eq!(k, vec![0.5, -0.5, 3.5, -4.0, 0.0, 1.0, 3.5, -4.0]);
        assert_eq!(v, vec![0.0; 8]);
    }

    /// Per-channel keys quantize each channel against its own (scale, min).
    #[test]
    fn keys_per_channel_use_their_own_range() {
        let kv = KvStatic {
            bits: 2,
            k_channel: true,
            k: vec![vec![1.0, 0.5]],
            k_min: vec![vec![-1.0, 10.0]],
            v: vec![vec![1.0]],
            ..Default::default()
        };
        let (mut k, mut v) = (vec![0.4, 10.6], vec![0.0, 7.0]);
        kv.fake_quant(&mut k, &mut v, 0, 2);
        assert_eq!(k, vec![0.0, 10.5]);
        assert_eq!(v, vec![0.0, 1.0]);
    }
}
