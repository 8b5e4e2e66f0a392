//! Weight matrices on the GPU: packed planes, split by rows into shards that
//! each fit one storage binding.
//!
//! A weight `W: [rows, cols]` (y = W x, x: [cols]) is grouped along `cols`
//! (the input dimension). Within a shard's buffer the planes sit at word
//! offsets given by [`Planes`]:
//! - F32: `cols` words per row. F16: `ceil(cols/2)` words per row (2 per word).
//! - Q4_0 / Q4_1: codes, `cols/8` words per row; nibble k (bits 4k..4k+3) of
//!   word w holds element `8w + k` (natural order, not ggml's split halves).
//!   Scales: one f16 per 32-element group, index `row * cols/32 + group`, two
//!   per word. Q4_1 also has mins in the same layout. Q4_0's zero point is 8.
//! - Q8_0: codes, `cols/4` words per row, byte k of word w = element `4w + k`
//!   as i8; scales as for Q4.
//!
//! - Mixed (SliM-LLM groups, see [`MixedLayout`]): column group `g` of
//!   `len_g` columns (the last may be short) has width `b_g` bits, the same
//!   in every row. Each row's codes are the groups in order, each group its
//!   32-column chunks in order, each chunk exactly `b_g` words: the width
//!   split into segments of 8, or of 4, 2 and 1 bits (those set in `b_g`),
//!   lowest bits first; a segment of width `s` is `s` words holding the
//!   chunk's 32 codes' bits, element `k` at bits `s*k % 32 ..` of word
//!   `s*k / 32`. Codes are unsigned: `w = d * q + m`. Scales and mins are
//!   f16 per (row, group), index `row * n_groups + g`, two per word. That
//!   row-major layout is the host's (`MixedData`, the file format). On the
//!   GPU the codes are regrouped for vector loads: group-major (group `g`'s
//!   region holds every row's words of that group, row after row); within a
//!   row's part, superchunks of up to 4 chunks (128 columns); within a
//!   superchunk of `k` chunks, each segment's words for all `k` chunks
//!   together (`k * s` words, chunk `c` at `c * s`), so a full superchunk of
//!   a `b`-bit group is `b` whole `vec4<u32>`s when the region is aligned.
//!   A table plane lists the groups by kernel class (width, and whether
//!   their superchunks load as vec4s): see [`MixedLayout::gpu_table`].
//!
//! Rows are local to the shard (its first row is row 0 of its planes). Every
//! plane starts at a multiple of [`PLANE_ALIGN_WORDS`] (256 bytes, the largest
//! `min_storage_buffer_offset_alignment` WebGPU allows), so a kernel can bind
//! each plane as its own range with its own element type (`vec4<u32>` codes,
//! `u32` scales). Padding words are zero.
//!
//! Packing reads llama.cpp's block layouts (ggml-common.h) and only moves
//! bits: codes and f16 scales are copied, never dequantized.
//!
//! Files: `layout.rs` (planes, Mixed layout, row sizes), `pack.rs` (host
//! packing), `dequant.rs` (the CPU reference), `gpu.rs` (sharding, upload,
//! the [`Weight`] handle).

mod dequant;
mod gpu;
pub mod kquant;
mod layout;
mod pack;

pub use dequant::dequantize_packed;
pub use gpu::{GpuShard, GpuWeight, Shard, Weight, WeightRef, shard_rows, shard_rows_of};
pub use layout::{
    GROUP, MIXED_CLASSES, MixedLayout, PLANE_ALIGN_WORDS, Planes, code_words_per_row, col_multiple,
    ggml_row_bytes, is_quantized,
};
pub use pack::{
    HostData, HostWeight, MixedData, PackedWeight, mixed_chunk, mixed_code, pack_f32, pack_ggml,
    pack_mixed,
};
