//! Residual add, in place: `x[i] += y[i]`; or, with `bias`, one row added
//! to every row: `x[t, i] += y[i]` (Qwen2's q/k/v biases).
//!
//! # Shapes
//! x: [n_tokens, dim] f32 (read-write), y: [n_tokens, dim] f32 (`[dim]`
//! with `bias`).

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::pipeline::Kernel;
use crate::{Caps, Result};

crate::shader!(SHADER, "add", [], AddParams);

crate::params_struct! {
    pub struct AddParams {
        /// Elements in this step.
        pub n: u32,
        /// Elements per row (y's length with `BIAS`).
        pub dim: u32,
        pub _pad: [u32; 2],
    }
}

#[derive(Debug, Clone)]
pub struct Add {
    pub x: TensorId,
    pub y: TensorId,
    /// Elements per row.
    pub dim: u32,
    pub max_rows: u32,
    /// y is one row, added to every row of x.
    pub bias: bool,
}

/// Elements per invocation and workgroup size (mirrors add.wgsl).
const WG: u32 = 256;
const PER_THREAD: u32 = 4;

impl OpDef for Add {
    fn name(&self) -> &'static str {
        "add"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        let n = 4 * u64::from(self.dim) * u64::from(self.max_rows);
        crate::ensure_shape!(self.dim > 0, "add", "dim is 0");
        check_bytes(g, "add", "x", self.x, n)?;
        let y = if self.bias {
            4 * u64::from(self.dim)
        } else {
            n
        };
        check_bytes(g, "add", "y", self.y, y)
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![Call::new(
            Kernel::new(&SHADER, "add").with("BIAS", u32::from(self.bias)),
            vec![Binding::write(self.x), Binding::read(self.y)],
        )]
    }
    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let n = step.n_tokens.min(self.max_rows) * self.dim;
        write_params(
            params,
            &AddParams {
                n,
                dim: self.dim,
                _pad: [0; 2],
            },
        );
        grid1(n.div_ceil(WG * PER_THREAD))
    }
}

/// CPU reference; `y` shorter than `x` (a bias) repeats for every row.
pub fn reference(x: &mut [f32], y: &[f32]) {
    for (i, a) in x.iter_mut().enumerate() {
        *a += y[i % y.len()];
    }
}
