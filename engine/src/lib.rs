//! Lamina's GPU runtime: wgpu device, tensors, WGSL ops and the graph executor.
//! Knows nothing about Llama.

pub mod device;
pub mod error;
pub mod graph;
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
pub use weight::{Planes, Shard, WeightRef};
