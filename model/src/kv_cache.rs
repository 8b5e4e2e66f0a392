//! The KV cache: per layer, keys and values of every past position.
//!
//! Today's format is f16, head-major `[n_kv_heads, max_ctx, head_dim]`, two
//! values per u32 word, one buffer per layer for K and one for V (a layer's
//! cache then stays under the storage binding limit up to long contexts).
//! Quantized formats (q8/q4/q2, QJL sign sketches) and the lossless pivot
//! segment (IntactKV / PrefixQuant) plug in here as further [`KvFormat`]s.

use std::sync::Arc;

use lamina_engine::{DType, Gpu, Tensor};

use crate::{LlamaConfig, ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvFormat {
    #[default]
    F16,
}

impl KvFormat {
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F16 => "f16",
        }
    }

    /// Bytes one token occupies in the cache over all layers, keys and values.
    pub fn bytes_per_token(self, cfg: &LlamaConfig) -> u64 {
        match self {
            KvFormat::F16 => 2 * cfg.n_layers as u64 * cfg.kv_dim() as u64 * 2,
        }
    }
}

impl std::str::FromStr for KvFormat {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" => Ok(KvFormat::F16),
            _ => Err(ModelError::Input(format!(
                "unknown KV cache format `{s}` (available: f16)"
            ))),
        }
    }
}

/// GPU buffers of the cache.
pub struct KvCache {
    pub format: KvFormat,
    pub max_ctx: usize,
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl KvCache {
    pub fn new(
        gpu: &Arc<Gpu>,
        cfg: &LlamaConfig,
        max_ctx: usize,
        format: KvFormat,
    ) -> Result<Self> {
        let n = cfg.n_kv_heads * max_ctx * cfg.head_dim;
        let bytes = DType::F16.bytes_for(n);
        let make = |name: String| -> Result<Tensor> {
            Ok(Tensor {
                buffer: gpu.storage_buffer(&name, bytes)?,
                offset: 0,
                size: bytes,
                shape: vec![cfg.n_kv_heads, max_ctx, cfg.head_dim],
                dtype: DType::F16,
            })
        };
        let mut k = Vec::with_capacity(cfg.n_layers);
        let mut v = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            k.push(make(format!("blk.{l}.k_cache"))?);
            v.push(make(format!("blk.{l}.v_cache"))?);
        }
        Ok(KvCache {
            format,
            max_ctx,
            k,
            v,
        })
    }

    /// Total bytes on the GPU.
    pub fn bytes(&self) -> u64 {
        self.k.iter().chain(&self.v).map(|t| t.size).sum()
    }
}
