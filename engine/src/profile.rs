//! Per-dispatch GPU time from timestamp queries, summed per op and kernel.

use std::collections::BTreeMap;

use crate::tensor::map_read;
use crate::{Gpu, Result};

/// wgpu's cap on queries in one set.
const MAX_QUERIES: u32 = 4096;

pub struct Profiler {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    n_calls: u32,
    period_ns: f64,
    /// (op, kernel) -> (dispatches, total ns)
    totals: BTreeMap<(&'static str, String), (u64, f64)>,
    pub steps: u64,
}

/// One line of a profile table.
#[derive(Debug, Clone)]
pub struct ProfileRow {
    pub op: &'static str,
    pub kernel: String,
    pub dispatches: u64,
    pub total_ms: f64,
}

impl Profiler {
    pub fn new(gpu: &Gpu, n_calls: usize) -> Option<Profiler> {
        if !gpu.caps.timestamps || n_calls == 0 || 2 * n_calls as u32 > MAX_QUERIES {
            return None;
        }
        let n = 2 * n_calls as u32;
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: n,
        });
        let bytes = 8 * u64::from(n);
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Some(Profiler {
            set,
            resolve,
            readback,
            n_calls: n_calls as u32,
            period_ns: f64::from(gpu.queue.get_timestamp_period()),
            totals: BTreeMap::new(),
            steps: 0,
        })
    }

    pub(crate) fn writes(&self, call: usize) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(2 * call as u32),
            end_of_pass_write_index: Some(2 * call as u32 + 1),
        }
    }

    pub(crate) fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        let n = 2 * self.n_calls;
        enc.resolve_query_set(&self.set, 0..n, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, 8 * u64::from(n));
    }

    /// Nanoseconds per call of the last step.
    pub(crate) fn read(&mut self, gpu: &Gpu) -> Result<Vec<f64>> {
        let bytes = map_read(gpu, &self.readback, 8 * 2 * u64::from(self.n_calls))?;
        let ts: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        self.steps += 1;
        Ok(ts
            .chunks_exact(2)
            .map(|p| p[1].saturating_sub(p[0]) as f64 * self.period_ns)
            .collect())
    }

    pub(crate) fn add(&mut self, op: &'static str, kernel: &str, _n_tokens: u32, ns: f64) {
        let e = self
            .totals
            .entry((op, kernel.to_string()))
            .or_insert((0, 0.0));
        e.0 += 1;
        e.1 += ns;
    }

    pub fn clear(&mut self) {
        self.totals.clear();
        self.steps = 0;
    }

    /// Rows sorted by total time, largest first.
    pub fn rows(&self) -> Vec<ProfileRow> {
        let mut v: Vec<ProfileRow> = self
            .totals
            .iter()
            .map(|((op, k), (n, ns))| ProfileRow {
                op,
                kernel: k.clone(),
                dispatches: *n,
                total_ms: ns / 1e6,
            })
            .collect();
        v.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        v
    }
}
