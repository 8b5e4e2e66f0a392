//! Gram matrix accumulation: `out += xᵀ x` over the step's tokens, the
//! `Σ x xᵀ` of GPTQ's Hessian `H = 2/N Σ x xᵀ` for a layer whose inputs are
//! the rows of `x`. Accumulates across steps (the host zeroes `out` first).
//! Only tiles on or above the diagonal are computed; read the result through
//! [`symmetrize`].
//!
//! # Shapes
//! x: [max_rows, dim] f32, out: [dim, dim] f32 (read-write); dim % 8 == 0.

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::pipeline::Kernel;
use crate::{Caps, Result};

crate::shader!(SHADER, "gram", [], GramParams);

crate::params_struct! {
    pub struct GramParams {
        pub n_tokens: u32,
        pub dim: u32,
        /// Workgroups along a side of out.
        pub side: u32,
        pub _pad: u32,
    }
}

#[derive(Debug, Clone)]
pub struct Gram {
    pub x: TensorId,
    pub out: TensorId,
    pub dim: u32,
    pub max_rows: u32,
}

/// Rows (and columns) of out per workgroup (mirrors gram.wgsl).
const TILE: u32 = 64;

impl OpDef for Gram {
    fn name(&self) -> &'static str {
        "gram"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        crate::ensure_shape!(
            self.dim > 0 && self.dim.is_multiple_of(8),
            "gram",
            "dim must be a positive multiple of 8, got {}",
            self.dim
        );
        let d = u64::from(self.dim);
        check_bytes(g, "gram", "x", self.x, 4 * d * u64::from(self.max_rows))?;
        check_bytes(g, "gram", "out", self.out, 4 * d * d)
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![Call::new(
            Kernel::new(&SHADER, "gram"),
            vec![Binding::read(self.x), Binding::write(self.out)],
        )]
    }
    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let n = step.n_tokens.min(self.max_rows);
        let side = self.dim.div_ceil(TILE);
        write_params(
            params,
            &GramParams {
                n_tokens: n,
                dim: self.dim,
                side,
                _pad: 0,
            },
        );
        if n == 0 {
            return [0; 3];
        }
        grid1(side * side)
    }
}

/// Fills the lower triangle of a `[dim, dim]` Gram matrix read back from the
/// GPU from its upper triangle (tiles below the diagonal are never written).
pub fn symmetrize(m: &mut [f32], dim: usize) {
    for i in 0..dim {
        for j in 0..i {
            m[i * dim + j] = m[j * dim + i];
        }
    }
}

/// CPU reference: `out += xᵀ x`, `x` `[n, dim]`.
pub fn reference(x: &[f32], dim: usize, out: &mut [f32]) {
    for row in x.chunks_exact(dim) {
        for i in 0..dim {
            for j in 0..dim {
                out[i * dim + j] += row[i] * row[j];
            }
        }
    }
}
