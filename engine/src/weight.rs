//! Weight matrices on the GPU: packed planes, split by rows into shards that
//! each fit one storage binding.
//!
//! A weight `W: [rows, cols]` (y = W x, x: [cols]) is grouped along `cols`
//! (the input dimension). Within a shard's buffer the planes sit at word
//! offsets given by [`Planes`]:
//! - F32: `cols` words per row. F16: `ceil(cols/2)` words per row (2 per word).
//! - Q4_0 / Q4_1: codes, `cols/8` words per row; nibble k (bits 4k..4k+3) of
//!   word w holds element `8w + k` (natural order, not ggml's split halves).
//!   Scales: one f16 per 32-element group, index `row * cols/32 + group`, two
//!   per word. Q4_1 also has mins in the same layout. Q4_0's zero point is 8.
//! - Q8_0: codes, `cols/4` words per row, byte k of word w = element `4w + k`
//!   as i8; scales as for Q4.

use crate::graph::{Graph, TensorId};
use crate::tensor::WeightFormat;

/// Word offsets of the planes inside a shard's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Planes {
    pub codes: u32,
    pub scales: u32,
    pub mins: u32,
    pub words: u32,
}

/// One row range of a weight, in its own buffer.
#[derive(Debug, Clone)]
pub struct Shard {
    pub tensor: TensorId,
    pub row_start: u32,
    pub rows: u32,
    pub planes: Planes,
}

/// A weight as an op sees it inside a graph.
#[derive(Debug, Clone)]
pub struct WeightRef {
    pub format: WeightFormat,
    pub rows: u32,
    pub cols: u32,
    pub shards: Vec<Shard>,
}

impl WeightRef {
    pub fn first_tensor(&self) -> Option<TensorId> {
        self.shards.first().map(|s| s.tensor)
    }
    /// Checks that every shard tensor exists in `g`.
    pub fn check(&self, g: &Graph, op: &'static str) -> crate::Result<()> {
        for s in &self.shards {
            crate::ops::check_bytes(g, op, "weight shard", s.tensor, 4 * u64::from(s.planes.words))?;
        }
        let covered: u32 = self.shards.iter().map(|s| s.rows).sum();
        crate::ensure_shape!(covered == self.rows, op, "weight shards cover {covered} of {} rows", self.rows);
        Ok(())
    }
}
