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
