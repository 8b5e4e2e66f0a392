//! Llama-family models for Lamina.

pub mod chat;
pub mod config;
pub mod error;
pub mod eval;
pub mod gguf;
pub mod hf;
pub mod kv_cache;
pub mod lamina_file;
pub mod llama;
pub mod loader;
pub mod logits_file;
pub mod quant;
pub mod reference;
pub mod session;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

pub use config::{LlamaConfig, RopeStyle};
pub use error::{ModelError, Result};
