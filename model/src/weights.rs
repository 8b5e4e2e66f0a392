//! Host-side weights as loaded from a checkpoint, before upload to the GPU.
//!
//! A [`HostTensor`] keeps the checkpoint's own encoding (f32, f16, bf16 or a
//! GGUF block format) so that quantized weights reach the GPU at their packed
//! size. Shapes are row-major `[rows, cols]` in the math sense: a linear layer
//! `y = W x` with `x: [cols]` has `W: [out = rows, in = cols]` (GGUF lists
//! dims innermost first, so its `[ne0, ne1]` is our `[ne1, ne0]`).

use std::sync::Arc;

use lamina_engine::weight::{MixedData, MixedLayout};

/// Element encoding of a host tensor. GGUF block formats quantize along the
/// row (the `cols` / input dimension), in blocks of 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostDType {
    F32,
    F16,
    BF16,
    /// ggml Q4_0: per 32 values one f16 scale d, 16 bytes of 4-bit codes; x = d * (q - 8).
    Q4_0,
    /// ggml Q4_1: per 32 values f16 scale d and f16 min m, 16 bytes of codes; x = d * q + m.
    Q4_1,
    /// ggml Q8_0: per 32 values one f16 scale d, 32 signed bytes; x = d * q.
    Q8_0,
    /// Lamina's mixed-width groups (SliM-LLM): the tensor's
    /// [`HostTensor::mixed`] holds the layout, codes, scales and mins.
    Mixed,
}

impl HostDType {
    /// Bytes taken by `n` elements (n a multiple of the block size for block formats).
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            HostDType::F32 => 4 * n,
            HostDType::F16 | HostDType::BF16 => 2 * n,
            HostDType::Q4_0 => n / 32 * 18,
            HostDType::Q4_1 => n / 32 * 20,
            HostDType::Q8_0 => n / 32 * 34,
            // Depends on the group widths: see MixedLayout::row_words.
            HostDType::Mixed => 0,
        }
    }
    pub fn block_size(self) -> usize {
        match self {
            HostDType::F32 | HostDType::F16 | HostDType::BF16 => 1,
            _ => 32,
        }
    }
}

/// Raw bytes of a tensor: borrowed from a memory map, or owned.
#[derive(Clone)]
pub enum Bytes {
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Bytes::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.as_slice().len())
    }
}

#[derive(Debug, Clone)]
pub struct HostTensor {
    pub name: String,
    /// Row-major shape, outermost first: `[rows, cols]` for matrices, `[n]` for vectors.
    pub shape: Vec<usize>,
    pub dtype: HostDType,
    /// The encoded values (empty for Mixed, whose parts are in `mixed`).
    pub data: Bytes,
    /// Mixed only.
    pub mixed: Option<Arc<MixedTensor>>,
}

/// A Mixed weight on the host: group widths, and per row the codes (as
/// `lamina_engine::weight` lays them out) and f16 scale and min bits.
#[derive(Debug, Clone, PartialEq)]
pub struct MixedTensor {
    pub layout: Arc<MixedLayout>,
    pub codes: Vec<u32>,
    pub scales: Vec<u16>,
    pub mins: Vec<u16>,
}

impl MixedTensor {
    pub fn data(&self) -> MixedData<'_> {
        MixedData {
            layout: &self.layout,
            codes: &self.codes,
            scales: &self.scales,
            mins: &self.mins,
        }
    }
    /// Bytes of codes, scales and mins.
    pub fn bytes(&self) -> usize {
        4 * self.codes.len() + 2 * (self.scales.len() + self.mins.len())
    }
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn rows(&self) -> usize {
        if self.shape.len() < 2 {
            1
        } else {
            self.shape[..self.shape.len() - 1].iter().product()
        }
    }
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    /// Dequantizes / converts to f32, row-major.
    pub fn to_f32(&self) -> crate::Result<Vec<f32>> {
        if let Some(m) = &self.mixed {
            let rows = self.rows() as u32;
            let packed = lamina_engine::weight::pack_mixed(rows, &m.data())
                .map_err(|e| crate::ModelError::Invalid(format!("{}: {e}", self.name)))?;
            return Ok(lamina_engine::weight::dequantize_packed(&packed));
        }
        crate::quant::ggml::dequantize(self.dtype, self.data.as_slice(), self.numel())
    }
    /// Encoded size in bytes.
    pub fn byte_size(&self) -> usize {
        match &self.mixed {
            Some(m) => m.bytes(),
            None => self.data.as_slice().len(),
        }
    }
}

/// One transformer block's weights.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: HostTensor, // [dim]
    pub wq: HostTensor,        // [n_heads * head_dim, dim]
    pub wk: HostTensor,        // [n_kv_heads * head_dim, dim]
    pub wv: HostTensor,        // [n_kv_heads * head_dim, dim]
    pub wo: HostTensor,        // [dim, n_heads * head_dim]
    pub ffn_norm: HostTensor,  // [dim]
    pub w_gate: HostTensor,    // [ffn_dim, dim]
    pub w_up: HostTensor,      // [ffn_dim, dim]
    pub w_down: HostTensor,    // [dim, ffn_dim]
}

#[derive(Debug, Clone)]
pub struct LlamaWeights {
    pub token_embd: HostTensor, // [vocab, dim]
    pub layers: Vec<LayerWeights>,
    pub output_norm: HostTensor, // [dim]
    /// lm_head; `None` when tied to `token_embd`.
    pub output: Option<HostTensor>, // [vocab, dim]
}

impl LlamaWeights {
    /// The lm_head matrix (the embedding when tied).
    pub fn lm_head(&self) -> &HostTensor {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}
