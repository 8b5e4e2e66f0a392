//! The tensors of a Llama checkpoint, as one table: each tensor's role, its
//! name in a GGUF file (llama.cpp's `llama` architecture) and in a Hugging
//! Face checkpoint, and its shape from the config. Every loader, writer,
//! quantizer and the synthetic builder walks this table instead of listing
//! the tensors again.

use super::config::LlamaConfig;
use super::tensor::HostTensor;
use crate::Result;

/// One of the tensors of a transformer block: the nine every block has,
/// and the q/k/v biases of the models that add them (Qwen2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    AttnNorm,
    Wq,
    Wk,
    Wv,
    Wo,
    FfnNorm,
    WGate,
    WUp,
    WDown,
    /// `[n_heads * head_dim]`, added to q (only with `LlamaConfig::qkv_bias`).
    Bq,
    /// `[n_kv_heads * head_dim]`, added to k.
    Bk,
    /// `[n_kv_heads * head_dim]`, added to v.
    Bv,
}

impl LayerTensor {
    /// Every block tensor, in the order of the forward pass.
    pub const ALL: [LayerTensor; 9] = [
        LayerTensor::AttnNorm,
        LayerTensor::Wq,
        LayerTensor::Wk,
        LayerTensor::Wv,
        LayerTensor::Wo,
        LayerTensor::FfnNorm,
        LayerTensor::WGate,
        LayerTensor::WUp,
        LayerTensor::WDown,
    ];

    /// The q/k/v biases, after the nine in a block that has them.
    pub const BIASES: [LayerTensor; 3] = [LayerTensor::Bq, LayerTensor::Bk, LayerTensor::Bv];

    /// The seven linear layers (`y = W x`), the ones quantizers quantize.
    pub const LINEAR: [LayerTensor; 7] = [
        LayerTensor::Wq,
        LayerTensor::Wk,
        LayerTensor::Wv,
        LayerTensor::Wo,
        LayerTensor::WGate,
        LayerTensor::WUp,
        LayerTensor::WDown,
    ];

    /// llama.cpp's short name: `blk.N.<name>.weight` in a GGUF file (and in
    /// `.lamina.safetensors` files and graph labels).
    pub fn gguf(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "attn_norm",
            LayerTensor::Wq => "attn_q",
            LayerTensor::Wk => "attn_k",
            LayerTensor::Wv => "attn_v",
            LayerTensor::Wo => "attn_output",
            LayerTensor::FfnNorm => "ffn_norm",
            LayerTensor::WGate => "ffn_gate",
            LayerTensor::WUp => "ffn_up",
            LayerTensor::WDown => "ffn_down",
            LayerTensor::Bq => "attn_q",
            LayerTensor::Bk => "attn_k",
            LayerTensor::Bv => "attn_v",
        }
    }

    /// `bias` for the biases, `weight` for the others (the last part of
    /// both files' tensor names).
    fn kind(self) -> &'static str {
        match self {
            LayerTensor::Bq | LayerTensor::Bk | LayerTensor::Bv => "bias",
            _ => "weight",
        }
    }

    /// transformers' name: `model.layers.N.<name>.weight`.
    pub fn hf(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "input_layernorm",
            LayerTensor::Wq => "self_attn.q_proj",
            LayerTensor::Wk => "self_attn.k_proj",
            LayerTensor::Wv => "self_attn.v_proj",
            LayerTensor::Wo => "self_attn.o_proj",
            LayerTensor::FfnNorm => "post_attention_layernorm",
            LayerTensor::WGate => "mlp.gate_proj",
            LayerTensor::WUp => "mlp.up_proj",
            LayerTensor::WDown => "mlp.down_proj",
            LayerTensor::Bq => "self_attn.q_proj",
            LayerTensor::Bk => "self_attn.k_proj",
            LayerTensor::Bv => "self_attn.v_proj",
        }
    }

    /// The full GGUF tensor name in block `layer`.
    pub fn gguf_name(self, layer: usize) -> String {
        format!("blk.{layer}.{}.{}", self.gguf(), self.kind())
    }

    /// The full Hugging Face tensor name in block `layer`.
    pub fn hf_name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.hf(), self.kind())
    }

    /// Row-major shape `[rows = out, cols = in]` (`[dim]` for the norms).
    pub fn shape(self, c: &LlamaConfig) -> Vec<usize> {
        let (dim, q, kv, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        match self {
            LayerTensor::AttnNorm | LayerTensor::FfnNorm => vec![dim],
            LayerTensor::Wq => vec![q, dim],
            LayerTensor::Wk | LayerTensor::Wv => vec![kv, dim],
            LayerTensor::Wo => vec![dim, q],
            LayerTensor::WGate | LayerTensor::WUp => vec![ffn, dim],
            LayerTensor::WDown => vec![dim, ffn],
            LayerTensor::Bq => vec![q],
            LayerTensor::Bk | LayerTensor::Bv => vec![kv],
        }
    }
}

/// A tensor outside the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelTensor {
    /// `[vocab, dim]`.
    TokenEmbd,
    /// `[dim]`.
    OutputNorm,
    /// lm_head `[vocab, dim]`; absent when tied to the embedding.
    Output,
}

impl ModelTensor {
    /// The GGUF tensor name.
    pub fn gguf_name(self) -> &'static str {
        match self {
            ModelTensor::TokenEmbd => "token_embd.weight",
            ModelTensor::OutputNorm => "output_norm.weight",
            ModelTensor::Output => "output.weight",
        }
    }
    /// The Hugging Face tensor name.
    pub fn hf_name(self) -> &'static str {
        match self {
            ModelTensor::TokenEmbd => "model.embed_tokens.weight",
            ModelTensor::OutputNorm => "model.norm.weight",
            ModelTensor::Output => "lm_head.weight",
        }
    }
    pub fn shape(self, c: &LlamaConfig) -> Vec<usize> {
        match self {
            ModelTensor::TokenEmbd | ModelTensor::Output => vec![c.vocab_size, c.dim],
            ModelTensor::OutputNorm => vec![c.dim],
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
    /// q, k and v biases, in that order (Qwen2); `None` without.
    pub qkv_bias: Option<[HostTensor; 3]>,
}

impl LayerWeights {
    /// Builds a block from `f`, called once per tensor in [`LayerTensor::ALL`]
    /// order, then for [`LayerTensor::BIASES`] when `bias`.
    pub fn try_from_fn(
        bias: bool,
        mut f: impl FnMut(LayerTensor) -> Result<HostTensor>,
    ) -> Result<Self> {
        Ok(LayerWeights {
            attn_norm: f(LayerTensor::AttnNorm)?,
            wq: f(LayerTensor::Wq)?,
            wk: f(LayerTensor::Wk)?,
            wv: f(LayerTensor::Wv)?,
            wo: f(LayerTensor::Wo)?,
            ffn_norm: f(LayerTensor::FfnNorm)?,
            w_gate: f(LayerTensor::WGate)?,
            w_up: f(LayerTensor::WUp)?,
            w_down: f(LayerTensor::WDown)?,
            qkv_bias: match bias {
                true => Some([
                    f(LayerTensor::Bq)?,
                    f(LayerTensor::Bk)?,
                    f(LayerTensor::Bv)?,
                ]),
                false => None,
            },
        })
    }

    /// The tensor of role `t`; `None` for a bias the block does not have.
    pub fn get(&self, t: LayerTensor) -> Option<&HostTensor> {
        let bias = |i: usize| self.qkv_bias.as_ref().map(|b| &b[i]);
        Some(match t {
            LayerTensor::AttnNorm => &self.attn_norm,
            LayerTensor::Wq => &self.wq,
            LayerTensor::Wk => &self.wk,
            LayerTensor::Wv => &self.wv,
            LayerTensor::Wo => &self.wo,
            LayerTensor::FfnNorm => &self.ffn_norm,
            LayerTensor::WGate => &self.w_gate,
            LayerTensor::WUp => &self.w_up,
            LayerTensor::WDown => &self.w_down,
            LayerTensor::Bq => return bias(0),
            LayerTensor::Bk => return bias(1),
            LayerTensor::Bv => return bias(2),
        })
    }

    /// Every tensor the block has with its role: [`LayerTensor::ALL`], then
    /// the biases.
    pub fn tensors(&self) -> impl Iterator<Item = (LayerTensor, &HostTensor)> {
        LayerTensor::ALL
            .into_iter()
            .chain(LayerTensor::BIASES)
            .filter_map(|t| Some((t, self.get(t)?)))
    }

    /// The seven linear layers with their roles.
    pub fn linears(&self) -> impl Iterator<Item = (LayerTensor, &HostTensor)> {
        LayerTensor::LINEAR
            .into_iter()
            .filter_map(|t| Some((t, self.get(t)?)))
    }
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
    /// Builds the weights of `c` from `get`, called with each tensor's role
    /// (block tensors with their block index) in the order of
    /// [`tensors`](Self::tensors); each result's shape is checked against
    /// the role's. `Output` is asked for only when the
    /// embeddings are not tied.
    pub fn try_from_table(
        c: &LlamaConfig,
        mut get: impl FnMut(Role) -> Result<HostTensor>,
    ) -> Result<Self> {
        let mut checked = |role: Role| -> Result<HostTensor> {
            let t = get(role)?;
            t.check_shape(&role.shape(c))?;
            Ok(t)
        };
        // In the order of `tensors()`: the synthetic builder seeds each
        // tensor by its place in this sequence.
        let token_embd = checked(Role::Model(ModelTensor::TokenEmbd))?;
        let layers = (0..c.n_layers)
            .map(|i| LayerWeights::try_from_fn(c.qkv_bias, |t| checked(Role::Layer(i, t))))
            .collect::<Result<Vec<_>>>()?;
        let output_norm = checked(Role::Model(ModelTensor::OutputNorm))?;
        let output = match c.tied_embeddings {
            true => None,
            false => Some(checked(Role::Model(ModelTensor::Output))?),
        };
        Ok(LlamaWeights {
            token_embd,
            layers,
            output_norm,
            output,
        })
    }

    /// The lm_head matrix (the embedding when tied).
    pub fn lm_head(&self) -> &HostTensor {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Every tensor with its role: the embedding, each block's in order,
    /// the final norm, then the lm_head when untied.
    pub fn tensors(&self) -> Vec<(Role, &HostTensor)> {
        let mut v = vec![(Role::Model(ModelTensor::TokenEmbd), &self.token_embd)];
        for (i, l) in self.layers.iter().enumerate() {
            v.extend(l.tensors().map(|(t, x)| (Role::Layer(i, t), x)));
        }
        v.push((Role::Model(ModelTensor::OutputNorm), &self.output_norm));
        if let Some(o) = &self.output {
            v.push((Role::Model(ModelTensor::Output), o));
        }
        v
    }
}

/// Where a tensor sits in the model: a block's, or one outside the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Layer(usize, LayerTensor),
    Model(ModelTensor),
}

impl Role {
    pub fn gguf_name(self) -> String {
        match self {
            Role::Layer(i, t) => t.gguf_name(i),
            Role::Model(t) => t.gguf_name().to_string(),
        }
    }
    pub fn hf_name(self) -> String {
        match self {
            Role::Layer(i, t) => t.hf_name(i),
            Role::Model(t) => t.hf_name().to_string(),
        }
    }
    pub fn shape(self, c: &LlamaConfig) -> Vec<usize> {
        match self {
            Role::Layer(_, t) => t.shape(c),
            Role::Model(t) => t.shape(c),
        }
    }
}
