//! The KV caches' contract: what the ops that write a cache and the ops
//! that read it share, and what model/ needs to size, fill and check them.
//!
//! - The f16 cache (ops `kv_f16_write` + `kv_f16_attention`):
//!   [`cache_bytes`] and its layout `[n_kv_heads, max_ctx, head_dim]` f16.
//! - The quantized cache (ops `kv_quant_store` + `kv_quant_attention`):
//!   segments, formats and their ids ([`KvQuant`]), the buffers' layout
//!   ([`KvLayout`]), the override constants both shaders take from it
//!   ([`KvOverride`], declared in shaders/lib/kvcache.wgsl) and the part of
//!   their parameter blocks that addresses the cache ([`KvCacheParams`]).
//! - Both attention ops: the split-KV decode ([`decode_split`], the
//!   scratch records of lib/softmax4.wgsl).
//! - Host helpers: f16 rows as the shaders store them and the CPU
//!   quantizers and decoders of the integer formats (`host.rs`).
//!
//! # Segments
//! A KV head's positions fall into three segments (P = `pivot`, R =
//! `recent`, T = [`GROUP`] = 32 tokens):
//! - **pivot** `[0, P)`: f16, never quantized: rows written once by the
//!   host (IntactKV / PrefixQuant: the full-precision model's KV of the
//!   first tokens), then any attention-sink rows the sequence's first
//!   steps write (the store's ring write puts positions below P at row `j`);
//!   prefill masks these rows causally like any other;
//! - **store** `[P, B)`: quantized, one row per position;
//! - **window** `[B, len)`: f16, the recent tokens, in a ring of `ring` rows.
//!
//! With `len` tokens in the cache the store ends at
//! `B(len) = P + T * floor(max(0, len - P - R) / T)`: at least R recent
//! tokens stay f16, and tokens move to the store a whole group of T at a
//! time (QJL picks outlier channels per group; with static scales T is 1,
//! [`KvLayout::granule`]). A query at position `i`
//! sees the cache as it was right after token `i` was written, `B(i + 1)`,
//! whether it is decoded alone or scored inside a long prompt step: that is
//! what generation sees, so perplexity measures what a user gets.
//!
//! The window is a ring: position `j >= P` lives at row `P + (j - P) % ring`
//! of the window buffer, after the P pivot rows. A step of n tokens first
//! writes them to the ring (`ops::kv_quant_store`, entry `kv_ring_write`),
//! then quantizes the groups `[B(pos), B(pos + n))` from the ring into the
//! store (entry `kv_flush`); attention (`ops::kv_quant_attention`) then
//! reads the window for keys at or past each query's B. All of that fits
//! when `ring >= n + R + T` ([`KvLayout::ring_for`]).
//!
//! # Formats (per token row of one KV head, u32 words; ids: [`KvQuant::id`])
//! - `f16`: `head_dim / 2` words, two f16 per word, low half first.
//! - `q8` / `q4` / `q2`: asymmetric integers per group of `qgroup` channels
//!   of one token: codes `c = clamp(round((x - min) / scale), 0, 2^b - 1)`
//!   with `scale = (max - min) / (2^b - 1)`, both rounded to f16 first,
//!   decoded as `min + scale * c`. Codes first (channel `c` at bit `(c * b) %
//!   32` of word `c * b / 32`, the last word padded), then one word per
//!   group: `pack2x16float(scale, min)`.
//! - Keys per channel (`k_channel`, KIVI): the integer formats take one
//!   `(scale, min)` per channel over each token group of T instead, so a
//!   key row is codes only, and the group's `head_dim` scale words are its
//!   aux words. A few large channels then set only their own scales.
//! - `qjl` (keys only): `m / 32` words of sign bits of `S k_in`, `m_out / 32`
//!   words of sign bits of the first `m_out` rows of `S k_out`, and one word
//!   `pack2x16float(|k_in|, |k_out|)`, where `k_out` keeps the `outliers`
//!   channels with the largest norm over the token's group of T (their
//!   indices, one byte each, in the `aux` words after the rows) and `k_in` the
//!   rest; `S` is `[head_dim, m]` f32, stored after the key window's rows
//!   (16-byte aligned, so attention reads it 4 floats per load). See
//!   `lamina_model::quant::qjl` (the CPU reference) for the estimator.
//!   With `outlier_q8` the outlier channels are not sketched: each row
//!   holds one more word, the outliers' 8-bit codes (a byte each, in the
//!   order of the aux indices), against one `(scale, min)` per outlier
//!   channel over the group (aux words after the index word); `m_out` is 0.
//! - Static scales (`static_scales`, PrefixQuant's KV4): integer keys and
//!   values whose `(scale, min)` is one per KV head, fixed at quantize time
//!   (symmetric: `min = -2^(b-1) scale`, [`static_word`]), or for keys
//!   with `k_channel` one per channel of each head (asymmetric,
//!   [`affine_word`]); rows are codes only and the head's words sit after
//!   each store's rows (k: after the aux words, of which it has none). Tokens enter the store one at a time (the granule is 1, not
//!   T), so with `recent = 0` every position past the pivot is quantized
//!   before any query reads it.
//!
//! Quantization reads the f16 window values, so the CPU references work on
//! f16-rounded inputs exactly as the shaders do.
//!
//! # Buffers
//! k, v: the step's rows, [max_rows, n_kv_heads, head_dim] f32 (k RoPE'd).
//! k_win, v_win: [n_kv_heads, pivot + ring, head_dim] f16; k_win then holds
//! S as f32 bits (qjl).
//! k_store: [n_kv_heads, max_ctx, k_words] u32, then
//! [n_kv_heads, ceil(max_ctx / T), aux_words] aux words (qjl, per-channel keys),
//! then [n_kv_heads] static words (static scales).
//! v_store: [n_kv_heads, max_ctx, v_words] u32, then [n_kv_heads] static words.

mod format;
mod host;
mod layout;

pub use format::{GROUP, KvQuant, MAX_OUTLIERS, QjlShape};

pub use host::{
    F16_MAX, affine_word, decode_row, dequantize_channels, dequantize_row, encode_row, f16_row,
    f16_words, quantize_channels, quantize_row, round_f16, static_word, unpack_f16x2,
};
pub use layout::{KvCacheParams, KvLayout, KvOverride};

use crate::dispatch::{Step, grid1};

/// Bytes of one layer's f16 K (or V) cache: `n_kv_heads * max_ctx * head_dim` f16.
pub fn cache_bytes(n_kv_heads: u32, head_dim: u32, max_ctx: u32) -> u64 {
    2 * u64::from(n_kv_heads) * u64::from(max_ctx) * u64::from(head_dim)
}

/// Rows of a step that fit in a cache of `max_ctx` positions.
pub fn step_rows(step: &Step, max_rows: u32, max_ctx: u32) -> u32 {
    step.n_tokens
        .min(max_rows)
        .min(max_ctx.saturating_sub(step.pos))
}

/// Most sequences one call of the f16 cache's ops serves ([`Seqs`];
/// `MAX_SEQS` in kv_f16_attention.wgsl and rope_kv_f16.wgsl).
pub const MAX_SEQS: usize = 8;

/// Several sequences' one-token decode in one call of the f16 cache's ops
/// (`ops::kv_f16_attention`, `ops::rope::RopeKvF16`;
/// [`crate::graph::Graph::push_seqs`]): q, k, v and the attention output
/// hold one row per sequence; the bound caches hold `n` slots, one per
/// sequence, each of [`cache_bytes`] at `slot_bytes` from the last (forks'
/// caches laid out in one buffer). Sequence i writes and attends to its own
/// slot at its own step's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seqs {
    pub n: u32,
    pub slot_bytes: u64,
}

/// Bytes a cache binding spans: one cache of `one` bytes, or with `seqs`
/// every slot (the last one whole).
pub fn slots_bytes(seqs: Option<Seqs>, one: u64) -> u64 {
    seqs.map_or(one, |s| {
        u64::from(s.n.saturating_sub(1)) * s.slot_bytes + one
    })
}

/// Keys per block of both attention shaders (KB in lib/softmax4.wgsl), and
/// the fewest keys one decode invocation takes.
pub const BLOCK: u32 = 32;
/// Most ranges one decode step is cut into, per query head. Bounds the
/// scratch tensor and the combine; 256 ranges keep a GPU busy at long
/// contexts even with few KV heads, and up to 8192 keys each range is one
/// block, so nothing is read back and rescaled.
pub const MAX_DECODE_CHUNKS: u32 = 256;

/// How a split-KV decode step over `kv_len` keys is cut: (ranges, keys per range).
pub fn decode_split(kv_len: u32) -> (u32, u32) {
    let chunk_len = kv_len
        .div_ceil(MAX_DECODE_CHUNKS)
        .next_multiple_of(BLOCK)
        .max(BLOCK);
    (kv_len.div_ceil(chunk_len).max(1), chunk_len)
}

/// Bytes of the split-KV decode records, `(m, l, 0, 0, acc[head_dim])` f32
/// per query head and range: `n_heads * min(ceil(max_ctx / 32), 256) *
/// (head_dim + 4) * 4`.
pub fn decode_records_bytes(n_heads: u32, head_dim: u32, max_ctx: u32) -> u64 {
    let chunks = max_ctx.div_ceil(BLOCK).clamp(1, MAX_DECODE_CHUNKS);
    4 * u64::from(n_heads) * u64::from(chunks) * (u64::from(head_dim) + 4)
}

/// Invocations per workgroup of both attention shaders (`WG` in each).
pub const ATTENTION_WG: u32 = 64;
/// Query rows (prefill) or heads (decode) one attention invocation takes:
/// the width of lib/softmax4.wgsl's `mat4x4` blocks.
pub const ATTENTION_ROWS: u32 = 4;

/// Workgroups of either attention op's split-KV decode pass: `n_chunks`
/// key ranges per KV head, each invocation taking up to 4 heads of its
/// GQA group of `group`.
pub fn decode_grid(n_chunks: u32, n_kv_heads: u32, group: u32) -> [u32; 3] {
    grid1(n_chunks.div_ceil(ATTENTION_WG) * n_kv_heads * group.div_ceil(ATTENTION_ROWS))
}

/// Workgroups of either attention op's prefill pass over `n_tokens`: 4
/// query rows (token, head of a GQA group of `group`) per invocation.
pub fn prefill_grid(n_tokens: u32, n_kv_heads: u32, group: u32) -> [u32; 3] {
    grid1((n_tokens * group).div_ceil(ATTENTION_ROWS * ATTENTION_WG) * n_kv_heads)
}
