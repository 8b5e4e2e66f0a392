//! Engine errors: values, never panics. Device loss and out-of-memory are
//! reported with a message the user can act on.

/// What to do about a missing adapter: natively, a driver to install; in a
/// browser, its WebGPU to turn on.
#[cfg(not(target_arch = "wasm32"))]
const NO_ADAPTER_HELP: &str = "Install a GPU driver, or for a software Vulkan device on Linux: \
     `apt-get install mesa-vulkan-drivers` (lavapipe)";
#[cfg(target_arch = "wasm32")]
const NO_ADAPTER_HELP: &str = "This browser's WebGPU offers none: it may be turned off \
     (Chromium on Linux: --enable-unsafe-webgpu) or blocked for this GPU";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no GPU adapter found{detail}. {NO_ADAPTER_HELP}")]
    NoAdapter { detail: String },
    #[error("could not open the GPU device `{adapter}`: {msg}")]
    RequestDevice { adapter: String, msg: String },
    #[error("invalid value for {var}: `{value}` ({expected})")]
    BadEnv {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    /// Shapes or formats passed to an op do not fit together.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("shader {shader}: {msg}")]
    Shader { shader: &'static str, msg: String },
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("GPU error: {0}")]
    Gpu(String),
    #[error("buffer of {size} bytes exceeds the device's limit of {limit} bytes ({what})")]
    TooLarge { what: String, size: u64, limit: u64 },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Returns a [`EngineError::Shape`] from an op's `check()` when `cond` fails.
#[macro_export]
macro_rules! ensure_shape {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::EngineError::Shape { op: $op, msg: format!($($fmt)+) });
        }
    };
}
