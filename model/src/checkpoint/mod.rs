//! The checkpoint in memory: what every loader fills and everything above
//! reads. A leaf of the model crate: it imports nothing of `model/` but the
//! error type.
//!
//! - [`LoadedModel`]: config, host weights in their stored encoding,
//!   tokenizer spec, and for Lamina's own files the recipe and pivot KV;
//! - [`layer`]: the table of a model's tensors (role, GGUF name, HF name,
//!   shape from the config) and the weights that follow it;
//! - [`tensor`]: host tensors and the weight-format names ([`HostDType`]);
//! - [`ggml`]: llama.cpp's type table and block formats decoded on the CPU;
//!   [`encode`], the encoders (their inverse);
//! - [`recipe`]: how a quantized file was made, typed; [`act`] and
//!   [`kv_static`], its activation and static KV-cache quantization;
//! - [`config`]: the hyperparameters.
//!
//! Loaders (`loader` for GGUF and dispatch, `hf`, `lamina_file`,
//! `synthetic`) sit above this module and fill it; nothing here calls them.

pub mod act;
pub mod config;
pub mod encode;
pub mod filemap;
pub mod ggml;
pub mod kquant;
pub mod kv_static;
pub mod layer;
pub mod recipe;
pub mod tensor;

pub use act::{ActQuant, ActSite};
pub use config::{LlamaConfig, OnlineHadamard, RopeStyle};
pub use kv_static::KvStatic;
pub use layer::{LayerTensor, LayerWeights, LlamaWeights, ModelTensor, Role};
pub use recipe::{PivotCalibration, PrefixRecord, Recipe, RotationRecord};
pub use tensor::{Bytes, HostDType, HostTensor, MixedTensor};

use crate::{ModelError, Result};

/// Everything needed to run a model, still on the host.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub config: LlamaConfig,
    pub weights: LlamaWeights,
    pub tokenizer_spec: TokenizerSpec,
    /// Path the model came from.
    pub source: String,
    /// Weight format, e.g. "Q4_1" (from GGUF `general.file_type`) or "BF16".
    pub file_type: String,
    /// How a `.lamina.safetensors` file was made (its `lamina.recipe`).
    pub recipe: Option<Recipe>,
    /// The pivot KV a `.lamina.safetensors` file carries, computed by its
    /// full-precision source (IntactKV).
    pub pivot: Option<Pivot>,
}

/// The KV of the pivot tokens (IntactKV, PrefixQuant): positions `0..len`,
/// K (RoPE'd) and V from the full-precision model, which every sequence
/// starts with. This is the stored form; `crate::pivot` computes it and
/// `crate::kv_cache` uploads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pivot {
    pub tokens: Vec<u32>,
    /// Per layer `[len, n_kv_heads * head_dim]` f32, position-major.
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl Pivot {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks the shape against a model.
    pub fn check(&self, cfg: &LlamaConfig) -> Result<()> {
        let want = self.len() * cfg.kv_dim();
        if self.k.len() != cfg.n_layers
            || self.v.len() != cfg.n_layers
            || self.k.iter().chain(&self.v).any(|x| x.len() != want)
        {
            return Err(ModelError::Invalid(format!(
                "pivot KV of {} tokens does not match the model ({} layers, KV width {})",
                self.len(),
                cfg.n_layers,
                cfg.kv_dim()
            )));
        }
        Ok(())
    }
}

/// What a tokenizer is built from (`crate::tokenizer::Tokenizer::from_spec`):
/// GGUF `tokenizer.ggml.*` metadata, or an HF tokenizer.json.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TokenizerSpec {
    /// "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE), or "hf-json" when `hf_json` is set.
    pub model: String,
    /// llama.cpp pre-tokenizer name (e.g. "smollm", "llama-bpe", "default").
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub token_types: Vec<i32>,
    pub scores: Vec<f32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub chat_template: Option<String>,
    /// Contents of an HF tokenizer.json, when loading an HF directory.
    pub hf_json: Option<String>,
}
