//! One file per op: the math (with its source), `# Shapes`, a params struct
//! mirrored by the WGSL struct (declared with `params_struct!`), `check()`,
//! the calls it dispatches (named by a `passes!` enum when there are
//! several), and a CPU `reference()`. The shader has the same stem in
//! `shaders/` and its entry point the op's name. Ops import `dispatch` (their
//! contract with the executor), `kv`, `weight`, `act`, `pipeline` and `shader`,
//! never `graph` or each other.

pub mod act_quant;
pub mod add;
pub mod embedding;
pub mod gram;
pub mod hadamard;
pub mod kv_f16_attention;
pub mod kv_f16_write;
pub mod kv_quant_attention;
pub mod kv_quant_store;
pub mod matmul;
pub mod matmul_int;
pub mod rmsnorm;
pub mod rmsnorm_quant;
pub mod rope;
pub mod sample;
pub mod swiglu;

use crate::shader::ShaderSource;

/// Every shader of every op, for the naga translation and contract tests
/// (which check that this list and the `.wgsl` files in shaders/ agree).
pub fn all_shaders() -> Vec<&'static ShaderSource> {
    let mut v = vec![
        &act_quant::SHADER,
        &add::SHADER,
        &embedding::SHADER,
        &gram::SHADER,
        &hadamard::SHADER,
        &kv_f16_attention::SHADER,
        &kv_f16_write::SHADER,
        &kv_quant_attention::SHADER,
        &kv_quant_store::SHADER,
        &rmsnorm::SHADER,
        &rmsnorm_quant::SHADER,
        &sample::SHADER,
        &swiglu::SHADER,
    ];
    v.extend(matmul::shaders());
    v.extend(matmul_int::shaders());
    v.extend(rope::shaders());
    v
}
