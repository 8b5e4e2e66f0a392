//! One sequence's attention block of a layer: RoPE, the KV cache write and
//! causal GQA attention over that sequence's cache (the f16 cache's fused
//! RoPE + write where it applies). A graph over several sequences pushes
//! it once per sequence, each with its own step ([`Graph::push_seq`]);
//! where their f16 caches are slots of one buffer ([`KvSlots`]), RoPE with
//! the cache write and attention are one node each for all of them
//! ([`push_attention_seqs`], [`Graph::push_seqs`]).

use lamina_engine::graph::{Graph, Op, TensorId};
use lamina_engine::ops::{
    hadamard, kv_f16_attention, kv_f16_write, kv_quant_attention, kv_quant_store, rope,
};

use lamina_engine::kv::KvLayout;

use crate::{LlamaConfig, ModelError, Result, RopeStyle};

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

/// Several sequences' f16 caches of one layer, each as one tensor over all
/// their slots (forks made by `GpuModel::forks`: `KvCache::replicate`).
#[derive(Debug, Clone, Copy)]
pub struct KvSlots {
    pub k_caches: TensorId,
    pub v_caches: TensorId,
    pub seqs: kv_f16_attention::Seqs,
}

/// One sequence's rows of q, k, v and the attention output.
pub struct AttRows {
    pub q: TensorId,
    pub k: TensorId,
    pub v: TensorId,
    pub att: TensorId,
}

/// RoPE, the cache write and causal GQA attention of layer `l` for `n`
/// rows of one sequence over its cache `kv`; with `seq`, as that
/// sequence's nodes of a several-sequence graph ([`Graph::push_seq`]).
#[allow(clippy::too_many_arguments)]
pub fn push_attention(
    g: &mut Graph,
    c: &LlamaConfig,
    l: usize,
    io: &AttRows,
    rope_factors: Option<TensorId>,
    att_scratch: Option<TensorId>,
    kv: &LayerKv,
    max_ctx: u32,
    n: u32,
    seq: Option<usize>,
) -> Result<()> {
    let (hd, nh, nkv) = (c.head_dim as u32, c.n_heads as u32, c.n_kv_heads as u32);
    let p = |s: &str| match seq {
        Some(q) => format!("blk.{l}.{s}.{q}"),
        None => format!("blk.{l}.{s}"),
    };
    let push = |g: &mut Graph, label: String, op: Op| match seq {
        Some(q) => g.push_seq(q, label, op),
        None => g.push(label, op),
    };
    // A rotated model's online Hadamard on each query and key head: fused
    // into RoPE where the head is a power of two, else a dispatch of its own.
    // RoPE on the queries and the keys in one dispatch.
    let fused = hd.is_power_of_two() && hd <= rope::HADAMARD_MAX_DIM;
    let r = rope_op(c, io, rope_factors, n);
    let rope_kv = match *kv {
        LayerKv::F16 { k_cache, v_cache } if fuses_rope_kv(c) => Some((k_cache, v_cache)),
        _ => None,
    };
    if let Some((k_cache, v_cache)) = rope_kv {
        let op = rope::RopeKvF16 {
            rope: r,
            v: io.v,
            k_cache,
            v_cache,
            max_ctx,
            seqs: None,
        };
        push(g, p("rope_kv"), Op::RopeKvF16(op))?;
    } else if c.hadamard.qk && fused {
        push(
            g,
            p("rope"),
            Op::RopeHadamard(rope::RopeHadamard { rope: r }),
        )?;
    } else {
        push(g, p("rope"), Op::Rope(r))?;
        if c.hadamard.qk {
            for (t, heads, name) in [(io.q, nh, "q"), (io.k, nkv, "k")] {
                let op = hadamard::Hadamard {
                    x: t,
                    n: hd,
                    width: heads * hd,
                    max_rows: n,
                    transposed: false,
                };
                push(g, p(&format!("rope_{name}_hadamard")), Op::Hadamard(op))?;
            }
        }
    }
    let scale = 1.0 / (hd as f32).sqrt();
    match *kv {
        LayerKv::F16 { k_cache, v_cache } => {
            if rope_kv.is_none() {
                push(
                    g,
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
            let op = f16_attention(c, io.q, io.att, att_scratch, k_cache, v_cache, max_ctx);
            let op = kv_f16_attention::KvF16Attention { max_rows: n, ..op };
            push(g, p("attn"), Op::KvF16Attention(op))?;
        }
        LayerKv::Quant {
            k_win,
            v_win,
            k_store,
            v_store,
            layout,
        } => {
            let Some(scratch) = att_scratch else {
                return Err(ModelError::Invalid(
                    "attention over a quantized KV cache needs a scratch tensor".into(),
                ));
            };
            push(
                g,
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
            push(
                g,
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
    Ok(())
}

/// With the f16 cache (and no Hadamard), RoPE and the cache write are one
/// dispatch (rope::RopeKvF16); several sequences' cache slots need it
/// ([`push_attention_seqs`]).
pub fn fuses_rope_kv(c: &LlamaConfig) -> bool {
    !c.hadamard.qk && c.head_dim.is_multiple_of(4)
}

/// Layer `l`'s attention block for one row per sequence of a
/// several-sequence graph whose f16 caches are `slots` (rows `io`, one per
/// sequence), each sequence over its own slot at its own position: RoPE
/// and the cache write of every row in one node, then attention in one
/// node. The model must fuse RoPE and the write ([`fuses_rope_kv`]).
#[allow(clippy::too_many_arguments)]
pub fn push_attention_seqs(
    g: &mut Graph,
    c: &LlamaConfig,
    l: usize,
    io: &AttRows,
    rope_factors: Option<TensorId>,
    att_scratch: Option<TensorId>,
    slots: &KvSlots,
    max_ctx: u32,
) -> Result<()> {
    let n = slots.seqs.n;
    let op = rope::RopeKvF16 {
        rope: rope_op(c, io, rope_factors, n),
        v: io.v,
        k_cache: slots.k_caches,
        v_cache: slots.v_caches,
        max_ctx,
        seqs: Some(slots.seqs),
    };
    g.push_seqs(n as usize, format!("blk.{l}.rope_kv"), Op::RopeKvF16(op))?;
    let op = f16_attention(
        c,
        io.q,
        io.att,
        att_scratch,
        slots.k_caches,
        slots.v_caches,
        max_ctx,
    );
    let op = kv_f16_attention::KvF16Attention {
        max_rows: n,
        seqs: Some(slots.seqs),
        ..op
    };
    g.push_seqs(n as usize, format!("blk.{l}.attn"), Op::KvF16Attention(op))?;
    Ok(())
}

/// RoPE of `n` rows of `io`'s queries and keys.
fn rope_op(c: &LlamaConfig, io: &AttRows, rope_factors: Option<TensorId>, n: u32) -> rope::Rope {
    rope::Rope {
        q: io.q,
        n_heads: c.n_heads as u32,
        k: io.k,
        n_kv_heads: c.n_kv_heads as u32,
        head_dim: c.head_dim as u32,
        theta: c.rope_theta,
        style: match c.rope_style {
            RopeStyle::Interleaved => rope::RopeStyle::Interleaved,
            RopeStyle::Neox => rope::RopeStyle::Neox,
        },
        max_rows: n,
        freq_factors: rope_factors,
    }
}

/// The f16 cache's attention op for one row (callers set rows and sequences).
fn f16_attention(
    c: &LlamaConfig,
    q: TensorId,
    out: TensorId,
    scratch: Option<TensorId>,
    k_cache: TensorId,
    v_cache: TensorId,
    max_ctx: u32,
) -> kv_f16_attention::KvF16Attention {
    let hd = c.head_dim as u32;
    kv_f16_attention::KvF16Attention {
        q,
        k_cache,
        v_cache,
        out,
        scratch,
        n_heads: c.n_heads as u32,
        n_kv_heads: c.n_kv_heads as u32,
        head_dim: hd,
        max_ctx,
        max_rows: 1,
        scale: 1.0 / (hd as f32).sqrt(),
        seqs: None,
    }
}
