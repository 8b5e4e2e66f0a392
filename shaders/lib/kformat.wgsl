// lib/kformat.wgsl: the ids of the GGUF types of engine/src/weight/kquant.rs
// (wgsl_id mirrors them, checked by tests/tests/contracts.rs), for
// lib/kblock.wgsl and lib/kblock_none.wgsl. They sit above every other
// format id of the matmul and embedding shaders (0..4), so both can use
// them as they are.

const Q5_0: u32 = 5u;
const Q5_1: u32 = 6u;
const IQ4_NL: u32 = 7u;
const Q2_K: u32 = 8u;
const Q3_K: u32 = 9u;
const Q4_K: u32 = 10u;
const Q5_K: u32 = 11u;
const Q6_K: u32 = 12u;
const IQ4_XS: u32 = 13u;
