//! (being written) RoPE.
use crate::graph::{Call, Graph, OpDef, PARAMS_BYTES, Step, TensorId};
use crate::{Caps, Result};
crate::shader!(SHADER, "rope", []);
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle { Interleaved, Neox }
#[derive(Debug, Clone)]
pub struct Rope { pub x: TensorId, pub n_heads: u32, pub head_dim: u32, pub theta: f32, pub style: RopeStyle, pub max_rows: u32 }
impl OpDef for Rope {
    fn name(&self) -> &'static str { "rope" }
    fn check(&self, _g: &Graph) -> Result<()> { unimplemented!() }
    fn calls(&self, _caps: &Caps) -> Vec<Call> { unimplemented!() }
    fn step(&self, _c: usize, _s: &Step, _p: &mut [u8; PARAMS_BYTES]) -> [u32; 3] { unimplemented!() }
}
