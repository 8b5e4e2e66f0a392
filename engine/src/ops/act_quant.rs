//! Activation quantization for the integer matmul (PrefixQuant, arXiv
//! 2410.05265): f32 rows to symmetric int8 codes and one f32 scale per row,
//! `x ≈ scale * q`.
//!
//! `q = clamp(round(x * inv), -qmax, qmax)` with `qmax = 2^(bits-1) - 1`
//! (127 or 7) and round half to even (WGSL's `round`, Rust's
//! `round_ties_even`):
//! - [`ActScale::Static`]: PrefixQuant's static per-tensor scale, fixed at
//!   quantization time (with the outlier tokens held in the prefix, one
//!   scale fits every token). `inv = 1 / scale` is computed on the host and
//!   `scale` is written into every row's slot, so consumers read per-row
//!   scales in both modes.
//! - [`ActScale::Dynamic`]: per-token `scale = max|x_row| / qmax`,
//!   `inv = qmax / max|x_row|`; a row of zeros gets scale 0 and codes 0.
//!
//! Only multiplications, max and round touch the values on the GPU in the
//! static mode (all exact or correctly rounded in WGSL), so the codes equal
//! [`reference`]'s bit for bit; the dynamic mode adds the two divisions,
//! correctly rounded on lavapipe (WGSL allows 2.5 ulp, so elsewhere a code
//! sitting exactly on a rounding boundary may differ by one).
//!
//! 4-bit codes are stored as int8 lanes, like 8-bit ones, not as packed
//! nibbles: the integer matmul's `dot4I8Packed` takes 8-bit lanes, so
//! nibbles would cost an unpack per word in every invocation that reads
//! them, to save bytes that are ~`1/rows` of the weight bytes the same
//! matmul streams (576 bytes of x against 442 KiB of a 576x1536 Q4 weight).
//!
//! # Shapes
//! x: `[max_rows, cols]` f32 with `cols % 32 == 0`; codes: `[max_rows, cols/4]`
//! u32, four codes per word (column `4w + k` in byte `k`, as i8); scales:
//! `[max_rows]` f32. One workgroup per row of the step.

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::pipeline::Kernel;
use crate::shader::lib::REDUCE;
use crate::weight::GROUP;
use crate::{Caps, Result};

crate::shader!(SHADER, "act_quant", [REDUCE], ActQuantParams);

crate::params_struct! {
    /// Mirrors `Params` in act_quant.wgsl.
    pub struct ActQuantParams {
        /// Rows in this step.
        pub rows: u32,
        /// Code words per row, `cols / 4`.
        pub words: u32,
        /// 1 for [`ActScale::Dynamic`].
        pub dynamic: u32,
        pub qmax: f32,
        /// Static only: the scale and its inverse.
        pub scale: f32,
        pub inv_scale: f32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

/// Code width of quantized activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActBits {
    /// W*A8: codes in -127..=127.
    Int8,
    /// W*A4: codes in -7..=7 (still one byte each).
    Int4,
}

impl ActBits {
    pub fn bits(self) -> u32 {
        match self {
            ActBits::Int8 => 8,
            ActBits::Int4 => 4,
        }
    }
    /// Largest code, `2^(bits-1) - 1` (symmetric: -128 and -8 are unused).
    pub fn qmax(self) -> f32 {
        ((1u32 << (self.bits() - 1)) - 1) as f32
    }
}

/// Where the scale comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActScale {
    /// One scale for every token, fixed at quantization time.
    Static(f32),
    /// Per token, from the row's largest magnitude.
    Dynamic,
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
        const OP: &str = "act_quant";
        let (cols, rows) = (self.cols, self.max_rows);
        crate::ensure_shape!(
            cols > 0 && cols.is_multiple_of(GROUP),
            OP,
            "cols must be a positive multiple of {GROUP}, got {cols}"
        );
        crate::ensure_shape!(rows > 0, OP, "max_rows is 0");
        if let ActScale::Static(s) = self.scale {
            crate::ensure_shape!(
                s.is_finite() && s > 0.0 && (1.0 / s).is_finite(),
                OP,
                "static scale must be positive and finite with a finite inverse, got {s}"
            );
        }
        let x_bytes = 4 * u64::from(cols) * u64::from(rows);
        crate::ensure_shape!(
            x_bytes < (1 << 34),
            OP,
            "x ({x_bytes} bytes) too large for u32 indexing"
        );
        check_bytes(g, OP, "x", self.x, x_bytes)?;
        check_bytes(g, OP, "codes", self.codes, x_bytes / 4)?;
        check_bytes(g, OP, "scales", self.scales, 4 * u64::from(rows))
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
        let (dynamic, scale) = match self.scale {
            ActScale::Static(s) => (0, s),
            ActScale::Dynamic => (1, 0.0),
        };
        write_params(
            params,
            &ActQuantParams {
                rows,
                words: self.cols / 4,
                dynamic,
                qmax: self.bits.qmax(),
                scale,
                inv_scale: if dynamic == 0 { 1.0 / scale } else { 0.0 },
                _pad0: 0,
                _pad1: 0,
            },
        );
        grid1(rows)
    }
}

/// CPU reference: the codes (one i8 per element, row-major) and per-row
/// scales of `x` (`[rows, cols]`), with the kernel's arithmetic.
pub fn reference(x: &[f32], cols: usize, bits: ActBits, scale: ActScale) -> (Vec<i8>, Vec<f32>) {
    let qmax = bits.qmax();
    let mut codes = Vec::with_capacity(x.len());
    let mut scales = Vec::new();
    for row in x.chunks_exact(cols) {
        let (s, inv) = match scale {
            ActScale::Static(s) => (s, 1.0 / s),
            ActScale::Dynamic => {
                let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                if amax > 0.0 {
                    (amax / qmax, qmax / amax)
                } else {
                    (0.0, 0.0)
                }
            }
        };
        scales.push(s);
        codes.extend(
            row.iter()
                .map(|v| (v * inv).round_ties_even().clamp(-qmax, qmax) as i8),
        );
    }
    (codes, scales)
}

/// Packs i8 codes four to a u32 word, as the kernel stores them.
pub fn pack_codes(codes: &[i8]) -> Vec<u32> {
    codes
        .chunks(4)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (k, &q)| w | (u32::from(q as u8) << (8 * k)))
        })
        .collect()
}
