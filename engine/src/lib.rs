//! Lamina's GPU runtime: wgpu device, tensors, WGSL ops and the graph executor.
//! Knows nothing about Llama.
//!
//! Layers, each importing only those below it: `graph` (op enum, plan,
//! executor) -> `ops/<op>.rs` -> `dispatch` (the op/executor contract),
//! `kv` (the KV caches' layouts and format ids), `weight` (layouts,
//! packing, upload), `act` (int8 activation codes) -> `pipeline`, `shader`,
//! `tensor`, `device`.

pub mod act;
pub mod device;
pub mod dispatch;
pub mod error;
pub mod graph;
pub mod kv;
pub mod mmout;
pub mod ops;
pub mod pipeline;
pub mod profile;
pub mod shader;
pub mod tensor;
pub mod weight;

pub use device::{Caps, DeviceOptions, Gpu};
pub use error::{EngineError, Result};
pub use graph::{Executor, Graph, Op, Sampling, Step, TensorId};
pub use tensor::{DType, Tensor, WeightFormat};
pub use weight::{GpuWeight, Planes, Shard, Weight, WeightRef};
