//! GPU tensors: a buffer range with a shape and an element format.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::{EngineError, Gpu, Result};

/// Element format of an activation / cache tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    /// Two f16 per u32 word.
    F16,
    U32,
    I32,
}

impl DType {
    /// Bytes for `n` elements, rounded up to whole u32 words.
    pub fn bytes_for(self, n: usize) -> u64 {
        match self {
            DType::F32 | DType::U32 | DType::I32 => 4 * n as u64,
            DType::F16 => 4 * n.div_ceil(2) as u64,
        }
    }
}

/// A weight matrix's storage format on the GPU. Quantized formats are
/// repacked at load into aligned planes grouped along the input dimension
/// (see `ops::matmul`), never dequantized on the host.
// Variants carry ggml's type names (Q4_K, IQ4_XS), as users read them.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    /// 4-bit codes, one f16 scale per 32 inputs, zero point 8 (GGUF Q4_0).
    Q4_0,
    /// 4-bit codes, f16 scale and f16 min per 32 inputs (GGUF Q4_1).
    Q4_1,
    /// 8-bit signed codes, one f16 scale per 32 inputs (GGUF Q8_0).
    Q8_0,
    /// 5-bit codes, one f16 scale per 32 inputs, zero point 16 (GGUF Q5_0).
    Q5_0,
    /// 5-bit codes, f16 scale and min per 32 inputs (GGUF Q5_1).
    Q5_1,
    /// 4-bit indexes into ggml's non-linear table, f16 scale per 32 (GGUF IQ4_NL).
    IQ4_NL,
    /// The K-quants (GGUF Q2_K .. Q6_K) and IQ4_XS: 256-input super-blocks
    /// with f16 super-scales and small integer scales per sub-block, kept as
    /// the file packs them (see `weight/kquant.rs`).
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_XS,
    /// Mixed-precision groups (SliM-LLM): a bit width from 1 to 8 per column
    /// group, shared by all rows, f16 scale and min per (row, group). The
    /// widths live in a [`MixedLayout`](crate::weight::MixedLayout).
    Mixed,
}

impl WeightFormat {
    /// Every format.
    pub const ALL: [WeightFormat; 15] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q8_0,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
        WeightFormat::IQ4_NL,
        WeightFormat::Q2_K,
        WeightFormat::Q3_K,
        WeightFormat::Q4_K,
        WeightFormat::Q5_K,
        WeightFormat::Q6_K,
        WeightFormat::IQ4_XS,
        WeightFormat::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Q4_0 => "q4_0",
            WeightFormat::Q4_1 => "q4_1",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q5_0 => "q5_0",
            WeightFormat::Q5_1 => "q5_1",
            WeightFormat::IQ4_NL => "iq4_nl",
            WeightFormat::Q2_K => "q2_k",
            WeightFormat::Q3_K => "q3_k",
            WeightFormat::Q4_K => "q4_k",
            WeightFormat::Q5_K => "q5_k",
            WeightFormat::Q6_K => "q6_k",
            WeightFormat::IQ4_XS => "iq4_xs",
            WeightFormat::Mixed => "mixed",
        }
    }
}

/// A typed view of (part of) a GPU buffer.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub buffer: Arc<wgpu::Buffer>,
    /// Byte offset into `buffer`.
    pub offset: u64,
    /// Byte size of the view.
    pub size: u64,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl Gpu {
    /// A zeroed storage buffer usable as op input/output and for copies.
    pub fn storage_buffer(&self, label: &str, size: u64) -> Result<Arc<wgpu::Buffer>> {
        let size = size.max(4).next_multiple_of(4);
        if size > self.caps.max_buffer {
            return Err(EngineError::TooLarge {
                what: label.to_string(),
                size,
                limit: self.caps.max_buffer,
            });
        }
        let (b, err) = self.scoped(wgpu::ErrorFilter::OutOfMemory, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        });
        if let Some(e) = err {
            return Err(EngineError::OutOfMemory(format!(
                "{label} ({size} bytes): {e}"
            )));
        }
        Ok(Arc::new(b))
    }

    /// A tensor of its own with `t`'s shape, type and contents (copied on
    /// the GPU, in queue order: later work sees the copy complete).
    pub fn duplicate(&self, label: &str, t: &Tensor) -> Result<Tensor> {
        let align = u64::from(self.caps.min_storage_align.max(4));
        let mut one = self.replicate(label, t, 1, t.size.next_multiple_of(align))?;
        Ok(one.remove(0))
    }

    /// `n` copies of `t` in one buffer, `stride` bytes apart (at least
    /// `t.size`, a multiple of the storage binding alignment): views that
    /// bind one by one, and together as one binding of all `n` (a
    /// several-sequence op over forks' KV caches).
    pub fn replicate(&self, label: &str, t: &Tensor, n: usize, stride: u64) -> Result<Vec<Tensor>> {
        let align = u64::from(self.caps.min_storage_align.max(4));
        if n == 0 || stride < t.size || !stride.is_multiple_of(align) {
            return Err(EngineError::Shape {
                op: "replicate",
                msg: format!(
                    "{label}: {n} copies of {} bytes at a stride of {stride} (alignment {align})",
                    t.size
                ),
            });
        }
        let buffer = self.storage_buffer(label, (n as u64 - 1) * stride + t.size)?;
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("replicate"),
            });
        for i in 0..n as u64 {
            let size = t.size.next_multiple_of(4);
            enc.copy_buffer_to_buffer(&t.buffer, t.offset, &buffer, i * stride, size);
        }
        self.queue.submit([enc.finish()]);
        Ok((0..n as u64)
            .map(|i| Tensor {
                buffer: buffer.clone(),
                offset: i * stride,
                size: t.size,
                shape: t.shape.clone(),
                dtype: t.dtype,
            })
            .collect())
    }

    /// A storage buffer holding `data` (padded to whole words).
    pub fn upload(&self, label: &str, data: &[u8]) -> Result<Arc<wgpu::Buffer>> {
        if data.len() as u64 > self.caps.max_buffer {
            return Err(EngineError::TooLarge {
                what: label.to_string(),
                size: data.len() as u64,
                limit: self.caps.max_buffer,
            });
        }
        let init = |contents: &[u8]| {
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                })
        };
        let (b, err) = self.scoped(wgpu::ErrorFilter::OutOfMemory, || {
            if data.len().is_multiple_of(4) && !data.is_empty() {
                init(data)
            } else {
                let mut padded = data.to_vec();
                padded.resize(data.len().max(4).next_multiple_of(4), 0);
                init(&padded)
            }
        });
        if let Some(e) = err {
            return Err(EngineError::OutOfMemory(format!(
                "{label} ({} bytes): {e}",
                data.len()
            )));
        }
        Ok(Arc::new(b))
    }

    /// Copies `size` bytes at `offset` of `buffer` back to the host (waits).
    pub fn read_buffer(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let size = size.next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        map_read(self, &staging, size)
    }
}

/// Maps a MAP_READ buffer after the submitted work and returns its bytes
/// (waits). Natively the map's callback runs inside [`Gpu::wait`], so the
/// future below is ready by the time it is polled; in the browser nothing
/// may block, and this returns an error naming the async path.
pub(crate) fn map_read(gpu: &Gpu, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
    #[cfg(not(target_arch = "wasm32"))]
    return pollster::block_on(map_read_async(gpu, staging, size));
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (gpu, staging, size);
        Err(EngineError::Gpu(
            "a blocking read-back cannot run in a browser: use the async reads".into(),
        ))
    }
}

/// [`map_read`] as a future: resolves when the map's callback has run (in
/// the browser, when its event loop gets to it).
pub(crate) async fn map_read_async(
    gpu: &Gpu,
    staging: &wgpu::Buffer,
    size: u64,
) -> Result<Vec<u8>> {
    let (tx, rx) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, 0..size, move |r| {
        let _ = tx.send(r);
    });
    // Natively the callback runs while the device is polled; the browser
    // polls by itself (wait returns at once there).
    gpu.wait()?;
    rx.await
        .map_err(|e| EngineError::Gpu(format!("map callback dropped: {e}")))?
        .map_err(|e| EngineError::Gpu(format!("buffer map failed: {e}")))?;
    let out = staging
        .get_mapped_range(0..size)
        .map_err(|e| EngineError::Gpu(format!("mapped range: {e:?}")))?
        .to_vec();
    staging.unmap();
    Ok(out)
}
