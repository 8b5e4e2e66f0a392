//! Llama-family models for Lamina.
//!
//! Layers, lowest first (a module imports only its own layer or below; see
//! docs/ARCHITECTURE.md):
//! 1. [`checkpoint`]: the checkpoint in memory and the table of its tensors;
//! 2. readers and loaders that fill it ([`gguf`], [`loader`], [`hf`],
//!    [`lamina_file`], [`synthetic`]), the [`tokenizer`] and [`chat`] template;
//! 3. the CPU [`reference`] and the [`pivot`] it computes;
//! 4. the GPU model: [`kv_cache`] and the graph builder [`llama`];
//! 5. what runs it: [`session`], [`eval`], the quantizers in [`quant`].

pub mod batch;
pub mod chat;
pub mod checkpoint;
pub mod error;
pub mod eval;
pub mod gguf;
pub mod hf;
pub mod kv_cache;
pub mod lamina_file;
pub mod llama;
pub mod loader;
pub mod logits_file;
pub mod pivot;
// The quantizers calibrate on threads and with faer's solvers, neither of
// which a browser tab has: native only (the browser runs their files).
#[cfg(not(target_arch = "wasm32"))]
pub mod quant;
pub mod reference;
pub mod rotate;
pub mod session;
pub mod synthetic;
pub mod tokenizer;

pub use checkpoint::{LlamaConfig, RopeStyle};
pub use error::{ModelError, Result};
