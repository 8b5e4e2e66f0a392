//! Quantizers of the weights and the pivot: round-to-nearest, GPTQ and
//! SliM-LLM into Lamina's mixed-width groups, the GPU calibration pipeline
//! behind `lamina quantize`, and IntactKV's pivot calibration; PrefixQuant's
//! outlier-token prefix and its static activation and KV-cache scales. (llama.cpp's
//! block formats are encoded in `checkpoint::encode`; QJL's key sketches
//! live with the KV cache in `kv_cache::qjl`.)

pub mod act_scales;
pub mod gptq;
pub mod intactkv;
pub mod kv_scales;
pub mod pipeline;
pub mod prefix;
pub mod rtn;
pub mod slim;
