//! Quantized KV cache, write side: the step's keys and values go into an f16
//! window, and whole groups of tokens that have left the recent window are
//! quantized into the store. The read side is `ops::kv_attention`.
//!
//! # Segments
//! A KV head's positions fall into three segments (P = `pivot`, R =
//! `recent`, T = [`GROUP`] = 32 tokens):
//! - **pivot** `[0, P)`: f16, never quantized: rows written once by the
//!   host (IntactKV / PrefixQuant: the full-precision model's KV of the
//!   first tokens), then any attention-sink rows the sequence's first
//!   steps write (`kv_ring_write` puts positions below P at row `j`);
//!   prefill masks these rows causally like any other;
//! - **store** `[P, B)`: quantized, one row per position;
//! - **window** `[B, len)`: f16, the recent tokens, in a ring of `ring` rows.
//!
//! With `len` tokens in the cache the store ends at
//! `B(len) = P + T * floor(max(0, len - P - R) / T)`: at least R recent
//! tokens stay f16, and tokens move to the store a whole group of T at a
//! time (QJL picks outlier channels per group). A query at position `i`
//! sees the cache as it was right after token `i` was written, `B(i + 1)`,
//! whether it is decoded alone or scored inside a long prompt step: that is
//! what generation sees, so perplexity measures what a user gets.
//!
//! The window is a ring: position `j >= P` lives at row `P + (j - P) % ring`
//! of the window buffer, after the P pivot rows. A step of n tokens first
//! writes them to the ring (entry `kv_ring_write`), then quantizes the
//! groups `[B(pos), B(pos + n))` from the ring into the store (entry
//! `kv_flush`); attention then reads the window for keys at or past each
//! query's B. All of that fits when `ring >= n + R + T` ([`KvLayout::ring_for`]).
//!
//! # Formats (per token row of one KV head, u32 words)
//! - `f16`: `head_dim / 2` words, two f16 per word, low half first.
//! - `q8` / `q4` / `q2`: asymmetric integers per group of `qgroup` channels
//!   of one token: codes `c = clamp(round((x - min) / scale), 0, 2^b - 1)`
//!   with `scale = (max - min) / (2^b - 1)`, both rounded to f16 first,
//!   decoded as `min + scale * c`. Codes first (channel `c` at bit `(c * b) %
//!   32` of word `c * b / 32`, the last word padded), then one word per group: `pack2x16float(scale,
//!   min)`.
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
//!
//! Quantization reads the f16 window values, so the CPU references work on
//! f16-rounded inputs exactly as the shaders do.
//!
//! # Buffers
//! k, v: the step's rows, [max_rows, n_kv_heads, head_dim] f32 (k RoPE'd).
//! k_win, v_win: [n_kv_heads, pivot + ring, head_dim] f16; k_win then holds
//! S as f32 bits (qjl).
//! k_store: [n_kv_heads, max_ctx, k_words] u32, then
//! [n_kv_heads, ceil(max_ctx / T), aux_words] aux words (qjl, per-channel keys).
//! v_store: [n_kv_heads, max_ctx, v_words] u32.

use crate::graph::{Binding, Call, Graph, OpDef, PARAMS_BYTES, Step, TensorId};
pub use crate::ops::kv_write::round_f16;
use crate::ops::kv_write::step_rows;
use crate::ops::{check_bytes, grid1, write_params};
use crate::pipeline::Kernel;
use crate::{Caps, EngineError, Result, ensure_shape};

crate::shader!(
    SHADER,
    "kv_store",
    [crate::shader::lib::F16, crate::shader::lib::KVCACHE]
);

/// Tokens per flush group (and per QJL outlier group).
pub const GROUP: u32 = 32;
/// Most QJL outlier channels per group (one aux word of bytes).
pub const MAX_OUTLIERS: u32 = 4;

/// How one side (keys or values) of the quantized store holds a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvQuant {
    F16,
    Q8,
    Q4,
    Q2,
    /// Keys only: JL sign sketch.
    Qjl,
}

impl KvQuant {
    /// The shader's format id (KF / VF).
    pub fn id(self) -> u32 {
        match self {
            KvQuant::F16 => 0,
            KvQuant::Q8 => 1,
            KvQuant::Q4 => 2,
            KvQuant::Q2 => 3,
            KvQuant::Qjl => 4,
        }
    }
    /// Bits per code of the integer formats.
    pub fn bits(self) -> Option<u32> {
        match self {
            KvQuant::Q8 => Some(8),
            KvQuant::Q4 => Some(4),
            KvQuant::Q2 => Some(2),
            KvQuant::F16 | KvQuant::Qjl => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvQuant::F16 => "f16",
            KvQuant::Q8 => "q8",
            KvQuant::Q4 => "q4",
            KvQuant::Q2 => "q2",
            KvQuant::Qjl => "qjl",
        }
    }
}

/// The QJL sketch sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QjlShape {
    /// Sketch rows for the inlier part (bits per key); a multiple of 32.
    pub m: u32,
    /// Sketch rows for the outlier part; a multiple of 32, at most m.
    pub m_out: u32,
    /// Outlier channels per group, at most [`MAX_OUTLIERS`].
    pub outliers: u32,
    /// The outlier channels as 8-bit codes with per-channel scales over the
    /// token group instead of a second sketch (then `m_out` is 0).
    pub outlier_q8: bool,
}

/// Shape and formats of one layer's quantized cache (the same for all layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvLayout {
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub max_ctx: u32,
    /// Pivot positions `[0, pivot)`, f16, never quantized.
    pub pivot: u32,
    /// Fewest recent tokens kept in f16 (R).
    pub recent: u32,
    /// Window ring rows after the pivot rows.
    pub ring: u32,
    pub k: KvQuant,
    pub v: KvQuant,
    /// Channels per scale group of the integer formats (divides head_dim).
    pub qgroup: u32,
    /// Integer keys with one scale per channel over each token group
    /// (KIVI) instead of per token. Needs q8, q4 or q2 keys.
    pub k_channel: bool,
    pub qjl: QjlShape,
    /// Prompt steps attend to their own tokens in f16, from the window
    /// ring, not to the store the step's flush wrote them into (QJL's code
    /// attends exactly inside the prompt). Decode steps are unchanged.
    pub exact_prompt: bool,
}

impl KvLayout {
    /// The ring a graph with steps of up to `max_rows` tokens needs.
    pub fn ring_for(recent: u32, max_rows: u32) -> u32 {
        max_rows + recent + GROUP
    }

    /// u32 words of one row of format `f` (`channel`: codes only, the
    /// scales being per channel in the aux words).
    fn row_words(&self, f: KvQuant, channel: bool) -> u32 {
        let hd = self.head_dim;
        match f {
            KvQuant::F16 => hd / 2,
            KvQuant::Q8 | KvQuant::Q4 | KvQuant::Q2 => {
                let scales = if channel { 0 } else { hd / self.qgroup.max(1) };
                (hd * f.bits().unwrap_or(8)).div_ceil(32) + scales
            }
            KvQuant::Qjl => {
                self.qjl.m / 32 + self.qjl.m_out / 32 + 1 + u32::from(self.qjl.outlier_q8)
            }
        }
    }
    pub fn k_words(&self) -> u32 {
        self.row_words(self.k, self.k_channel)
    }
    pub fn v_words(&self) -> u32 {
        self.row_words(self.v, false)
    }
    /// Token groups per KV head.
    pub fn groups(&self) -> u32 {
        self.max_ctx.div_ceil(GROUP)
    }
    /// Aux words per token group of one KV head: QJL's outlier word, then
    /// (8-bit outliers) one `(scale, min)` word per outlier channel;
    /// per-channel integer keys: one `(scale, min)` word per channel.
    pub fn aux_words(&self) -> u32 {
        match self.k {
            KvQuant::Qjl if self.qjl.outlier_q8 => 1 + self.qjl.outliers,
            KvQuant::Qjl => 1,
            KvQuant::Q8 | KvQuant::Q4 | KvQuant::Q2 if self.k_channel => self.head_dim,
            _ => 0,
        }
    }
    /// Word offset of the aux words in k_store.
    pub fn aux_base(&self) -> u32 {
        self.n_kv_heads * self.max_ctx * self.k_words()
    }
    /// Word offset of the aux words of KV head `kvh`'s token group `g`.
    pub fn aux_at(&self, kvh: u32, g: u32) -> u32 {
        self.aux_base() + (kvh * self.groups() + g) * self.aux_words()
    }
    /// Word offset of S in k_win (after the window rows; a multiple of 4).
    pub fn sketch_base(&self) -> u32 {
        self.n_kv_heads * (self.pivot + self.ring) * self.head_dim / 2
    }
    /// Floats of S (0 unless keys are QJL).
    pub fn sketch_len(&self) -> u32 {
        if self.k == KvQuant::Qjl {
            self.head_dim * self.qjl.m
        } else {
            0
        }
    }
    pub fn k_store_bytes(&self) -> u64 {
        let aux = self.n_kv_heads * self.groups() * self.aux_words();
        4 * (u64::from(self.aux_base()) + u64::from(aux))
    }
    pub fn v_store_bytes(&self) -> u64 {
        4 * u64::from(self.n_kv_heads) * u64::from(self.max_ctx) * u64::from(self.v_words())
    }
    /// Bytes of one window buffer's rows (pivot rows + ring).
    pub fn window_bytes(&self) -> u64 {
        2 * u64::from(self.n_kv_heads)
            * u64::from(self.pivot + self.ring)
            * u64::from(self.head_dim)
    }
    /// Bytes of the key window buffer: its rows, then S.
    pub fn k_win_bytes(&self) -> u64 {
        self.window_bytes() + 4 * u64::from(self.sketch_len())
    }
    /// Bytes one stored token costs in this layer, keys and values, every
    /// scale, norm and outlier index included.
    pub fn store_bytes_per_token(&self) -> f64 {
        let aux = 4.0 * f64::from(self.aux_words()) / f64::from(GROUP);
        f64::from(self.n_kv_heads) * (4.0 * f64::from(self.k_words() + self.v_words()) + aux)
    }
    /// End of the store when `len` tokens are in the cache.
    pub fn boundary(&self, len: u32) -> u32 {
        let old = len.saturating_sub(self.pivot + self.recent);
        self.pivot + old / GROUP * GROUP
    }
    /// Window row of position `j`.
    pub fn window_row(&self, j: u32) -> u32 {
        if j < self.pivot {
            j
        } else {
            self.pivot + (j - self.pivot) % self.ring.max(1)
        }
    }

    pub fn check(&self, op: &'static str, max_rows: u32) -> Result<()> {
        let hd = self.head_dim;
        ensure_shape!(
            hd.is_multiple_of(8) && (8..=256).contains(&hd),
            op,
            "head_dim {hd} must be a multiple of 8 in 8..=256"
        );
        ensure_shape!(
            self.n_kv_heads > 0 && self.max_ctx > self.pivot,
            op,
            "n_kv_heads must be nonzero and max_ctx {} past the pivot {}",
            self.max_ctx,
            self.pivot
        );
        ensure_shape!(
            self.ring >= Self::ring_for(self.recent, max_rows)
                || self.ring >= self.max_ctx - self.pivot,
            op,
            "window ring of {} rows too small for steps of {max_rows} tokens and a recent window of {} \
             (needs {} rows, or every position past the pivot)",
            self.ring,
            self.recent,
            Self::ring_for(self.recent, max_rows)
        );
        if self.k.bits().is_some() || self.v.bits().is_some() {
            ensure_shape!(
                self.qgroup > 0 && self.qgroup.is_multiple_of(8) && hd.is_multiple_of(self.qgroup),
                op,
                "scale group {} must be a multiple of 8 dividing head_dim {hd}",
                self.qgroup
            );
        }
        ensure_shape!(
            !self.k_channel || self.k.bits().is_some(),
            op,
            "per-channel key scales need integer keys (q8, q4 or q2)"
        );
        if self.v == KvQuant::Qjl {
            return Err(EngineError::Shape {
                op,
                msg: "QJL is a key format; values need f16, q8, q4 or q2".into(),
            });
        }
        if self.k == KvQuant::Qjl {
            let s = self.qjl;
            ensure_shape!(
                s.m > 0
                    && s.m.is_multiple_of(32)
                    && s.m_out.is_multiple_of(32)
                    && s.m_out <= s.m
                    && s.outliers <= MAX_OUTLIERS
                    && s.outliers < hd
                    && if s.outlier_q8 {
                        s.m_out == 0
                    } else {
                        (s.outliers == 0) == (s.m_out == 0)
                    },
                op,
                "QJL sketch m {} / m_out {} / outliers {}: rows must be multiples of 32, m_out <= m, \
                 at most {MAX_OUTLIERS} outliers, and outlier rows exactly when outliers are sketched",
                s.m,
                s.m_out,
                s.outliers
            );
        }
        Ok(())
    }
}

/// One parameter block for the store and attention kernels (mirrored in
/// lib/kvcache.wgsl, which both shaders include).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct KvParams {
    pub n_tokens: u32,
    pub pos: u32,
    pub kv_len: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub max_ctx: u32,
    pub n_chunks: u32,
    pub chunk_len: u32,
    pub scale: f32,
    pub pivot: u32,
    pub ring: u32,
    pub recent: u32,
    /// Store: first position to flush (unused by attention).
    pub lo: u32,
    /// Store: end of the flush (unused by attention).
    pub hi: u32,
    pub aux_base: u32,
    pub sketch_base: u32,
    /// Attention: vec4 offset of the query sketches in scratch (unused by the store).
    pub qs_off: u32,
    pub _pad: [u32; 3],
}

impl KvParams {
    pub fn new(layout: &KvLayout, n_tokens: u32, pos: u32) -> Self {
        KvParams {
            n_tokens,
            pos,
            kv_len: pos + n_tokens,
            n_kv_heads: layout.n_kv_heads,
            max_ctx: layout.max_ctx,
            pivot: layout.pivot,
            ring: layout.ring,
            recent: layout.recent,
            aux_base: layout.aux_base(),
            sketch_base: layout.sketch_base(),
            ..Default::default()
        }
    }
}

/// The override constants both shaders take from a layout.
pub fn layout_constants(kernel: Kernel, l: &KvLayout) -> Kernel {
    kernel
        .with("HD", l.head_dim)
        .with("KF", l.k.id())
        .with("VF", l.v.id())
        .with("QG", l.qgroup.max(8))
        .with("KW", l.k_words())
        .with("VW", l.v_words())
        .with("M", l.qjl.m.max(32))
        .with("MO", l.qjl.m_out)
        .with("NOUT", l.qjl.outliers)
        .with("OQ8", u32::from(l.qjl.outlier_q8))
        .with("KCH", u32::from(l.k_channel))
        .with("AW", l.aux_words())
}

#[derive(Debug, Clone)]
pub struct KvStore {
    /// [max_rows, n_kv_heads, head_dim] f32.
    pub k: TensorId,
    pub v: TensorId,
    pub k_win: TensorId,
    pub v_win: TensorId,
    pub k_store: TensorId,
    pub v_store: TensorId,
    pub layout: KvLayout,
    pub max_rows: u32,
}

/// Workgroup size of both entries (mirrors kv_store.wgsl).
const WG: u32 = 64;

impl OpDef for KvStore {
    fn name(&self) -> &'static str {
        "kv_store"
    }
    fn check(&self, g: &Graph) -> Result<()> {
        const OP: &str = "kv_store";
        let l = &self.layout;
        l.check(OP, self.max_rows)?;
        let row = 4 * u64::from(l.n_kv_heads) * u64::from(l.head_dim) * u64::from(self.max_rows);
        check_bytes(g, OP, "k", self.k, row)?;
        check_bytes(g, OP, "v", self.v, row)?;
        check_bytes(g, OP, "k_win", self.k_win, l.k_win_bytes())?;
        check_bytes(g, OP, "v_win", self.v_win, l.window_bytes())?;
        check_bytes(g, OP, "k_store", self.k_store, l.k_store_bytes())?;
        check_bytes(g, OP, "v_store", self.v_store, l.v_store_bytes())
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        let bindings = vec![
            Binding::read(self.k),
            Binding::read(self.v),
            Binding::write(self.k_win),
            Binding::write(self.v_win),
            Binding::write(self.k_store),
            Binding::write(self.v_store),
        ];
        ["kv_ring_write", "kv_flush"]
            .into_iter()
            .map(|entry| Call {
                kernel: layout_constants(Kernel::new(&SHADER, entry), &self.layout),
                bindings: bindings.clone(),
            })
            .collect()
    }
    fn step(&self, call: usize, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let l = &self.layout;
        let n = step_rows(step, self.max_rows, l.max_ctx);
        let mut p = KvParams::new(l, n, step.pos);
        p.lo = l.boundary(step.pos);
        p.hi = l.boundary(step.pos + n);
        write_params(params, &p);
        let invocations = if call == 0 {
            n * l.n_kv_heads * l.head_dim / 2
        } else {
            (p.hi - p.lo) * l.n_kv_heads
        };
        grid1(invocations.div_ceil(WG))
    }
}

/// CPU reference of an integer row: quantizes `x` (head_dim values, already
/// f16-rounded) to `bits` with groups of `qgroup` channels; returns the
/// row's words (codes, then scale words).
pub fn quantize_row(x: &[f32], bits: u32, qgroup: usize) -> Vec<u32> {
    let hd = x.len();
    let levels = ((1u32 << bits) - 1) as f32;
    let mut codes = vec![0u32; (hd * bits as usize).div_ceil(32)];
    let mut scales = Vec::with_capacity(hd / qgroup);
    for (gi, g) in x.chunks(qgroup).enumerate() {
        let mn = g.iter().copied().fold(f32::INFINITY, f32::min);
        let mx = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s16 = round_f16((mx - mn) / levels);
        let m16 = round_f16(mn);
        scales.push(scale_word(s16, m16));
        let inv = if s16 > 0.0 { 1.0 / s16 } else { 0.0 };
        for (i, &v) in g.iter().enumerate() {
            let c = gi * qgroup + i;
            let q = ((v - m16) * inv).round_ties_even().clamp(0.0, levels) as u32;
            let bit = c * bits as usize;
            codes[bit / 32] |= q << (bit % 32);
        }
    }
    codes.extend(scales);
    codes
}

/// CPU reference of per-channel integer keys (`k_channel`): quantizes a
/// token group (`rows`, each `head_dim` f16-rounded values) with one
/// `(scale, min)` per channel over the group; returns each row's code words
/// and the group's `head_dim` scale words (its aux words).
pub fn quantize_channels(rows: &[Vec<f32>], bits: u32) -> (Vec<Vec<u32>>, Vec<u32>) {
    let hd = rows.first().map_or(0, Vec::len);
    let levels = ((1u32 << bits) - 1) as f32;
    let mut aux = Vec::with_capacity(hd);
    let mut sm = Vec::with_capacity(hd);
    for c in 0..hd {
        let mn = rows.iter().map(|r| r[c]).fold(f32::INFINITY, f32::min);
        let mx = rows.iter().map(|r| r[c]).fold(f32::NEG_INFINITY, f32::max);
        let (s16, m16) = (round_f16((mx - mn) / levels), round_f16(mn));
        aux.push(scale_word(s16, m16));
        sm.push((s16, m16));
    }
    let codes = rows
        .iter()
        .map(|r| {
            let mut w = vec![0u32; (hd * bits as usize).div_ceil(32)];
            for (c, (&v, &(s, m))) in r.iter().zip(&sm).enumerate() {
                let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                let q = ((v - m) * inv).round_ties_even().clamp(0.0, levels) as u32;
                let bit = c * bits as usize;
                w[bit / 32] |= q << (bit % 32);
            }
            w
        })
        .collect();
    (codes, aux)
}

/// Decodes a per-channel integer key row against its group's aux words.
pub fn dequantize_channels(codes: &[u32], aux: &[u32], bits: u32) -> Vec<f32> {
    let mask = (1u32 << bits) - 1;
    aux.iter()
        .enumerate()
        .map(|(c, &sw)| {
            let bit = c * bits as usize;
            let q = (codes[bit / 32] >> (bit % 32)) & mask;
            let [s, m] = unpack_f16x2(sw);
            m + s * q as f32
        })
        .collect()
}

/// `pack2x16float(scale, min)` of f16-exact values.
fn scale_word(s: f32, m: f32) -> u32 {
    u32::from(half::f16::from_f32(s).to_bits())
        | (u32::from(half::f16::from_f32(m).to_bits()) << 16)
}

/// `unpack2x16float`.
pub fn unpack_f16x2(w: u32) -> [f32; 2] {
    [
        half::f16::from_bits(w as u16).to_f32(),
        half::f16::from_bits((w >> 16) as u16).to_f32(),
    ]
}

/// Decodes an integer row of `head_dim` values.
pub fn dequantize_row(words: &[u32], bits: u32, qgroup: usize, head_dim: usize) -> Vec<f32> {
    let code_words = (head_dim * bits as usize).div_ceil(32);
    let mask = (1u32 << bits) - 1;
    (0..head_dim)
        .map(|c| {
            let bit = c * bits as usize;
            let q = (words[bit / 32] >> (bit % 32)) & mask;
            let [s, m] = unpack_f16x2(words[code_words + c / qgroup]);
            m + s * q as f32
        })
        .collect()
}

/// Decodes an f16 row.
pub fn f16_row(words: &[u32]) -> Vec<f32> {
    words.iter().flat_map(|w| unpack_f16x2(*w)).collect()
}

/// Encodes an f16 row (values saturated and rounded to nearest even).
pub fn f16_words(x: &[f32]) -> Vec<u32> {
    x.chunks_exact(2)
        .map(|p| {
            u32::from(half::f16::from_f32(round_f16(p[0])).to_bits())
                | (u32::from(half::f16::from_f32(round_f16(p[1])).to_bits()) << 16)
        })
        .collect()
}
