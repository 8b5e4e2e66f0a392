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

pub use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Sampling, Step, TensorId, TensorInfo, TensorKind,
};

use crate::ops;
use crate::weight::{GpuWeight, WeightRef};
use crate::{Result, Tensor};

/// The closed set of ops.
#[derive(Debug, Clone)]
pub enum Op {
    Embedding(ops::embedding::Embedding),
    RmsNorm(ops::rmsnorm::RmsNorm),
    MatMul(ops::matmul::MatMul),
    ActQuant(ops::act_quant::ActQuant),
    RmsNormQuant(ops::rmsnorm_quant::RmsNormQuant),
    MatMulInt(ops::matmul_int::MatMulInt),
    Rope(ops::rope::Rope),
    RopeHadamard(ops::rope::RopeHadamard),
    RopeKvF16(ops::rope::RopeKvF16),
    Hadamard(ops::hadamard::Hadamard),
    HadamardQuant(ops::hadamard::HadamardQuant),
    KvF16Write(ops::kv_f16_write::KvF16Write),
    KvF16Attention(ops::kv_f16_attention::KvF16Attention),
    KvQuantStore(ops::kv_quant_store::KvQuantStore),
    KvQuantAttention(ops::kv_quant_attention::KvQuantAttention),
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
            Op::ActQuant(o) => o,
            Op::RmsNormQuant(o) => o,
            Op::MatMulInt(o) => o,
            Op::Rope(o) => o,
            Op::RopeHadamard(o) => o,
            Op::RopeKvF16(o) => o,
            Op::Hadamard(o) => o,
            Op::HadamardQuant(o) => o,
            Op::KvF16Write(o) => o,
            Op::KvF16Attention(o) => o,
            Op::KvQuantStore(o) => o,
            Op::KvQuantAttention(o) => o,
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
    /// Whose step this node runs with, in a graph that steps several
    /// sequences at once.
    pub seq: NodeSeq,
}

/// Whose step a node runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSeq {
    /// The step of the whole graph.
    Shared,
    /// One sequence's ([`Graph::push_seq`]).
    One(usize),
    /// Sequences `0 .. n`'s, all in one call ([`Graph::push_seqs`]).
    All(usize),
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
    /// `bytes` bytes of `of` from byte `offset` on, as a tensor of its own:
    /// ops bind it like any other, the memory is `of`'s (views of views
    /// resolve to the first tensor's). `offset` must meet the device's
    /// storage alignment when an op binds the view (the executor checks).
    pub fn view(
        &mut self,
        name: impl Into<String>,
        of: TensorId,
        offset: u64,
        bytes: u64,
    ) -> Result<TensorId> {
        let name = name.into();
        let Some(parent) = self.tensors.get(of) else {
            return Err(crate::EngineError::Shape {
                op: "view",
                msg: format!("{name}: no tensor {of}"),
            });
        };
        crate::ensure_shape!(
            offset.checked_add(bytes).is_some_and(|e| e <= parent.bytes),
            "view",
            "{name}: bytes {offset}..{} outside {} ({} bytes)",
            offset.saturating_add(bytes),
            parent.name,
            parent.bytes
        );
        let (of, offset) = match parent.kind {
            TensorKind::View {
                of: root,
                offset: o,
            } => (root, o + offset),
            _ => (of, offset),
        };
        Ok(self.add(name, bytes, TensorKind::View { of, offset }))
    }
    /// The tensor whose memory `t` is (itself unless `t` is a view).
    pub fn root(&self, t: TensorId) -> TensorId {
        match self.tensors[t].kind {
            TensorKind::View { of, .. } => of,
            _ => t,
        }
    }
    /// Appends an op after checking its shapes.
    pub fn push(&mut self, label: impl Into<String>, op: Op) -> Result<()> {
        self.push_node(label, op, NodeSeq::Shared)
    }
    /// Appends an op that runs with sequence `seq`'s step (its own position
    /// and sampling; [`Executor::run_read_seqs`](crate::graph::Executor::run_read_seqs)):
    /// the per-sequence part (RoPE, cache, attention, sampling) of a graph
    /// that decodes several sequences with one matmul per weight.
    pub fn push_seq(&mut self, seq: usize, label: impl Into<String>, op: Op) -> Result<()> {
        self.push_node(label, op, NodeSeq::One(seq))
    }
    /// Appends an op that serves sequences `0 .. n` in one call, each with
    /// its own step ([`OpDef::step_seqs`]): what would otherwise be `n`
    /// [`Graph::push_seq`] nodes, in one dispatch per pass. Only for ops
    /// that serve several sequences ([`OpDef::serves_seqs`]).
    pub fn push_seqs(&mut self, n: usize, label: impl Into<String>, op: Op) -> Result<()> {
        let label = label.into();
        if op.def().serves_seqs() != Some(n) {
            return Err(crate::EngineError::Shape {
                op: op.def().name(),
                msg: format!("{label}: the op does not serve {n} sequences at once"),
            });
        }
        self.push_node(label, op, NodeSeq::All(n))
    }
    fn push_node(&mut self, label: impl Into<String>, op: Op, seq: NodeSeq) -> Result<()> {
        op.def().check(&self.tensors)?;
        self.nodes.push(Node {
            op,
            label: label.into(),
            seq,
        });
        Ok(())
    }
    /// Sequences the nodes of [`Graph::push_seq`] and [`Graph::push_seqs`]
    /// name (0: none).
    pub fn n_seqs(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match n.seq {
                NodeSeq::Shared => 0,
                NodeSeq::One(s) => s + 1,
                NodeSeq::All(n) => n,
            })
            .max()
            .unwrap_or(0)
    }
    pub fn bytes(&self, t: TensorId) -> u64 {
        self.tensors[t].bytes
    }
}

impl GpuWeight {
    /// Registers each shard as an external tensor `name.<i>` of `g`.
    pub fn add_to_graph(&self, g: &mut Graph, name: &str) -> WeightRef {
        self.map_shards(|i, t| g.external(format!("{name}.{i}"), t.clone()))
    }
}
