//! Llama-family hyperparameters, read from GGUF metadata or an HF config.json.

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama.cpp's Llama GGUF files store attn_q / attn_k rows
    /// permuted for this.
    Interleaved,
    /// Pairs (i, i + head_dim/2), Hugging Face's `rotate_half` (GPT-NeoX style).
    Neox,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    /// Architecture string as found in the file (e.g. "llama").
    pub arch: String,
    pub n_layers: usize,
    /// Model (residual stream) width.
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// SwiGLU hidden width.
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// Maximum positions the model was trained for.
    pub max_seq_len: usize,
    /// lm_head shares the token embedding.
    pub tied_embeddings: bool,
    /// Online Hadamard transforms a rotated model runs (QuaRot, PrefixQuant);
    /// none for a model as trained. Absent in older files.
    #[serde(default)]
    pub hadamard: OnlineHadamard,
    /// Per RoPE pair (`head_dim / 2`), the divisor of its frequency: Llama
    /// 3.x's `llama3` scaling (GGUF `rope_freqs.weight`, or computed from
    /// config.json's `rope_scaling` by [`llama3_rope_factors`]). Empty when
    /// RoPE is unscaled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rope_factors: Vec<f32>,
    /// q, k and v projections add a bias (Qwen2). Absent in older files.
    #[serde(default)]
    pub qkv_bias: bool,
}

/// Llama 3.x's `llama3` RoPE scaling as frequency divisors, one per pair:
/// pairs whose wavelength `2π / inv_freq` is shorter than
/// `original_max / high_freq_factor` keep their frequency (divisor 1), those
/// longer than `original_max / low_freq_factor` are divided by `factor`, and
/// those between are interpolated (transformers'
/// `_compute_llama3_parameters`, which llama.cpp's converter also follows).
pub fn llama3_rope_factors(
    head_dim: usize,
    theta: f32,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_max: f64,
) -> Vec<f32> {
    let (low_wl, high_wl) = (
        original_max / low_freq_factor,
        original_max / high_freq_factor,
    );
    (0..head_dim / 2)
        .map(|j| {
            let inv = 1.0 / f64::from(theta).powf((2 * j) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            if wavelen < high_wl {
                1.0
            } else if wavelen > low_wl {
                factor as f32
            } else {
                let smooth = (original_max / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

/// The online Hadamard transforms of a rotated model (`crate::quant::rotate`):
/// the orthonormal Hadamard matrix `H` of the width applied to activations at
/// run time, its inverse folded into the weights that read them. They leave
/// the model's function unchanged and spread outliers across channels, so
/// activations and KV quantize with less error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OnlineHadamard {
    /// `H` (size ffn_dim) on the down projection's input; `W_down` holds `W_down Hᵀ`.
    pub down: bool,
    /// `H` (size head_dim) on every query and key head after RoPE (cancels in
    /// `q·k`; the cache holds rotated keys).
    pub qk: bool,
}

impl LlamaConfig {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Whether `other` has the same layers and attention widths, so a
    /// pivot's KV (or attention data) of one fits the other.
    pub fn same_attention_shape(&self, other: &LlamaConfig) -> bool {
        self.n_layers == other.n_layers
            && self.q_dim() == other.q_dim()
            && self.kv_dim() == other.kv_dim()
    }
    /// Query heads per KV head (GQA group size).
    pub fn gqa_group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
    /// Checks the shape relations the kernels rely on.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::ModelError::Invalid(m));
        if self.n_layers == 0 || self.dim == 0 || self.n_heads == 0 || self.n_kv_heads == 0 {
            return bad(format!("degenerate config {self:?}"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim > 256 {
            return bad(format!(
                "head_dim {} must be even and at most 256",
                self.head_dim
            ));
        }
        if !self.rope_factors.is_empty()
            && (self.rope_factors.len() != self.head_dim / 2
                || self
                    .rope_factors
                    .iter()
                    .any(|f| !f.is_finite() || *f <= 0.0))
        {
            return bad(format!(
                "RoPE frequency factors: {} values for {} pairs, each must be finite and positive",
                self.rope_factors.len(),
                self.head_dim / 2
            ));
        }
        for (on, n, what) in [
            (self.hadamard.down, self.ffn_dim, "ffn_dim"),
            (self.hadamard.qk, self.head_dim, "head_dim"),
        ] {
            if on && !lamina_engine::ops::hadamard::supported(n) {
                return Err(crate::ModelError::Unsupported(format!(
                    "an online Hadamard transform of size {n} ({what}): no Hadamard matrix of that size"
                )));
            }
        }
        Ok(())
    }
}
