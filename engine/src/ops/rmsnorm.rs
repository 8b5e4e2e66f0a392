//! RMSNorm (Zhang & Sennrich 2019), as in Llama:
//! `out[r, i] = x[r, i] / sqrt(mean_j(x[r, j]^2) + eps) * w[i]`.
//!
//! # Shapes
//! x: [n_tokens, dim] f32, w: [dim] f32, out: [n_tokens, dim] f32.
//! One workgroup per row; rows = the step's token count.

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::pipeline::Kernel;
use crate::{Caps, Result};

crate::shader!(
    SHADER,
    "rmsnorm",
    [crate::shader::lib::REDUCE, crate::shader::lib::ROWNORM],
    RmsNormParams
);

crate::params_struct! {
    pub struct RmsNormParams {
        pub rows: u32,
        pub dim: u32,
        pub eps: f32,
        pub _pad: u32,
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub x: TensorId,
    pub weight: TensorId,
    pub out: TensorId,
    pub dim: u32,
    pub eps: f32,
    /// Rows at the graph's largest step.
    pub max_rows: u32,
}

impl OpDef for RmsNorm {
    fn name(&self) -> &'static str {
        "rmsnorm"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        let n = 4 * u64::from(self.dim);
        check_bytes(g, "rmsnorm", "x", self.x, n * u64::from(self.max_rows))?;
        check_bytes(g, "rmsnorm", "weight", self.weight, n)?;
        check_bytes(g, "rmsnorm", "out", self.out, n * u64::from(self.max_rows))
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![Call::new(
            Kernel::new(&SHADER, "rmsnorm"),
            vec![
                Binding::read(self.x),
                Binding::read(self.weight),
                Binding::write(self.out),
            ],
        )]
    }
    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let rows = step.n_tokens.min(self.max_rows);
        write_params(
            params,
            &RmsNormParams {
                rows,
                dim: self.dim,
                eps: self.eps,
                _pad: 0,
            },
        );
        grid1(rows)
    }
}

/// CPU reference, same math, f32 accumulation.
pub fn reference(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let dim = w.len();
    let mut out = vec![0.0; x.len()];
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for i in 0..dim {
            or[i] = xr[i] * inv * w[i];
        }
    }
    out
}
