//! Encoders for the GGUF element formats: the inverse of
//! [`crate::checkpoint::ggml::dequantize`].
//!
//! Used to build synthetic models and test data. The block formats follow
//! ggml's reference quantizers (`quantize_row_q4_0_ref`, `..._q4_1_ref`,
//! `..._q8_0_ref` in ggml-quants.c) rounding step for rounding step, so a
//! tensor encoded here is byte-identical to what llama.cpp's reference path
//! writes for the same f32 input:
//!
//! | format | per block of 32 | scale | code |
//! |---|---|---|---|
//! | Q4_0 | f16 d, 16 B codes | d = (signed max-by-abs) / -8 | q = min(15, trunc(x/d + 8.5)) |
//! | Q4_1 | f16 d, f16 m, 16 B codes | d = (max - min) / 15, m = min | q = min(15, trunc((x-m)/d + 0.5)) |
//! | Q8_0 | f16 d, 32 i8 | d = amax / 127 | q = round(x/d) (half away from zero) |
//!
//! Codes are computed with the f32 scale, before it is rounded to f16 for
//! storage, as ggml does. 4-bit codes pack two per byte: element `j` in the
//! low nibble of byte `j`, element `j + 16` in the high nibble.

use half::{bf16, f16};

use super::HostDType;
use super::ggml::QK;
use crate::{ModelError, Result};

/// Encodes `x` (row-major, quantized along contiguous runs of 32) as `dtype`.
///
/// Block formats need `x.len()` to be a multiple of 32; a matrix whose row
/// length is a multiple of 32 can be encoded in one call because blocks never
/// straddle rows then.
pub fn quantize(dtype: HostDType, x: &[f32]) -> Result<Vec<u8>> {
    check_blocks(dtype, x.len())?;
    let mut out = vec![0u8; dtype.bytes_for(x.len())];
    quantize_into(dtype, x, &mut out)?;
    Ok(out)
}

/// [`quantize`] into `out`, which must hold exactly `dtype.bytes_for(x.len())` bytes.
pub fn quantize_into(dtype: HostDType, x: &[f32], out: &mut [u8]) -> Result<()> {
    check_blocks(dtype, x.len())?;
    if out.len() != dtype.bytes_for(x.len()) {
        return Err(ModelError::Input(format!(
            "{} values of {dtype:?} take {} bytes, not {}",
            x.len(),
            dtype.bytes_for(x.len()),
            out.len()
        )));
    }
    // Fixed-size arrays per element / block: no bounds checks in the loops.
    match dtype {
        HostDType::Mixed => {
            return Err(ModelError::Input(
                "mixed-width weights are made by `lamina quantize`, not a block encoder".into(),
            ));
        }
        HostDType::Q5_0
        | HostDType::Q5_1
        | HostDType::Q2_K
        | HostDType::Q3_K
        | HostDType::Q4_K
        | HostDType::Q5_K
        | HostDType::Q6_K
        | HostDType::IQ4_NL
        | HostDType::IQ4_XS => {
            return Err(ModelError::Input(format!(
                "Lamina reads {dtype} but does not encode it; encode as q4_0, q4_1 or q8_0, \
                 or make the file with llama.cpp's llama-quantize"
            )));
        }
        HostDType::F32 => {
            for (o, v) in out.as_chunks_mut::<4>().0.iter_mut().zip(x) {
                *o = v.to_le_bytes();
            }
        }
        HostDType::F16 => {
            for (o, v) in out.as_chunks_mut::<2>().0.iter_mut().zip(x) {
                *o = f16::from_f32(*v).to_le_bytes();
            }
        }
        HostDType::BF16 => {
            for (o, v) in out.as_chunks_mut::<2>().0.iter_mut().zip(x) {
                *o = bf16::from_f32(*v).to_le_bytes();
            }
        }
        HostDType::Q4_0 => {
            let blocks = x.as_chunks::<QK>().0;
            blocks
                .iter()
                .zip(out.as_chunks_mut::<18>().0)
                .for_each(|(b, o)| encode_q4_0(b, o));
        }
        HostDType::Q4_1 => {
            let blocks = x.as_chunks::<QK>().0;
            blocks
                .iter()
                .zip(out.as_chunks_mut::<20>().0)
                .for_each(|(b, o)| encode_q4_1(b, o));
        }
        HostDType::Q8_0 => {
            let blocks = x.as_chunks::<QK>().0;
            blocks
                .iter()
                .zip(out.as_chunks_mut::<34>().0)
                .for_each(|(b, o)| encode_q8_0(b, o));
        }
    }
    Ok(())
}

fn check_blocks(dtype: HostDType, n: usize) -> Result<()> {
    if !n.is_multiple_of(dtype.block_size()) {
        return Err(ModelError::Input(format!(
            "cannot encode {n} values as {dtype:?}: not a multiple of its block size {}",
            dtype.block_size()
        )));
    }
    Ok(())
}

/// Reciprocal of a scale, 0 for a zero scale (an all-zero block encodes as
/// zero codes rather than NaN).
fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

fn encode_q4_0(block: &[f32; QK], out: &mut [u8; 18]) {
    // The signed value of largest magnitude maps to code 0 (-8 * d), so it is
    // exact; the opposite extreme would need +8 and clamps to 7.
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in block {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = inverse(d);
    // `as i8` truncates toward zero like C's (int8_t) cast, and saturates
    // (NaN -> 0) instead of being undefined.
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    let [d0, d1] = f16::from_f32(d).to_le_bytes();
    out[0] = d0;
    out[1] = d1;
    // Two codes per byte: element j in the low nibble, j + 16 in the high one.
    for j in 0..QK / 2 {
        out[2 + j] = code(block[j]) | (code(block[j + QK / 2]) << 4);
    }
}

fn encode_q4_1(block: &[f32; QK], out: &mut [u8; 20]) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in block {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let code = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    let [d0, d1] = f16::from_f32(d).to_le_bytes();
    let [m0, m1] = f16::from_f32(min).to_le_bytes();
    (out[0], out[1], out[2], out[3]) = (d0, d1, m0, m1);
    for j in 0..QK / 2 {
        out[4 + j] = code(block[j]) | (code(block[j + QK / 2]) << 4);
    }
}

fn encode_q8_0(block: &[f32; QK], out: &mut [u8; 34]) {
    let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    // f32::round rounds half away from zero, like C's roundf.
    for (o, v) in out[2..].iter_mut().zip(block) {
        *o = ((v * id).round() as i8) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ggml::dequantize;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// f16 has an 11-bit significand: storing a value costs up to 2^-11 of it...
    const F16_REL: f32 = 1.0 / 2048.0;
    /// ...or, below f16's smallest normal (6.1e-5), half its subnormal step 2^-24.
    const F16_ABS: f32 = 1.0 / (1u32 << 25) as f32;

    /// Worst-case error of storing `v` as f16.
    fn f16_err(v: f32) -> f32 {
        v.abs() * F16_REL + F16_ABS
    }

    /// Worst-case |x - dequant(quant(x))| over a block, as a function of the
    /// block's statistics. Each is the rounding step of the code plus what
    /// storing the scale (and min) in f16 can add.
    fn budget(dtype: HostDType, block: &[f32]) -> f32 {
        let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let min = block.iter().copied().fold(f32::MAX, f32::min);
        let max = block.iter().copied().fold(-f32::MAX, f32::max);
        match dtype {
            HostDType::F32 => 0.0,
            HostDType::F16 => f16_err(amax),
            HostDType::BF16 => amax / 256.0,
            // The extreme opposite to the max-by-abs needs code +8 and clamps
            // to 7: a full step d = amax/8 of error. Other values: half a step.
            // Codes up to 8 steps from zero multiply the f16 error of d.
            HostDType::Q4_0 => amax / 8.0 + 8.0 * f16_err(amax / 8.0),
            HostDType::Q4_1 => {
                let d = (max - min) / 15.0;
                d / 2.0 + 15.0 * f16_err(d) + f16_err(min)
            }
            HostDType::Q8_0 => {
                let d = amax / 127.0;
                d / 2.0 + 127.0 * f16_err(d)
            }
            // Not encodable (see `quantize_into`): no budget.
            _ => f32::NAN,
        }
    }

    /// Blocks that stress the encoders: random normal, all zero, constant,
    /// all negative, one spike, tiny (f16-subnormal scales), large.
    fn test_data(seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut x = Vec::new();
        for _ in 0..64 {
            x.extend((0..QK).map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal)));
        }
        x.extend([0.0; QK]);
        x.extend([0.75; QK]);
        x.extend([-3.0; QK]);
        x.extend((0..QK).map(|i| -(i as f32) - 1.0));
        x.extend((0..QK).map(|i| if i == 5 { 40.0 } else { 0.01 * i as f32 }));
        x.extend((0..QK).map(|i| 1e-6 * (i as f32 - 16.0)));
        x.extend((0..QK).map(|i| 1000.0 * (i as f32 - 10.0)));
        x
    }

    #[test]
    fn round_trip_within_budget() -> Result<()> {
        let x = test_data(7);
        for dtype in [
            HostDType::F32,
            HostDType::F16,
            HostDType::BF16,
            HostDType::Q4_0,
            HostDType::Q4_1,
            HostDType::Q8_0,
        ] {
            let bytes = quantize(dtype, &x)?;
            assert_eq!(bytes.len(), dtype.bytes_for(x.len()), "{dtype:?} size");
            let y = dequantize(dtype, &bytes, x.len())?;
            for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
                let tol = budget(dtype, xb);
                for (i, (a, c)) in xb.iter().zip(yb).enumerate() {
                    let err = (a - c).abs();
                    assert!(
                        err <= tol,
                        "{dtype:?} block {b} elem {i}: x {a} -> {c}, error {err} > budget {tol}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn q4_0_matches_hand_computed_block() -> Result<()> {
        // max-by-abs is -16 (element 31) -> d = 2, codes x/2 + 8.
        let mut x: Vec<f32> = (0..32).map(|i| -(i as f32) / 2.0 - 0.5).collect();
        x[31] = -16.0;
        let b = quantize(HostDType::Q4_0, &x)?;
        assert_eq!(f16::from_le_bytes([b[0], b[1]]).to_f32(), 2.0);
        // element 0: -0.5/2 + 8.5 = 8.25 -> 8; element 16: -8.5/2 + 8.5 = 4.25 -> 4.
        assert_eq!(b[2], 8 | (4 << 4));
        // element 15: -8/2 + 8.5 = 4.5 -> 4; element 31: -16/2 + 8.5 = 0.5 -> 0.
        assert_eq!(b[17], 4);
        Ok(())
    }

    #[test]
    fn q4_0_clamps_the_opposite_extreme() -> Result<()> {
        let mut x = vec![0.0f32; 32];
        x[0] = 8.0; // max-by-abs, d = -1
        x[1] = -8.0; // would need code 16
        let y = dequantize(HostDType::Q4_0, &quantize(HostDType::Q4_0, &x)?, 32)?;
        assert_eq!(y[0], 8.0);
        assert_eq!(y[1], -7.0);
        Ok(())
    }

    #[test]
    fn q4_1_and_q8_0_hit_the_extremes_exactly() -> Result<()> {
        let x: Vec<f32> = (0..32).map(|i| i as f32 * 0.5 - 3.0).collect();
        let y = dequantize(HostDType::Q4_1, &quantize(HostDType::Q4_1, &x)?, 32)?;
        assert_eq!(y[0], -3.0);
        assert!(
            (y[31] - 12.5).abs() <= 12.5 * 2.0 * F16_REL,
            "max {}",
            y[31]
        );
        let y = dequantize(HostDType::Q8_0, &quantize(HostDType::Q8_0, &x)?, 32)?;
        assert!((y[31] - 12.5).abs() <= 12.5 * F16_REL, "amax {}", y[31]);
        Ok(())
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() -> Result<()> {
        let mut x = vec![0.0f32; 32];
        x[0] = 127.0; // d = 1
        x[1] = 2.5;
        x[2] = -2.5;
        let b = quantize(HostDType::Q8_0, &x)?;
        assert_eq!(&b[2..5], &[127u8, 3, (-3i8) as u8]);
        Ok(())
    }

    #[test]
    fn zero_block_encodes_as_zero() -> Result<()> {
        for dtype in [HostDType::Q4_0, HostDType::Q4_1, HostDType::Q8_0] {
            let y = dequantize(dtype, &quantize(dtype, &[0.0; 64])?, 64)?;
            assert!(y.iter().all(|v| *v == 0.0), "{dtype:?}: {y:?}");
        }
        Ok(())
    }

    #[test]
    fn formats_read_but_not_encoded_are_named() {
        for dtype in HostDType::ALL {
            if matches!(
                dtype,
                HostDType::F32
                    | HostDType::F16
                    | HostDType::BF16
                    | HostDType::Q4_0
                    | HostDType::Q4_1
                    | HostDType::Q8_0
                    | HostDType::Mixed
            ) {
                continue;
            }
            let err = quantize(dtype, &[0.5; 256]).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, ModelError::Input(_)) && msg.contains(dtype.name()),
                "{dtype:?}: {msg}"
            );
        }
    }

    #[test]
    fn rejects_partial_blocks() {
        for dtype in [HostDType::Q4_0, HostDType::Q4_1, HostDType::Q8_0] {
            let err = quantize(dtype, &[1.0; 33]).unwrap_err();
            assert!(matches!(err, ModelError::Input(_)), "{dtype:?}: {err}");
        }
        assert!(quantize(HostDType::F16, &[1.0; 33]).is_ok());
    }

    #[test]
    fn random_rows_round_trip_with_small_mean_error() -> Result<()> {
        // Beyond the worst case: the typical Q4 error of a N(0,1) row is about
        // a quarter of a step; catch a systematic bias (e.g. a wrong +8 offset).
        let mut rng = StdRng::seed_from_u64(11);
        let x: Vec<f32> = (0..32 * 1757)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        for (dtype, max_rms) in [
            (HostDType::Q4_0, 0.05f64),
            (HostDType::Q4_1, 0.05),
            (HostDType::Q8_0, 0.003),
        ] {
            let y = dequantize(dtype, &quantize(dtype, &x)?, x.len())?;
            let mse = x
                .iter()
                .zip(&y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / x.len() as f64;
            let bias = x.iter().zip(&y).map(|(a, b)| (a - b) as f64).sum::<f64>() / x.len() as f64;
            assert!(
                mse.sqrt() < max_rms,
                "{dtype:?}: rms error {} >= {max_rms}",
                mse.sqrt()
            );
            assert!(
                bias.abs() < 0.01 * max_rms.max(0.01),
                "{dtype:?}: bias {bias}"
            );
        }
        Ok(())
    }
}
