//! Llama-family models for Lamina.

pub mod config;
pub mod error;
pub mod quant;
pub mod weights;

pub use config::{LlamaConfig, RopeStyle};
pub use error::{ModelError, Result};
