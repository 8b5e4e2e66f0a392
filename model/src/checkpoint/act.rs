//! Quantized activations (PrefixQuant, arXiv 2410.05265): where a model's
//! activations are quantized to integers, to how many bits, and with which
//! scales. `lamina quantize --act-bits` fixes them; the GPU graph
//! (`crate::llama`) runs the integer kernels with them and the CPU
//! reference (`crate::reference`) simulates them exactly
//! ([`ActQuant::fake_quant`]).
//!
//! Quantization is symmetric: `q = clamp(round(x / s), -qmax, qmax)` with
//! `qmax = 2^(bits-1) - 1`, `round` to the nearest even on ties (WGSL's
//! `round`), and `x ≈ s q`. A static scale is one per tensor per layer,
//! fixed at quantize time; a dynamic one is each token's `max |x| / qmax`.

use serde::{Deserialize, Serialize};

use crate::checkpoint::LlamaConfig;
use crate::{ModelError, Result};

/// A linear layer's input: the activations one scale covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActSite {
    /// The attention norm's output, read by q, k and v (one scale for all three).
    QkvIn,
    /// The attention output, read by o_proj.
    OIn,
    /// The FFN norm's output, read by gate and up.
    FfnIn,
    /// SwiGLU's output (after the online Hadamard, when the model has one), read by down_proj.
    DownIn,
}

impl ActSite {
    pub const ALL: [ActSite; 4] = [
        ActSite::QkvIn,
        ActSite::OIn,
        ActSite::FfnIn,
        ActSite::DownIn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ActSite::QkvIn => "qkv_in",
            ActSite::OIn => "o_in",
            ActSite::FfnIn => "ffn_in",
            ActSite::DownIn => "down_in",
        }
    }

    /// Index into a layer's `[f32; 4]` of scales.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Row width of the site's activations.
    pub fn width(self, c: &LlamaConfig) -> usize {
        match self {
            ActSite::QkvIn | ActSite::FfnIn => c.dim,
            ActSite::OIn => c.q_dim(),
            ActSite::DownIn => c.ffn_dim,
        }
    }
}

/// How a model's activations are quantized (stored in its recipe).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ActQuant {
    /// 8 or 4.
    pub bits: u32,
    /// Per-token scales computed at run time instead of the static ones.
    pub dynamic: bool,
    /// Static scales: per layer, one per [`ActSite`] (in `ActSite::ALL`
    /// order). Empty when dynamic.
    pub scales: Vec<[f32; 4]>,
    /// The clipping factor chosen per layer and site (scale / calibration max).
    pub clip: Vec<[f32; 4]>,
}

/// The activation widths Lamina's integer kernels take.
pub const ACT_BITS: [u32; 2] = [8, 4];

impl ActQuant {
    /// Checks the bit width and, for static scales, one positive finite
    /// scale per site of every layer.
    pub fn check(&self, c: &LlamaConfig) -> Result<()> {
        if !ACT_BITS.contains(&self.bits) {
            return Err(ModelError::Input(format!(
                "activation bits {} not supported (8 or 4)",
                self.bits
            )));
        }
        if self.dynamic {
            return Ok(());
        }
        if self.scales.len() != c.n_layers {
            return Err(ModelError::Invalid(format!(
                "static activation scales for {} layers, the model has {}",
                self.scales.len(),
                c.n_layers
            )));
        }
        if let Some((l, s)) = self
            .scales
            .iter()
            .enumerate()
            .find(|(_, s)| s.iter().any(|v| !(v.is_finite() && *v > 0.0)))
        {
            return Err(ModelError::Invalid(format!(
                "layer {l}: activation scales {s:?} are not all positive"
            )));
        }
        Ok(())
    }

    /// Largest code magnitude, `2^(bits-1) - 1`.
    pub fn qmax(&self) -> f32 {
        qmax(self.bits)
    }

    /// The static scale of `site` in layer `l` (`None` when dynamic).
    pub fn scale(&self, l: usize, site: ActSite) -> Option<f32> {
        (!self.dynamic).then(|| self.scales[l][site.index()])
    }

    /// Quantizes and dequantizes rows `x` (`[n, width]`) in place as the
    /// integer kernels see them: the CPU model of the integer path.
    pub fn fake_quant(&self, x: &mut [f32], width: usize, l: usize, site: ActSite) {
        let qmax = self.qmax();
        for row in x.chunks_exact_mut(width) {
            let s = match self.scale(l, site) {
                Some(s) => s,
                None => dynamic_scale(row, qmax),
            };
            fake_quant_row(row, s, qmax);
        }
    }
}

/// `2^(bits-1) - 1`.
pub fn qmax(bits: u32) -> f32 {
    ((1u32 << (bits - 1)) - 1) as f32
}

/// A token's dynamic scale, `max |x| / qmax` (1 for an all-zero row).
pub fn dynamic_scale(row: &[f32], qmax: f32) -> f32 {
    let m = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if m > 0.0 { m / qmax } else { 1.0 }
}

/// One value's code at scale `s`.
pub fn code(x: f32, s: f32, qmax: f32) -> f32 {
    (x / s).round_ties_even().clamp(-qmax, qmax)
}

/// `x <- s * clamp(round(x / s), -qmax, qmax)` for every element.
pub fn fake_quant_row(row: &mut [f32], s: f32, qmax: f32) {
    for v in row {
        *v = s * code(*v, s, qmax);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_to_even_and_clamp() {
        assert_eq!(code(2.5, 1.0, 127.0), 2.0);
        assert_eq!(code(3.5, 1.0, 127.0), 4.0);
        assert_eq!(code(-1000.0, 1.0, 7.0), -7.0);
        let mut r = vec![0.26, -0.74, 10.0];
        fake_quant_row(&mut r, 0.5, 7.0);
        assert_eq!(r, vec![0.5, -0.5, 3.5]);
        assert_eq!(dynamic_scale(&[0.0, 0.0], 127.0), 1.0);
        assert_eq!(dynamic_scale(&[-254.0, 1.0], 127.0), 2.0);
    }
}
