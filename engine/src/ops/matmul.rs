//! (being written) MatMul.
use crate::graph::{Call, Graph, OpDef, PARAMS_BYTES, Step, TensorId};
use crate::weight::WeightRef;
use crate::shader::ShaderSource;
use crate::{Caps, Result};
pub fn shaders() -> Vec<&'static ShaderSource> { vec![] }
#[derive(Debug, Clone)]
pub struct MatMul { pub x: TensorId, pub w: WeightRef, pub out: TensorId, pub max_rows: u32, pub last_row_only: bool }
impl OpDef for MatMul {
    fn name(&self) -> &'static str { "matmul" }
    fn check(&self, _g: &Graph) -> Result<()> { unimplemented!() }
    fn calls(&self, _caps: &Caps) -> Vec<Call> { unimplemented!() }
    fn step(&self, _c: usize, _s: &Step, _p: &mut [u8; PARAMS_BYTES]) -> [u32; 3] { unimplemented!() }
}
