//! Weights on the GPU: split by rows into shards that each fit one storage
//! binding, uploaded one shard at a time. [`Weight`] is the one handle for a
//! sharded weight, whether its shards are buffers ([`GpuWeight`], after
//! upload) or tensors of a graph ([`WeightRef`], what ops read;
//! `GpuWeight::add_to_graph` maps one into the other).

use std::sync::Arc;

use super::layout::{MixedLayout, Planes, check_dims};
use super::pack::{HostWeight, PackedWeight};
use crate::dispatch::{TensorId, TensorInfo, check_bytes};
use crate::tensor::{DType, Tensor, WeightFormat};
use crate::{EngineError, Gpu, Result};

/// Row ranges `(row_start, rows)` splitting a weight so that each shard's
/// packed buffer fits `max_binding_bytes`. Shards are as equal as possible.
pub fn shard_rows(
    format: WeightFormat,
    rows: u32,
    cols: u32,
    max_binding_bytes: u64,
) -> Vec<(u32, u32)> {
    shard_rows_of(format, None, rows, cols, max_binding_bytes)
}

/// [`shard_rows`] for any format, Mixed included.
pub fn shard_rows_of(
    format: WeightFormat,
    mixed: Option<&MixedLayout>,
    rows: u32,
    cols: u32,
    max_binding_bytes: u64,
) -> Vec<(u32, u32)> {
    let fits =
        |n: u32| 4 * u64::from(Planes::of(format, mixed, n, cols).words) <= max_binding_bytes;
    if rows == 0 {
        return Vec::new();
    }
    // Largest row count that fits (at least 1, so a too-wide row still gets a
    // shard; the executor reports the binding as too large).
    let (mut lo, mut hi) = (1u32, rows);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    let n_shards = rows.div_ceil(lo);
    let per = rows.div_ceil(n_shards);
    (0..n_shards)
        .map(|i| (i * per, per.min(rows - i * per)))
        .filter(|s| s.1 > 0)
        .collect()
}

/// One row range of a weight, in its own buffer: `B` is how the holder
/// names the buffer (a [`Tensor`], or a [`TensorId`] inside a graph).
#[derive(Debug, Clone)]
pub struct Shard<B> {
    pub tensor: B,
    pub row_start: u32,
    pub rows: u32,
    pub planes: Planes,
}

/// A packed weight split by rows into shards.
#[derive(Debug, Clone)]
pub struct Weight<B> {
    pub format: WeightFormat,
    pub rows: u32,
    pub cols: u32,
    pub shards: Vec<Shard<B>>,
    /// Mixed only: the group widths.
    pub mixed: Option<Arc<MixedLayout>>,
}

/// A packed weight in GPU buffers, one per shard.
pub type GpuWeight = Weight<Tensor>;
/// One uploaded shard.
pub type GpuShard = Shard<Tensor>;
/// A weight as an op sees it inside a graph.
pub type WeightRef = Weight<TensorId>;

impl<B> Weight<B> {
    /// The same weight with each shard's buffer replaced by `f(index, buffer)`.
    pub fn map_shards<C>(&self, mut f: impl FnMut(usize, &B) -> C) -> Weight<C> {
        Weight {
            format: self.format,
            rows: self.rows,
            cols: self.cols,
            shards: self
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| Shard {
                    tensor: f(i, &s.tensor),
                    row_start: s.row_start,
                    rows: s.rows,
                    planes: s.planes,
                })
                .collect(),
            mixed: self.mixed.clone(),
        }
    }
}

impl Weight<Tensor> {
    /// Packs and uploads `w`, split so each shard fits the device's binding limit.
    pub fn upload(gpu: &Gpu, label: &str, w: &HostWeight<'_>) -> Result<GpuWeight> {
        Self::upload_sharded(gpu, label, w, gpu.caps.max_binding)
    }

    /// As [`upload`](Self::upload) with an explicit per-shard byte limit
    /// (at most the device's); one shard is packed at a time.
    pub fn upload_sharded(
        gpu: &Gpu,
        label: &str,
        w: &HostWeight<'_>,
        max_binding: u64,
    ) -> Result<GpuWeight> {
        check_dims("upload", w.format, w.rows, w.cols)?;
        let mixed = w.mixed().cloned();
        crate::ensure_shape!(
            (w.format == WeightFormat::Mixed) == mixed.is_some(),
            "upload",
            "{label}: format {} with {} data",
            w.format.name(),
            if mixed.is_some() {
                "mixed"
            } else {
                "non-mixed"
            }
        );
        let limit = max_binding.min(gpu.caps.max_binding);
        let mut shards = Vec::new();
        for (start, n) in shard_rows_of(w.format, mixed.as_deref(), w.rows, w.cols, limit) {
            let packed = w.pack_rows(start, n)?;
            shards.push(Self::upload_shard(gpu, label, start, &packed)?);
        }
        Ok(GpuWeight {
            format: w.format,
            rows: w.rows,
            cols: w.cols,
            shards,
            mixed,
        })
    }

    /// Uploads already packed shards; `parts` are `(row_start, packed)` and
    /// must tile the rows in order.
    pub fn from_packed(gpu: &Gpu, label: &str, parts: &[(u32, PackedWeight)]) -> Result<GpuWeight> {
        let Some((_, first)) = parts.first() else {
            return Err(EngineError::Shape {
                op: "upload",
                msg: format!("{label}: no shards"),
            });
        };
        let mut shards = Vec::with_capacity(parts.len());
        let mut next = 0u32;
        for (start, p) in parts {
            crate::ensure_shape!(
                *start == next
                    && p.format == first.format
                    && p.cols == first.cols
                    && p.mixed == first.mixed,
                "upload",
                "{label}: shard at row {start} ({} {}x{}) does not continue row {next} of {} x{}",
                p.format.name(),
                p.rows,
                p.cols,
                first.format.name(),
                first.cols
            );
            shards.push(Self::upload_shard(gpu, label, *start, p)?);
            next += p.rows;
        }
        Ok(GpuWeight {
            format: first.format,
            rows: next,
            cols: first.cols,
            shards,
            mixed: first.mixed.clone(),
        })
    }

    fn upload_shard(gpu: &Gpu, label: &str, row_start: u32, p: &PackedWeight) -> Result<GpuShard> {
        let name = format!("{label}[{row_start}..{}]", row_start + p.rows);
        gpu.check_binding(&name, p.bytes())?;
        let buffer: Arc<wgpu::Buffer> = gpu.upload(&name, bytemuck::cast_slice(&p.words))?;
        let tensor = Tensor {
            buffer,
            offset: 0,
            size: p.bytes(),
            shape: vec![p.rows as usize, p.cols as usize],
            dtype: DType::U32,
        };
        Ok(GpuShard {
            tensor,
            row_start,
            rows: p.rows,
            planes: p.planes,
        })
    }

    /// Packed bytes on the GPU (all planes and padding).
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.tensor.size).sum()
    }
}

impl Weight<TensorId> {
    pub fn first_tensor(&self) -> Option<TensorId> {
        self.shards.first().map(|s| s.tensor)
    }
    /// Checks that every shard tensor exists in the graph's tensor table,
    /// holds its planes, and that the shards tile the rows in order.
    pub fn check(&self, tensors: &[TensorInfo], op: &'static str) -> Result<()> {
        let mut next = 0u32;
        for s in &self.shards {
            crate::ensure_shape!(
                s.row_start == next,
                op,
                "weight shard starts at row {}, expected {next}",
                s.row_start
            );
            check_bytes(
                tensors,
                op,
                "weight shard",
                s.tensor,
                4 * u64::from(s.planes.words),
            )?;
            next = next.saturating_add(s.rows);
        }
        let covered: u32 = self.shards.iter().map(|s| s.rows).sum();
        crate::ensure_shape!(
            covered == self.rows,
            op,
            "weight shards cover {covered} of {} rows",
            self.rows
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_fit_and_cover() {
        let s = shard_rows(WeightFormat::Q8_0, 1000, 64, 4096);
        assert!(s.len() > 1);
        assert_eq!(s.iter().map(|x| x.1).sum::<u32>(), 1000);
        for (i, (start, n)) in s.iter().enumerate() {
            assert!(
                4 * u64::from(Planes::layout(WeightFormat::Q8_0, *n, 64).words) <= 4096,
                "shard {i}"
            );
            if i > 0 {
                assert_eq!(*start, s[i - 1].0 + s[i - 1].1);
            }
        }
    }
}
