//! Int8 activation codes (PrefixQuant, arXiv 2410.05265): the settings, the
//! parameter block and the CPU quantizer shared by the ops that write codes
//! (`act_quant`, `rmsnorm_quant`), whose shaders quantize with
//! shaders/lib/actq.wgsl; `matmul_int` reads them.
//!
//! A row `v` becomes `v ≈ scale * q` with
//! `q = clamp(round(v * inv), -qmax, qmax)`, `qmax = 2^(bits-1) - 1` (127 or
//! 7) and round half to even (WGSL's `round`, Rust's `round_ties_even`):
//! - [`ActScale::Static`]: PrefixQuant's static per-tensor scale, fixed at
//!   quantization time (with the outlier tokens held in the prefix, one
//!   scale fits every token). `inv = 1 / scale` is computed on the host and
//!   `scale` is written into every row's slot, so consumers read per-row
//!   scales in both modes.
//! - [`ActScale::Dynamic`]: per-token `scale = max|v| / qmax`,
//!   `inv = qmax / max|v|`; a row of zeros gets scale 0 and codes 0.
//!
//! Only multiplications, max and round touch the values on the GPU in the
//! static mode (exact or correctly rounded in WGSL), so a kernel's codes
//! equal [`quantize_rows`]' bit for bit given the same `v`; the dynamic mode
//! adds two divisions, correctly rounded on lavapipe (WGSL allows 2.5 ulp, so
//! elsewhere a code sitting exactly on a rounding boundary may differ by one).
//!
//! Codes are stored four to a u32 word, column `4w + k` in byte `k` as i8
//! ([`pack_codes`]). 4-bit codes are int8 lanes too, not packed nibbles:
//! `matmul_int`'s `dot4I8Packed` takes 8-bit lanes, so nibbles would cost an
//! unpack per word in every invocation that reads them, to save bytes that
//! are ~`1/rows` of the weight bytes the same matmul streams (576 bytes of
//! x against 442 KiB of a 576x1536 Q4 weight).

use crate::Result;
use crate::dispatch::{TensorId, TensorInfo, check_bytes};
use crate::weight::GROUP;

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

impl ActScale {
    /// A static scale must be positive and finite with a finite inverse.
    pub fn check(self, op: &'static str) -> Result<()> {
        if let ActScale::Static(s) = self {
            crate::ensure_shape!(
                s.is_finite() && s > 0.0 && (1.0 / s).is_finite(),
                op,
                "static scale must be positive and finite with a finite inverse, got {s}"
            );
        }
        Ok(())
    }

    /// The shader's view of these settings.
    pub fn params(self, bits: ActBits) -> ActParams {
        let (dynamic, scale, inv_scale) = match self {
            ActScale::Static(s) => (0, s, 1.0 / s),
            ActScale::Dynamic => (1, 0.0, 0.0),
        };
        ActParams {
            dynamic,
            qmax: bits.qmax(),
            scale,
            inv_scale,
        }
    }
}

crate::params_struct! {
    /// The `act` member of the code-writing ops' parameter blocks (`ActParams`
    /// in lib/actq.wgsl).
    pub struct ActParams {
        /// 1 for [`ActScale::Dynamic`].
        pub dynamic: u32,
        pub qmax: f32,
        /// Static only: the scale and its inverse.
        pub scale: f32,
        pub inv_scale: f32,
    }
}

/// The `(scale, inv)` of one row under `scale` (see the module docs).
pub fn row_scale(row: &[f32], bits: ActBits, scale: ActScale) -> (f32, f32) {
    match scale {
        ActScale::Static(s) => (s, 1.0 / s),
        ActScale::Dynamic => {
            let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if amax > 0.0 {
                (amax / bits.qmax(), bits.qmax() / amax)
            } else {
                (0.0, 0.0)
            }
        }
    }
}

/// CPU reference: the codes (one i8 per element, row-major) and per-row
/// scales of `v` (`[rows, cols]`), with the kernels' arithmetic.
pub fn quantize_rows(
    v: &[f32],
    cols: usize,
    bits: ActBits,
    scale: ActScale,
) -> (Vec<i8>, Vec<f32>) {
    let qmax = bits.qmax();
    let mut codes = Vec::with_capacity(v.len());
    let mut scales = Vec::new();
    for row in v.chunks_exact(cols) {
        let (s, inv) = row_scale(row, bits, scale);
        scales.push(s);
        codes.extend(
            row.iter()
                .map(|x| (x * inv).round_ties_even().clamp(-qmax, qmax) as i8),
        );
    }
    (codes, scales)
}

/// Packs i8 codes four to a u32 word, as the kernels store them.
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

/// The tensors of an op that turns `[rows, width]` f32 rows (`x`) into
/// codes (`[rows, width / 4]` u32) and a scale per row: `width` a
/// positive multiple of 32 (named `what` in the message), `rows` > 0, the
/// scale valid, x indexable with u32 words, and every tensor big enough.
#[allow(clippy::too_many_arguments)]
pub fn check_code_rows(
    g: &[TensorInfo],
    op: &'static str,
    what: &str,
    (x, codes, scales): (TensorId, TensorId, TensorId),
    width: u32,
    rows: u32,
    scale: ActScale,
) -> Result<()> {
    crate::ensure_shape!(
        width > 0 && width.is_multiple_of(GROUP),
        op,
        "{what} must be a positive multiple of {GROUP}, got {width}"
    );
    crate::ensure_shape!(rows > 0, op, "max_rows is 0");
    scale.check(op)?;
    let x_bytes = 4 * u64::from(width) * u64::from(rows);
    crate::ensure_shape!(
        x_bytes < (1 << 34),
        op,
        "x ({x_bytes} bytes) too large for u32 indexing"
    );
    check_bytes(g, op, "x", x, x_bytes)?;
    check_bytes(g, op, "codes", codes, x_bytes / 4)?;
    check_bytes(g, op, "scales", scales, 4 * u64::from(rows))
}
