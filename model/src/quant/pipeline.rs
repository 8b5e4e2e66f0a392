//! The model quantizer behind `lamina quantize`: every linear layer of a
//! Llama to Lamina's mixed-width groups, by round-to-nearest, GPTQ or
//! SliM-LLM, layer by layer.
//!
//! Calibration (GPTQ, SliM-LLM): `samples` windows of `seq_len` tokens
//! drawn (seeded) from the calibration text run through the model one
//! transformer block at a time on the GPU. For block `l`, a forward pass
//! with the block's full-precision weights (the source dequantized to f32)
//! accumulates `Σ x xᵀ` of the four linear-layer inputs with the Gram op
//! (`H = 2/N Σ x xᵀ`), and keeps a few input rows per window for SliM-LLM's
//! KL scores; then the block's seven matrices are quantized on the CPU; then
//! a second pass with the quantized block produces the next block's inputs,
//! so each block is calibrated on what the quantized model before it
//! computes (GPTQ's sequential scheme). RTN needs no calibration.
//!
//! With a prefix ([`QuantizeOptions::prefix`], PrefixQuant's outlier
//! tokens), every window runs after the prefix's full-precision KV, as it
//! will at run time: no window token becomes the attention sink whose
//! massive activations would dominate the Hessians, and the prefix's own
//! activations are never counted.
//!
//! The token embedding (and an untied lm_head) is stored in a llama.cpp
//! block format ([`QuantizeOptions::embed`], Q8_0 by default): the lookup
//! kernels read those, and the table is a fifth of this model's weights.

use std::sync::Arc;

use lamina_engine::graph::{Graph, Step, TensorId};
use lamina_engine::kv;
use lamina_engine::ops::{gram, kv_f16_attention};
use lamina_engine::weight::MixedLayout;
use lamina_engine::{Executor, Gpu};

use crate::checkpoint::{
    Bytes, HostDType, HostTensor, LayerTensor, LayerWeights, LlamaWeights, LoadedModel,
    MixedTensor, Pivot, Recipe,
};
use crate::kv_cache::pivot_rows;
use crate::llama::{GpuLayer, GramTaps, LayerIo, LayerKv, WeightMode, parts_tensor, push_layer};
use crate::quant::gptq::{GptqOptions, ParamChoice, quantize_gptq};
use crate::quant::rtn::quantize_rtn;
use crate::quant::slim::{SlimOptions, base_allocation, quantize_slim};
use crate::tokenizer::Tokenizer;
use crate::{LlamaConfig, ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Rtn,
    Gptq,
    Slim,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq => "gptq",
            Method::Slim => "slim",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rtn" => Ok(Method::Rtn),
            "gptq" => Ok(Method::Gptq),
            "slim" | "slim-llm" => Ok(Method::Slim),
            _ => Err(ModelError::Input(format!(
                "unknown method `{s}` (rtn, gptq, slim)"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub method: Method,
    /// Target mean code width: 1 to 8, fractional allowed (2.5).
    pub bits: f64,
    /// Columns per group: 32, 64 or 128 (or any multiple of 32).
    pub group: u32,
    /// Calibration windows and their length in tokens.
    pub samples: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub gptq: GptqOptions,
    /// Encoding of the token embedding and an untied lm_head.
    pub embed: HostDType,
    /// Input rows kept per window for SliM-LLM's KL scores.
    pub kl_rows_per_sample: usize,
    /// The KV every calibration window runs after (PrefixQuant's prefix).
    pub prefix: Option<Pivot>,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            method: Method::Slim,
            bits: 2.0,
            group: 128,
            samples: 8,
            seq_len: 512,
            seed: 0,
            gptq: GptqOptions::default(),
            embed: HostDType::Q8_0,
            kl_rows_per_sample: 16,
            prefix: None,
        }
    }
}

/// What happened to one matrix.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MatrixReport {
    pub name: String,
    pub bits: Vec<u8>,
    pub mean_bits: f64,
    /// SliM-LLM: the chosen shift and each candidate's KL.
    pub shift: Option<usize>,
    pub kl: Vec<f64>,
}

/// Progress callback: (layer, layers, phase, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str, usize, usize);

/// Calibration windows: `samples` runs of `seq_len` tokens at seeded random
/// offsets in the tokenized text.
pub fn calibration_windows(
    tok: &Tokenizer,
    text: &str,
    opts: &QuantizeOptions,
) -> Result<Vec<Vec<u32>>> {
    let ids = tok.encode(text, false)?;
    if opts.seq_len == 0 || opts.samples == 0 {
        return Err(ModelError::Input(
            "--samples and --seq-len must be positive".into(),
        ));
    }
    if ids.len() < opts.seq_len + 1 {
        return Err(ModelError::Input(format!(
            "calibration text has {} tokens, fewer than --seq-len {}",
            ids.len(),
            opts.seq_len
        )));
    }
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(opts.seed);
    Ok((0..opts.samples)
        .map(|_| {
            let start = r.random_range(0..=ids.len() - opts.seq_len);
            ids[start..start + opts.seq_len].to_vec()
        })
        .collect())
}

/// Bit widths for RTN and GPTQ at `bits`: the target everywhere when whole;
/// for a fractional target, every other group (by index, no salience) one
/// bit wider, as many as keep the mean at the target.
fn plain_allocation(bits: f64, cols: u32, group: u32) -> Result<Vec<u8>> {
    let n = cols.div_ceil(group) as usize;
    let pseudo: Vec<f64> = (0..n)
        .map(|g| if g % 2 == 0 { 2.0 } else { 1.0 } - g as f64 * 1e-6)
        .collect();
    base_allocation(bits, cols, group, &pseudo)
}

/// One block on the GPU for calibration steps of `seq` tokens after the
/// prefix's `prefix` positions.
struct Block {
    ex: Executor,
    k_cache: TensorId,
    v_cache: TensorId,
    prefix: u32,
    x: TensorId,
    h: TensorId,
    att: TensorId,
    h_ffn: TensorId,
    act: TensorId,
    taps: Option<GramTaps>,
}

fn block(
    gpu: &Arc<Gpu>,
    c: &LlamaConfig,
    l: usize,
    lw: &GpuLayer,
    seq: u32,
    prefix: u32,
    with_taps: bool,
) -> Result<Block> {
    let ctx = prefix + seq;
    let mut g = Graph::new();
    let f32s = |w: usize| 4 * w as u64 * u64::from(seq);
    let x = g.output("x", f32s(c.dim));
    let h = g.output("h", f32s(c.dim));
    let h_ffn = g.output("h_ffn", f32s(c.dim));
    let att = g.output("att", f32s(c.q_dim()));
    let act = g.output("act", f32s(c.ffn_dim));
    let qkv = [("q", c.q_dim()), ("k", c.kv_dim()), ("v", c.kv_dim())];
    let (qkv, [q, k, v]) = parts_tensor(&mut g, "qkv", qkv, seq)?;
    let gate_up = [("gate", c.ffn_dim), ("up", c.ffn_dim)];
    let (gate_up, [gate, up]) = parts_tensor(&mut g, "gate_up", gate_up, seq)?;
    let io = LayerIo {
        x,
        h,
        h_ffn,
        qkv,
        q,
        k,
        v,
        att,
        gate_up,
        gate,
        up,
        act,
        att_scratch: {
            let b = kv_f16_attention::scratch_bytes(c.n_heads as u32, c.head_dim as u32, ctx, seq);
            (b > 0).then(|| g.intermediate("att_scratch", b))
        },
        xq: None,
        rope_factors: (!c.rope_factors.is_empty())
            .then(|| g.output("rope_factors", 2 * c.head_dim as u64)),
    };
    let cache = kv::cache_bytes(c.n_kv_heads as u32, c.head_dim as u32, ctx);
    // Outputs: the host writes the prefix's KV into them.
    let kc = g.output("k_cache", cache);
    let vc = g.output("v_cache", cache);
    let sq = |d: usize| 4 * (d * d) as u64;
    let taps = with_taps.then(|| GramTaps {
        attn_in: g.output("gram_attn_in", sq(c.dim)),
        attn_out: g.output("gram_attn_out", sq(c.q_dim())),
        ffn_in: g.output("gram_ffn_in", sq(c.dim)),
        ffn_act: g.output("gram_ffn_act", sq(c.ffn_dim)),
    });
    let kv = LayerKv::F16 {
        k_cache: kc,
        v_cache: vc,
    };
    push_layer(&mut g, c, l, lw, &io, &[kv], None, ctx, seq, taps.as_ref())?;
    let ex = Executor::new(gpu.clone(), g)?;
    if let Some(t) = io.rope_factors {
        ex.write(t, 0, bytemuck::cast_slice(&c.rope_factors));
    }
    if let Some(t) = &taps {
        for (id, d) in [
            (t.attn_in, c.dim),
            (t.attn_out, c.q_dim()),
            (t.ffn_in, c.dim),
            (t.ffn_act, c.ffn_dim),
        ] {
            ex.write(id, 0, &vec![0u8; 4 * d * d]);
        }
    }
    Ok(Block {
        ex,
        k_cache: kc,
        v_cache: vc,
        prefix,
        x,
        h,
        att,
        h_ffn,
        act,
        taps,
    })
}

impl Block {
    /// Runs one window's `x` (`[seq, dim]`) through the block after layer
    /// `l`'s part of the prefix's KV.
    fn run(&mut self, c: &LlamaConfig, l: usize, prefix: Option<&Pivot>, x: &[f32]) -> Result<()> {
        if let Some(pv) = prefix {
            let rows = (self.prefix as usize) + x.len() / c.dim;
            let k = pivot_rows(&pv.k[l], c, rows);
            let v = pivot_rows(&pv.v[l], c, rows);
            self.ex.write(self.k_cache, 0, bytemuck::cast_slice(&k));
            self.ex.write(self.v_cache, 0, bytemuck::cast_slice(&v));
        }
        self.ex.write(self.x, 0, bytemuck::cast_slice(x));
        self.ex.run(&Step {
            n_tokens: (x.len() / c.dim) as u32,
            pos: self.prefix,
            ..Default::default()
        })?;
        Ok(())
    }
}

/// Reads a Gram accumulator as `H = 2/N Σ x xᵀ` (f64, full square).
fn read_hessian(ex: &Executor, id: TensorId, dim: usize, n_tokens: usize) -> Result<Vec<f64>> {
    let mut m = ex.read_f32(id, dim * dim)?;
    gram::symmetrize(&mut m, dim);
    let s = 2.0 / n_tokens.max(1) as f64;
    Ok(m.iter().map(|&v| f64::from(v) * s).collect())
}

/// Which of a block's four Gram taps holds a linear layer's input: the
/// normed residual (q, k, v), the attention output (o), the normed residual
/// after attention (gate, up), the SwiGLU activation (down). `None` for the
/// norms and biases, which are not quantized.
fn input_tap(t: LayerTensor) -> Option<usize> {
    match t {
        LayerTensor::Wq | LayerTensor::Wk | LayerTensor::Wv => Some(0),
        LayerTensor::Wo => Some(1),
        LayerTensor::WGate | LayerTensor::WUp => Some(2),
        LayerTensor::WDown => Some(3),
        LayerTensor::AttnNorm
        | LayerTensor::FfnNorm
        | LayerTensor::Bq
        | LayerTensor::Bk
        | LayerTensor::Bv => None,
    }
}

fn mixed_tensor(name: &str, shape: Vec<usize>, t: MixedTensor) -> HostTensor {
    HostTensor {
        name: name.to_string(),
        shape,
        dtype: HostDType::Mixed,
        data: Bytes::Owned(Arc::new(Vec::new())),
        mixed: Some(Arc::new(t)),
    }
}

/// Re-encodes `t` as `dtype` (unchanged if it already is).
fn encode_as(t: &HostTensor, dtype: HostDType) -> Result<HostTensor> {
    if t.dtype == dtype {
        return Ok(t.clone());
    }
    let v = t.to_f32()?;
    let bytes = crate::checkpoint::encode::quantize(dtype, &v)?;
    Ok(HostTensor {
        dtype,
        data: Bytes::Owned(Arc::new(bytes)),
        mixed: None,
        ..t.clone()
    })
}

/// Quantizes `m`. GPTQ and SliM-LLM calibrate on `windows` (token ids, all
/// of one length; see [`calibration_windows`]); RTN ignores them.
pub fn quantize_model(
    gpu: &Arc<Gpu>,
    m: &LoadedModel,
    windows: &[Vec<u32>],
    opts: &QuantizeOptions,
    progress: Progress<'_>,
) -> Result<(LoadedModel, Vec<MatrixReport>)> {
    let c = &m.config;
    if !(1.0..=8.0).contains(&opts.bits) {
        return Err(ModelError::Input(format!(
            "--bits {} outside 1..=8",
            opts.bits
        )));
    }
    if opts.group == 0 || !opts.group.is_multiple_of(32) {
        return Err(ModelError::Input(format!(
            "--group {} is not a positive multiple of 32",
            opts.group
        )));
    }
    for d in [c.dim, c.q_dim(), c.ffn_dim] {
        if !d.is_multiple_of(32) {
            return Err(ModelError::Unsupported(format!(
                "layer width {d} is not a multiple of 32"
            )));
        }
    }
    let n_layers = c.n_layers;
    let calibrated = opts.method != Method::Rtn;
    let seq = windows.first().map_or(0, Vec::len);
    // Residual stream of every window entering the current block.
    let mut xs: Vec<Vec<f32>> = Vec::new();
    if calibrated {
        if seq == 0 || windows.iter().any(|w| w.len() != seq) {
            return Err(ModelError::Input(
                "GPTQ and SliM-LLM need calibration windows of one nonzero length".into(),
            ));
        }
        if let Some(&t) = windows
            .iter()
            .flatten()
            .find(|&&t| t as usize >= c.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "calibration token {t} outside the vocabulary"
            )));
        }
        let emb = m.weights.token_embd.to_f32()?;
        xs = windows
            .iter()
            .map(|w| {
                w.iter()
                    .flat_map(|&t| {
                        emb[t as usize * c.dim..(t as usize + 1) * c.dim]
                            .iter()
                            .copied()
                    })
                    .collect()
            })
            .collect();
    }
    let n_tokens = xs.len() * seq;
    let prefix = opts.prefix.as_ref();
    if let Some(pv) = prefix {
        pv.check(c)?;
    }
    let p = prefix.map_or(0, |pv| pv.len() as u32);
    // Evenly spaced rows of each window for the KL samples.
    let k = opts.kl_rows_per_sample.clamp(1, seq.max(1));
    let kl_rows: Vec<usize> = (0..k).map(|i| (2 * i + 1) * seq / (2 * k)).collect();

    let mut layers = Vec::with_capacity(n_layers);
    let mut reports = Vec::new();
    for (l, lw) in m.weights.layers.iter().enumerate() {
        // 1. Hessians and input samples from the full-precision block.
        let mut hess: Option<[Vec<f64>; 4]> = None;
        let mut samples: [Vec<f32>; 4] = Default::default();
        if calibrated {
            let fp = GpuLayer::upload(gpu, lw, WeightMode::F32)?;
            let mut b = block(gpu, c, l, &fp, seq as u32, p, true)?;
            for (i, x) in xs.iter().enumerate() {
                progress(l, n_layers, "calibrate", i, xs.len());
                b.run(c, l, prefix, x)?;
                if opts.method == Method::Slim {
                    for (k, (id, d)) in [
                        (b.h, c.dim),
                        (b.att, c.q_dim()),
                        (b.h_ffn, c.dim),
                        (b.act, c.ffn_dim),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let v = b.ex.read_f32(id, seq * d)?;
                        for &t in &kl_rows {
                            samples[k].extend_from_slice(&v[t * d..(t + 1) * d]);
                        }
                    }
                }
            }
            let t = b.taps.expect("block built with taps");
            hess = Some([
                read_hessian(&b.ex, t.attn_in, c.dim, n_tokens)?,
                read_hessian(&b.ex, t.attn_out, c.q_dim(), n_tokens)?,
                read_hessian(&b.ex, t.ffn_in, c.dim, n_tokens)?,
                read_hessian(&b.ex, t.ffn_act, c.ffn_dim, n_tokens)?,
            ]);
        }

        // 2. Quantize the seven matrices (norms stay as they are).
        let mut done = 0;
        let ql = LayerWeights::try_from_fn(lw.qkv_bias.is_some(), |role| {
            let t = lw.get(role).expect("the block has each role it asks for");
            let Some(input) = input_tap(role) else {
                return Ok(t.clone());
            };
            progress(l, n_layers, "quantize", done, LayerTensor::LINEAR.len());
            done += 1;
            let full = role.gguf_name(l);
            let (rows, cols) = (t.rows(), t.cols() as u32);
            let w = t.to_f32()?;
            let (mt, shift, kl) = match opts.method {
                Method::Rtn => {
                    let layout = Arc::new(MixedLayout::new(
                        opts.group,
                        cols,
                        plain_allocation(opts.bits, cols, opts.group)?,
                    )?);
                    (quantize_rtn(&w, rows, &layout), None, Vec::new())
                }
                Method::Gptq => {
                    let layout = Arc::new(MixedLayout::new(
                        opts.group,
                        cols,
                        plain_allocation(opts.bits, cols, opts.group)?,
                    )?);
                    let h = &hess.as_ref().expect("calibrated")[input];
                    (
                        quantize_gptq(&w, rows, &layout, h, &opts.gptq, ParamChoice::MinMax)?,
                        None,
                        Vec::new(),
                    )
                }
                Method::Slim => {
                    let h = &hess.as_ref().expect("calibrated")[input];
                    let so = SlimOptions {
                        bits: opts.bits,
                        group: opts.group,
                        gptq: opts.gptq,
                    };
                    let (mt, rep) = quantize_slim(&w, rows, cols, h, &samples[input], &so)?;
                    (mt, Some(rep.shift), rep.kl)
                }
            };
            reports.push(MatrixReport {
                name: full.clone(),
                bits: mt.layout.bits.clone(),
                mean_bits: mt.layout.mean_bits(),
                shift,
                kl,
            });
            Ok(mixed_tensor(&full, t.shape.clone(), mt))
        })?;

        // 3. The quantized block's outputs feed the next block.
        if calibrated && l + 1 < n_layers {
            let q = GpuLayer::upload(gpu, &ql, WeightMode::Native)?;
            let mut b = block(gpu, c, l, &q, seq as u32, p, false)?;
            let nx = xs.len();
            for (i, x) in xs.iter_mut().enumerate() {
                progress(l, n_layers, "propagate", i, nx);
                b.run(c, l, prefix, x)?;
                *x = b.ex.read_f32(b.x, seq * c.dim)?;
            }
        }
        layers.push(ql);
        progress(l + 1, n_layers, "done", 1, 1);
    }

    let mut weights = m.weights.clone();
    weights.layers = layers;
    weights.token_embd = encode_as(&m.weights.token_embd, opts.embed)?;
    if let Some(o) = &m.weights.output {
        weights.output = Some(encode_as(o, opts.embed)?);
    }
    let name = format!(
        "{}-{}b-g{}",
        opts.method.name().to_uppercase(),
        opts.bits,
        opts.group
    );
    let recipe = Recipe {
        name: name.clone(),
        method: opts.method.name().to_string(),
        bits: opts.bits,
        group: opts.group,
        samples: if calibrated { windows.len() } else { 0 },
        seq_len: seq,
        seed: opts.seed,
        damp: opts.gptq.damp,
        act_order: opts.gptq.act_order,
        embed: opts.embed.name().to_string(),
        source: m.source.clone(),
        source_type: m.file_type.clone(),
        ..Default::default()
    };
    Ok((
        LoadedModel {
            config: m.config.clone(),
            weights,
            tokenizer_spec: m.tokenizer_spec.clone(),
            source: m.source.clone(),
            file_type: name,
            recipe: Some(recipe),
            pivot: None,
        },
        reports,
    ))
}

/// Bits per weight of a model's weights, counting every byte stored
/// (codes, scales, mins, block scales, norms), over its parameter count.
pub fn bits_per_weight(w: &LlamaWeights) -> (f64, u64, u64) {
    let mut bytes = 0u64;
    let mut params = 0u64;
    let mut add = |t: &HostTensor| {
        bytes += t.byte_size() as u64;
        params += t.numel() as u64;
    };
    for (_, t) in w.tensors() {
        add(t);
    }
    (8.0 * bytes as f64 / params.max(1) as f64, bytes, params)
}
