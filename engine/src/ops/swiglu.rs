//! SwiGLU feed-forward gate (Shazeer 2020, "GLU Variants Improve
//! Transformer", arXiv 2002.05202), as in Llama:
//! `out = silu(gate) * up`, `silu(x) = x / (1 + exp(-x))`.
//!
//! The shader evaluates the sigmoid as `1 / (1 + e)` or `e / (1 + e)` with
//! `e = exp(-|x|)`, so `exp` never overflows and no division by infinity
//! happens (WGSL leaves both imprecise): any finite input gives a finite
//! output, `silu(x) -> 0` for large negative x and `-> x` for large positive.
//!
//! # Shapes
//! gate, up, out: [max_rows, dim] f32; gate and up may be views of one
//! tensor (the parts of a fused gate/up matmul), `out` is another.

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::pipeline::Kernel;
use crate::shader::lib::GLU;
use crate::{Caps, Result};

crate::shader!(SHADER, "swiglu", [GLU], SwiGluParams);

crate::params_struct! {
    /// Mirrors `Params` in shaders/swiglu.wgsl.
    pub struct SwiGluParams {
        /// Elements in this step.
        pub n: u32,
        pub _pad: [u32; 3],
    }
}

#[derive(Debug, Clone)]
pub struct SwiGlu {
    /// [max_rows, dim] f32.
    pub gate: TensorId,
    /// [max_rows, dim] f32.
    pub up: TensorId,
    /// [max_rows, dim] f32.
    pub out: TensorId,
    pub dim: u32,
    /// Tokens at the graph's largest step.
    pub max_rows: u32,
}

/// Workgroup size and elements per invocation (mirror swiglu.wgsl).
const WG: u32 = 256;
const PER_THREAD: u32 = 4;

impl OpDef for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        let n = 4 * u64::from(self.dim) * u64::from(self.max_rows);
        check_bytes(g, "swiglu", "gate", self.gate, n)?;
        check_bytes(g, "swiglu", "up", self.up, n)?;
        check_bytes(g, "swiglu", "out", self.out, n)
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![Call::new(
            Kernel::new(&SHADER, "swiglu"),
            vec![
                Binding::read(self.gate),
                Binding::read(self.up),
                Binding::write(self.out),
            ],
        )]
    }
    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let n = step.n_tokens.min(self.max_rows) * self.dim;
        write_params(params, &SwiGluParams { n, _pad: [0; 3] });
        grid1(n.div_ceil(WG * PER_THREAD))
    }
}

/// CPU reference, the textbook formula in f32.
pub fn reference(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}
