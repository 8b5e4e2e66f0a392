//! Errors of the model crate. Every bad input (missing file, truncated or
//! corrupt GGUF, unsupported architecture, bad prompt) is one of these, never a
//! panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The reason is part of the message, not a source (printing the chain
    /// would say it twice).
    #[error("cannot read {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// The file is not a well-formed GGUF (bad magic, truncated, out-of-range offsets...).
    #[error("{path}: not a valid GGUF file: {msg}")]
    Gguf { path: PathBuf, msg: String },
    /// A safetensors / Hugging Face directory problem.
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// Well-formed, but something Lamina does not run (architecture, tensor type...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A metadata key or tensor the model needs is missing or has the wrong type/shape.
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// Bad user input: empty prompt, prompt longer than the context, bad flag values.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Engine(#[from] lamina_engine::EngineError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            err: source,
        }
    }
}
