//! The graph: a closed set of ops over tensors, planned once and replayed.
//!
//! The model builds a [`Graph`] of [`Op`]s. [`plan`] computes each
//! intermediate tensor's lifetime and packs tensors with disjoint lifetimes
//! into shared buffers (greedy by size, arXiv 2001.03288). The [`Executor`]
//! creates every pipeline and bind group once; a step only rewrites the
//! parameter blocks (positions, lengths, sampling settings) in one write and
//! records the same dispatches into one command buffer, one submit.

pub mod executor;
pub mod plan;

pub use executor::Executor;

use crate::ops;
use crate::pipeline::{Access, Kernel};
use crate::{Caps, Result, Tensor};

/// Index of a tensor in its graph.
pub type TensorId = usize;

/// Where a tensor's memory comes from.
#[derive(Debug, Clone)]
pub enum TensorKind {
    /// Written by the host before a step (token ids, positions).
    Input,
    /// Read by the host after a step; kept alive for the whole graph.
    Output,
    /// Produced and consumed inside the graph; memory shared by lifetime.
    Intermediate,
    /// State that outlives a step (KV cache) or a weight: a buffer owned elsewhere.
    External(Tensor),
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Bytes at the graph's largest step.
    pub bytes: u64,
    pub kind: TensorKind,
}

/// Per-step values: everything that changes between replays of a graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Tokens processed in this step (1 for decode), at most the graph's maximum.
    pub n_tokens: u32,
    /// Position of the first of them; the KV length after the step is `pos + n_tokens`.
    pub pos: u32,
    /// Sampling settings (used by the sample op).
    pub sampling: Sampling,
}

impl Step {
    pub fn kv_len(&self) -> u32 {
        self.pos + self.n_tokens
    }
}

/// Sampling settings, llama.cpp's meaning for each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: u32,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    /// 1.0 means none.
    pub repeat_penalty: f32,
    /// Random draw for this step, uniform in [0, 1) (the host advances a seeded generator).
    pub uniform: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            uniform: 0.0,
        }
    }
}

impl Default for Step {
    fn default() -> Self {
        Step {
            n_tokens: 1,
            pos: 0,
            sampling: Sampling::default(),
        }
    }
}

/// One storage binding of a call: a tensor (or a byte range of it).
#[derive(Debug, Clone)]
pub struct Binding {
    pub tensor: TensorId,
    pub access: Access,
    /// Byte range within the tensor; `None` binds all of it.
    pub range: Option<(u64, u64)>,
}

impl Binding {
    pub fn read(tensor: TensorId) -> Self {
        Binding {
            tensor,
            access: Access::Read,
            range: None,
        }
    }
    pub fn write(tensor: TensorId) -> Self {
        Binding {
            tensor,
            access: Access::ReadWrite,
            range: None,
        }
    }
    pub fn read_range(tensor: TensorId, offset: u64, size: u64) -> Self {
        Binding {
            tensor,
            access: Access::Read,
            range: Some((offset, size)),
        }
    }
}

/// One dispatch an op makes, with its fixed bindings.
#[derive(Debug, Clone)]
pub struct Call {
    pub kernel: Kernel,
    pub bindings: Vec<Binding>,
}

/// Size of each call's uniform parameter block.
pub const PARAMS_BYTES: usize = 256;

/// What every op implements: the calls it makes (fixed for the graph's
/// life) and, per step, each call's parameters and workgroup grid.
pub trait OpDef {
    fn name(&self) -> &'static str;
    /// Fails with a shape error when the op's tensors do not fit together.
    fn check(&self, g: &Graph) -> Result<()>;
    fn calls(&self, caps: &Caps) -> Vec<Call>;
    /// Writes call `call`'s parameter block for `step` and returns its grid.
    /// A zero-sized grid skips the dispatch for this step.
    fn step(&self, call: usize, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3];
}

/// The closed set of ops.
#[derive(Debug, Clone)]
pub enum Op {
    Embedding(ops::embedding::Embedding),
    RmsNorm(ops::rmsnorm::RmsNorm),
    MatMul(ops::matmul::MatMul),
    Rope(ops::rope::Rope),
    KvWrite(ops::kv_write::KvWrite),
    Attention(ops::attention::Attention),
    KvStore(ops::kv_store::KvStore),
    KvAttention(ops::kv_attention::KvAttention),
    SwiGlu(ops::swiglu::SwiGlu),
    Add(ops::add::Add),
    Sample(ops::sample::Sample),
    Gram(ops::gram::Gram),
}

impl Op {
    pub fn def(&self) -> &dyn OpDef {
        match self {
            Op::Embedding(o) => o,
            Op::RmsNorm(o) => o,
            Op::MatMul(o) => o,
            Op::Rope(o) => o,
            Op::KvWrite(o) => o,
            Op::Attention(o) => o,
            Op::KvStore(o) => o,
            Op::KvAttention(o) => o,
            Op::SwiGlu(o) => o,
            Op::Add(o) => o,
            Op::Sample(o) => o,
            Op::Gram(o) => o,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    /// Human label for profiles, e.g. "blk.3.attn_q".
    pub label: String,
}

/// Tensors and ops, in execution order.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub tensors: Vec<TensorInfo>,
    pub nodes: Vec<Node>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }
    fn add(&mut self, name: impl Into<String>, bytes: u64, kind: TensorKind) -> TensorId {
        self.tensors.push(TensorInfo {
            name: name.into(),
            bytes,
            kind,
        });
        self.tensors.len() - 1
    }
    pub fn input(&mut self, name: impl Into<String>, bytes: u64) -> TensorId {
        self.add(name, bytes, TensorKind::Input)
    }
    pub fn output(&mut self, name: impl Into<String>, bytes: u64) -> TensorId {
        self.add(name, bytes, TensorKind::Output)
    }
    pub fn intermediate(&mut self, name: impl Into<String>, bytes: u64) -> TensorId {
        self.add(name, bytes, TensorKind::Intermediate)
    }
    pub fn external(&mut self, name: impl Into<String>, t: Tensor) -> TensorId {
        let bytes = t.size;
        self.add(name, bytes, TensorKind::External(t))
    }
    /// Appends an op after checking its shapes.
    pub fn push(&mut self, label: impl Into<String>, op: Op) -> Result<()> {
        op.def().check(self)?;
        self.nodes.push(Node {
            op,
            label: label.into(),
        });
        Ok(())
    }
    pub fn bytes(&self, t: TensorId) -> u64 {
        self.tensors[t].bytes
    }
}
