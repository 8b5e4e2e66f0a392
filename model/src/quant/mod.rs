//! Weight formats: GGUF block formats, and (later) RTN, GPTQ, SliM-LLM.

pub mod encode;
pub mod ggml;
