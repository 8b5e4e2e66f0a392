//! Activation quantization for the integer matmul (PrefixQuant, arXiv
//! 2410.05265): f32 rows to symmetric int8 codes and one f32 scale per row,
//! `x ≈ scale * q`.
//!
//! The quantizer and its settings ([`ActBits`], [`ActScale`]: a static
//! per-tensor scale or a dynamic per-token one) are `crate::act`'s, shared
//! with `rmsnorm_quant`; the math, the rounding and what is exact are
//! documented there.
//!
//! # Shapes
//! x: `[max_rows, cols]` f32 with `cols % 32 == 0`; codes: `[max_rows, cols/4]`
//! u32, four codes per word (column `4w + k` in byte `k`, as i8); scales:
//! `[max_rows]` f32. One workgroup per row of the step.

use crate::act::{ActBits, ActParams, ActScale, check_code_rows, quantize_rows};
use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, grid1, write_params,
};
use crate::pipeline::Kernel;
use crate::shader::lib::{ACTQ, REDUCE};
use crate::{Caps, Result};

crate::shader!(
    SHADER,
    "act_quant",
    [REDUCE, ACTQ],
    ActQuantParams,
    [ActParams]
);

crate::params_struct! {
    /// Mirrors `Params` in act_quant.wgsl.
    pub struct ActQuantParams {
        /// Rows in this step.
        pub rows: u32,
        /// Code words per row, `cols / 4`.
        pub words: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub act: ActParams,
    }
}

#[derive(Debug, Clone)]
pub struct ActQuant {
    pub x: TensorId,
    /// `[max_rows, cols / 4]` u32.
    pub codes: TensorId,
    /// `[max_rows]` f32.
    pub scales: TensorId,
    pub cols: u32,
    pub bits: ActBits,
    pub scale: ActScale,
    /// Rows at the graph's largest step.
    pub max_rows: u32,
}

/// Workgroup size (mirrors `WG` in act_quant.wgsl).
pub const WG: u32 = 64;

impl OpDef for ActQuant {
    fn name(&self) -> &'static str {
        "act_quant"
    }

    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        let tensors = (self.x, self.codes, self.scales);
        check_code_rows(
            g,
            "act_quant",
            "cols",
            tensors,
            self.cols,
            self.max_rows,
            self.scale,
        )
    }

    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        vec![Call::new(
            Kernel::new(&SHADER, "act_quant"),
            vec![
                Binding::read(self.x),
                Binding::write(self.codes),
                Binding::write(self.scales),
            ],
        )]
    }

    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let rows = step.n_tokens.min(self.max_rows);
        write_params(
            params,
            &ActQuantParams {
                rows,
                words: self.cols / 4,
                _pad0: 0,
                _pad1: 0,
                act: self.scale.params(self.bits),
            },
        );
        grid1(rows)
    }
}

/// CPU reference: the codes (one i8 per element, row-major) and per-row
/// scales of `x` (`[rows, cols]`).
pub fn reference(x: &[f32], cols: usize, bits: ActBits, scale: ActScale) -> (Vec<i8>, Vec<f32>) {
    quantize_rows(x, cols, bits, scale)
}
