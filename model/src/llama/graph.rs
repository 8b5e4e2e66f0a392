//! The forward graph: [`build_graph`] for a whole model and
//! [`push_layer`], the one place a transformer block is built (the
//! quantizer's calibration graphs use it too).

use std::sync::Arc;

use lamina_engine::graph::{Graph, Op, TensorId};
use lamina_engine::mmout::OutLayout;
use lamina_engine::ops::matmul::MatVecIn;
use lamina_engine::ops::{
    act_quant, add, embedding, hadamard, kv_f16_attention, kv_quant_attention, matmul, matmul_int,
    rmsnorm_quant, sample, swiglu,
};
use lamina_engine::weight::GpuWeight;
use lamina_engine::{Tensor, WeightRef};

use super::attention::{
    AttRows, KvSlots, LayerKv, fuses_rope_kv, push_attention, push_attention_seqs,
};
pub use super::nodes::parts_tensor;
use super::nodes::{push_gram, push_hadamard, push_norm};
use super::{GpuLayer, GpuModel, Linears};
use crate::checkpoint::ActSite;
use crate::kv_cache::LayerCache;
use crate::{LlamaConfig, ModelError, Result};

/// What a graph ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Logits of every token in the step ([n_tokens, vocab]), e.g. for perplexity.
    AllLogits,
    /// The last token's logits, then a token sampled on the GPU.
    Sample,
}

/// Tensor ids the host uses to drive a built graph.
#[derive(Debug, Clone, Copy)]
pub struct GraphIo {
    /// u32 token ids, `max_tokens` of them.
    pub ids: TensorId,
    /// f32 logits: [max_tokens, vocab] for `AllLogits`, [vocab] for `Sample`.
    pub logits: TensorId,
    /// `Sample` only: the u32 token id.
    pub token: Option<TensorId>,
    /// `Sample` only: recent tokens for the repetition penalty.
    pub history: Option<TensorId>,
    pub max_tokens: u32,
}

/// Most recent tokens the repetition penalty looks at (llama.cpp's default 64).
pub const REPEAT_LAST_N: u32 = 64;

fn weight(g: &mut Graph, w: &GpuWeight, name: &str) -> WeightRef {
    w.add_to_graph(g, name)
}

/// Layer `l`'s f16 caches of several models as one tensor each over all
/// their slots, where they are slots of one buffer in order at one stride
/// (`GpuModel::forks`), a call can serve that many sequences, a binding
/// can hold them and the model fuses RoPE with the cache write; else
/// `None` (attention per sequence).
fn kv_slots(models: &[&GpuModel], l: usize) -> Option<(Tensor, Tensor, kv_f16_attention::Seqs)> {
    let fits = (2..=kv_f16_attention::MAX_SEQS).contains(&models.len());
    if !fits || !fuses_rope_kv(&models[0].config) {
        return None;
    }
    let caches: Vec<(&Tensor, &Tensor)> = models
        .iter()
        .map(|m| match m.kv.layers.get(l) {
            Some(LayerCache::F16 { k, v }) => Some((k, v)),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let (k0, v0) = caches[0];
    let stride = caches[1].0.offset.checked_sub(k0.offset)?;
    let in_slots = |t0: &Tensor, t: &Tensor, s: usize| {
        Arc::ptr_eq(&t.buffer, &t0.buffer)
            && t.size == t0.size
            && t.offset == t0.offset + s as u64 * stride
    };
    let ok = caches
        .iter()
        .enumerate()
        .all(|(s, (k, v))| in_slots(k0, k, s) && in_slots(v0, v, s) && v0.offset == k0.offset);
    let n = models.len();
    let bytes = (n as u64 - 1) * stride + k0.size;
    if !ok || stride < k0.size || bytes > models[0].gpu.caps.max_binding {
        return None;
    }
    let all = |t: &Tensor| Tensor {
        size: bytes,
        ..t.clone()
    };
    let seqs = kv_f16_attention::Seqs {
        n: n as u32,
        slot_bytes: stride,
    };
    Some((all(k0), all(v0), seqs))
}

fn external(g: &mut Graph, name: &str, t: &Tensor) -> TensorId {
    g.external(name, t.clone())
}

/// Builds the forward graph for steps of up to `max_tokens` tokens.
pub fn build_graph(m: &GpuModel, max_tokens: u32, head: Head) -> Result<(Graph, GraphIo)> {
    let (g, io, _) = build(&[m], max_tokens, head)?;
    Ok((g, io))
}

/// Tensor ids the host uses to drive a graph of several sequences
/// ([`build_batch_graph`]).
#[derive(Debug, Clone)]
pub struct BatchIo {
    /// u32 token ids, one per sequence.
    pub ids: TensorId,
    /// The sampled token ids: sequence `s`'s u32 at byte `s * TOKEN_STRIDE`.
    pub tokens: TensorId,
    /// Each sequence's recent tokens for the repetition penalty.
    pub histories: Vec<TensorId>,
}

/// Bytes between the sequences' sampled tokens in [`BatchIo::tokens`]
/// (each sample op writes a view, and views start at aligned offsets).
pub const TOKEN_STRIDE: u64 = 256;

/// One decode step of `models.len()` sequences at once: the models share
/// their weights (forks of one, [`GpuModel::fork`]) and each has its own
/// KV cache. Each weight is one matmul over all the sequences' rows; RoPE,
/// the cache write, attention and sampling run per sequence, with that
/// sequence's position and sampling ([`Executor::run_read_seqs`]).
///
/// [`Executor::run_read_seqs`]: lamina_engine::Executor::run_read_seqs
pub fn build_batch_graph(models: &[&GpuModel]) -> Result<(Graph, BatchIo)> {
    let Some(first) = models.first() else {
        return Err(ModelError::Input("a batch of no sequences".into()));
    };
    let c = &first.config;
    let shared = |m: &&GpuModel| {
        Arc::ptr_eq(&m.output_norm.buffer, &first.output_norm.buffer)
            && m.kv.max_ctx == first.kv.max_ctx
    };
    if !models.iter().all(shared) {
        return Err(ModelError::Input(
            "the sequences of a batch must share one model's weights".into(),
        ));
    }
    if models.len() > 1 && c.hadamard.qk {
        return Err(ModelError::Input(
            "a rotated model's online Hadamard is not batched across sequences".into(),
        ));
    }
    // Each sequence's rows are views, which start at aligned offsets.
    let align = u64::from(first.gpu.caps.min_storage_align.max(4));
    for (what, width) in [
        ("q", c.q_dim()),
        ("k and v", c.kv_dim()),
        ("logits", c.vocab_size),
    ] {
        if !(4 * width as u64).is_multiple_of(align) {
            return Err(ModelError::Input(format!(
                "the {what} rows ({width} values) do not start at the device's {align}-byte \
                 alignment, so sequences cannot share a step"
            )));
        }
    }
    let (g, io, seqs) = build(models, models.len() as u32, Head::Sample)?;
    let ids = io.ids;
    let (tokens, histories) = seqs.expect("several sequences with Head::Sample");
    Ok((
        g,
        BatchIo {
            ids,
            tokens,
            histories,
        },
    ))
}

/// The graph of `models`' sequences (one model: a single sequence of up to
/// `max_tokens` tokens; several: one token each, sampled per sequence, whose
/// `tokens` tensor and histories come back too).
#[allow(clippy::type_complexity)]
fn build(
    models: &[&GpuModel],
    max_tokens: u32,
    head: Head,
) -> Result<(Graph, GraphIo, Option<(TensorId, Vec<TensorId>)>)> {
    let m = models[0];
    let c = &m.config;
    let n = max_tokens;
    let f32s = |elems: usize| 4 * elems as u64 * u64::from(n);
    let (dim, q_dim, kv_dim, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let (hd, nh) = (c.head_dim as u32, c.n_heads as u32);
    let max_ctx = m.kv.max_ctx as u32;
    let mut g = Graph::new();

    let ids = g.input("ids", 4 * u64::from(n)); // [n_tokens] u32
    let x = g.intermediate("x", f32s(dim)); // [n_tokens, dim] residual stream
    let h = g.intermediate("h", f32s(dim)); // [n_tokens, dim] normed
    // q [n_tokens, n_heads, head_dim], k and v [n_tokens, n_kv_heads, head_dim]
    let (qkv, [q, k, v]) = parts_tensor(
        &mut g,
        "qkv",
        [("q", q_dim), ("k", kv_dim), ("v", kv_dim)],
        n,
    )?;
    let att = g.intermediate("att", f32s(q_dim)); // [n_tokens, n_heads * head_dim]
    // [n_tokens, ffn] each
    let (gate_up, [gate, up]) = parts_tensor(&mut g, "gate_up", [("gate", ffn), ("up", ffn)], n)?;
    let act = g.intermediate("act", f32s(ffn)); // [n_tokens, ffn]
    // Several sequences whose f16 caches are slots of one buffer: attention
    // over all of them in one node per layer, with a scratch area each.
    let slotted: Vec<Option<(Tensor, Tensor, kv_f16_attention::Seqs)>> = (0..m.kv.layers.len())
        .map(|l| kv_slots(models, l))
        .collect();
    let scratch_bytes = m
        .kv
        .layers
        .iter()
        .zip(&slotted)
        .map(|(l, slots)| match l {
            LayerCache::F16 { .. } => {
                let seqs = slots.as_ref().map_or(1, |s| u64::from(s.2.n));
                seqs * kv_f16_attention::scratch_bytes(nh, hd, max_ctx, n)
            }
            LayerCache::Quant { layout, .. } => kv_quant_attention::scratch_bytes(layout, nh, n),
        })
        .max()
        .unwrap_or(0);
    let att_scratch = (scratch_bytes > 0).then(|| g.intermediate("att_scratch", scratch_bytes));
    // Integer activations: one code buffer ([n, widest / 4] u32) and one
    // scale per token, reused by every linear layer's input in turn.
    let xq = m.layers.iter().any(|l| l.act.is_some()).then(|| {
        let widest = dim.max(q_dim).max(ffn) as u64;
        (
            g.intermediate("xq", widest * u64::from(n)),
            g.intermediate("xq_scales", 4 * u64::from(n)),
        )
    });

    let table = weight(&mut g, &m.token_embd, "token_embd");
    g.push(
        "token_embd",
        Op::Embedding(embedding::Embedding {
            ids,
            table,
            out: x,
            max_rows: n,
        }),
    )?;

    let io = LayerIo {
        x,
        h,
        h_ffn: h,
        qkv,
        q,
        k,
        v,
        att,
        gate_up,
        gate,
        up,
        act,
        att_scratch,
        xq,
        rope_factors: m
            .rope_factors
            .as_ref()
            .map(|t| external(&mut g, "rope_factors", t)),
    };
    for (l, lw) in m.layers.iter().enumerate() {
        let kvs: Vec<LayerKv> = models
            .iter()
            .enumerate()
            .map(|(s, m)| {
                let name = |what: &str| match models.len() {
                    1 => format!("blk.{l}.{what}"),
                    _ => format!("blk.{l}.{what}.{s}"),
                };
                match &m.kv.layers[l] {
                    LayerCache::F16 { k, v } => LayerKv::F16 {
                        k_cache: external(&mut g, &name("k_cache"), k),
                        v_cache: external(&mut g, &name("v_cache"), v),
                    },
                    LayerCache::Quant {
                        k_win,
                        v_win,
                        k_store,
                        v_store,
                        layout,
                    } => LayerKv::Quant {
                        k_win: external(&mut g, &name("k_win"), k_win),
                        v_win: external(&mut g, &name("v_win"), v_win),
                        k_store: external(&mut g, &name("k_store"), k_store),
                        v_store: external(&mut g, &name("v_store"), v_store),
                        layout: *layout,
                    },
                }
            })
            .collect();
        let slots = slotted[l].as_ref().map(|(k, v, seqs)| KvSlots {
            k_caches: external(&mut g, &format!("blk.{l}.k_caches"), k),
            v_caches: external(&mut g, &format!("blk.{l}.v_caches"), v),
            seqs: *seqs,
        });
        push_layer(&mut g, c, l, lw, &io, &kvs, slots, max_ctx, n, None)?;
    }

    let w = external(&mut g, "output_norm", &m.output_norm);
    let lm_w = m.lm_head();
    // The final norm folded into the lm_head's mat-vec where its kernels
    // can; a pass of its own where the tiled kernel reads it (all logits of
    // a several-token step).
    let several = models.len() > 1;
    let last_only = head == Head::Sample && !several;
    let fold = matmul::folds_norm(lm_w.format, lm_w.cols);
    if !fold || (n > 1 && !last_only) {
        push_norm(&mut g, c, x, w, h, n, "output_norm".to_string())?;
    }
    let matvec_in = if fold {
        MatVecIn::Norm {
            x,
            weight: w,
            eps: c.norm_eps,
        }
    } else {
        MatVecIn::X
    };
    let vocab = c.vocab_size as u64;
    let lm = weight(&mut g, lm_w, "output");
    // Every row's logits ([n, vocab]).
    let all_logits = |g: &mut Graph| -> Result<TensorId> {
        let logits = g.output("logits", 4 * vocab * u64::from(n));
        g.push(
            "output",
            Op::MatMul(matmul::MatMul {
                x: h,
                w: lm.clone(),
                out: logits,
                out_layout: Default::default(),
                matvec_in,
                max_rows: n,
                last_row_only: false,
            }),
        )?;
        Ok(logits)
    };
    if several {
        let logits = all_logits(&mut g)?;
        let scratch = g.intermediate("sample_scratch", sample::scratch_bytes(vocab as u32));
        let tokens = g.output("tokens", TOKEN_STRIDE * models.len() as u64);
        let mut histories = Vec::with_capacity(models.len());
        for s in 0..models.len() {
            let row = g.view(
                format!("logits.{s}"),
                logits,
                4 * vocab * s as u64,
                4 * vocab,
            )?;
            let out = g.view(format!("token.{s}"), tokens, TOKEN_STRIDE * s as u64, 4)?;
            let history = g.input(format!("history.{s}"), sample::history_bytes(REPEAT_LAST_N));
            histories.push(history);
            g.push_seq(
                s,
                format!("sample.{s}"),
                Op::Sample(sample::Sample {
                    logits: row,
                    history,
                    scratch,
                    out,
                    vocab: vocab as u32,
                    history_len: REPEAT_LAST_N,
                }),
            )?;
        }
        let io = GraphIo {
            ids,
            logits,
            token: None,
            history: None,
            max_tokens: n,
        };
        return Ok((g, io, Some((tokens, histories))));
    }
    let io = match head {
        Head::AllLogits => {
            let logits = all_logits(&mut g)?;
            GraphIo {
                ids,
                logits,
                token: None,
                history: None,
                max_tokens: n,
            }
        }
        Head::Sample => {
            let logits = g.output("logits", 4 * vocab);
            g.push(
                "output",
                Op::MatMul(matmul::MatMul {
                    x: h,
                    w: lm,
                    out: logits,
                    out_layout: Default::default(),
                    matvec_in,
                    max_rows: n,
                    last_row_only: true,
                }),
            )?;
            let history = g.input("history", sample::history_bytes(REPEAT_LAST_N));
            let scratch = g.intermediate("sample_scratch", sample::scratch_bytes(vocab as u32));
            let token = g.output("token", 4);
            g.push(
                "sample",
                Op::Sample(sample::Sample {
                    logits,
                    history,
                    scratch,
                    out: token,
                    vocab: vocab as u32,
                    history_len: REPEAT_LAST_N,
                }),
            )?;
            GraphIo {
                ids,
                logits,
                token: Some(token),
                history: Some(history),
                max_tokens: n,
            }
        }
    };
    Ok((g, io, None))
}

/// The activations one layer reads and writes (`[n, width]` f32 each).
#[derive(Debug, Clone, Copy)]
pub struct LayerIo {
    /// The residual stream, updated in place.
    pub x: TensorId,
    /// Attention-norm output (input of q/k/v).
    pub h: TensorId,
    /// FFN-norm output (input of gate/up); may be `h`.
    pub h_ffn: TensorId,
    /// q, k and v: views of `qkv`, laid out by [`parts_tensor`] so that one
    /// matmul over the concatenated weights writes all three.
    pub qkv: TensorId,
    pub q: TensorId,
    pub k: TensorId,
    pub v: TensorId,
    /// Attention output (input of the output projection).
    pub att: TensorId,
    /// gate and up: views of `gate_up`, as q, k and v are of `qkv`.
    pub gate_up: TensorId,
    pub gate: TensorId,
    pub up: TensorId,
    /// SwiGLU output (input of the down projection).
    pub act: TensorId,
    pub att_scratch: Option<TensorId>,
    /// Integer activations: packed int8 codes `[n, widest / 4]` u32 and
    /// per-token scales `[n]` f32 (needed when a layer has `act`).
    pub xq: Option<(TensorId, TensorId)>,
    /// RoPE's frequency divisors `[head_dim / 2]` f32, where the config
    /// scales them (`LlamaConfig::rope_factors`).
    pub rope_factors: Option<TensorId>,
}

/// Gram accumulators (`[width, width]` f32) of the four linear-layer
/// inputs, for GPTQ's Hessians: q/k/v's, the output projection's,
/// gate/up's and down's.
#[derive(Debug, Clone, Copy)]
pub struct GramTaps {
    pub attn_in: TensorId,
    pub attn_out: TensorId,
    pub ffn_in: TensorId,
    pub ffn_act: TensorId,
}

/// Pushes layer `l`: rmsnorm → q/k/v → RoPE → cache write → causal GQA
/// attention → output projection → residual → rmsnorm → SwiGLU FFN →
/// residual, over the KV cache `(k_cache, v_cache)` of `max_ctx` positions,
/// for steps of up to `n` tokens; with `taps`, also the Gram accumulations of
/// the linear layers' inputs.
#[allow(clippy::too_many_arguments)]
pub fn push_layer(
    g: &mut Graph,
    c: &LlamaConfig,
    l: usize,
    lw: &GpuLayer,
    io: &LayerIo,
    kvs: &[LayerKv],
    slots: Option<KvSlots>,
    max_ctx: u32,
    n: u32,
    taps: Option<&GramTaps>,
) -> Result<()> {
    let (nh, nkv) = (c.n_heads as u32, c.n_kv_heads as u32);
    let hd = c.head_dim as u32;
    let p = |s: &str| format!("blk.{l}.{s}");
    // The linear layers reading one input: float matmuls, or with integer
    // activations the input quantized once, then integer matmuls.
    let quant = match (lw.act, io.xq, taps) {
        (Some(_), None, _) => {
            return Err(ModelError::Invalid(
                "a layer with integer activations needs the code buffer".into(),
            ));
        }
        (Some(_), _, Some(_)) => {
            return Err(ModelError::Invalid(
                "Gram taps read f32 inputs; a layer with integer activations has none".into(),
            ));
        }
        (Some(a), Some(xq), None) => Some((a, xq)),
        (None, _, _) => None,
    };
    // `out = RMSNorm(x) * w`, or with integer activations the norm's output
    // straight to codes (one dispatch): the input of q/k/v and of gate/up.
    let norm = |g: &mut Graph, w: TensorId, out: TensorId, site: ActSite, label: String| {
        let Some((a, (codes, scales))) = quant else {
            return push_norm(g, c, io.x, w, out, n, label);
        };
        let op = rmsnorm_quant::RmsNormQuant {
            x: io.x,
            weight: w,
            codes,
            scales,
            dim: c.dim as u32,
            eps: c.norm_eps,
            bits: a.bits,
            scale: a.scale(site),
            max_rows: n,
        };
        g.push(label, Op::RmsNormQuant(op))?;
        Ok(())
    };
    // The linear layers reading one input: float matmuls, or integer ones
    // over its codes (quantized here unless `coded`, by the norm). Each job
    // is a weight, where and how it writes, and its label.
    let linears = |g: &mut Graph,
                   x: TensorId,
                   matvec_in: MatVecIn,
                   site: ActSite,
                   coded: bool,
                   ws: &[(GpuWeight, TensorId, OutLayout, String)]|
     -> Result<()> {
        if let Some((a, (codes, scales))) = quant.filter(|_| !coded) {
            let op = act_quant::ActQuant {
                x,
                codes,
                scales,
                cols: site.width(c) as u32,
                bits: a.bits,
                scale: a.scale(site),
                max_rows: n,
            };
            g.push(p(&format!("{}_quant", site.name())), Op::ActQuant(op))?;
        }
        for (w, out, out_layout, label) in ws {
            let w = weight(g, w, label);
            let (out, out_layout) = (*out, out_layout.clone());
            let op = match quant {
                Some((_, (codes, scales))) => Op::MatMulInt(matmul_int::MatMulInt {
                    x: codes,
                    x_scales: scales,
                    w,
                    out,
                    out_layout,
                    max_rows: n,
                    last_row_only: false,
                }),
                None => Op::MatMul(matmul::MatMul {
                    x,
                    w,
                    out,
                    out_layout,
                    matvec_in,
                    max_rows: n,
                    last_row_only: false,
                }),
            };
            g.push(label.clone(), op)?;
        }
        Ok(())
    };
    // Jobs for `linears`: one matmul writing all parts of `all`, or one per
    // part; `names` label the parts, `fused` the one matmul.
    let jobs =
        |l: &'_ Linears, all: TensorId, parts: &[TensorId], names: &[&str], fused: &str| match l {
            Linears::Fused { w, rows } => vec![(w.clone(), all, OutLayout::parts(rows), p(fused))],
            Linears::Split(ws) => ws
                .iter()
                .zip(parts)
                .zip(names)
                .map(|((w, &t), name)| (w.clone(), t, OutLayout::plain(), p(name)))
                .collect(),
        };
    // RMSNorm folded into the mat-vecs that read its output, where their
    // kernels can: float activations, and no Gram tap (it reads the
    // output). The norm's own pass stays where a tiled kernel reads it (a
    // graph of several-token steps; see matmul::MatVecIn).
    let fold = |l: &Linears| {
        quant.is_none()
            && taps.is_none()
            && l.weights()
                .iter()
                .all(|w| matmul::folds_norm(w.format, w.cols))
    };
    let norm_in =
        |g: &mut Graph, t: &Tensor, out: TensorId, site: ActSite, name: &str, l: &Linears| {
            let w = external(g, &p(name), t);
            let folds = fold(l);
            if !folds || n > 1 {
                norm(g, w, out, site, p(name))?;
            }
            Ok::<_, ModelError>(if folds {
                MatVecIn::Norm {
                    x: io.x,
                    weight: w,
                    eps: c.norm_eps,
                }
            } else {
                MatVecIn::X
            })
        };
    let attn_norm = norm_in(
        g,
        &lw.attn_norm,
        io.h,
        ActSite::QkvIn,
        "attn_norm",
        &lw.attn_in,
    )?;
    if let Some(t) = taps {
        push_gram(g, io.h, t.attn_in, c.dim, n, p("gram_attn_in"))?;
    }
    let qkv_names = ["attn_q", "attn_k", "attn_v"];
    let qkv = [io.q, io.k, io.v];
    let qkv_jobs = jobs(&lw.attn_in, io.qkv, &qkv, &qkv_names, "attn_qkv");
    linears(g, io.h, attn_norm, ActSite::QkvIn, true, &qkv_jobs)?;
    if let Some(biases) = &lw.qkv_bias {
        for (((b, t), name), heads) in biases.iter().zip(qkv).zip(qkv_names).zip([nh, nkv, nkv]) {
            let y = external(g, &p(&format!("{name}_bias")), b);
            let add = add::Add {
                x: t,
                y,
                dim: heads * hd,
                max_rows: n,
                bias: true,
            };
            g.push(p(&format!("{name}_bias")), Op::Add(add))?;
        }
    }
    // One sequence: its n rows as they are. Several, one row each: RoPE, the
    // cache write and attention in one node each for all of them where their
    // caches are slots of one buffer, else per sequence over its own cache;
    // each sequence with its own step.
    let all = AttRows {
        q: io.q,
        k: io.k,
        v: io.v,
        att: io.att,
    };
    let (rope_factors, scratch) = (io.rope_factors, io.att_scratch);
    match (&slots, kvs) {
        (Some(s), _) => push_attention_seqs(g, c, l, &all, rope_factors, scratch, s, max_ctx)?,
        (None, [kv]) => {
            push_attention(g, c, l, &all, rope_factors, scratch, kv, max_ctx, n, None)?;
        }
        (None, kvs) => {
            for (s, kv) in kvs.iter().enumerate() {
                let mut row = |t: TensorId, width: usize, name: &str| {
                    let bytes = 4 * width as u64;
                    g.view(p(&format!("{name}.{s}")), t, bytes * s as u64, bytes)
                };
                let rows = AttRows {
                    q: row(io.q, c.q_dim(), "q")?,
                    k: row(io.k, c.kv_dim(), "k")?,
                    v: row(io.v, c.kv_dim(), "v")?,
                    att: row(io.att, c.q_dim(), "att")?,
                };
                let seq = Some(s);
                push_attention(g, c, l, &rows, rope_factors, scratch, kv, max_ctx, 1, seq)?;
            }
        }
    }
    if let Some(t) = taps {
        push_gram(g, io.att, t.attn_out, c.q_dim(), n, p("gram_attn_out"))?;
    }
    // The residual add in the output projection's epilogue.
    let o_job = (
        lw.wo.clone(),
        io.x,
        OutLayout::accumulate(),
        p("attn_output"),
    );
    linears(g, io.att, MatVecIn::X, ActSite::OIn, false, &[o_job])?;

    let ffn_norm = norm_in(
        g,
        &lw.ffn_norm,
        io.h_ffn,
        ActSite::FfnIn,
        "ffn_norm",
        &lw.ffn_in,
    )?;
    if let Some(t) = taps {
        push_gram(g, io.h_ffn, t.ffn_in, c.dim, n, p("gram_ffn_in"))?;
    }
    let gate_up = [io.gate, io.up];
    let gate_up_jobs = jobs(
        &lw.ffn_in,
        io.gate_up,
        &gate_up,
        &["ffn_gate", "ffn_up"],
        "ffn_gate_up",
    );
    linears(g, io.h_ffn, ffn_norm, ActSite::FfnIn, true, &gate_up_jobs)?;
    // SwiGLU applied as the down projection's mat-vec loads its input, where
    // nothing else reads the product: float activations, no Hadamard
    // between, no Gram tap. Its own pass stays where a tiled kernel reads it.
    let glu = quant.is_none() && !c.hadamard.down && taps.is_none();
    if !glu || n > 1 {
        g.push(
            p("swiglu"),
            Op::SwiGlu(swiglu::SwiGlu {
                gate: io.gate,
                up: io.up,
                out: io.act,
                dim: c.ffn_dim as u32,
                max_rows: n,
            }),
        )?;
    }
    let down_in = if glu {
        MatVecIn::Glu {
            gate_up: io.gate_up,
        }
    } else {
        MatVecIn::X
    };
    // A rotated model's online Hadamard at the down input; with integer
    // activations it writes the codes itself where the row fits one tile.
    let f = c.ffn_dim as u32;
    let mut down_coded = false;
    match quant {
        Some((a, (codes, scales)))
            if c.hadamard.down && hadamard::HadamardQuant::fits(f) && taps.is_none() =>
        {
            let op = hadamard::HadamardQuant {
                x: io.act,
                codes,
                scales,
                n: f,
                bits: a.bits,
                scale: a.scale(ActSite::DownIn),
                max_rows: n,
            };
            g.push(p("ffn_down_hadamard"), Op::HadamardQuant(op))?;
            down_coded = true;
        }
        _ if c.hadamard.down => push_hadamard(g, io.act, f, f, n, p("ffn_down_hadamard"))?,
        _ => {}
    }
    if let Some(t) = taps {
        push_gram(g, io.act, t.ffn_act, c.ffn_dim, n, p("gram_ffn_act"))?;
    }
    // The residual add in the down projection's epilogue.
    let down_job = (
        lw.w_down.clone(),
        io.x,
        OutLayout::accumulate(),
        p("ffn_down"),
    );
    linears(g, io.act, down_in, ActSite::DownIn, down_coded, &[down_job])?;
    Ok(())
}
