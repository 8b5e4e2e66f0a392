//! (being written) Sampling.
use crate::graph::{Call, Graph, OpDef, PARAMS_BYTES, Step, TensorId};
use crate::{Caps, Result};
crate::shader!(SHADER, "sample", []);
#[derive(Debug, Clone)]
pub struct Sample { pub logits: TensorId, pub history: TensorId, pub scratch: TensorId, pub out: TensorId, pub vocab: u32, pub history_len: u32 }
impl OpDef for Sample {
    fn name(&self) -> &'static str { "sample" }
    fn check(&self, _g: &Graph) -> Result<()> { unimplemented!() }
    fn calls(&self, _caps: &Caps) -> Vec<Call> { unimplemented!() }
    fn step(&self, _c: usize, _s: &Step, _p: &mut [u8; PARAMS_BYTES]) -> [u32; 3] { unimplemented!() }
}
