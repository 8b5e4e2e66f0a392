//! Dequantization of the GGUF element formats Lamina reads, on the CPU.
//!
//! Semantics follow ggml's reference `dequantize_row_*` (ggml-quants.c). A
//! block covers 32 consecutive elements of a row:
//!
//! | format | block bytes | layout | value |
//! |---|---|---|---|
//! | Q4_0 | 18 | f16 d, 16 B codes | x = d * (q - 8) |
//! | Q4_1 | 20 | f16 d, f16 m, 16 B codes | x = d * q + m |
//! | Q8_0 | 34 | f16 d, 32 x i8 | x = d * q |
//!
//! In the 4-bit formats byte `j` of the codes holds element `j` in its low
//! nibble and element `j + 16` in its high nibble.
//!
//! The other formats Lamina reads (Q5_0, Q5_1, IQ4_NL; the k-quants Q2_K to
//! Q6_K and IQ4_XS in 256-element super-blocks) are decoded block by block
//! in [`super::kquant`], which tables their layouts.
//!
//! This is the CPU oracle and the loader's conversion path; GPU kernels read
//! the same bytes repacked. The catalogue of ggml type ids (names, block
//! layouts, the ones Lamina runs) is here too: the model side's one table
//! of block sizes, which `HostDType` reads (the codecs here and in
//! `encode.rs` spell out each block's bytes as they walk it;
//! `lamina_engine::weight` has the GPU formats' own sizes, and
//! tests/tests/gguf.rs holds the two equal).

use half::{bf16, f16};

use super::HostDType;
use super::kquant::{self, each_block};
use crate::{ModelError, Result};

/// Block layout of a ggml tensor type: (elements per block, bytes per block).
/// Known for the types llama.cpp writes today, so that their extents can be
/// checked even where Lamina cannot compute with them.
pub fn ggml_type_layout(ggml_type: u32) -> Option<(usize, usize)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        39 => (32, 17),   // MXFP4
        _ => return None,
    })
}

/// ggml's name of a tensor type id, `unknown(N)` for ids it does not know.
pub fn ggml_type_name(ggml_type: u32) -> String {
    #[rustfmt::skip]
    const NAMES: [&str; 40] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4",
        "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8",
        "MXFP4",
    ];
    match NAMES.get(ggml_type as usize) {
        Some(n) => (*n).to_string(),
        None => format!("unknown({ggml_type})"),
    }
}

/// The Lamina host dtype of a ggml type id, where Lamina runs that type.
pub fn host_dtype(ggml_type: u32) -> Option<HostDType> {
    Some(match ggml_type {
        0 => HostDType::F32,
        1 => HostDType::F16,
        2 => HostDType::Q4_0,
        3 => HostDType::Q4_1,
        6 => HostDType::Q5_0,
        7 => HostDType::Q5_1,
        8 => HostDType::Q8_0,
        10 => HostDType::Q2_K,
        11 => HostDType::Q3_K,
        12 => HostDType::Q4_K,
        13 => HostDType::Q5_K,
        14 => HostDType::Q6_K,
        20 => HostDType::IQ4_NL,
        23 => HostDType::IQ4_XS,
        30 => HostDType::BF16,
        _ => return None,
    })
}

/// The ggml type id of a host dtype (inverse of [`host_dtype`]); `None`
/// for Lamina's Mixed, which GGUF has no type for.
pub fn ggml_type_of(dtype: HostDType) -> Option<u32> {
    Some(match dtype {
        HostDType::F32 => 0,
        HostDType::F16 => 1,
        HostDType::Q4_0 => 2,
        HostDType::Q4_1 => 3,
        HostDType::Q5_0 => 6,
        HostDType::Q5_1 => 7,
        HostDType::Q8_0 => 8,
        HostDType::Q2_K => 10,
        HostDType::Q3_K => 11,
        HostDType::Q4_K => 12,
        HostDType::Q5_K => 13,
        HostDType::Q6_K => 14,
        HostDType::IQ4_NL => 20,
        HostDType::IQ4_XS => 23,
        HostDType::BF16 => 30,
        HostDType::Mixed => return None,
    })
}

/// Elements per block of the ggml block formats.
pub const QK: usize = 32;

/// Converts `n` elements of `dtype` encoded in `bytes` to f32.
pub fn dequantize(dtype: HostDType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    check_len(dtype, bytes, n)?; // before allocating n floats
    let mut out = vec![0.0f32; n];
    dequantize_into(dtype, bytes, &mut out)?;
    Ok(out)
}

/// Converts `bytes` to f32 into `out` (whose length is the element count);
/// for row-at-a-time use without allocation.
pub fn dequantize_into(dtype: HostDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_len(dtype, bytes, out.len())?;
    match dtype {
        HostDType::Mixed => {
            return Err(ModelError::Input(
                "mixed-width weights dequantize through their layout (HostTensor::to_f32)".into(),
            ));
        }
        HostDType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        HostDType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        HostDType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        HostDType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(18)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let (lo, hi) = o.split_at_mut(QK / 2);
                for (j, &q) in b[2..].iter().enumerate() {
                    lo[j] = d * (f32::from(q & 0x0f) - 8.0);
                    hi[j] = d * (f32::from(q >> 4) - 8.0);
                }
            }
        }
        HostDType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(20)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                let (lo, hi) = o.split_at_mut(QK / 2);
                for (j, &q) in b[4..].iter().enumerate() {
                    lo[j] = d * f32::from(q & 0x0f) + m;
                    hi[j] = d * f32::from(q >> 4) + m;
                }
            }
        }
        HostDType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(34)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for (x, &q) in o.iter_mut().zip(&b[2..]) {
                    *x = d * f32::from(q as i8);
                }
            }
        }
        HostDType::Q5_0 => each_block(bytes, out, kquant::q5_0),
        HostDType::Q5_1 => each_block(bytes, out, kquant::q5_1),
        HostDType::IQ4_NL => each_block(bytes, out, kquant::iq4_nl),
        HostDType::Q2_K => each_block(bytes, out, kquant::q2_k),
        HostDType::Q3_K => each_block(bytes, out, kquant::q3_k),
        HostDType::Q4_K => each_block(bytes, out, kquant::q4_k),
        HostDType::Q5_K => each_block(bytes, out, kquant::q5_k),
        HostDType::Q6_K => each_block(bytes, out, kquant::q6_k),
        HostDType::IQ4_XS => each_block(bytes, out, kquant::iq4_xs),
    }
    Ok(())
}

fn check_len(dtype: HostDType, bytes: &[u8], n: usize) -> Result<()> {
    match dtype.byte_len(n) {
        None => Err(ModelError::Invalid(format!(
            "{dtype:?}: {n} elements is not a whole number of {}-element blocks",
            dtype.block_size()
        ))),
        Some(want) if want != bytes.len() => Err(ModelError::Invalid(format!(
            "{dtype:?}: {n} elements take {want} bytes, got {}",
            bytes.len()
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_nibble_order() {
        // Byte j = (code of j+16) << 4 | (code of j), codes chosen as j and 15 - j.
        let mut b = f16b(0.5).to_vec();
        b.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let x = dequantize(HostDType::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(x[j], 0.5 * (j as f32 - 8.0), "element {j}");
            assert_eq!(
                x[j + 16],
                0.5 * ((15 - j) as f32 - 8.0),
                "element {}",
                j + 16
            );
        }
    }

    #[test]
    fn q4_1_scale_and_min() {
        let mut b = [f16b(0.25), f16b(-1.5)].concat();
        b.extend((0..16u8).map(|j| (3 << 4) | (j % 16)));
        let x = dequantize(HostDType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(x[j], 0.25 * j as f32 - 1.5, "element {j}");
            assert_eq!(x[j + 16], 0.25 * 3.0 - 1.5, "element {}", j + 16);
        }
    }

    #[test]
    fn q8_0_signed_codes_two_blocks() {
        let mut b = Vec::new();
        for d in [2.0f32, -0.125] {
            b.extend(f16b(d));
            b.extend((0..32i32).map(|j| ((j - 16) * 8) as i8 as u8));
        }
        let x = dequantize(HostDType::Q8_0, &b, 64).unwrap();
        for (i, &v) in x.iter().enumerate() {
            let d = if i < 32 { 2.0 } else { -0.125 };
            let q = ((i % 32) as f32 - 16.0) * 8.0;
            assert_eq!(v, d * q, "element {i}");
        }
        assert_eq!(x[0], 2.0 * -128.0);
    }

    #[test]
    fn plain_formats() {
        let vals = [1.0f32, -2.5, 0.0, 65504.0, 1e-3];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dequantize(HostDType::F32, &f32b, 5).unwrap(), vals);
        let f16s: Vec<u8> = vals.iter().flat_map(|&v| f16b(v)).collect();
        let back = dequantize(HostDType::F16, &f16s, 5).unwrap();
        for (a, b) in vals.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() * 1e-3, "{a} vs {b}");
        }
        // bf16 keeps the top 16 bits of an f32.
        let bf: Vec<u8> = [1.0f32, -3.0]
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(dequantize(HostDType::BF16, &bf, 2).unwrap(), [1.0, -3.0]);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(dequantize(HostDType::Q4_1, &[0u8; 20], 31).is_err());
        assert!(dequantize(HostDType::Q4_1, &[0u8; 19], 32).is_err());
        assert!(dequantize(HostDType::Q8_0, &[0u8; 35], 32).is_err());
        assert!(dequantize(HostDType::F32, &[0u8; 7], 2).is_err());
        assert!(dequantize(HostDType::F16, &[0u8; 4], usize::MAX).is_err());
        assert!(dequantize(HostDType::Q4_0, &[], 0).unwrap().is_empty());
        let mut out = [0.0f32; 3];
        assert!(dequantize_into(HostDType::F32, &[0u8; 8], &mut out).is_err());
    }
}
