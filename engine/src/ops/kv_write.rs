//! (being written) KV cache write.
use crate::graph::{Call, Graph, OpDef, PARAMS_BYTES, Step, TensorId};
use crate::{Caps, Result};
crate::shader!(SHADER, "kv_write", []);
#[derive(Debug, Clone)]
pub struct KvWrite { pub k: TensorId, pub v: TensorId, pub k_cache: TensorId, pub v_cache: TensorId, pub n_kv_heads: u32, pub head_dim: u32, pub max_ctx: u32, pub max_rows: u32 }
impl OpDef for KvWrite {
    fn name(&self) -> &'static str { "kv_write" }
    fn check(&self, _g: &Graph) -> Result<()> { unimplemented!() }
    fn calls(&self, _caps: &Caps) -> Vec<Call> { unimplemented!() }
    fn step(&self, _c: usize, _s: &Step, _p: &mut [u8; PARAMS_BYTES]) -> [u32; 3] { unimplemented!() }
}
