//! Weight formats and quantizers: GGUF block formats, and round-to-nearest,
//! GPTQ and SliM-LLM into Lamina's mixed-width groups.

pub mod encode;
pub mod ggml;
pub mod gptq;
pub mod intactkv;
pub mod pipeline;
pub mod qjl;
pub mod rtn;
pub mod slim;
