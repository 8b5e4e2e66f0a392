//! ggml tensor type ids: names, block layouts, and the ones Lamina runs.

use crate::weights::HostDType;

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
        8 => HostDType::Q8_0,
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
        HostDType::Q8_0 => 8,
        HostDType::BF16 => 30,
        HostDType::Mixed => return None,
    })
}
