//! One file per op: the math (with its source), `# Shapes`, a `#[repr(C)]`
//! params struct mirrored by the WGSL struct, `check()`, the calls it
//! dispatches, and a CPU `reference()`. The shader has the same stem in
//! `shaders/` and its entry point the op's name.

pub mod add;
pub mod attention;
pub mod embedding;
pub mod gram;
pub mod kv_attention;
pub mod kv_store;
pub mod kv_write;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod swiglu;

use crate::graph::{Graph, PARAMS_BYTES, TensorId};
use crate::shader::ShaderSource;
use crate::{Caps, EngineError, Result};

/// Every shader of every op, for the naga translation tests.
pub fn all_shaders() -> Vec<&'static ShaderSource> {
    let mut v = vec![
        &add::SHADER,
        &embedding::SHADER,
        &rmsnorm::SHADER,
        &rope::SHADER,
        &swiglu::SHADER,
        &kv_write::SHADER,
        &sample::SHADER,
        &gram::SHADER,
    ];
    v.extend(matmul::shaders());
    v.extend(attention::shaders());
    v.extend(kv_attention::shaders());
    v
}

/// Copies a params struct into a call's parameter block.
pub fn write_params<T: bytemuck::Pod>(block: &mut [u8; PARAMS_BYTES], p: &T) {
    let b = bytemuck::bytes_of(p);
    block[..b.len()].copy_from_slice(b);
}

/// A grid of `n` workgroups, folded into y when x would exceed the device
/// limit; shaders compute the linear id as `wid.x + wid.y * nwg.x`.
pub fn grid(n: u32, caps: &Caps) -> [u32; 3] {
    if n == 0 {
        return [0, 0, 0];
    }
    let x = n.min(caps.max_workgroups_per_dim.max(1));
    [x, n.div_ceil(x), 1]
}

/// The standard 65535 cap, for ops that fold grids without device caps at hand.
pub const MAX_GRID_X: u32 = 65535;

/// `grid` with the WebGPU default limit (valid on every device).
pub fn grid1(n: u32) -> [u32; 3] {
    if n == 0 {
        return [0, 0, 0];
    }
    let x = n.min(MAX_GRID_X);
    [x, n.div_ceil(x), 1]
}

/// Checks that tensor `t` holds at least `need` bytes.
pub fn check_bytes(g: &Graph, op: &'static str, what: &str, t: TensorId, need: u64) -> Result<()> {
    let have = g.bytes(t);
    if have < need {
        return Err(EngineError::Shape {
            op,
            msg: format!(
                "{what} `{}` has {have} bytes, needs {need}",
                g.tensors[t].name
            ),
        });
    }
    Ok(())
}
