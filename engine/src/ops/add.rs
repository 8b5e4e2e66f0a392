//! Residual add, in place: `x[i] += y[i]`.
//!
//! # Shapes
//! x: [n_tokens, dim] f32 (read-write), y: [n_tokens, dim] f32.

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
        pub _pad: [u32; 3],
    }
}

#[derive(Debug, Clone)]
pub struct Add {
    pub x: TensorId,
    pub y: TensorId,
    /// Elements per row.
    pub dim: u32,
    pub max_rows: u32,
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
        check_bytes(g, "add", "x", self.x, n)?;
        check_bytes(g, "add", "y", self.y, n)
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![Call::new(
            Kernel::new(&SHADER, "add"),
            vec![Binding::write(self.x), Binding::read(self.y)],
        )]
    }
    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let n = step.n_tokens.min(self.max_rows) * self.dim;
        write_params(params, &AddParams { n, _pad: [0; 3] });
        grid1(n.div_ceil(WG * PER_THREAD))
    }
}

pub fn reference(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
