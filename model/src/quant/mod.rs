//! Weight formats: GGUF block formats, and (later) RTN, GPTQ, SliM-LLM.

pub mod ggml;
