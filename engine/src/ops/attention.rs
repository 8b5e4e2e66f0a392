//! (being written) Attention.
use crate::graph::{Call, Graph, OpDef, PARAMS_BYTES, Step, TensorId};
use crate::shader::ShaderSource;
use crate::{Caps, Result};
pub fn shaders() -> Vec<&'static ShaderSource> { vec![] }
#[derive(Debug, Clone)]
pub struct Attention { pub q: TensorId, pub k_cache: TensorId, pub v_cache: TensorId, pub out: TensorId, pub scratch: Option<TensorId>, pub n_heads: u32, pub n_kv_heads: u32, pub head_dim: u32, pub max_ctx: u32, pub max_rows: u32, pub scale: f32 }
impl OpDef for Attention {
    fn name(&self) -> &'static str { "attention" }
    fn check(&self, _g: &Graph) -> Result<()> { unimplemented!() }
    fn calls(&self, _caps: &Caps) -> Vec<Call> { unimplemented!() }
    fn step(&self, _c: usize, _s: &Step, _p: &mut [u8; PARAMS_BYTES]) -> [u32; 3] { unimplemented!() }
}
