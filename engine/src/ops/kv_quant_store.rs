//! Quantized KV cache, write side: the step's keys and values go into the
//! f16 window ring (pass `RingWrite`, entry `kv_ring_write`), then whole
//! groups of tokens that have left the recent window are quantized into the
//! store (pass `Flush`, entry `kv_flush`). The read side is
//! `ops::kv_quant_attention`; segments, formats and buffer layouts are
//! documented in `kv` (`engine/src/kv/mod.rs`), which both ops share.
//!
//! # Shapes
//! k, v: the step's rows, [max_rows, n_kv_heads, head_dim] f32 (k RoPE'd).
//! k_win, v_win, k_store, v_store: see `kv`'s `# Buffers`.

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::kv::{KvCacheParams, KvLayout, step_rows};
use crate::pipeline::Kernel;
use crate::{Caps, Result};

crate::shader!(
    SHADER,
    "kv_quant_store",
    [crate::shader::lib::F16, crate::shader::lib::KVCACHE],
    KvQuantStoreParams,
    [KvCacheParams]
);

crate::params_struct! {
    /// Mirrors `Params` in shaders/kv_quant_store.wgsl; both passes get the same block.
    pub struct KvQuantStoreParams {
        /// Tokens written this step.
        pub n_tokens: u32,
        /// Position of the first of them.
        pub pos: u32,
        pub n_kv_heads: u32,
        pub max_ctx: u32,
        /// First position to flush: the store's end before the step.
        pub lo: u32,
        /// End of the flush: the store's end after the step.
        pub hi: u32,
        pub _pad: [u32; 2],
        pub cache: KvCacheParams,
    }
}

crate::passes! {
    /// The store's passes, in dispatch order.
    enum Pass {
        /// The step's rows into the window ring (entry `kv_ring_write`).
        RingWrite,
        /// Groups that left the recent window, from the ring into the store (entry `kv_flush`).
        Flush,
    }
}

impl Pass {
    fn entry(self) -> &'static str {
        match self {
            Pass::RingWrite => "kv_ring_write",
            Pass::Flush => "kv_flush",
        }
    }
}

#[derive(Debug, Clone)]
pub struct KvQuantStore {
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

/// Workgroup size of both entries (mirrors kv_quant_store.wgsl).
const WG: u32 = 64;

impl OpDef for KvQuantStore {
    fn name(&self) -> &'static str {
        "kv_quant_store"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        const OP: &str = "kv_quant_store";
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
        [Pass::RingWrite, Pass::Flush]
            .into_iter()
            .map(|pass| {
                let kernel = self.layout.constants(Kernel::new(&SHADER, pass.entry()));
                Call::new(kernel, bindings.clone()).pass(pass)
            })
            .collect()
    }
    fn step(&self, tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let l = &self.layout;
        let n = step_rows(step, self.max_rows, l.max_ctx);
        let p = KvQuantStoreParams {
            n_tokens: n,
            pos: step.pos,
            n_kv_heads: l.n_kv_heads,
            max_ctx: l.max_ctx,
            lo: l.boundary(step.pos),
            hi: l.boundary(step.pos + n),
            _pad: [0; 2],
            cache: l.cache_params(),
        };
        write_params(params, &p);
        let invocations = match tag.pass() {
            Pass::RingWrite => n * l.n_kv_heads * l.head_dim / 2,
            Pass::Flush => (p.hi - p.lo) * l.n_kv_heads,
        };
        grid1(invocations.div_ceil(WG))
    }
}
