//! (being written) SwiGLU.
use crate::graph::{Call, Graph, OpDef, PARAMS_BYTES, Step, TensorId};
use crate::{Caps, Result};
crate::shader!(SHADER, "swiglu", []);
#[derive(Debug, Clone)]
pub struct SwiGlu { pub gate: TensorId, pub up: TensorId, pub out: TensorId, pub dim: u32, pub max_rows: u32 }
impl OpDef for SwiGlu {
    fn name(&self) -> &'static str { "swiglu" }
    fn check(&self, _g: &Graph) -> Result<()> { unimplemented!() }
    fn calls(&self, _caps: &Caps) -> Vec<Call> { unimplemented!() }
    fn step(&self, _c: usize, _s: &Step, _p: &mut [u8; PARAMS_BYTES]) -> [u32; 3] { unimplemented!() }
}
