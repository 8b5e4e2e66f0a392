//! Causal GQA attention over the quantized KV cache, fused: keys and values
//! are decoded (or, for QJL keys, scored) in place, and scores never reach
//! memory. Segments, formats and layouts: `kv` (`engine/src/kv/mod.rs`),
//! which this op shares with its write side, `ops::kv_quant_store`.
//!
//! A query at position `i` (head `h`, KV head `g`) attends to the pivot
//! `[0, P)`, the store `[P, B(i + 1))` and the window `[B(i + 1), i]`, each in
//! its own format: the cache exactly as generation saw it right after token
//! `i` was written. With `k~` the decoded key (or, for QJL, the estimate below
//! standing in for `q . k`) and `v~` the decoded value:
//!
//! `out[i, h] = sum_j softmax_j(scale * q[i, h] . k~[g, j]) v~[g, j]`
//!
//! QJL keys (Zandieh et al. 2024, and the score kernel of their code): with
//! `S` the `[head_dim, m]` sketch and `O` the outlier channels of the key's
//! token group, `q . k~ = sqrt(pi/2)/m |k_in| <S q_in, sign(S k_in)> +
//! sqrt(pi/2)/m_out |k_out| <S_o q_out, sign(S_o k_out)>`, where `S q_in =
//! S q - S q_out`, `S q_out` sums the outlier channels' rows of S, and `S_o`
//! is the first `m_out` rows. `S q` is computed once per query row per step
//! (pass `QjlPrep`, entry `kv_qjl_prep`, into scratch); the outlier terms
//! per block of 32 keys, which is one token group.
//!
//! Paths as in `ops::kv_f16_attention` (same blocks: lib/softmax4.wgsl):
//! prefill (pass `Prefill`, entry `kv_quant_attention`; 4 rows per
//! invocation; the workgroup walks the pivot, the store up to its last
//! row's B and the window from its first row's B, each row masked to its own
//! segments), and split-KV decode (passes `Decode`, `Combine`; ranges per
//! [`decode_split`], 4 heads of a GQA group per invocation, combined per
//! head).
//!
//! # Shapes
//! q: [n_tokens, n_heads, head_dim] f32; out: [n_tokens, n_heads * head_dim].
//! k_win, v_win, k_store, v_store: see `kv`'s `# Buffers`.
//! scratch: [`scratch_bytes`]: decode records as in `ops::kv_f16_attention`,
//! then the query sketches [max_rows, n_heads, m] (QJL keys only).

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::kv::{
    ATTENTION_WG, KvCacheParams, KvLayout, KvQuant, decode_grid, decode_records_bytes,
    decode_split, prefill_grid, step_rows,
};
use crate::pipeline::Kernel;
use crate::{Caps, Result, ensure_shape};

crate::shader!(
    SHADER,
    "kv_quant_attention",
    [crate::shader::lib::KVCACHE, crate::shader::lib::SOFTMAX4],
    KvQuantAttentionParams,
    [KvCacheParams]
);

crate::params_struct! {
    /// Mirrors `Params` in shaders/kv_quant_attention.wgsl; every pass gets
    /// the same block. The fields up to `scale` are those of
    /// `KvF16AttentionParams` (lib/softmax4.wgsl reads them by name).
    pub struct KvQuantAttentionParams {
        /// Query tokens this step.
        pub n_tokens: u32,
        /// Position of the first of them.
        pub pos: u32,
        /// Keys visible to the last token: pos + n_tokens.
        pub kv_len: u32,
        pub n_heads: u32,
        pub n_kv_heads: u32,
        pub max_ctx: u32,
        /// Decode: key ranges this step, see [`decode_split`].
        pub n_chunks: u32,
        /// Decode: keys per range.
        pub chunk_len: u32,
        pub scale: f32,
        /// Fewest recent tokens kept in f16 (R), for each query's store end.
        pub recent: u32,
        /// vec4 offset of the query sketches in scratch (QJL keys).
        pub qs_off: u32,
        pub _pad: u32,
        pub cache: KvCacheParams,
    }
}

crate::passes! {
    /// The attention's passes, in dispatch order; a step runs the first
    /// (QJL keys only) and either the two decode passes or the prefill.
    enum Pass {
        /// `S q` per query row, into scratch (entry `kv_qjl_prep`).
        QjlPrep,
        /// Split-KV decode: partial records per key range (entry `kv_quant_attention_decode`).
        Decode,
        /// Split-KV decode: the ranges merged per head (entry
        /// `attention_combine`, lib/softmax4.wgsl).
        Combine,
        /// Several tokens (entry `kv_quant_attention`).
        Prefill,
    }
}

impl Pass {
    fn entry(self) -> &'static str {
        match self {
            Pass::QjlPrep => "kv_qjl_prep",
            Pass::Decode => "kv_quant_attention_decode",
            Pass::Combine => "attention_combine",
            Pass::Prefill => "kv_quant_attention",
        }
    }
}

#[derive(Debug, Clone)]
pub struct KvQuantAttention {
    pub q: TensorId,
    pub k_win: TensorId,
    pub v_win: TensorId,
    pub k_store: TensorId,
    pub v_store: TensorId,
    pub out: TensorId,
    /// At least [`scratch_bytes`].
    pub scratch: TensorId,
    pub layout: KvLayout,
    pub n_heads: u32,
    pub max_rows: u32,
    /// Usually 1 / sqrt(head_dim).
    pub scale: f32,
}

/// vec4s of the decode records: as many as the f16 kernel's scratch holds.
fn records_vec4(n_heads: u32, head_dim: u32, max_ctx: u32) -> u32 {
    (decode_records_bytes(n_heads, head_dim, max_ctx) / 16) as u32
}

/// Bytes of the scratch tensor.
pub fn scratch_bytes(l: &KvLayout, n_heads: u32, max_rows: u32) -> u64 {
    let qs_off = records_vec4(n_heads, l.head_dim, l.max_ctx);
    let qs = if l.k == KvQuant::Qjl {
        u64::from(max_rows) * u64::from(n_heads) * u64::from(l.qjl.m) / 4
    } else {
        0
    };
    16 * (u64::from(qs_off) + qs)
}

impl KvQuantAttention {
    fn group(&self) -> u32 {
        self.n_heads / self.layout.n_kv_heads.max(1)
    }
}

impl OpDef for KvQuantAttention {
    fn name(&self) -> &'static str {
        "kv_quant_attention"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        const OP: &str = "kv_quant_attention";
        let l = &self.layout;
        l.check(OP, self.max_rows)?;
        ensure_shape!(
            self.n_heads.is_multiple_of(l.n_kv_heads) && self.n_heads > 0,
            OP,
            "n_heads {} must be a nonzero multiple of n_kv_heads {}",
            self.n_heads,
            l.n_kv_heads
        );
        ensure_shape!(self.max_rows > 0, OP, "max_rows must be nonzero");
        ensure_shape!(
            self.scale.is_finite(),
            OP,
            "scale {} is not finite",
            self.scale
        );
        let rows = 4 * u64::from(self.max_rows) * u64::from(self.n_heads) * u64::from(l.head_dim);
        check_bytes(g, OP, "q", self.q, rows)?;
        check_bytes(g, OP, "out", self.out, rows)?;
        check_bytes(g, OP, "k_win", self.k_win, l.k_win_bytes())?;
        check_bytes(g, OP, "v_win", self.v_win, l.window_bytes())?;
        check_bytes(g, OP, "k_store", self.k_store, l.k_store_bytes())?;
        check_bytes(g, OP, "v_store", self.v_store, l.v_store_bytes())?;
        check_bytes(
            g,
            OP,
            "scratch",
            self.scratch,
            scratch_bytes(l, self.n_heads, self.max_rows),
        )
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        let bindings = vec![
            Binding::read(self.q),
            Binding::read(self.k_win),
            Binding::read(self.v_win),
            Binding::read(self.k_store),
            Binding::read(self.v_store),
            Binding::write(self.out),
            Binding::write(self.scratch),
        ];
        [Pass::QjlPrep, Pass::Decode, Pass::Combine, Pass::Prefill]
            .into_iter()
            .map(|pass| {
                let kernel = self
                    .layout
                    .constants(Kernel::new(&SHADER, pass.entry()))
                    .with("W8", self.layout.head_dim / 8)
                    .with("G", self.group())
                    .with("EXACT", u32::from(self.layout.exact_prompt));
                Call::new(kernel, bindings.clone()).pass(pass)
            })
            .collect()
    }
    fn step(&self, tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let l = &self.layout;
        let n = step_rows(step, self.max_rows, l.max_ctx);
        let decode = n == 1;
        let kv_len = step.pos + n;
        let (n_chunks, chunk_len) = if decode { decode_split(kv_len) } else { (0, 0) };
        write_params(
            params,
            &KvQuantAttentionParams {
                n_tokens: n,
                pos: step.pos,
                kv_len,
                n_heads: self.n_heads,
                n_kv_heads: l.n_kv_heads,
                max_ctx: l.max_ctx,
                n_chunks,
                chunk_len,
                scale: self.scale,
                recent: l.recent,
                qs_off: records_vec4(self.n_heads, l.head_dim, l.max_ctx),
                _pad: 0,
                cache: l.cache_params(),
            },
        );
        let group = self.group();
        match tag.pass() {
            Pass::QjlPrep if l.k == KvQuant::Qjl && n > 0 => {
                grid1((n * self.n_heads * l.qjl.m / 4).div_ceil(ATTENTION_WG))
            }
            Pass::Decode if decode => decode_grid(n_chunks, l.n_kv_heads, group),
            Pass::Combine if decode => grid1(self.n_heads),
            Pass::Prefill if !decode && n > 0 => prefill_grid(n, l.n_kv_heads, group),
            _ => [0, 0, 0],
        }
    }
}

/// CPU reference over any cache representation: `score(len, kvh, j, q)` is
/// `q . k~` for key `j` of KV head `kvh` as a query that sees `len` tokens
/// finds it (its segment depends on `len`, see `KvLayout::boundary`), and
/// `value(len, kvh, j)` the decoded value. Softmax with the max subtracted,
/// sums in f64. q: [n_tokens, n_heads, head_dim]; returns out alike.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    q: &[f32],
    n_tokens: usize,
    pos: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    score: impl Fn(usize, usize, usize, &[f32]) -> f32,
    value: impl Fn(usize, usize, usize) -> Vec<f32>,
) -> Vec<f32> {
    let group = n_heads / n_kv_heads;
    let mut out = vec![0.0; n_tokens * n_heads * head_dim];
    for t in 0..n_tokens {
        let len = pos + t + 1;
        for h in 0..n_heads {
            let kvh = h / group;
            let qh = &q[(t * n_heads + h) * head_dim..][..head_dim];
            let s: Vec<f32> = (0..len).map(|j| score(len, kvh, j, qh) * scale).collect();
            let m = s.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x));
            let mut l = 0.0f64;
            let mut acc = vec![0.0f64; head_dim];
            for (j, sj) in s.iter().enumerate() {
                let p = f64::from((sj - m).exp());
                l += p;
                for (a, v) in acc.iter_mut().zip(value(len, kvh, j)) {
                    *a += p * f64::from(v);
                }
            }
            let o = &mut out[(t * n_heads + h) * head_dim..][..head_dim];
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = (a / l) as f32;
            }
        }
    }
    out
}
