//! The contract between an op and the executor: what an op is told (the
//! tensor table, the step), what it answers (its calls, each call's
//! parameter block and grid), and the helpers ops share to answer.
//!
//! Ops (`ops/<op>.rs`) import this module, never `graph`; the graph and its
//! executor sit above the ops and drive them through [`OpDef`].

use crate::pipeline::{Access, Kernel};
use crate::shader::Params;
use crate::{Caps, EngineError, Result, Tensor};

/// Index of a tensor in its graph's tensor table.
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
    /// Bytes `offset ..` of another tensor (`Graph::view`), e.g. one part of
    /// a matmul that writes several linear layers' outputs at once; it lives
    /// as long as that tensor does.
    View { of: TensorId, offset: u64 },
}

/// One entry of a graph's tensor table (indexed by [`TensorId`]).
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

impl Sampling {
    /// The settings a caller chooses, checked (`uniform` 0: the session
    /// draws it at each step). The error names the first field out of range
    /// and what is wrong ("must be ..., got ..."); each front end (flags,
    /// API requests, the page) reports the field in its own name.
    pub fn checked(
        temperature: f32,
        top_k: u32,
        top_p: f32,
        repeat_penalty: f32,
    ) -> std::result::Result<Sampling, (&'static str, String)> {
        let s = Sampling {
            temperature,
            top_k,
            top_p,
            repeat_penalty,
            uniform: 0.0,
        };
        match s.invalid() {
            Some(bad) => Err(bad),
            None => Ok(s),
        }
    }

    /// The first setting the sample op cannot take (`uniform` aside), as
    /// [`Sampling::checked`] reports it; `None` when all are in range.
    fn invalid(&self) -> Option<(&'static str, String)> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Some((
                "temperature",
                format!("must be a finite number >= 0, got {t}"),
            ));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Some(("top_p", format!("must be in (0, 1], got {p}")));
        }
        let r = self.repeat_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Some(("repeat_penalty", format!("must be > 0, got {r}")));
        }
        None
    }
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

/// The passes of an op with several: a fieldless enum declared with
/// [`passes!`](crate::passes), so a call can carry its pass in its
/// [`CallTag`] and `step` can match on it by name.
pub trait Pass: Copy + 'static {
    /// Every pass, in declaration order (`ALL[p.index()] == p`).
    const ALL: &'static [Self];
    fn index(self) -> usize;
}

/// Declares an op's passes: `passes! { enum Pass { RingWrite, Flush } }`
/// gives the enum (Debug, Clone, Copy, PartialEq, Eq) and its [`Pass`] impl.
#[macro_export]
macro_rules! passes {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $v:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vm])* $v),+
        }
        impl $crate::dispatch::Pass for $name {
            const ALL: &'static [Self] = &[$($name::$v),+];
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// What one call of an op is, as the op named it when it listed its calls;
/// the executor hands it back to the op's `step` with that call's block.
/// An op with several passes sets the pass ([`Call::pass`]); an op that
/// dispatches once per weight shard sets the shard ([`Call::shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallTag {
    pass: u32,
    /// Index of the weight shard the call reads (0 when there is one).
    pub shard: u32,
}

impl CallTag {
    /// The call's pass, in the op's own [`Pass`] enum. The tag must come
    /// from a call the same op listed (the executor guarantees it).
    pub fn pass<P: Pass>(self) -> P {
        P::ALL[self.pass as usize]
    }
}

/// One dispatch an op makes, with its fixed bindings and its tag.
#[derive(Debug, Clone)]
pub struct Call {
    pub kernel: Kernel,
    pub bindings: Vec<Binding>,
    pub tag: CallTag,
}

impl Call {
    pub fn new(kernel: Kernel, bindings: Vec<Binding>) -> Call {
        Call {
            kernel,
            bindings,
            tag: CallTag::default(),
        }
    }
    /// Tags the call with one of the op's passes.
    pub fn pass<P: Pass>(mut self, pass: P) -> Call {
        self.tag.pass = pass.index() as u32;
        self
    }
    /// Tags the call with the weight shard it reads.
    pub fn shard(mut self, shard: usize) -> Call {
        self.tag.shard = shard as u32;
        self
    }
}

/// Size of each call's uniform parameter block.
pub const PARAMS_BYTES: usize = 256;

/// What every op implements: the calls it makes (fixed for the graph's
/// life) and, per step, each call's parameters and workgroup grid.
pub trait OpDef {
    fn name(&self) -> &'static str;
    /// Fails with a shape error when the op's tensors (entries of the
    /// graph's tensor table) do not fit together.
    fn check(&self, tensors: &[TensorInfo]) -> Result<()>;
    fn calls(&self, caps: &Caps) -> Vec<Call>;
    /// Writes the parameter block for `step` of the call tagged `tag` and
    /// returns its grid. A zero-sized grid skips the dispatch for this step.
    fn step(&self, tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3];
    /// How many sequences one call of this op serves, each with its own
    /// step, where it was made to ([`crate::graph::Graph::push_seqs`]).
    fn serves_seqs(&self) -> Option<usize> {
        None
    }
    /// [`OpDef::step`] for an op that serves several sequences: `seqs[i]`
    /// is sequence i's step (no tokens: it sits this step out). Only called
    /// where [`OpDef::serves_seqs`] says `seqs.len()`.
    fn step_seqs(&self, tag: CallTag, seqs: &[Step], params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        match seqs {
            [one] => self.step(tag, one, params),
            _ => [0; 3],
        }
    }
}

/// Checks that tensor `t` holds at least `need` bytes.
pub fn check_bytes(
    tensors: &[TensorInfo],
    op: &'static str,
    what: &str,
    t: TensorId,
    need: u64,
) -> Result<()> {
    let Some(info) = tensors.get(t) else {
        return Err(EngineError::Shape {
            op,
            msg: format!("{what}: tensor {t} is not in the graph"),
        });
    };
    if info.bytes < need {
        return Err(EngineError::Shape {
            op,
            msg: format!(
                "{what} `{}` has {} bytes, needs {need}",
                info.name, info.bytes
            ),
        });
    }
    Ok(())
}

/// Copies a params struct into a call's parameter block.
pub fn write_params<T: Params>(block: &mut [u8; PARAMS_BYTES], p: &T) {
    let b = bytemuck::bytes_of(p);
    block[..b.len()].copy_from_slice(b);
}

/// A grid of `n` workgroups, folded into y when x would exceed the device
/// limit; shaders compute the linear id as `wid.x + wid.y * nwg.x`.
pub fn grid(n: u32, caps: &Caps) -> [u32; 3] {
    if n == 0 {
        return [0, 0, 0];
    }
    let x = n.min(caps.max_workgroups_per_dim.max(1));
    [x, n.div_ceil(x), 1]
}

/// The standard 65535 cap, for ops that fold grids without device caps at hand.
pub const MAX_GRID_X: u32 = 65535;

/// `grid` with the WebGPU default limit (valid on every device).
pub fn grid1(n: u32) -> [u32; 3] {
    if n == 0 {
        return [0, 0, 0];
    }
    let x = n.min(MAX_GRID_X);
    [x, n.div_ceil(x), 1]
}

#[cfg(test)]
mod tests {
    use super::Sampling;

    #[test]
    fn sampling_names_the_setting_out_of_range() {
        let ok = Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 1.0,
            repeat_penalty: 1.1,
            uniform: 0.0,
        };
        assert_eq!(ok.invalid(), None);
        assert_eq!(Sampling::default().invalid(), None);
        let field = |s: Sampling| s.invalid().map(|(f, _)| f);
        for t in [-0.1, f32::NAN, f32::INFINITY] {
            assert_eq!(
                field(Sampling {
                    temperature: t,
                    ..ok
                }),
                Some("temperature")
            );
        }
        for p in [0.0, 1.01, f32::NAN] {
            assert_eq!(field(Sampling { top_p: p, ..ok }), Some("top_p"));
        }
        for r in [0.0, -1.0, f32::INFINITY] {
            assert_eq!(
                field(Sampling {
                    repeat_penalty: r,
                    ..ok
                }),
                Some("repeat_penalty")
            );
        }
        let (_, msg) = Sampling { top_p: 0.0, ..ok }.invalid().unwrap();
        assert_eq!(msg, "must be in (0, 1], got 0");
        assert_eq!(Sampling::checked(0.8, 40, 1.0, 1.1), Ok(ok));
        assert_eq!(
            Sampling::checked(0.8, 40, 1.0, 0.0).map_err(|(f, _)| f),
            Err("repeat_penalty")
        );
    }
}
