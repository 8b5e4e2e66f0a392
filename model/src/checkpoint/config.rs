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
        Ok(())
    }
}
