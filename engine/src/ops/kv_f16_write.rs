//! KV cache write: stores the step's new keys and values into the f16 cache
//! at positions `step.pos .. step.pos + n_tokens`:
//! `cache[h, step.pos + t, d] = f16(x[t, h, d])`, rounded to nearest even
//! and saturated to ±65504 (WGSL leaves out-of-range `pack2x16float`
//! indeterminate, so the shader clamps first; the reference does the same).
//!
//! # Shapes
//! k, v: [n_tokens, n_kv_heads, head_dim] f32 (k already RoPE'd).
//! k_cache, v_cache: [n_kv_heads, max_ctx, head_dim] f16, two per u32 word
//! (low half first), head-major so one head's keys are contiguous for
//! attention. head_dim must be even so a word never straddles two rows.
//! One invocation per word (two elements) of both caches.
//!
//! Rows that would land at or past `max_ctx` are dropped (the step's values
//! are not errors at replay time; the model must not step past its context).

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::kv::{cache_bytes, round_f16, step_rows};
use crate::pipeline::Kernel;
use crate::{Caps, Result, ensure_shape};

crate::shader!(
    SHADER,
    "kv_f16_write",
    [crate::shader::lib::F16],
    KvF16WriteParams
);

crate::params_struct! {
    /// Mirrors `Params` in shaders/kv_f16_write.wgsl.
    pub struct KvF16WriteParams {
        /// u32 words to write per cache this step: n_tokens * n_kv_heads * head_dim / 2.
        pub n_words: u32,
        pub pos: u32,
        pub n_kv_heads: u32,
        pub max_ctx: u32,
        /// head_dim / 2.
        pub row_words: u32,
        pub _pad: [u32; 3],
    }
}

#[derive(Debug, Clone)]
pub struct KvF16Write {
    /// [max_rows, n_kv_heads, head_dim] f32.
    pub k: TensorId,
    /// [max_rows, n_kv_heads, head_dim] f32.
    pub v: TensorId,
    /// [n_kv_heads, max_ctx, head_dim] f16 packed.
    pub k_cache: TensorId,
    /// [n_kv_heads, max_ctx, head_dim] f16 packed.
    pub v_cache: TensorId,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub max_ctx: u32,
    /// Rows at the graph's largest step.
    pub max_rows: u32,
}

/// Workgroup size (mirrors kv_f16_write.wgsl).
const WG: u32 = 256;

impl OpDef for KvF16Write {
    fn name(&self) -> &'static str {
        "kv_f16_write"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        ensure_shape!(
            self.head_dim.is_multiple_of(2) && self.head_dim > 0,
            "kv_f16_write",
            "head_dim {} must be even and nonzero",
            self.head_dim
        );
        ensure_shape!(
            self.n_kv_heads > 0 && self.max_ctx > 0,
            "kv_f16_write",
            "n_kv_heads and max_ctx must be nonzero"
        );
        let row = 4 * u64::from(self.n_kv_heads) * u64::from(self.head_dim);
        check_bytes(
            g,
            "kv_f16_write",
            "k",
            self.k,
            row * u64::from(self.max_rows),
        )?;
        check_bytes(
            g,
            "kv_f16_write",
            "v",
            self.v,
            row * u64::from(self.max_rows),
        )?;
        let cache = cache_bytes(self.n_kv_heads, self.head_dim, self.max_ctx);
        check_bytes(g, "kv_f16_write", "k_cache", self.k_cache, cache)?;
        check_bytes(g, "kv_f16_write", "v_cache", self.v_cache, cache)
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![Call::new(
            Kernel::new(&SHADER, "kv_f16_write"),
            vec![
                Binding::read(self.k),
                Binding::read(self.v),
                Binding::write(self.k_cache),
                Binding::write(self.v_cache),
            ],
        )]
    }
    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let rows = step_rows(step, self.max_rows, self.max_ctx);
        let row_words = self.head_dim / 2;
        let n_words = rows * self.n_kv_heads * row_words;
        write_params(
            params,
            &KvF16WriteParams {
                n_words,
                pos: step.pos,
                n_kv_heads: self.n_kv_heads,
                max_ctx: self.max_ctx,
                row_words,
                _pad: [0; 3],
            },
        );
        grid1(n_words.div_ceil(WG))
    }
}

/// CPU reference on an f32 image of one cache ([n_kv_heads, max_ctx,
/// head_dim]): writes `x` ([n_tokens, n_kv_heads, head_dim]) rounded to f16
/// at rows `pos..pos + n_tokens`, dropping rows past `max_ctx`.
pub fn reference(
    cache: &mut [f32],
    x: &[f32],
    pos: usize,
    n_kv_heads: usize,
    head_dim: usize,
    max_ctx: usize,
) {
    for (t, row) in x.chunks_exact(n_kv_heads * head_dim).enumerate() {
        if pos + t >= max_ctx {
            break;
        }
        for (h, src) in row.chunks_exact(head_dim).enumerate() {
            let dst = (h * max_ctx + pos + t) * head_dim;
            for (c, s) in cache[dst..dst + head_dim].iter_mut().zip(src) {
                *c = round_f16(*s);
            }
        }
    }
}
