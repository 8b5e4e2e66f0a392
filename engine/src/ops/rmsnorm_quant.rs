//! RMSNorm straight to int8 codes: `rmsnorm` then `act_quant` in one
//! dispatch, for the norms that feed integer matmuls (PrefixQuant, arXiv
//! 2410.05265, quantizes the inputs of the QKV and gate/up projections,
//! which are RMSNorm outputs, with static per-tensor scales).
//!
//! `v[r, i] = x[r, i] / sqrt(mean_j(x[r, j]^2) + eps) * w[i]`, then
//! `q = clamp(round(v * inv), -qmax, qmax)` with the settings of
//! `crate::act` ([`ActBits`], [`ActScale`], static or dynamic). The sum of
//! squares is reduced in `rmsnorm`'s order, so on one device the codes and
//! scales equal those of `rmsnorm` followed by `act_quant` bit for bit.
//!
//! # Shapes
//! x: `[max_rows, dim]` f32, w: `[dim]` f32 with `dim % 32 == 0`; codes:
//! `[max_rows, dim / 4]` u32 (four i8 codes per word); scales: `[max_rows]`
//! f32. One workgroup per row of the step.

use crate::act::{ActBits, ActParams, ActScale, check_code_rows, quantize_rows};
use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::pipeline::Kernel;
use crate::shader::lib::{ACTQ, REDUCE, ROWNORM};
use crate::{Caps, Result};

crate::shader!(
    SHADER,
    "rmsnorm_quant",
    [REDUCE, ROWNORM, ACTQ],
    RmsNormQuantParams,
    [ActParams]
);

crate::params_struct! {
    /// Mirrors `Params` in rmsnorm_quant.wgsl.
    pub struct RmsNormQuantParams {
        /// Rows in this step.
        pub rows: u32,
        pub dim: u32,
        pub eps: f32,
        pub _pad: u32,
        pub act: ActParams,
    }
}

#[derive(Debug, Clone)]
pub struct RmsNormQuant {
    pub x: TensorId,
    pub weight: TensorId,
    /// `[max_rows, dim / 4]` u32.
    pub codes: TensorId,
    /// `[max_rows]` f32.
    pub scales: TensorId,
    pub dim: u32,
    pub eps: f32,
    pub bits: ActBits,
    pub scale: ActScale,
    /// Rows at the graph's largest step.
    pub max_rows: u32,
}

impl OpDef for RmsNormQuant {
    fn name(&self) -> &'static str {
        "rmsnorm_quant"
    }

    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        const OP: &str = "rmsnorm_quant";
        let tensors = (self.x, self.codes, self.scales);
        check_code_rows(g, OP, "dim", tensors, self.dim, self.max_rows, self.scale)?;
        check_bytes(g, OP, "weight", self.weight, 4 * u64::from(self.dim))
    }

    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![Call::new(
            Kernel::new(&SHADER, "rmsnorm_quant"),
            vec![
                Binding::read(self.x),
                Binding::read(self.weight),
                Binding::write(self.codes),
                Binding::write(self.scales),
            ],
        )]
    }

    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let rows = step.n_tokens.min(self.max_rows);
        write_params(
            params,
            &RmsNormQuantParams {
                rows,
                dim: self.dim,
                eps: self.eps,
                _pad: 0,
                act: self.scale.params(self.bits),
            },
        );
        grid1(rows)
    }
}

/// CPU reference: RMSNorm in f32 as `rmsnorm::reference` computes it, then
/// `crate::act`'s quantizer. (Its sum of squares runs in another order
/// than the kernel's, so a code next to a rounding boundary may differ by
/// one; the kernel is held bit-exact against rmsnorm + act_quant instead.)
pub fn reference(
    x: &[f32],
    w: &[f32],
    eps: f32,
    bits: ActBits,
    scale: ActScale,
) -> (Vec<i8>, Vec<f32>) {
    let dim = w.len();
    let mut v = vec![0.0; x.len()];
    for (xr, vr) in x.chunks_exact(dim).zip(v.chunks_exact_mut(dim)) {
        let ss: f32 = xr.iter().map(|a| a * a).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for i in 0..dim {
            vr[i] = xr[i] * inv * w[i];
        }
    }
    quantize_rows(&v, dim, bits, scale)
}
