//! Rotary position embedding (Su et al. 2021, RoFormer, arXiv 2104.09864),
//! in place: token `t` at position `p = step.pos + t` rotates each pair
//! `(a_j, b_j)` of every head by the angle `p * theta^(-2j / head_dim)`:
//! `a' = a cos - b sin`, `b' = a sin + b cos`, for `j < head_dim / 2`.
//!
//! [`RopeStyle::Interleaved`] pairs `(2j, 2j+1)`: llama.cpp's GGUF q/k rows
//! are permuted for it. [`RopeStyle::Neox`] pairs `(j, j + head_dim/2)`:
//! Hugging Face's `rotate_half`.
//!
//! # Precision
//! The angle is computed as the CPU reference does, in f32: `f32(p) * freq`,
//! then sin/cos. `freq = 2^(-(2j/head_dim) * log2(theta))` with `log2(theta)`
//! computed on the host in f64 and a ~1 ulp exp2 (`lib/trig.wgsl`; builtin
//! exp2 may be off by several ulp, which the position multiplies). The
//! reference's `1 / theta.powf(2j/head_dim)` is itself within about an ulp
//! of exact, so the two rounded angles may differ by one f32 step, up to
//! 2^-10 rad below position 8192: as close as f32 angles can agree, and no
//! further from exact than the reference. Measured on lavapipe: worst
//! 6.6e-4 absolute on |x| <= 1 at position 8190. sin/cos use
//! `lib/trig.wgsl`, accurate for large angles where WGSL's builtins promise
//! nothing.
//!
//! # Scaled frequencies
//! With [`Rope::freq_factors`] each pair's frequency is divided by its
//! factor before the angle is formed (Llama 3.x's `rope_scaling` of type
//! `llama3`, which llama.cpp's converter stores as the `rope_freqs` tensor:
//! 1 for short wavelengths, the scaling factor for long ones, smooth
//! between). The `_scaled` entry points read the factors at binding 3.
//!
//! # Shapes
//! q: [max_rows, n_heads, head_dim] and k: [max_rows, n_kv_heads, head_dim]
//! f32 (read-write), head_dim even: the queries and the keys of a step in
//! one dispatch. One invocation per (token, pair j): the angle and its
//! sin/cos are computed once and applied to that pair in every head of
//! both.
//!
//! # Fused with the Hadamard transform
//! [`RopeHadamard`] is RoPE followed by `y = H_d x / sqrt(d)` on each head
//! (`d = head_dim`, a power of two up to [`HADAMARD_MAX_DIM`], Sylvester's
//! `H_d`, the matrix `ops::hadamard` uses for n = d): QuaRot's online
//! rotation of Q and K (arXiv 2404.00456), one dispatch instead
//! of two. One workgroup per (token, head), the query heads first, then
//! the key heads: the rotated head goes to
//! workgroup memory, the butterflies run there, the scaled result goes back.
//! The angles are those of [`Rope`], so the result equals the two ops run
//! one after the other.

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::kv::{MAX_SEQS, Seqs, cache_bytes, slots_bytes};
use crate::pipeline::Kernel;
use crate::shader::lib::{F16, ROPE, TRIG};
use crate::{Caps, Result, ensure_shape};

crate::shader!(SHADER, "rope", [TRIG, ROPE], RopeParams);
crate::shader!(SHADER_KV, "rope_kv_f16", [TRIG, ROPE, F16], RopeKvParams);

/// Both shaders, for the naga translation tests.
pub fn shaders() -> Vec<&'static crate::shader::ShaderSource> {
    vec![&SHADER, &SHADER_KV]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2j, 2j+1), llama.cpp / GGUF.
    Interleaved,
    /// Pairs (j, j + head_dim/2), GPT-NeoX / Hugging Face `rotate_half`.
    Neox,
}

crate::params_struct! {
    /// Mirrors `Params` in shaders/rope.wgsl.
    pub struct RopeParams {
        pub n_tokens: u32,
        pub n_heads: u32,
        pub head_dim: u32,
        /// Position of token 0.
        pub pos: u32,
        /// 0 interleaved, 1 neox.
        pub style: u32,
        /// log2(theta), computed in f64 and rounded once.
        pub log2_theta: f32,
        /// 1/sqrt(head_dim), for [`RopeHadamard`] (1 for plain RoPE).
        pub hadamard_scale: f32,
        pub n_kv_heads: u32,
    }
}

#[derive(Debug, Clone)]
pub struct Rope {
    /// Queries, [max_rows, n_heads, head_dim] f32, rotated in place.
    pub q: TensorId,
    pub n_heads: u32,
    /// Keys, [max_rows, n_kv_heads, head_dim] f32, rotated in place.
    pub k: TensorId,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Base of the frequencies (10000 for Llama 2, 500000 for Llama 3).
    pub theta: f32,
    pub style: RopeStyle,
    /// Tokens at the graph's largest step.
    pub max_rows: u32,
    /// `[head_dim / 2]` f32: each pair's frequency is divided by its factor
    /// (Llama 3's RoPE scaling, GGUF `rope_freqs`); `None`: unscaled.
    pub freq_factors: Option<TensorId>,
}

/// Invocations per workgroup (mirrors rope.wgsl).
const WG: u32 = 64;

/// The largest head_dim [`RopeHadamard`] takes (the WGSL `HD_MAX`, the
/// size of its workgroup array; tests/tests/contracts.rs holds them equal).
pub const HADAMARD_MAX_DIM: u32 = 256;

impl Rope {
    /// The call of entry point `entry`, or of its `_scaled` twin (which
    /// reads the factors at binding 3) when the frequencies are scaled.
    fn call(&self, entry: &'static str) -> Call {
        let (q, k) = (Binding::write(self.q), Binding::write(self.k));
        match self.freq_factors {
            None => Call::new(Kernel::new(&SHADER, entry), vec![q, k]),
            Some(f) => {
                let scaled = if entry == "rope" {
                    "rope_scaled"
                } else {
                    "rope_hadamard_scaled"
                };
                Call::new(Kernel::new(&SHADER, scaled), vec![q, k, Binding::read(f)])
            }
        }
    }
    /// The parameter block for `step` (`hadamard_scale` 1).
    fn params(&self, step: &Step) -> RopeParams {
        RopeParams {
            n_tokens: step.n_tokens.min(self.max_rows),
            n_heads: self.n_heads,
            head_dim: self.head_dim,
            pos: step.pos,
            style: match self.style {
                RopeStyle::Interleaved => 0,
                RopeStyle::Neox => 1,
            },
            log2_theta: f64::from(self.theta).log2() as f32,
            hadamard_scale: 1.0,
            n_kv_heads: self.n_kv_heads,
        }
    }
}

impl OpDef for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        ensure_shape!(
            self.head_dim > 0 && self.head_dim.is_multiple_of(2),
            "rope",
            "head_dim {} must be even and nonzero",
            self.head_dim
        );
        ensure_shape!(
            self.n_heads > 0 && self.n_kv_heads > 0,
            "rope",
            "n_heads {} and n_kv_heads {} must be nonzero",
            self.n_heads,
            self.n_kv_heads
        );
        ensure_shape!(
            self.q != self.k,
            "rope",
            "q and k must be different tensors"
        );
        ensure_shape!(
            self.theta.is_finite() && self.theta > 0.0,
            "rope",
            "theta {} must be finite and positive",
            self.theta
        );
        let rows = |heads: u32| 4 * u64::from(heads * self.head_dim) * u64::from(self.max_rows);
        if let Some(f) = self.freq_factors {
            check_bytes(g, "rope", "freq_factors", f, 2 * u64::from(self.head_dim))?;
        }
        check_bytes(g, "rope", "q", self.q, rows(self.n_heads))?;
        check_bytes(g, "rope", "k", self.k, rows(self.n_kv_heads))
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![self.call("rope")]
    }
    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let p = self.params(step);
        write_params(params, &p);
        grid1((p.n_tokens * (self.head_dim / 2)).div_ceil(WG))
    }
}

/// [`Rope`], then the orthonormal Hadamard transform of each head, in one
/// dispatch (see the module doc). head_dim: a power of two, 2 to
/// [`HADAMARD_MAX_DIM`].
#[derive(Debug, Clone)]
pub struct RopeHadamard {
    pub rope: Rope,
}

impl OpDef for RopeHadamard {
    fn name(&self) -> &'static str {
        "rope_hadamard"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        let d = self.rope.head_dim;
        ensure_shape!(
            d.is_power_of_two() && d <= HADAMARD_MAX_DIM,
            "rope_hadamard",
            "head_dim {d} must be a power of two up to {HADAMARD_MAX_DIM}"
        );
        self.rope.check(g)
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![self.rope.call("rope_hadamard")]
    }
    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let p = RopeParams {
            hadamard_scale: (1.0 / f64::from(self.rope.head_dim).sqrt()) as f32,
            ..self.rope.params(step)
        };
        write_params(params, &p);
        grid1(p.n_tokens * (self.rope.n_heads + self.rope.n_kv_heads))
    }
}

crate::params_struct! {
    /// Mirrors `Params` in shaders/rope_kv_f16.wgsl.
    pub struct RopeKvParams {
        pub n_tokens: u32,
        pub n_heads: u32,
        pub head_dim: u32,
        pub pos: u32,
        pub style: u32,
        pub log2_theta: f32,
        pub n_kv_heads: u32,
        pub max_ctx: u32,
        /// Several sequences ([`Seqs`]): their count (0: one), the cache
        /// words between two slots, each one's position (`u32::MAX`: no
        /// token this step), four to a vec4.
        pub n_seqs: u32,
        pub slot_words: u32,
        pub _p0: u32,
        pub _p1: u32,
        pub seq_pos: [[u32; 4]; MAX_SEQS / 4],
    }
}

/// [`Rope`] with the rotated keys and the values stored straight into the
/// f16 KV cache, as `kv_f16_write` stores them after it (same layout, same
/// rounding), in one dispatch: the decode step's RoPE and cache write.
/// `rope.k` is read, not written back. head_dim: a multiple of 4 (an
/// invocation takes two pairs, two whole f16 words of each cache row).
#[derive(Debug, Clone)]
pub struct RopeKvF16 {
    pub rope: Rope,
    /// Values, [max_rows, n_kv_heads, head_dim] f32.
    pub v: TensorId,
    /// [n_kv_heads, max_ctx, head_dim] f16 packed, each.
    pub k_cache: TensorId,
    pub v_cache: TensorId,
    pub max_ctx: u32,
    /// Several sequences in one call, row i sequence i's token into cache
    /// slot i (decode; [`Seqs`]), or `None`: one.
    pub seqs: Option<Seqs>,
}

impl RopeKvF16 {
    /// Bytes of the bound caches: every slot.
    fn caches_bytes(&self) -> u64 {
        let r = &self.rope;
        slots_bytes(
            self.seqs,
            cache_bytes(r.n_kv_heads, r.head_dim, self.max_ctx),
        )
    }
    fn params(&self, step: &Step) -> RopeKvParams {
        let r = self.rope.params(step);
        RopeKvParams {
            n_tokens: r.n_tokens,
            n_heads: r.n_heads,
            head_dim: r.head_dim,
            pos: r.pos,
            style: r.style,
            log2_theta: r.log2_theta,
            n_kv_heads: r.n_kv_heads,
            max_ctx: self.max_ctx,
            n_seqs: 0,
            slot_words: self.seqs.map_or(0, |s| (s.slot_bytes / 4) as u32),
            _p0: 0,
            _p1: 0,
            seq_pos: [[0; 4]; MAX_SEQS / 4],
        }
    }
}

impl OpDef for RopeKvF16 {
    fn name(&self) -> &'static str {
        "rope_kv_f16"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        let r = &self.rope;
        ensure_shape!(
            r.head_dim.is_multiple_of(4) && self.max_ctx > 0,
            "rope_kv_f16",
            "head_dim {} must be a multiple of 4 and max_ctx {} nonzero",
            r.head_dim,
            self.max_ctx
        );
        r.check(g)?;
        let rows = 4 * u64::from(r.n_kv_heads * r.head_dim) * u64::from(r.max_rows);
        check_bytes(g, "rope_kv_f16", "v", self.v, rows)?;
        if let Some(s) = self.seqs {
            let one = cache_bytes(r.n_kv_heads, r.head_dim, self.max_ctx);
            ensure_shape!(
                (1..=MAX_SEQS as u32).contains(&s.n)
                    && s.n == r.max_rows
                    && s.slot_bytes >= one
                    && s.slot_bytes.is_multiple_of(4)
                    && s.slot_bytes / 4 <= u64::from(u32::MAX),
                "rope_kv_f16",
                "{} sequences (1..={MAX_SEQS}, one row each) over cache slots {} bytes apart \
                 ({one} bytes each)",
                s.n,
                s.slot_bytes
            );
        }
        let caches = self.caches_bytes();
        check_bytes(g, "rope_kv_f16", "k_cache", self.k_cache, caches)?;
        check_bytes(g, "rope_kv_f16", "v_cache", self.v_cache, caches)
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        let r = &self.rope;
        let mut b = vec![
            Binding::write(r.q),
            Binding::write(r.k),
            Binding::write(self.v),
            Binding {
                range: Some((0, self.caches_bytes())),
                ..Binding::write(self.k_cache)
            },
            Binding {
                range: Some((0, self.caches_bytes())),
                ..Binding::write(self.v_cache)
            },
        ];
        let entry = match r.freq_factors {
            None => "rope_kv",
            Some(f) => {
                b.push(Binding::read(f));
                "rope_kv_scaled"
            }
        };
        vec![Call::new(Kernel::new(&SHADER_KV, entry), b)]
    }
    fn step(&self, tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        if self.seqs.is_some() {
            return self.step_seqs(tag, std::slice::from_ref(step), params);
        }
        // Rows past the cache's end: queries still rotate, the shader drops
        // the keys and values (as kv_f16_write does).
        let p = self.params(step);
        write_params(params, &p);
        grid1((p.n_tokens * (p.head_dim / 4)).div_ceil(WG))
    }
    fn serves_seqs(&self) -> Option<usize> {
        self.seqs.map(|s| s.n as usize)
    }
    /// Every sequence's row in one dispatch, each at its own position into
    /// its own slot; a sequence without a token writes nothing.
    fn step_seqs(&self, _tag: CallTag, seqs: &[Step], params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let n = seqs.len().min(MAX_SEQS);
        let mut p = self.params(&Step {
            n_tokens: n as u32,
            ..Step::default()
        });
        p.n_seqs = n as u32;
        for (i, st) in seqs.iter().take(n).enumerate() {
            p.seq_pos[i / 4][i % 4] = if st.n_tokens > 0 { st.pos } else { u32::MAX };
        }
        write_params(params, &p);
        if seqs.iter().all(|st| st.n_tokens == 0) {
            return [0; 3];
        }
        grid1((p.n_tokens * (p.head_dim / 4)).div_ceil(WG))
    }
}

/// Each pair's inverse frequency as the CPU reference computes it
/// (transformers' `inv_freq = 1 / theta^(2j/d)`, then divided by the pair's
/// factor where `factors` has them), in f32.
pub fn inv_freqs(head_dim: usize, theta: f32, factors: &[f32]) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|j| {
            let f = 1.0 / theta.powf((2 * j) as f32 / head_dim as f32);
            factors.get(j).map_or(f, |d| f / d)
        })
        .collect()
}

/// CPU reference, as `model/reference.rs` computes it (`angle = f32(pos) *
/// inv_freq` with [`inv_freqs`], all f32); `factors` empty when unscaled.
pub fn reference(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    theta: f32,
    factors: &[f32],
    pos: u32,
    style: RopeStyle,
) {
    let half = head_dim / 2;
    let inv_freq = inv_freqs(head_dim, theta, factors);
    for (t, xt) in x.chunks_exact_mut(n_heads * head_dim).enumerate() {
        let p = (pos as usize + t) as f32;
        for head in xt.chunks_exact_mut(head_dim) {
            for (j, f) in inv_freq.iter().enumerate() {
                let (s, c) = (p * f).sin_cos();
                let (a, b) = match style {
                    RopeStyle::Interleaved => (2 * j, 2 * j + 1),
                    RopeStyle::Neox => (j, j + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}
