//! Causal grouped-query attention over the f16 KV cache, fused: scores never
//! reach memory. For token `i` of the step (at position `pos + i`) and query
//! head `h`, with KV head `g = h / (n_heads / n_kv_heads)` (transformers'
//! `repeat_kv`):
//!
//! `out[i, h] = sum_{j <= pos+i} softmax_j(scale * q[i, h] . k[g, j]) v[g, j]`
//!
//! The softmax is computed online in f32 (Milakov & Gimelshein 2018, "Online
//! normalizer calculation for softmax"; FlashAttention, Dao et al. 2022): a
//! running max `m` and sum `l` per query row, and the output accumulator is
//! rescaled by `exp(m_old - m_new)` whenever the max grows.
//!
//! Two paths, chosen per step, in one shader (`kv_f16_attention.wgsl`):
//! - **prefill** (pass `Prefill`, entry `kv_f16_attention`): an invocation
//!   owns 4 query rows (token, head) of one KV head; the 64 invocations of a
//!   workgroup walk that head's keys in blocks of 32 in lockstep (every K/V
//!   address is the same across the workgroup: a broadcast on GPUs, one
//!   cache line on CPUs), and each row masks the keys past its own position.
//!   The output accumulator is `out` itself (rescaled per block, normalised
//!   by the last). Used for every step with more than one token, and for
//!   one-token steps when no scratch tensor is given.
//! - **split-KV decode** (passes `Decode`, `Combine`: entries
//!   `kv_f16_attention_decode`, `attention_combine`; flash-decoding, Dao et
//!   al. 2023): for one token the KV length is cut into `n_chunks` ranges
//!   ([`decode_split`], shared with the quantized cache in `kv`); an
//!   invocation takes one range for 4 query heads of a GQA group (all of
//!   them for groups up to 4, so each K/V element is loaded once), and
//!   writes a partial `(m, l, acc[head_dim])` per head to `scratch`; one
//!   combine workgroup per head merges the ranges into `out`.
//!
//! Both are written for lavapipe first (tests and most users). There,
//! invocations are CPU SIMD lanes; every storage or workgroup load is a
//! loop over the 8 lanes (Mesa 22), so time goes with the number of load
//! instructions, not bytes; loops are not unrolled, so a private array
//! indexed by a loop variable turns into memory traffic; barriers switch
//! coroutines; and an invocation is silently stopped after 65535 loop
//! iterations in total. So: no workgroup memory or barriers, K/V read 16
//! bytes (8 f16) per load, a block of 32 keys x 4 rows held in `mat4x4`
//! registers with the block's code written out, loops per block and per 8
//! dims only. Measured, decode then costs about one load per 8 dims of K
//! and of V, its floor there. On GPUs the same choices are sane, not peak
//! (a subgroup / shared-memory variant would be the next step).
//! The 65535 cap bounds a prefill row's context on lavapipe: each block of
//! 32 keys takes `head_dim / 4 + 1` iterations, so about 120k keys at
//! head_dim 64 and 32k at head_dim 256.
//!
//! # Shapes
//! q: [n_tokens, n_heads, head_dim] f32 (RoPE'd).
//! k_cache, v_cache: [n_kv_heads, max_ctx, head_dim] f16, two per u32 word,
//! filled for positions `0 .. pos + n_tokens` (see `ops::kv_f16_write`).
//! out: [n_tokens, n_heads * head_dim] f32.
//! scratch: [n_heads, n_chunks, head_dim + 4] f32 per step, at most
//! [`scratch_bytes`]; each record is `(m, l, 0, 0, acc[0..head_dim])`.
//! head_dim: a multiple of 8, at most 256; n_heads a multiple of n_kv_heads.

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
pub use crate::kv::{MAX_SEQS, Seqs};
use crate::kv::{
    cache_bytes, decode_grid, decode_records_bytes, decode_split, prefill_grid, slots_bytes,
    step_rows,
};
use crate::pipeline::Kernel;
use crate::{Caps, Result, ensure_shape};

crate::shader!(
    SHADER,
    "kv_f16_attention",
    [crate::shader::lib::SOFTMAX4],
    KvF16AttentionParams
);

crate::params_struct! {
    /// Mirrors `Params` in shaders/kv_f16_attention.wgsl; every pass gets the same block.
    pub struct KvF16AttentionParams {
        /// Query tokens this step.
        pub n_tokens: u32,
        /// Position of the first of them.
        pub pos: u32,
        /// Keys visible to the last token: pos + n_tokens.
        pub kv_len: u32,
        pub n_heads: u32,
        pub n_kv_heads: u32,
        pub max_ctx: u32,
        /// Decode: key ranges this step (also the scratch records per head).
        pub n_chunks: u32,
        /// Decode: keys per range, see [`decode_split`].
        pub chunk_len: u32,
        pub scale: f32,
        /// Several sequences: cache rows between two slots (0 for one).
        pub slot_rows: u32,
        /// Several sequences: scratch vec4s between two sequences' records.
        pub seq_recs: u32,
        pub _p0: u32,
        /// Each sequence's decode `(kv_len, n_chunks, chunk_len, 0)`; a
        /// single sequence's in the first.
        pub seqs: [[u32; 4]; MAX_SEQS],
    }
}

crate::passes! {
    /// The attention's passes: with scratch the calls are [Decode, Combine,
    /// Prefill], else [Prefill] (one-token steps then run the prefill).
    enum Pass {
        /// Split-KV decode: partial records per key range (entry `kv_f16_attention_decode`).
        Decode,
        /// Split-KV decode: the ranges merged per head (entry
        /// `attention_combine`, lib/softmax4.wgsl).
        Combine,
        /// Several tokens, or one without scratch (entry `kv_f16_attention`).
        Prefill,
    }
}

impl Pass {
    fn entry(self) -> &'static str {
        match self {
            Pass::Decode => "kv_f16_attention_decode",
            Pass::Combine => "attention_combine",
            Pass::Prefill => "kv_f16_attention",
        }
    }
}

#[derive(Debug, Clone)]
pub struct KvF16Attention {
    /// [max_rows, n_heads, head_dim] f32.
    pub q: TensorId,
    /// [n_kv_heads, max_ctx, head_dim] f16 packed.
    pub k_cache: TensorId,
    /// [n_kv_heads, max_ctx, head_dim] f16 packed.
    pub v_cache: TensorId,
    /// [max_rows, n_heads * head_dim] f32.
    pub out: TensorId,
    /// At least [`scratch_bytes`] bytes; `None` runs one-token steps on the
    /// prefill kernel (slower for long contexts: one invocation per head).
    pub scratch: Option<TensorId>,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub max_ctx: u32,
    /// Rows at the graph's largest step.
    pub max_rows: u32,
    /// Usually 1 / sqrt(head_dim).
    pub scale: f32,
    /// Several sequences in one call (decode only; scratch then holds a
    /// [`scratch_bytes`] area for each), or `None`: one.
    pub seqs: Option<Seqs>,
}

/// Largest head_dim (the 65535-iteration budget on lavapipe, above).
pub const MAX_HEAD_DIM: u32 = 256;

/// Bytes of the decode scratch tensor:
/// `n_heads * min(ceil(max_ctx / 32), 256) * (head_dim + 4) * 4`.
/// `max_rows` does not enter (only one-token steps use it); it is taken so
/// callers need not know that.
pub fn scratch_bytes(n_heads: u32, head_dim: u32, max_ctx: u32, _max_rows: u32) -> u64 {
    decode_records_bytes(n_heads, head_dim, max_ctx)
}

impl KvF16Attention {
    fn group(&self) -> u32 {
        self.n_heads / self.n_kv_heads.max(1)
    }
    /// Sequences per call (1 without [`Seqs`]).
    fn n_seqs(&self) -> u32 {
        self.seqs.map_or(1, |s| s.n)
    }
    /// Bytes of the bound caches: every slot.
    fn caches_bytes(&self) -> u64 {
        slots_bytes(
            self.seqs,
            cache_bytes(self.n_kv_heads, self.head_dim, self.max_ctx),
        )
    }
    /// One sequence's decode `(kv_len, n_chunks, chunk_len, 0)` at `step`
    /// (all 0 when it has no token).
    fn split(&self, step: &Step) -> [u32; 4] {
        let n = step_rows(step, 1, self.max_ctx);
        if n == 0 {
            return [0; 4];
        }
        let kv_len = step.pos + n;
        let (n_chunks, chunk_len) = decode_split(kv_len);
        [kv_len, n_chunks, chunk_len, 0]
    }
    fn params(&self, step: &Step, n: u32, kv_len: u32) -> KvF16AttentionParams {
        let scratch = decode_records_bytes(self.n_heads, self.head_dim, self.max_ctx);
        KvF16AttentionParams {
            n_tokens: n,
            pos: step.pos,
            kv_len,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            max_ctx: self.max_ctx,
            n_chunks: 0,
            chunk_len: 0,
            scale: self.scale,
            slot_rows: self.seqs.map_or(0, |s| {
                (s.slot_bytes / (2 * u64::from(self.head_dim))) as u32
            }),
            seq_recs: (scratch / 16) as u32,
            _p0: 0,
            seqs: [[0; 4]; MAX_SEQS],
        }
    }
    fn kernel(&self, entry: &'static str) -> Kernel {
        Kernel::new(&SHADER, entry)
            .with("W8", self.head_dim / 8)
            .with("G", self.group())
    }
    fn bindings(&self) -> Vec<Binding> {
        let caches = self.caches_bytes();
        let mut b = vec![
            Binding::read(self.q),
            Binding::read_range(self.k_cache, 0, caches),
            Binding::read_range(self.v_cache, 0, caches),
            Binding::write(self.out),
        ];
        if let Some(s) = self.scratch {
            b.push(Binding::write(s));
        }
        b
    }
}

impl OpDef for KvF16Attention {
    fn name(&self) -> &'static str {
        "kv_f16_attention"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        const OP: &str = "kv_f16_attention";
        let (hd, nh, nkv) = (self.head_dim, self.n_heads, self.n_kv_heads);
        ensure_shape!(
            hd.is_multiple_of(8) && (8..=MAX_HEAD_DIM).contains(&hd),
            OP,
            "head_dim {hd} must be a multiple of 8 in 8..={MAX_HEAD_DIM}"
        );
        ensure_shape!(
            nkv > 0 && nh.is_multiple_of(nkv),
            OP,
            "n_heads {nh} must be a nonzero multiple of n_kv_heads {nkv}"
        );
        ensure_shape!(
            self.max_ctx > 0 && self.max_rows > 0,
            OP,
            "max_ctx and max_rows must be nonzero"
        );
        ensure_shape!(
            self.scale.is_finite(),
            OP,
            "scale {} is not finite",
            self.scale
        );
        let rows = u64::from(self.max_rows) * u64::from(nh) * u64::from(hd) * 4;
        check_bytes(g, OP, "q", self.q, rows)?;
        check_bytes(g, OP, "out", self.out, rows)?;
        if let Some(s) = self.seqs {
            let one = cache_bytes(nkv, hd, self.max_ctx);
            ensure_shape!(
                (1..=MAX_SEQS as u32).contains(&s.n)
                    && s.n == self.max_rows
                    && self.scratch.is_some()
                    && s.slot_bytes >= one
                    && s.slot_bytes.is_multiple_of(2 * u64::from(hd))
                    && s.slot_bytes / (2 * u64::from(hd)) <= u64::from(u32::MAX),
                OP,
                "{} sequences (1..={MAX_SEQS}, one row each, with scratch) over cache slots \
                 {} bytes apart ({one} bytes each, whole rows)",
                s.n,
                s.slot_bytes
            );
        }
        let caches = self.caches_bytes();
        check_bytes(g, OP, "k_cache", self.k_cache, caches)?;
        check_bytes(g, OP, "v_cache", self.v_cache, caches)?;
        if let Some(s) = self.scratch {
            let per_seq = scratch_bytes(nh, hd, self.max_ctx, self.max_rows);
            check_bytes(g, OP, "scratch", s, u64::from(self.n_seqs()) * per_seq)?;
        }
        Ok(())
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        let passes: &[Pass] = match (self.seqs, self.scratch) {
            (Some(_), _) => &[Pass::Decode, Pass::Combine],
            (None, Some(_)) => &[Pass::Decode, Pass::Combine, Pass::Prefill],
            (None, None) => &[Pass::Prefill],
        };
        // The same bindings for all three, so they share one layout.
        passes
            .iter()
            .map(|&pass| Call::new(self.kernel(pass.entry()), self.bindings()).pass(pass))
            .collect()
    }
    fn step(&self, tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        if self.seqs.is_some() {
            return self.step_seqs(tag, std::slice::from_ref(step), params);
        }
        let n = step_rows(step, self.max_rows, self.max_ctx);
        let kv_len = step.pos + n;
        let decode = self.scratch.is_some() && n == 1;
        let mut p = self.params(step, n, kv_len);
        if decode {
            p.seqs[0] = self.split(step);
            (p.n_chunks, p.chunk_len) = (p.seqs[0][1], p.seqs[0][2]);
        }
        write_params(params, &p);
        let group = self.group();
        match tag.pass() {
            Pass::Decode if decode => decode_grid(p.n_chunks, self.n_kv_heads, group),
            Pass::Combine if decode => grid1(self.n_heads),
            Pass::Prefill if !decode && n > 0 => prefill_grid(n, self.n_kv_heads, group),
            _ => [0, 0, 0],
        }
    }
    fn serves_seqs(&self) -> Option<usize> {
        self.seqs.map(|s| s.n as usize)
    }
    /// Every sequence's split-KV decode in one dispatch per pass (the
    /// grid's z is the sequence; the x extent the step's most ranges).
    fn step_seqs(&self, tag: CallTag, seqs: &[Step], params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let mut p = self.params(&Step::default(), 0, 0);
        for (i, st) in seqs.iter().take(MAX_SEQS).enumerate() {
            p.seqs[i] = self.split(st);
        }
        write_params(params, &p);
        let n = seqs.len().min(MAX_SEQS) as u32;
        let most = p.seqs.iter().map(|s| s[1]).max().unwrap_or(0);
        if most == 0 {
            return [0; 3];
        }
        let [x, y, _] = match tag.pass() {
            Pass::Decode => decode_grid(most, self.n_kv_heads, self.group()),
            Pass::Combine => grid1(self.n_heads),
            Pass::Prefill => [0; 3],
        };
        [x, y, n]
    }
}

/// CPU reference, same math: f32 scores, softmax with the max subtracted,
/// sums in f64. Caches are f32 images of the f16 caches (values already
/// rounded, see `kv_f16_write::reference`), layout [n_kv_heads, max_ctx, head_dim].
#[allow(clippy::too_many_arguments)]
pub fn reference(
    q: &[f32], // [n_tokens, n_heads, head_dim]
    k_cache: &[f32],
    v_cache: &[f32],
    n_tokens: usize,
    pos: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    max_ctx: usize,
    scale: f32,
) -> Vec<f32> {
    let group = n_heads / n_kv_heads;
    let mut out = vec![0.0; n_tokens * n_heads * head_dim];
    let mut scores = vec![0.0f32; pos + n_tokens];
    let mut acc = vec![0.0f64; head_dim];
    for t in 0..n_tokens {
        let ctx = pos + t + 1;
        for h in 0..n_heads {
            let kvh = h / group;
            let qh = &q[(t * n_heads + h) * head_dim..][..head_dim];
            // This KV head's rows, [max_ctx, head_dim] each.
            let base = kvh * max_ctx * head_dim;
            let keys = &k_cache[base..base + ctx * head_dim];
            let values = &v_cache[base..base + ctx * head_dim];
            for (s, k) in scores[..ctx].iter_mut().zip(keys.chunks_exact(head_dim)) {
                *s = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
            let m = scores[..ctx]
                .iter()
                .fold(f32::NEG_INFINITY, |m, s| m.max(*s));
            let mut l = 0.0f64;
            acc.fill(0.0);
            for (s, v) in scores[..ctx].iter().zip(values.chunks_exact(head_dim)) {
                let p = f64::from((s - m).exp());
                l += p;
                for (a, v) in acc.iter_mut().zip(v) {
                    *a += p * f64::from(*v);
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
