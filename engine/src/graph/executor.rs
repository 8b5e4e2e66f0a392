//! Runs a planned graph: pipelines, buffers and bind groups are made once;
//! each step writes the parameter blocks in one upload, records the same
//! dispatches into one command buffer and submits it once.

use std::sync::Arc;

use super::plan::{Plan, plan};
use super::{Call, CallTag, Graph, NodeSeq, PARAMS_BYTES, Step, TensorId, TensorKind};
use crate::pipeline::Pipeline;
use crate::profile::Profiler;
use crate::tensor::{map_read, map_read_async};
use crate::{EngineError, Gpu, Result};

struct CompiledCall {
    node: usize,
    /// The op's name for this call, handed back to its `step`.
    tag: CallTag,
    pipeline: Arc<Pipeline>,
    bind_group: wgpu::BindGroup,
}

/// A tensor's memory: buffer, byte offset, byte size.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub buffer: Arc<wgpu::Buffer>,
    pub offset: u64,
    pub size: u64,
}

pub struct Executor {
    gpu: Arc<Gpu>,
    graph: Graph,
    plan: Plan,
    tensors: Vec<Resolved>,
    calls: Vec<CompiledCall>,
    params: wgpu::Buffer,
    params_host: Vec<u8>,
    grids: Vec<[u32; 3]>,
    /// Sequences the graph's per-sequence nodes name (`Graph::n_seqs`).
    n_seqs: usize,
    staging: Option<(wgpu::Buffer, u64)>,
    profiler: Option<Profiler>,
}

impl Executor {
    /// Plans memory, allocates buffers, creates pipelines and bind groups.
    pub fn new(gpu: Arc<Gpu>, graph: Graph) -> Result<Self> {
        let caps = gpu.caps;
        let plan = plan(&graph, &caps);
        let mut slots = Vec::with_capacity(plan.slot_bytes.len());
        for (i, &b) in plan.slot_bytes.iter().enumerate() {
            slots.push(gpu.storage_buffer(&format!("slot{i}"), b)?);
        }
        let mut tensors: Vec<Resolved> = Vec::with_capacity(graph.tensors.len());
        for (t, info) in graph.tensors.iter().enumerate() {
            let r = match (&info.kind, plan.slot[t]) {
                // Views come after the tensor they view, already resolved.
                (TensorKind::View { of, offset }, _) => Resolved {
                    buffer: tensors[*of].buffer.clone(),
                    offset: tensors[*of].offset + offset,
                    size: info.bytes.max(4),
                },
                (TensorKind::External(x), _) => Resolved {
                    buffer: x.buffer.clone(),
                    offset: x.offset,
                    size: x.size,
                },
                (TensorKind::Intermediate, Some(s)) => Resolved {
                    buffer: slots[s].clone(),
                    offset: 0,
                    size: info.bytes.max(4),
                },
                _ => Resolved {
                    buffer: gpu.storage_buffer(&info.name, info.bytes)?,
                    offset: 0,
                    size: info.bytes.max(4).next_multiple_of(4),
                },
            };
            tensors.push(r);
        }
        // Each node's calls, asked for once.
        let node_calls: Vec<Vec<Call>> = graph
            .nodes
            .iter()
            .map(|n| n.op.def().calls(&caps))
            .collect();
        let n_calls: usize = node_calls.iter().map(Vec::len).sum();
        let stride = PARAMS_BYTES as u64;
        let params = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: stride * n_calls.max(1) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // Every pipeline first, compiled in parallel.
        let kernels: Vec<_> = node_calls
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.kernel.clone(),
                    c.bindings.iter().map(|b| b.access).collect(),
                )
            })
            .collect();
        let t0 = web_time::Instant::now();
        gpu.prepare_pipelines(&kernels)?;
        log::debug!(
            "graph: pipelines ready in {:.3} s",
            t0.elapsed().as_secs_f64()
        );
        let mut calls = Vec::with_capacity(n_calls);
        for (ni, (node, node_calls)) in graph.nodes.iter().zip(node_calls).enumerate() {
            for call in node_calls {
                check_usage(&graph, &tensors, node, &call)?;
                let access: Vec<_> = call.bindings.iter().map(|b| b.access).collect();
                let pipeline = gpu.pipeline(&call.kernel, &access)?;
                let idx = calls.len() as u64;
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: idx * stride,
                        size: wgpu::BufferSize::new(stride),
                    }),
                }];
                for (bi, b) in call.bindings.iter().enumerate() {
                    let r = &tensors[b.tensor];
                    let (off, size) = match b.range {
                        Some((o, s)) => (r.offset + o, s),
                        None => (r.offset, r.size),
                    };
                    let what = format!(
                        "{} binding {} of {}",
                        graph.tensors[b.tensor].name, bi, node.label
                    );
                    gpu.check_binding(&what, size)?;
                    if off % u64::from(caps.min_storage_align) != 0 {
                        return Err(EngineError::Shape {
                            op: node.op.def().name(),
                            msg: format!(
                                "{what}: offset {off} is not aligned to {}",
                                caps.min_storage_align
                            ),
                        });
                    }
                    entries.push(wgpu::BindGroupEntry {
                        binding: bi as u32 + 1,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &r.buffer,
                            offset: off,
                            size: wgpu::BufferSize::new(size.max(4)),
                        }),
                    });
                }
                let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.layout,
                    entries: &entries,
                });
                calls.push(CompiledCall {
                    node: ni,
                    tag: call.tag,
                    pipeline,
                    bind_group,
                });
            }
        }
        gpu.save_pipeline_cache();
        log::debug!(
            "graph: {} nodes, {} dispatches, intermediates {:.1} MiB in {} buffers ({:.1} MiB unshared)",
            graph.nodes.len(),
            calls.len(),
            plan.shared_bytes() as f64 / 1048576.0,
            plan.slot_bytes.len(),
            plan.naive_bytes as f64 / 1048576.0
        );
        Ok(Executor {
            params_host: vec![0; PARAMS_BYTES * calls.len()],
            grids: vec![[0; 3]; calls.len()],
            n_seqs: graph.n_seqs(),
            gpu,
            graph,
            plan,
            tensors,
            calls,
            params,
            staging: None,
            profiler: None,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    pub fn dispatch_count(&self) -> usize {
        self.calls.len()
    }
    pub fn resolved(&self, t: TensorId) -> &Resolved {
        &self.tensors[t]
    }

    /// Turns per-dispatch GPU timing on (when the adapter has timestamp queries).
    pub fn enable_profiling(&mut self) -> bool {
        // The timestamps come back through a blocking read, which the web
        // has not.
        if cfg!(target_arch = "wasm32") {
            return false;
        }
        if self.profiler.is_none() {
            self.profiler = Profiler::new(&self.gpu, self.calls.len());
        }
        self.profiler.is_some()
    }

    /// Writes host data into an input (or any) tensor at byte `offset`.
    pub fn write(&self, t: TensorId, offset: u64, data: &[u8]) {
        let r = &self.tensors[t];
        self.gpu
            .queue
            .write_buffer(&r.buffer, r.offset + offset, data);
    }

    /// `seqs`: the steps of the sequences that [`Graph::push_seq`] nodes
    /// name (checked by the callers to cover them).
    fn encode(&mut self, step: &Step, seqs: &[Step]) -> wgpu::CommandEncoder {
        for (i, c) in self.calls.iter().enumerate() {
            let block: &mut [u8; PARAMS_BYTES] = (&mut self.params_host
                [i * PARAMS_BYTES..(i + 1) * PARAMS_BYTES])
                .try_into()
                .expect("params block is PARAMS_BYTES long");
            let node = &self.graph.nodes[c.node];
            let op = node.op.def();
            self.grids[i] = match node.seq {
                NodeSeq::Shared => op.step(c.tag, step, block),
                NodeSeq::One(s) => op.step(c.tag, &seqs[s], block),
                NodeSeq::All(n) => op.step_seqs(c.tag, &seqs[..n], block),
            };
        }
        self.gpu
            .queue
            .write_buffer(&self.params, 0, &self.params_host);
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        match &self.profiler {
            Some(p) => {
                for (i, c) in self.calls.iter().enumerate() {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: Some(p.writes(i)),
                    });
                    dispatch(&mut pass, c, self.grids[i]);
                }
                p.resolve(&mut enc);
            }
            None => {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for (i, c) in self.calls.iter().enumerate() {
                    dispatch(&mut pass, c, self.grids[i]);
                }
            }
        }
        enc
    }

    /// Records and submits one step; does not wait.
    pub fn run(&mut self, step: &Step) -> Result<()> {
        self.check_seqs(0)?;
        let enc = self.encode(step, &[]);
        self.gpu.queue.submit([enc.finish()]);
        self.collect_profile(step)
    }

    fn check_seqs(&self, given: usize) -> Result<()> {
        let need = self.n_seqs;
        if given < need {
            return Err(EngineError::Shape {
                op: "executor",
                msg: format!(
                    "the graph steps {need} sequences, the run gave {given} sequence steps"
                ),
            });
        }
        Ok(())
    }

    /// Runs one step and reads `bytes` bytes of tensor `t` back, in the same submit.
    pub fn run_read(&mut self, step: &Step, t: TensorId, bytes: u64) -> Result<Vec<u8>> {
        self.run_read_seqs(step, &[], t, bytes)
    }

    /// [`Executor::run_read`] for a graph with per-sequence nodes
    /// ([`Graph::push_seq`]): node `seq = s` runs with `seqs[s]`, the others
    /// with `step`. A sequence step of no tokens skips that sequence's
    /// dispatches.
    pub fn run_read_seqs(
        &mut self,
        step: &Step,
        seqs: &[Step],
        t: TensorId,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        let pending = self.submit_read(step, seqs, t, bytes)?;
        let out = map_read(&self.gpu, &pending.staging, pending.bytes)?;
        self.finish_read(pending, step)?;
        Ok(out)
    }

    /// [`Executor::run_read`] as a future, for the web: the read-back
    /// resolves when the browser has mapped it.
    pub async fn run_read_async(
        &mut self,
        step: &Step,
        t: TensorId,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        let pending = self.submit_read(step, &[], t, bytes)?;
        let out = map_read_async(&self.gpu, &pending.staging, pending.bytes).await?;
        self.finish_read(pending, step)?;
        Ok(out)
    }

    /// Encodes and submits one step with a copy of `bytes` bytes of `t` into
    /// the staging buffer after it; the caller maps it.
    fn submit_read(
        &mut self,
        step: &Step,
        seqs: &[Step],
        t: TensorId,
        bytes: u64,
    ) -> Result<PendingRead> {
        self.check_seqs(seqs.len())?;
        let bytes = bytes.next_multiple_of(4);
        let mut enc = self.encode(step, seqs);
        let (staging, size) = self.staging_buffer(bytes);
        let r = &self.tensors[t];
        enc.copy_buffer_to_buffer(&r.buffer, r.offset, &staging, 0, bytes);
        self.gpu.queue.submit([enc.finish()]);
        Ok(PendingRead {
            staging,
            size,
            bytes,
        })
    }

    /// Keeps the staging buffer for the next step and gathers the step's
    /// GPU times when profiling.
    fn finish_read(&mut self, pending: PendingRead, step: &Step) -> Result<()> {
        self.staging = Some((pending.staging, pending.size));
        self.collect_profile(step)
    }

    /// Reads `bytes` bytes of tensor `t` (waits for submitted work).
    pub fn read(&self, t: TensorId, bytes: u64) -> Result<Vec<u8>> {
        let r = &self.tensors[t];
        self.gpu.read_buffer(&r.buffer, r.offset, bytes.min(r.size))
    }

    pub fn read_f32(&self, t: TensorId, n: usize) -> Result<Vec<f32>> {
        let b = self.read(t, 4 * n as u64)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// The kept staging buffer when it holds `bytes`, else a new one; with its size.
    fn staging_buffer(&mut self, bytes: u64) -> (wgpu::Buffer, u64) {
        match self.staging.take() {
            Some((b, size)) if size >= bytes => (b, size),
            _ => (
                self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("step readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                bytes,
            ),
        }
    }

    fn collect_profile(&mut self, step: &Step) -> Result<()> {
        let Some(p) = &mut self.profiler else {
            return Ok(());
        };
        let times = p.read(&self.gpu)?;
        let n = step.n_tokens;
        for (i, c) in self.calls.iter().enumerate() {
            // Calls with nothing to do this step are not dispatched.
            if self.grids[i].contains(&0) {
                continue;
            }
            let node = &self.graph.nodes[c.node];
            p.add(node.op.def().name(), &c.pipeline.label, n, times[i]);
        }
        Ok(())
    }

    /// Per-op GPU time gathered since profiling was enabled.
    pub fn profile(&self) -> Option<&Profiler> {
        self.profiler.as_ref()
    }
    pub fn reset_profile(&mut self) {
        if let Some(p) = &mut self.profiler {
            p.clear();
        }
    }
}

/// A step submitted with its read-back copy, not yet mapped.
struct PendingRead {
    staging: wgpu::Buffer,
    /// The staging buffer's size (it is kept for later steps).
    size: u64,
    /// The bytes this step reads.
    bytes: u64,
}

fn dispatch(pass: &mut wgpu::ComputePass<'_>, c: &CompiledCall, g: [u32; 3]) {
    if g[0] == 0 || g[1] == 0 || g[2] == 0 {
        return;
    }
    pass.set_pipeline(&c.pipeline.pipeline);
    pass.set_bind_group(0, &c.bind_group, &[]);
    pass.dispatch_workgroups(g[0], g[1], g[2]);
}

/// A dispatch may bind one buffer several times only if no binding writes
/// it, or all do (wgpu's usage rule): views of one tensor, or tensors
/// sharing a planned buffer, must not be read by one binding and written
/// by another of the same call.
fn check_usage(graph: &Graph, tensors: &[Resolved], node: &super::Node, call: &Call) -> Result<()> {
    for (i, a) in call.bindings.iter().enumerate() {
        for b in &call.bindings[i + 1..] {
            let same = Arc::ptr_eq(&tensors[a.tensor].buffer, &tensors[b.tensor].buffer);
            if same && a.access != b.access {
                return Err(EngineError::Shape {
                    op: node.op.def().name(),
                    msg: format!(
                        "{}: {} and {} share a buffer, one read and one written",
                        node.label, graph.tensors[a.tensor].name, graph.tensors[b.tensor].name
                    ),
                });
            }
        }
    }
    Ok(())
}
