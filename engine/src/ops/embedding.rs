//! (being written) Embedding lookup.
use crate::graph::{Call, Graph, OpDef, PARAMS_BYTES, Step, TensorId};
use crate::weight::WeightRef;
use crate::{Caps, Result};
crate::shader!(SHADER, "embedding", []);
#[derive(Debug, Clone)]
pub struct Embedding { pub ids: TensorId, pub table: WeightRef, pub out: TensorId, pub max_rows: u32 }
impl OpDef for Embedding {
    fn name(&self) -> &'static str { "embedding" }
    fn check(&self, _g: &Graph) -> Result<()> { unimplemented!() }
    fn calls(&self, _caps: &Caps) -> Vec<Call> { unimplemented!() }
    fn step(&self, _c: usize, _s: &Step, _p: &mut [u8; PARAMS_BYTES]) -> [u32; 3] { unimplemented!() }
}
