//! The forward graph: [`build_graph`] for a whole model and
//! [`push_layer`], the one place a transformer block is built (the
//! quantizer's calibration graphs use it too).

use lamina_engine::graph::{Graph, Op, TensorId};
use lamina_engine::kv::KvLayout;
use lamina_engine::mmout::{OutLayout, part_offsets};
use lamina_engine::ops::matmul::MatVecIn;
use lamina_engine::ops::{
    act_quant, add, embedding, gram, hadamard, kv_f16_attention, kv_f16_write, kv_quant_attention,
    kv_quant_store, matmul, matmul_int, rmsnorm, rmsnorm_quant, rope, sample, swiglu,
};
use lamina_engine::weight::GpuWeight;
use lamina_engine::{Tensor, WeightRef};

use super::{GpuLayer, GpuModel, Linears};
use crate::checkpoint::ActSite;
use crate::kv_cache::LayerCache;
use crate::{LlamaConfig, ModelError, Result, RopeStyle};

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

fn external(g: &mut Graph, name: &str, t: &Tensor) -> TensorId {
    g.external(name, t.clone())
}

/// Builds the forward graph for steps of up to `max_tokens` tokens.
pub fn build_graph(m: &GpuModel, max_tokens: u32, head: Head) -> Result<(Graph, GraphIo)> {
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
    let scratch_bytes = m
        .kv
        .layers
        .iter()
        .map(|l| match l {
            LayerCache::F16 { .. } => kv_f16_attention::scratch_bytes(nh, hd, max_ctx, n),
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
        let kv = match &m.kv.layers[l] {
            LayerCache::F16 { k, v } => LayerKv::F16 {
                k_cache: external(&mut g, &format!("blk.{l}.k_cache"), k),
                v_cache: external(&mut g, &format!("blk.{l}.v_cache"), v),
            },
            LayerCache::Quant {
                k_win,
                v_win,
                k_store,
                v_store,
                layout,
            } => LayerKv::Quant {
                k_win: external(&mut g, &format!("blk.{l}.k_win"), k_win),
                v_win: external(&mut g, &format!("blk.{l}.v_win"), v_win),
                k_store: external(&mut g, &format!("blk.{l}.k_store"), k_store),
                v_store: external(&mut g, &format!("blk.{l}.v_store"), v_store),
                layout: *layout,
            },
        };
        push_layer(&mut g, c, l, lw, &io, &kv, max_ctx, n, None)?;
    }

    let w = external(&mut g, "output_norm", &m.output_norm);
    let lm_w = m.lm_head();
    // The final norm folded into the lm_head's mat-vec where its kernels
    // can; a pass of its own where the tiled kernel reads it (all logits of
    // a several-token step).
    let last_only = head == Head::Sample;
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
    let io = match head {
        Head::AllLogits => {
            let logits = g.output("logits", 4 * vocab * u64::from(n));
            g.push(
                "output",
                Op::MatMul(matmul::MatMul {
                    x: h,
                    w: lm,
                    out: logits,
                    out_layout: Default::default(),
                    matvec_in,
                    max_rows: n,
                    last_row_only: false,
                }),
            )?;
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
    Ok((g, io))
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

/// One layer's KV cache tensors in a graph.
#[derive(Debug, Clone, Copy)]
pub enum LayerKv {
    /// `[n_kv_heads, max_ctx, head_dim]` f16 each (ops kv_f16_write + kv_f16_attention).
    F16 {
        k_cache: TensorId,
        v_cache: TensorId,
    },
    /// Window and store (ops kv_quant_store + kv_quant_attention).
    Quant {
        k_win: TensorId,
        v_win: TensorId,
        k_store: TensorId,
        v_store: TensorId,
        layout: KvLayout,
    },
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

/// An intermediate that one matmul over concatenated weights writes in
/// parts (`lamina_engine::mmout`), and a view of each part: `[n, width]` f32
/// each, named as given.
pub fn parts_tensor<const P: usize>(
    g: &mut Graph,
    name: &str,
    parts: [(&str, usize); P],
    n: u32,
) -> Result<(TensorId, [TensorId; P])> {
    let rows: Vec<u32> = parts.iter().map(|&(_, w)| w as u32).collect();
    let bytes = OutLayout::parts(&rows).bytes(rows.iter().sum(), n);
    let all = g.intermediate(name, bytes);
    let offsets = part_offsets(&rows, n);
    let mut views = [all; P];
    for (i, (&(part, w), off)) in parts.iter().zip(offsets).enumerate() {
        views[i] = g.view(part, all, off, 4 * w as u64 * u64::from(n))?;
    }
    Ok((all, views))
}

/// `out = RMSNorm(x) * w`.
fn push_norm(
    g: &mut Graph,
    c: &LlamaConfig,
    x: TensorId,
    weight: TensorId,
    out: TensorId,
    n: u32,
    label: String,
) -> Result<()> {
    let op = rmsnorm::RmsNorm {
        x,
        weight,
        out,
        dim: c.dim as u32,
        eps: c.norm_eps,
        max_rows: n,
    };
    g.push(label, Op::RmsNorm(op))?;
    Ok(())
}

/// `x <- H x` on each `chunk`-wide piece of x's `width`-wide rows.
fn push_hadamard(
    g: &mut Graph,
    x: TensorId,
    chunk: u32,
    width: u32,
    n: u32,
    label: String,
) -> Result<()> {
    let op = hadamard::Hadamard {
        x,
        n: chunk,
        width,
        max_rows: n,
        transposed: false,
    };
    g.push(label, Op::Hadamard(op))?;
    Ok(())
}

fn push_gram(
    g: &mut Graph,
    x: TensorId,
    out: TensorId,
    dim: usize,
    n: u32,
    label: String,
) -> Result<()> {
    g.push(
        label,
        Op::Gram(gram::Gram {
            x,
            out,
            dim: dim as u32,
            max_rows: n,
        }),
    )?;
    Ok(())
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
    kv: &LayerKv,
    max_ctx: u32,
    n: u32,
    taps: Option<&GramTaps>,
) -> Result<()> {
    let (hd, nh, nkv) = (c.head_dim as u32, c.n_heads as u32, c.n_kv_heads as u32);
    let style = match c.rope_style {
        RopeStyle::Interleaved => rope::RopeStyle::Interleaved,
        RopeStyle::Neox => rope::RopeStyle::Neox,
    };
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
    // A rotated model's online Hadamard on each query and key head: fused
    // into RoPE where the head is a power of two, else a dispatch of its own.
    // RoPE on the queries and the keys in one dispatch.
    let fused = hd.is_power_of_two() && hd <= rope::HADAMARD_MAX_DIM;
    let r = rope::Rope {
        q: io.q,
        n_heads: nh,
        k: io.k,
        n_kv_heads: nkv,
        head_dim: hd,
        theta: c.rope_theta,
        style,
        max_rows: n,
        freq_factors: io.rope_factors,
    };
    // With the f16 cache (and no Hadamard), RoPE and the cache write are one
    // dispatch (rope::RopeKvF16).
    let rope_kv = match *kv {
        LayerKv::F16 { k_cache, v_cache } if !c.hadamard.qk && hd.is_multiple_of(4) => {
            Some((k_cache, v_cache))
        }
        _ => None,
    };
    if let Some((k_cache, v_cache)) = rope_kv {
        let op = rope::RopeKvF16 {
            rope: r,
            v: io.v,
            k_cache,
            v_cache,
            max_ctx,
        };
        g.push(p("rope_kv"), Op::RopeKvF16(op))?;
    } else if c.hadamard.qk && fused {
        g.push(p("rope"), Op::RopeHadamard(rope::RopeHadamard { rope: r }))?;
    } else {
        g.push(p("rope"), Op::Rope(r))?;
        if c.hadamard.qk {
            for (t, heads, name) in [(io.q, nh, "q"), (io.k, nkv, "k")] {
                push_hadamard(g, t, hd, heads * hd, n, p(&format!("rope_{name}_hadamard")))?;
            }
        }
    }
    let scale = 1.0 / (hd as f32).sqrt();
    match *kv {
        LayerKv::F16 { k_cache, v_cache } => {
            if rope_kv.is_none() {
                g.push(
                    p("kv_f16_write"),
                    Op::KvF16Write(kv_f16_write::KvF16Write {
                        k: io.k,
                        v: io.v,
                        k_cache,
                        v_cache,
                        n_kv_heads: nkv,
                        head_dim: hd,
                        max_ctx,
                        max_rows: n,
                    }),
                )?;
            }
            g.push(
                p("attn"),
                Op::KvF16Attention(kv_f16_attention::KvF16Attention {
                    q: io.q,
                    k_cache,
                    v_cache,
                    out: io.att,
                    scratch: io.att_scratch,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    max_ctx,
                    max_rows: n,
                    scale,
                }),
            )?;
        }
        LayerKv::Quant {
            k_win,
            v_win,
            k_store,
            v_store,
            layout,
        } => {
            let Some(scratch) = io.att_scratch else {
                return Err(ModelError::Invalid(
                    "attention over a quantized KV cache needs a scratch tensor".into(),
                ));
            };
            g.push(
                p("kv_quant_store"),
                Op::KvQuantStore(kv_quant_store::KvQuantStore {
                    k: io.k,
                    v: io.v,
                    k_win,
                    v_win,
                    k_store,
                    v_store,
                    layout,
                    max_rows: n,
                }),
            )?;
            g.push(
                p("attn"),
                Op::KvQuantAttention(kv_quant_attention::KvQuantAttention {
                    q: io.q,
                    k_win,
                    v_win,
                    k_store,
                    v_store,
                    out: io.att,
                    scratch,
                    layout,
                    n_heads: nh,
                    max_rows: n,
                    scale,
                }),
            )?;
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
