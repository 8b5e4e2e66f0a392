//! The Llama forward pass as a graph of engine ops.
//!
//! [`GpuModel`] (here) holds the weights on the GPU and the KV cache.
//! [`build_graph`] (in `graph.rs`) reads top to bottom like the paper (and like `reference.rs`): embedding,
//! then per layer rmsnorm → q/k/v → RoPE → cache write → causal GQA attention
//! → output projection → residual → rmsnorm → SwiGLU FFN → residual; final
//! norm, lm_head, and (when generating) sampling on the GPU.

use std::sync::Arc;

use lamina_engine::act::{ActBits, ActScale};
use lamina_engine::weight::{GpuWeight, HostData, HostWeight};
use lamina_engine::{DType, Gpu, Tensor, WeightFormat};

use crate::checkpoint::{
    ActQuant, ActSite, HostDType, HostTensor, LayerWeights, LoadedModel, Pivot,
};
use crate::kv_cache::{KvCache, KvFormat};

mod attention;
mod graph;
mod nodes;
use crate::{LlamaConfig, ModelError, Result};
pub use attention::LayerKv;
pub use graph::{
    BatchIo, GramTaps, GraphIo, Head, LayerIo, REPEAT_LAST_N, TOKEN_STRIDE, build_batch_graph,
    build_graph, parts_tensor, push_layer,
};

/// How the checkpoint's weights are stored on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMode {
    /// As shipped: GGUF Q4_0 / Q4_1 / Q8_0 stay packed, f16/bf16 become f16, f32 stays f32.
    #[default]
    Native,
    /// Everything dequantized to f32 at load, stored as f16 (the full-precision path).
    F16,
    /// Everything dequantized to f32.
    F32,
}

impl WeightMode {
    pub const ALL: [WeightMode; 3] = [WeightMode::Native, WeightMode::F16, WeightMode::F32];

    /// The `--weights` name.
    pub fn name(self) -> &'static str {
        match self {
            WeightMode::Native => "native",
            WeightMode::F16 => "f16",
            WeightMode::F32 => "f32",
        }
    }
}

impl std::str::FromStr for WeightMode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        WeightMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                ModelError::Input(format!("unknown weight mode `{s}` (native, f16, f32)"))
            })
    }
}

/// A layer's integer activations (PrefixQuant): the linear layers' inputs
/// quantized to `bits`, with one static scale per [`ActSite`] or
/// per-token scales (`None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerAct {
    pub bits: ActBits,
    pub scales: Option<[f32; 4]>,
}

impl LayerAct {
    /// Layer `l`'s part of `a`.
    pub fn of(a: &ActQuant, l: usize) -> Result<LayerAct> {
        let bits = match a.bits {
            8 => ActBits::Int8,
            4 => ActBits::Int4,
            b => {
                return Err(ModelError::Input(format!(
                    "activation bits {b} not supported (8 or 4)"
                )));
            }
        };
        Ok(LayerAct {
            bits,
            scales: (!a.dynamic).then(|| a.scales[l]),
        })
    }

    pub fn scale(&self, site: ActSite) -> ActScale {
        match self.scales {
            Some(s) => ActScale::Static(s[site.index()]),
            None => ActScale::Dynamic,
        }
    }
}

/// Linear layers that read the same input (q, k, v; gate, up): one weight
/// of their rows concatenated where they share a format (one dispatch
/// computes them all, reading the input once; `lamina_engine::mmout` lays
/// out the parts), else a weight each.
#[derive(Clone)]
pub enum Linears {
    Fused { w: GpuWeight, rows: Vec<u32> },
    Split(Vec<GpuWeight>),
}

impl Linears {
    /// Uploads `ts` in the format `mode` asks for, concatenated when they can be.
    fn upload(gpu: &Gpu, ts: &[&HostTensor], mode: WeightMode) -> Result<Linears> {
        let name = ts
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let fused = match mode {
            WeightMode::Native => HostTensor::concat_rows(&name, ts),
            // Converted at load: any types concatenate once they are f32.
            WeightMode::F16 | WeightMode::F32 => {
                let mut values = Vec::new();
                for t in ts {
                    values.extend(t.to_f32()?);
                }
                let rows = ts.iter().map(|t| t.rows()).sum();
                (ts.iter()
                    .all(|t| t.shape.len() == 2 && t.cols() == ts[0].cols()))
                .then(|| HostTensor::from_f32(&name, vec![rows, ts[0].cols()], &values))
            }
        };
        match fused {
            Some(t) => Ok(Linears::Fused {
                w: upload_matrix(gpu, &t, mode)?,
                rows: ts.iter().map(|t| t.rows() as u32).collect(),
            }),
            None => Ok(Linears::Split(
                ts.iter()
                    .map(|t| upload_matrix(gpu, t, mode))
                    .collect::<Result<_>>()?,
            )),
        }
    }
    /// The weights, one or one per layer.
    pub fn weights(&self) -> Vec<&GpuWeight> {
        match self {
            Linears::Fused { w, .. } => vec![w],
            Linears::Split(ws) => ws.iter().collect(),
        }
    }
}

/// One layer's weights on the GPU (a clone shares the buffers).
#[derive(Clone)]
pub struct GpuLayer {
    pub attn_norm: Tensor,
    /// q, k and v.
    pub attn_in: Linears,
    pub wo: GpuWeight,
    pub ffn_norm: Tensor,
    /// gate and up.
    pub ffn_in: Linears,
    pub w_down: GpuWeight,
    /// Integer activations, when the model quantizes them.
    pub act: Option<LayerAct>,
    /// q, k and v biases (Qwen2), each `[width]` f32.
    pub qkv_bias: Option<[Tensor; 3]>,
}

impl GpuLayer {
    /// Uploads one layer's weights in the format `mode` asks for.
    pub fn upload(gpu: &Gpu, l: &LayerWeights, mode: WeightMode) -> Result<GpuLayer> {
        Ok(GpuLayer {
            attn_norm: upload_vector(gpu, &l.attn_norm)?,
            attn_in: Linears::upload(gpu, &[&l.wq, &l.wk, &l.wv], mode)?,
            wo: upload_matrix(gpu, &l.wo, mode)?,
            ffn_norm: upload_vector(gpu, &l.ffn_norm)?,
            ffn_in: Linears::upload(gpu, &[&l.w_gate, &l.w_up], mode)?,
            w_down: upload_matrix(gpu, &l.w_down, mode)?,
            act: None,
            qkv_bias: match &l.qkv_bias {
                Some([q, k, v]) => Some([
                    upload_vector(gpu, q)?,
                    upload_vector(gpu, k)?,
                    upload_vector(gpu, v)?,
                ]),
                None => None,
            },
        })
    }

    /// Bytes of the layer's weights on the GPU (norms included).
    pub fn bytes(&self) -> u64 {
        let mut mats = self.attn_in.weights();
        mats.extend(self.ffn_in.weights());
        mats.extend([&self.wo, &self.w_down]);
        let biases: u64 = self.qkv_bias.iter().flatten().map(|b| b.size).sum();
        self.attn_norm.size
            + self.ffn_norm.size
            + biases
            + mats.iter().map(|w| w.bytes()).sum::<u64>()
    }
}

/// Weights and KV cache on the GPU.
pub struct GpuModel {
    pub gpu: Arc<Gpu>,
    pub config: LlamaConfig,
    pub token_embd: GpuWeight,
    pub layers: Vec<GpuLayer>,
    pub output_norm: Tensor,
    /// `None` when tied to the embedding.
    pub output: Option<GpuWeight>,
    /// RoPE's frequency divisors (`LlamaConfig::rope_factors`), if scaled.
    pub rope_factors: Option<Tensor>,
    pub kv: KvCache,
    pub weight_mode: WeightMode,
}

fn engine_format(dt: HostDType, mode: WeightMode) -> WeightFormat {
    match (mode, dt) {
        (WeightMode::F32, _) => WeightFormat::F32,
        (WeightMode::F16, _) => WeightFormat::F16,
        (WeightMode::Native, HostDType::F32) => WeightFormat::F32,
        (WeightMode::Native, HostDType::F16 | HostDType::BF16) => WeightFormat::F16,
        (WeightMode::Native, HostDType::Q4_0) => WeightFormat::Q4_0,
        (WeightMode::Native, HostDType::Q4_1) => WeightFormat::Q4_1,
        (WeightMode::Native, HostDType::Q8_0) => WeightFormat::Q8_0,
        (WeightMode::Native, HostDType::Mixed) => WeightFormat::Mixed,
        (WeightMode::Native, HostDType::Q5_0) => WeightFormat::Q5_0,
        (WeightMode::Native, HostDType::Q5_1) => WeightFormat::Q5_1,
        (WeightMode::Native, HostDType::IQ4_NL) => WeightFormat::IQ4_NL,
        (WeightMode::Native, HostDType::Q2_K) => WeightFormat::Q2_K,
        (WeightMode::Native, HostDType::Q3_K) => WeightFormat::Q3_K,
        (WeightMode::Native, HostDType::Q4_K) => WeightFormat::Q4_K,
        (WeightMode::Native, HostDType::Q5_K) => WeightFormat::Q5_K,
        (WeightMode::Native, HostDType::Q6_K) => WeightFormat::Q6_K,
        (WeightMode::Native, HostDType::IQ4_XS) => WeightFormat::IQ4_XS,
    }
}

/// Packs and uploads a host matrix in the format `mode` asks for.
fn upload_matrix(gpu: &Gpu, t: &HostTensor, mode: WeightMode) -> Result<GpuWeight> {
    if t.shape.len() != 2 {
        return Err(ModelError::Invalid(format!(
            "{} is not a matrix: {:?}",
            t.name, t.shape
        )));
    }
    let (rows, cols) = (t.rows() as u32, t.cols() as u32);
    let format = engine_format(t.dtype, mode);
    // Converted values outlive the borrow `data` takes of them.
    let values;
    let data = match format {
        WeightFormat::Mixed => {
            let Some(m) = &t.mixed else {
                return Err(ModelError::Invalid(format!(
                    "{} is marked mixed but has no layout",
                    t.name
                )));
            };
            HostData::Mixed(m.data())
        }
        WeightFormat::F32 | WeightFormat::F16 => {
            values = t.to_f32()?;
            HostData::F32(&values)
        }
        // Every GGUF block format is repacked from the file's bytes.
        _ => HostData::Ggml(t.data.as_slice()),
    };
    let host = HostWeight {
        format,
        rows,
        cols,
        data,
    };
    Ok(GpuWeight::upload(gpu, &t.name, &host)?)
}

fn upload_vector(gpu: &Gpu, t: &HostTensor) -> Result<Tensor> {
    let v = t.to_f32()?;
    let bytes: &[u8] = bytemuck::cast_slice(&v);
    Ok(Tensor {
        buffer: gpu.upload(&t.name, bytes)?,
        offset: 0,
        size: bytes.len() as u64,
        shape: vec![v.len()],
        dtype: DType::F32,
    })
}

impl GpuModel {
    /// Uploads the weights and allocates a KV cache of `max_ctx` positions.
    pub fn new(
        gpu: Arc<Gpu>,
        m: &LoadedModel,
        mode: WeightMode,
        max_ctx: usize,
        kv_format: KvFormat,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        Self::with_pivot(gpu, m, mode, max_ctx, kv_format, None, progress)
    }

    /// [`GpuModel::new`] with a pivot segment at the cache's first positions
    /// (`max_ctx` counts them).
    pub fn with_pivot(
        gpu: Arc<Gpu>,
        m: &LoadedModel,
        mode: WeightMode,
        max_ctx: usize,
        kv_format: KvFormat,
        pivot: Option<&Pivot>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let cfg = m.config.clone();
        let w = &m.weights;
        let act = m.recipe.as_ref().and_then(|r| r.act.as_ref());
        if let Some(a) = act {
            a.check(&cfg)?;
            if mode != WeightMode::Native {
                return Err(ModelError::Input(format!(
                    "{} quantizes its activations, which the integer kernels multiply by its \
                     packed weights: run it with --weights native (or float activations: --act-bits 0)",
                    m.source
                )));
            }
        }
        let total = cfg.n_layers + 2;
        progress(0, total);
        let token_embd = upload_matrix(&gpu, &w.token_embd, mode)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for (i, l) in w.layers.iter().enumerate() {
            let mut layer = GpuLayer::upload(&gpu, l, mode)?;
            layer.act = act.map(|a| LayerAct::of(a, i)).transpose()?;
            layers.push(layer);
            progress(i + 1, total);
        }
        let output_norm = upload_vector(&gpu, &w.output_norm)?;
        let output = match &w.output {
            Some(o) => Some(upload_matrix(&gpu, o, mode)?),
            None => None,
        };
        let rope_factors = if cfg.rope_factors.is_empty() {
            None
        } else {
            let host = HostTensor::from_f32(
                "rope_factors",
                vec![cfg.rope_factors.len()],
                &cfg.rope_factors,
            );
            Some(upload_vector(&gpu, &host)?)
        };
        progress(total - 1, total);
        let kv_static = m.recipe.as_ref().and_then(|r| r.kv.as_ref());
        let kv = KvCache::new(&gpu, &cfg, max_ctx, kv_format, pivot, kv_static)?;
        progress(total, total);
        Ok(GpuModel {
            gpu,
            config: cfg,
            token_embd,
            layers,
            output_norm,
            output,
            rope_factors,
            kv,
            weight_mode: mode,
        })
    }

    /// The same weights (shared, not copied) with a KV cache of their own,
    /// a [`KvCache::duplicate`] of this model's: a second sequence that runs
    /// beside this one's, as the server's slots do.
    pub fn fork(&self) -> Result<GpuModel> {
        Ok(self.forks(1)?.remove(0))
    }

    /// `n` forks whose f16 KV caches lie side by side in one buffer per
    /// layer ([`KvCache::replicate`]), so that a batched step of their
    /// sequences attends over all of them in one dispatch
    /// ([`crate::batch::BatchDecoder`]).
    pub fn forks(&self, n: usize) -> Result<Vec<GpuModel>> {
        Ok(self
            .kv
            .replicate(&self.gpu, n)?
            .into_iter()
            .map(|kv| GpuModel {
                gpu: self.gpu.clone(),
                config: self.config.clone(),
                token_embd: self.token_embd.clone(),
                layers: self.layers.clone(),
                output_norm: self.output_norm.clone(),
                output: self.output.clone(),
                rope_factors: self.rope_factors.clone(),
                kv,
                weight_mode: self.weight_mode,
            })
            .collect())
    }

    pub fn lm_head(&self) -> &GpuWeight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Bytes of all weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        let mut b = self.token_embd.bytes() + self.output_norm.size;
        if let Some(o) = &self.output {
            b += o.bytes();
        }
        b + self.layers.iter().map(GpuLayer::bytes).sum::<u64>()
    }

    /// Weight bytes one decoded token streams: every layer matrix and the
    /// lm_head, plus one embedding row (the lookup reads just that row).
    pub fn weight_bytes_per_token(&self) -> u64 {
        let mut b = self.lm_head().bytes() + self.output_norm.size;
        b += self.token_embd.bytes() / u64::from(self.token_embd.rows.max(1));
        b + self.layers.iter().map(GpuLayer::bytes).sum::<u64>()
    }
}
