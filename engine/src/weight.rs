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

use std::sync::Arc;

use half::f16;

use crate::graph::{Graph, TensorId};
use crate::tensor::{DType, Tensor, WeightFormat};
use crate::{EngineError, Gpu, Result};

/// Elements per quantization group (ggml's QK4_0 = QK4_1 = QK8_0 = 32).
pub const GROUP: u32 = 32;

/// Plane alignment inside a shard buffer, in u32 words (256 bytes).
pub const PLANE_ALIGN_WORDS: u32 = 64;

/// Word offsets of the planes inside a shard's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Planes {
    pub codes: u32,
    pub scales: u32,
    pub mins: u32,
    /// Mixed only: two words per column group (offset, width and chunks).
    pub table: u32,
    pub words: u32,
}

/// Kernel classes of Mixed groups: 8 widths x (vector, scalar) loads.
pub const MIXED_CLASSES: u32 = 16;

/// Bit widths per column group of a [`WeightFormat::Mixed`] weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixedLayout {
    /// Columns per group (a multiple of 32); the last group may be shorter.
    pub group: u32,
    pub cols: u32,
    /// Width of each group, 1 to 8 bits; `ceil(cols / group)` of them.
    pub bits: Vec<u8>,
}

impl MixedLayout {
    /// Checks the invariants the kernels rely on.
    pub fn new(group: u32, cols: u32, bits: Vec<u8>) -> Result<MixedLayout> {
        const OP: &str = "mixed layout";
        crate::ensure_shape!(
            group > 0 && group.is_multiple_of(GROUP),
            OP,
            "group size {group} is not a positive multiple of {GROUP}"
        );
        crate::ensure_shape!(
            cols > 0 && cols.is_multiple_of(GROUP),
            OP,
            "cols {cols} is not a positive multiple of {GROUP}"
        );
        let n = cols.div_ceil(group) as usize;
        crate::ensure_shape!(
            bits.len() == n,
            OP,
            "{cols} columns in groups of {group} need {n} widths, got {}",
            bits.len()
        );
        crate::ensure_shape!(
            bits.iter().all(|b| (1..=8).contains(b)),
            OP,
            "widths must be 1..=8 bits, got {bits:?}"
        );
        Ok(MixedLayout { group, cols, bits })
    }
    pub fn n_groups(&self) -> u32 {
        self.bits.len() as u32
    }
    /// Columns of group `g`.
    pub fn group_len(&self, g: u32) -> u32 {
        (self.cols - g * self.group).min(self.group)
    }
    /// Words of group `g` in one row.
    pub fn group_words(&self, g: u32) -> u32 {
        u32::from(self.bits[g as usize]) * self.group_len(g) / GROUP
    }
    /// Word offset of group `g` within a row.
    pub fn group_offset(&self, g: u32) -> u32 {
        (0..g).map(|i| self.group_words(i)).sum()
    }
    /// Code words per row.
    pub fn row_words(&self) -> u32 {
        self.group_offset(self.n_groups())
    }
    /// Word offset in the GPU codes plane (of `rows` rows) of group `g`'s region.
    pub fn group_base(&self, rows: u32, g: u32) -> u32 {
        rows * self.group_offset(g)
    }
    /// The GPU kernel class of group `g`: `2 * (bits - 1)`, plus 1 unless its
    /// superchunks load as whole vec4s (every chunk count, region offset and
    /// per-row word count a multiple of 4).
    pub fn group_class(&self, rows: u32, g: u32) -> u32 {
        let bits = u32::from(self.bits[g as usize]);
        let nch = self.group_len(g) / GROUP;
        let vec = (nch | self.group_base(rows, g) | (bits * nch)).is_multiple_of(4);
        2 * (bits - 1) + u32::from(!vec)
    }
    /// The table plane of `rows` rows on the GPU: the groups sorted by
    /// class (so a kernel specialised per width and load path walks each
    /// class in turn): [`MIXED_CLASSES`] + 1 words of class starts (entry
    /// indices, the last = group count), then two words per entry: the
    /// group's region offset, and `g | chunks << 20`.
    pub fn gpu_table(&self, rows: u32) -> Vec<u32> {
        let n = self.n_groups();
        let mut order: Vec<u32> = (0..n).collect();
        order.sort_by_key(|&g| (self.group_class(rows, g), g));
        let mut t = vec![0u32; MIXED_CLASSES as usize + 1];
        for c in 0..=MIXED_CLASSES {
            t[c as usize] = order
                .iter()
                .filter(|&&g| self.group_class(rows, g) < c)
                .count() as u32;
        }
        for g in order {
            t.push(self.group_base(rows, g));
            t.push(g | (self.group_len(g) / GROUP) << 20);
        }
        t
    }
    /// Segment widths of a `bits`-wide code, lowest code bits first.
    pub fn segments(bits: u32) -> &'static [u32] {
        match bits {
            8 => &[8],
            7 => &[4, 2, 1],
            6 => &[4, 2],
            5 => &[4, 1],
            4 => &[4],
            3 => &[2, 1],
            2 => &[2],
            _ => &[1],
        }
    }
    /// Word index in the GPU codes plane where chunk `j` of group `g`, row
    /// `r`, has its `width` words of segment `seg` (contiguous), given the
    /// group's region offset `base` ([`group_base`](Self::group_base)).
    fn gpu_segment(&self, base: u32, r: u32, g: u32, j: u32, seg: usize) -> usize {
        let bits = u32::from(self.bits[g as usize]);
        let nch = self.group_len(g) / GROUP;
        let (s, c) = (j / 4, j % 4);
        let k = (nch - 4 * s).min(4);
        let segs = Self::segments(bits);
        let before: u32 = segs[..seg].iter().sum();
        (base + r * bits * nch + 4 * s * bits + k * before + c * segs[seg]) as usize
    }
    /// Bits per weight counting codes, and an f16 scale and f16 min per group.
    pub fn bits_per_weight(&self) -> f64 {
        f64::from(32 * self.row_words() + 32 * self.n_groups()) / f64::from(self.cols)
    }
    /// Average code width over the columns (no scales).
    pub fn mean_bits(&self) -> f64 {
        f64::from(32 * self.row_words()) / f64::from(self.cols)
    }
}

impl Planes {
    /// The layout of a `rows x cols` weight (or shard) in `format`. Planes a
    /// format does not use are empty and sit at the end.
    pub fn layout(format: WeightFormat, rows: u32, cols: u32) -> Planes {
        let align = |w: u64| w.next_multiple_of(u64::from(PLANE_ALIGN_WORDS));
        let code_words = u64::from(rows) * u64::from(code_words_per_row(format, cols));
        let scale_words = if is_quantized(format) {
            (u64::from(rows) * u64::from(cols / GROUP)).div_ceil(2)
        } else {
            0
        };
        let min_words = if format == WeightFormat::Q4_1 {
            scale_words
        } else {
            0
        };
        let scales = align(code_words);
        let mins = scales + align(scale_words);
        let words = mins + align(min_words);
        // Callers keep shards under the binding limit (<= 4 GiB), so u32 holds these.
        let w = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Planes {
            codes: 0,
            scales: w(scales),
            mins: w(mins),
            table: w(words),
            words: w(words),
        }
    }

    /// The layout of `rows` rows of a Mixed weight.
    pub fn mixed(layout: &MixedLayout, rows: u32) -> Planes {
        let align = |w: u64| w.next_multiple_of(u64::from(PLANE_ALIGN_WORDS));
        let code_words = u64::from(rows) * u64::from(layout.row_words());
        let scale_words = (u64::from(rows) * u64::from(layout.n_groups())).div_ceil(2);
        let scales = align(code_words);
        let mins = scales + align(scale_words);
        let table = mins + align(scale_words);
        let words = table + align(u64::from(MIXED_CLASSES) + 1 + 2 * u64::from(layout.n_groups()));
        let w = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Planes {
            codes: 0,
            scales: w(scales),
            mins: w(mins),
            table: w(table),
            words: w(words),
        }
    }

    /// The layout of `rows` rows of a weight in `format` (`mixed` holds the
    /// widths of a Mixed weight and is ignored otherwise).
    pub fn of(format: WeightFormat, mixed: Option<&MixedLayout>, rows: u32, cols: u32) -> Planes {
        match (format, mixed) {
            (WeightFormat::Mixed, Some(l)) => Planes::mixed(l, rows),
            _ => Planes::layout(format, rows, cols),
        }
    }

    /// Bytes of the codes plane (up to the next plane, so a multiple of 256).
    pub fn code_bytes(&self) -> u64 {
        4 * u64::from(self.scales - self.codes)
    }
    pub fn scale_bytes(&self) -> u64 {
        4 * u64::from(self.mins - self.scales)
    }
    pub fn min_bytes(&self) -> u64 {
        4 * u64::from(self.table - self.mins)
    }
    pub fn table_bytes(&self) -> u64 {
        4 * u64::from(self.words - self.table)
    }
}

/// Whether `format` has per-group scales.
pub fn is_quantized(format: WeightFormat) -> bool {
    matches!(
        format,
        WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q8_0 | WeightFormat::Mixed
    )
}

/// Code words per row in `format` (Mixed: see [`MixedLayout::row_words`]; 0 here).
pub fn code_words_per_row(format: WeightFormat, cols: u32) -> u32 {
    match format {
        WeightFormat::F32 => cols,
        WeightFormat::F16 => cols.div_ceil(2),
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => cols / 8,
        WeightFormat::Q8_0 => cols / 4,
        WeightFormat::Mixed => 0,
    }
}

/// Bytes of one row in llama.cpp's encoding of `format` (`cols` a multiple
/// of 32 for the block formats).
pub fn ggml_row_bytes(format: WeightFormat, cols: u32) -> usize {
    let c = cols as usize;
    match format {
        WeightFormat::F32 => 4 * c,
        WeightFormat::F16 => 2 * c,
        WeightFormat::Q4_0 => c / 32 * 18,
        WeightFormat::Q4_1 => c / 32 * 20,
        WeightFormat::Q8_0 => c / 32 * 34,
        // Not a llama.cpp type: packed by `pack_mixed` from its own planes.
        WeightFormat::Mixed => 0,
    }
}

fn check_dims(op: &'static str, format: WeightFormat, rows: u32, cols: u32) -> Result<()> {
    crate::ensure_shape!(rows > 0 && cols > 0, op, "empty weight {rows}x{cols}");
    crate::ensure_shape!(
        !is_quantized(format) || cols.is_multiple_of(GROUP),
        op,
        "{} needs cols to be a multiple of {GROUP}, got {cols}",
        format.name()
    );
    Ok(())
}

/// A weight (or one row range of it) packed into planes on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeight {
    pub format: WeightFormat,
    pub rows: u32,
    pub cols: u32,
    pub planes: Planes,
    pub words: Vec<u32>,
    /// Mixed only: the group widths.
    pub mixed: Option<Arc<MixedLayout>>,
}

impl PackedWeight {
    fn zeroed(format: WeightFormat, rows: u32, cols: u32) -> PackedWeight {
        let planes = Planes::layout(format, rows, cols);
        PackedWeight {
            format,
            rows,
            cols,
            planes,
            words: vec![0; planes.words as usize],
            mixed: None,
        }
    }
    pub fn bytes(&self) -> u64 {
        4 * self.words.len() as u64
    }
    /// Stores the f16 bits of group `g` (row-major over rows x groups) in the plane at `base`.
    fn put_half(&mut self, base: u32, g: usize, bits: u16) {
        let w = &mut self.words[base as usize + g / 2];
        let shift = 16 * (g % 2) as u32;
        *w = (*w & !(0xffff << shift)) | (u32::from(bits) << shift);
    }
}

/// Packs row-major f32 values as F32 or F16 (rounded to nearest).
pub fn pack_f32(format: WeightFormat, rows: u32, cols: u32, data: &[f32]) -> Result<PackedWeight> {
    const OP: &str = "pack_f32";
    check_dims(OP, format, rows, cols)?;
    let n = rows as usize * cols as usize;
    crate::ensure_shape!(
        data.len() == n,
        OP,
        "{rows}x{cols} weight needs {n} values, got {}",
        data.len()
    );
    let mut p = PackedWeight::zeroed(format, rows, cols);
    match format {
        WeightFormat::F32 => {
            for (w, v) in p.words.iter_mut().zip(data) {
                *w = v.to_bits();
            }
        }
        WeightFormat::F16 => {
            let wpr = code_words_per_row(format, cols) as usize;
            for (r, row) in data.chunks_exact(cols as usize).enumerate() {
                for (i, v) in row.iter().enumerate() {
                    let bits = u32::from(f16::from_f32(*v).to_bits());
                    p.words[r * wpr + i / 2] |= bits << (16 * (i % 2));
                }
            }
        }
        _ => {
            return Err(EngineError::Shape {
                op: OP,
                msg: format!("packs F32 or F16, not {} (quantize first)", format.name()),
            });
        }
    }
    Ok(p)
}

/// Repacks `rows` rows in llama.cpp's encoding of `format` into planes.
/// `bytes` holds exactly those rows (rows are contiguous in GGUF, so a
/// shard's rows are the slice `row_start * row_bytes ..`; see
/// [`ggml_row_bytes`]). F32 and F16 are raw little-endian values.
pub fn pack_ggml(format: WeightFormat, rows: u32, cols: u32, bytes: &[u8]) -> Result<PackedWeight> {
    const OP: &str = "pack_ggml";
    check_dims(OP, format, rows, cols)?;
    let row_bytes = ggml_row_bytes(format, cols);
    let need = rows as usize * row_bytes;
    crate::ensure_shape!(
        bytes.len() == need,
        OP,
        "{rows}x{cols} {} weight is {need} bytes, got {}",
        format.name(),
        bytes.len()
    );
    let mut p = PackedWeight::zeroed(format, rows, cols);
    let le16 = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let wpr = code_words_per_row(format, cols) as usize;
    let groups = (cols / GROUP) as usize;
    let (scales, mins) = (p.planes.scales, p.planes.mins);
    match format {
        WeightFormat::F32 => {
            for (w, c) in p.words.iter_mut().zip(bytes.chunks_exact(4)) {
                *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightFormat::F16 => {
            for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
                for (i, c) in row.chunks_exact(2).enumerate() {
                    p.words[r * wpr + i / 2] |= u32::from(le16(c, 0)) << (16 * (i % 2));
                }
            }
        }
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
            // Block: f16 d, [f16 m,] 16 bytes; byte j = element j (low nibble)
            // and element j + 16 (high nibble).
            let (block, qs) = if format == WeightFormat::Q4_0 {
                (18, 2)
            } else {
                (20, 4)
            };
            for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
                for (b, blk) in row.chunks_exact(block).enumerate() {
                    let g = r * groups + b;
                    p.put_half(scales, g, le16(blk, 0));
                    if format == WeightFormat::Q4_1 {
                        p.put_half(mins, g, le16(blk, 2));
                    }
                    let q = &blk[qs..qs + 16];
                    for w in 0..4 {
                        // Word w holds elements 8w..8w+7, element 8w+k in nibble k.
                        let mut word = 0u32;
                        for k in 0..8 {
                            let e = 8 * w + k;
                            let nib = if e < 16 { q[e] & 0xf } else { q[e - 16] >> 4 };
                            word |= u32::from(nib) << (4 * k);
                        }
                        p.words[r * wpr + 4 * b + w] = word;
                    }
                }
            }
        }
        WeightFormat::Q8_0 => {
            // Block: f16 d, 32 x i8 in element order.
            for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
                for (b, blk) in row.chunks_exact(34).enumerate() {
                    p.put_half(scales, r * groups + b, le16(blk, 0));
                    for (w, c) in blk[2..].chunks_exact(4).enumerate() {
                        p.words[r * wpr + 8 * b + w] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }
            }
        }
        WeightFormat::Mixed => {
            return Err(EngineError::Shape {
                op: OP,
                msg: "mixed weights are not a llama.cpp type (use pack_mixed)".into(),
            });
        }
    }
    Ok(p)
}

/// A Mixed weight's rows on the host: codes as [`MixedLayout::row_words`]
/// words per row (the layout in this module's docs), f16 scale and min bits
/// per (row, group).
#[derive(Debug, Clone, Copy)]
pub struct MixedData<'a> {
    pub layout: &'a Arc<MixedLayout>,
    pub codes: &'a [u32],
    pub scales: &'a [u16],
    pub mins: &'a [u16],
}

/// Packs `rows` rows of a Mixed weight into planes.
pub fn pack_mixed(rows: u32, d: &MixedData<'_>) -> Result<PackedWeight> {
    const OP: &str = "pack_mixed";
    let l = d.layout;
    let (rw, ng) = (l.row_words() as usize, l.n_groups() as usize);
    let n = rows as usize;
    crate::ensure_shape!(
        rows > 0 && d.codes.len() == n * rw && d.scales.len() == n * ng && d.mins.len() == n * ng,
        OP,
        "{rows} rows of {} columns need {} code words and {} scales and mins, got {}, {}, {}",
        l.cols,
        n * rw,
        n * ng,
        d.codes.len(),
        d.scales.len(),
        d.mins.len()
    );
    let planes = Planes::mixed(l, rows);
    let mut p = PackedWeight {
        format: WeightFormat::Mixed,
        rows,
        cols: l.cols,
        planes,
        words: vec![0; planes.words as usize],
        mixed: Some(l.clone()),
    };
    let table = l.gpu_table(rows);
    for g in 0..l.n_groups() {
        let bits = u32::from(l.bits[g as usize]);
        let (offset, base) = (l.group_offset(g), l.group_base(rows, g));
        for r in 0..rows {
            let src = (r * l.row_words() + offset) as usize;
            for j in 0..l.group_len(g) / GROUP {
                let mut chunk = &d.codes[src + (j * bits) as usize..];
                for (seg, &width) in MixedLayout::segments(bits).iter().enumerate() {
                    let (words, rest) = chunk.split_at(width as usize);
                    let at = l.gpu_segment(base, r, g, j, seg);
                    p.words[at..at + words.len()].copy_from_slice(words);
                    chunk = rest;
                }
            }
        }
    }
    for (i, (&sc, &mn)) in d.scales.iter().zip(d.mins).enumerate() {
        p.put_half(planes.scales, i, sc);
        p.put_half(planes.mins, i, mn);
    }
    let t = planes.table as usize;
    p.words[t..t + table.len()].copy_from_slice(&table);
    Ok(p)
}

/// Code `k` (0..32) of the chunk whose `bits` words start `words` (the
/// Mixed chunk layout in this module's docs).
pub fn mixed_code(words: &[u32], bits: u32, k: usize) -> u32 {
    let seg = |w: &[u32], width: usize| -> u32 {
        let bit = width * k;
        (w[bit / 32] >> (bit % 32)) & ((1u32 << width) - 1)
    };
    if bits == 8 {
        return seg(words, 8);
    }
    let (mut q, mut off, mut shift) = (0u32, 0usize, 0u32);
    for width in [4usize, 2, 1] {
        if bits & width as u32 != 0 {
            q |= seg(&words[off..], width) << shift;
            off += width;
            shift += width as u32;
        }
    }
    q
}

/// Encodes 32 codes (each below `2^bits`) as one chunk of `bits` words.
pub fn mixed_chunk(codes: &[u32; 32], bits: u32) -> Vec<u32> {
    let mut out = vec![0u32; bits as usize];
    let mut put = |off: usize, width: usize, shift: u32| {
        for (k, &q) in codes.iter().enumerate() {
            let v = (q >> shift) & ((1u32 << width) - 1);
            let bit = width * k;
            out[off + bit / 32] |= v << (bit % 32);
        }
    };
    if bits == 8 {
        put(0, 8, 0);
        return out;
    }
    let (mut off, mut shift) = (0usize, 0u32);
    for width in [4usize, 2, 1] {
        if bits & width as u32 != 0 {
            put(off, width, shift);
            off += width;
            shift += width as u32;
        }
    }
    out
}

/// CPU reference: the values the planes encode, row-major `[rows, cols]`.
pub fn dequantize_packed(p: &PackedWeight) -> Vec<f32> {
    if let Some(l) = p.mixed.as_deref() {
        return dequantize_mixed(p, l);
    }
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    let wpr = code_words_per_row(p.format, p.cols) as usize;
    let groups = cols / GROUP as usize;
    let half = |base: u32, g: usize| {
        let w = p.words[base as usize + g / 2];
        f16::from_bits((w >> (16 * (g % 2))) as u16).to_f32()
    };
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        let codes = &p.words[r * wpr..(r + 1) * wpr];
        for c in 0..cols {
            let g = r * groups + c / GROUP as usize;
            out[r * cols + c] = match p.format {
                WeightFormat::F32 => f32::from_bits(codes[c]),
                WeightFormat::F16 => {
                    f16::from_bits((codes[c / 2] >> (16 * (c % 2))) as u16).to_f32()
                }
                WeightFormat::Q4_0 => {
                    let q = (codes[c / 8] >> (4 * (c % 8))) & 0xf;
                    half(p.planes.scales, g) * (q as f32 - 8.0)
                }
                WeightFormat::Q4_1 => {
                    let q = (codes[c / 8] >> (4 * (c % 8))) & 0xf;
                    half(p.planes.scales, g) * q as f32 + half(p.planes.mins, g)
                }
                WeightFormat::Q8_0 => {
                    let q = (codes[c / 4] >> (8 * (c % 4))) as u8 as i8;
                    half(p.planes.scales, g) * f32::from(q)
                }
                // Handled by dequantize_mixed (a Mixed weight always has its layout).
                WeightFormat::Mixed => f32::NAN,
            };
        }
    }
    out
}

fn dequantize_mixed(p: &PackedWeight, l: &MixedLayout) -> Vec<f32> {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    let ng = l.n_groups() as usize;
    let half = |base: u32, i: usize| {
        let w = p.words[base as usize + i / 2];
        f16::from_bits((w >> (16 * (i % 2))) as u16).to_f32()
    };
    let mut out = vec![0.0f32; rows * cols];
    let mut chunk = Vec::with_capacity(8);
    let bases: Vec<u32> = (0..ng as u32).map(|g| l.group_base(p.rows, g)).collect();
    for r in 0..rows {
        for (g, &base) in bases.iter().enumerate() {
            let (d, m) = (
                half(p.planes.scales, r * ng + g),
                half(p.planes.mins, r * ng + g),
            );
            let bits = u32::from(l.bits[g]);
            for j in 0..l.group_len(g as u32) / GROUP {
                // Gather the chunk's words back into the host order.
                chunk.clear();
                for (seg, &width) in MixedLayout::segments(bits).iter().enumerate() {
                    let at = l.gpu_segment(base, r as u32, g as u32, j, seg);
                    chunk.extend_from_slice(&p.words[at..at + width as usize]);
                }
                for k in 0..32 {
                    let c = g * l.group as usize + j as usize * 32 + k;
                    out[r * cols + c] = d * mixed_code(&chunk, bits, k) as f32 + m;
                }
            }
        }
    }
    out
}

/// Row ranges `(row_start, rows)` splitting a weight so that each shard's
/// packed buffer fits `max_binding_bytes`. Shards are as equal as possible.
pub fn shard_rows(
    format: WeightFormat,
    rows: u32,
    cols: u32,
    max_binding_bytes: u64,
) -> Vec<(u32, u32)> {
    shard_rows_of(format, None, rows, cols, max_binding_bytes)
}

/// [`shard_rows`] for any format, Mixed included.
pub fn shard_rows_of(
    format: WeightFormat,
    mixed: Option<&MixedLayout>,
    rows: u32,
    cols: u32,
    max_binding_bytes: u64,
) -> Vec<(u32, u32)> {
    let fits =
        |n: u32| 4 * u64::from(Planes::of(format, mixed, n, cols).words) <= max_binding_bytes;
    if rows == 0 {
        return Vec::new();
    }
    // Largest row count that fits (at least 1, so a too-wide row still gets a
    // shard; the executor reports the binding as too large).
    let (mut lo, mut hi) = (1u32, rows);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    let n_shards = rows.div_ceil(lo);
    let per = rows.div_ceil(n_shards);
    (0..n_shards)
        .map(|i| (i * per, per.min(rows - i * per)))
        .filter(|s| s.1 > 0)
        .collect()
}

/// A weight's values on the host, in the encoding they arrive in.
#[derive(Debug, Clone, Copy)]
pub enum HostData<'a> {
    /// Row-major f32 values; packs to F32 or F16.
    F32(&'a [f32]),
    /// llama.cpp's encoding of the target format (GGUF tensor bytes).
    Ggml(&'a [u8]),
    /// Mixed-width groups (format Mixed).
    Mixed(MixedData<'a>),
}

/// A whole weight on the host and the format it gets on the GPU.
#[derive(Debug, Clone, Copy)]
pub struct HostWeight<'a> {
    pub format: WeightFormat,
    pub rows: u32,
    pub cols: u32,
    pub data: HostData<'a>,
}

impl HostWeight<'_> {
    /// Packs rows `start .. start + n`.
    pub fn pack_rows(&self, start: u32, n: u32) -> Result<PackedWeight> {
        crate::ensure_shape!(
            start.checked_add(n).is_some_and(|e| e <= self.rows),
            "pack",
            "rows {start}..{} outside a {}-row weight",
            u64::from(start) + u64::from(n),
            self.rows
        );
        match self.data {
            HostData::F32(v) => {
                let (c, s) = (self.cols as usize, start as usize);
                let end = (s + n as usize) * c;
                crate::ensure_shape!(
                    v.len() >= end,
                    "pack",
                    "{} values for {} rows",
                    v.len(),
                    self.rows
                );
                pack_f32(self.format, n, self.cols, &v[s * c..end])
            }
            HostData::Ggml(b) => {
                let rb = ggml_row_bytes(self.format, self.cols);
                let (s, e) = (start as usize * rb, (start + n) as usize * rb);
                crate::ensure_shape!(
                    b.len() >= e,
                    "pack",
                    "{} bytes for {} rows",
                    b.len(),
                    self.rows
                );
                pack_ggml(self.format, n, self.cols, &b[s..e])
            }
            HostData::Mixed(d) => {
                crate::ensure_shape!(
                    self.format == WeightFormat::Mixed && d.layout.cols == self.cols,
                    "pack",
                    "mixed data for a {} weight of {} columns (layout has {})",
                    self.format.name(),
                    self.cols,
                    d.layout.cols
                );
                let (rw, ng) = (d.layout.row_words() as usize, d.layout.n_groups() as usize);
                let (s, e) = (start as usize, (start + n) as usize);
                crate::ensure_shape!(
                    d.codes.len() >= e * rw && d.scales.len() >= e * ng && d.mins.len() >= e * ng,
                    "pack",
                    "mixed data shorter than {} rows",
                    self.rows
                );
                let rows = MixedData {
                    layout: d.layout,
                    codes: &d.codes[s * rw..e * rw],
                    scales: &d.scales[s * ng..e * ng],
                    mins: &d.mins[s * ng..e * ng],
                };
                pack_mixed(n, &rows)
            }
        }
    }

    /// The group widths when the data is Mixed.
    pub fn mixed(&self) -> Option<&Arc<MixedLayout>> {
        match &self.data {
            HostData::Mixed(d) => Some(d.layout),
            _ => None,
        }
    }
}

/// One uploaded shard.
#[derive(Debug, Clone)]
pub struct GpuShard {
    pub tensor: Tensor,
    pub row_start: u32,
    pub rows: u32,
    pub planes: Planes,
}

/// A packed weight in GPU buffers, one per shard.
#[derive(Debug, Clone)]
pub struct GpuWeight {
    pub format: WeightFormat,
    pub rows: u32,
    pub cols: u32,
    pub shards: Vec<GpuShard>,
    /// Mixed only: the group widths.
    pub mixed: Option<Arc<MixedLayout>>,
}

impl GpuWeight {
    /// Packs and uploads `w`, split so each shard fits the device's binding limit.
    pub fn upload(gpu: &Gpu, label: &str, w: &HostWeight<'_>) -> Result<GpuWeight> {
        Self::upload_sharded(gpu, label, w, gpu.caps.max_binding)
    }

    /// As [`upload`](Self::upload) with an explicit per-shard byte limit
    /// (at most the device's); one shard is packed at a time.
    pub fn upload_sharded(
        gpu: &Gpu,
        label: &str,
        w: &HostWeight<'_>,
        max_binding: u64,
    ) -> Result<GpuWeight> {
        check_dims("upload", w.format, w.rows, w.cols)?;
        let mixed = w.mixed().cloned();
        crate::ensure_shape!(
            (w.format == WeightFormat::Mixed) == mixed.is_some(),
            "upload",
            "{label}: format {} with {} data",
            w.format.name(),
            if mixed.is_some() {
                "mixed"
            } else {
                "non-mixed"
            }
        );
        let limit = max_binding.min(gpu.caps.max_binding);
        let mut shards = Vec::new();
        for (start, n) in shard_rows_of(w.format, mixed.as_deref(), w.rows, w.cols, limit) {
            let packed = w.pack_rows(start, n)?;
            shards.push(Self::upload_shard(gpu, label, start, &packed)?);
        }
        Ok(GpuWeight {
            format: w.format,
            rows: w.rows,
            cols: w.cols,
            shards,
            mixed,
        })
    }

    /// Uploads already packed shards; `parts` are `(row_start, packed)` and
    /// must tile the rows in order.
    pub fn from_packed(gpu: &Gpu, label: &str, parts: &[(u32, PackedWeight)]) -> Result<GpuWeight> {
        let Some((_, first)) = parts.first() else {
            return Err(EngineError::Shape {
                op: "upload",
                msg: format!("{label}: no shards"),
            });
        };
        let mut shards = Vec::with_capacity(parts.len());
        let mut next = 0u32;
        for (start, p) in parts {
            crate::ensure_shape!(
                *start == next
                    && p.format == first.format
                    && p.cols == first.cols
                    && p.mixed == first.mixed,
                "upload",
                "{label}: shard at row {start} ({} {}x{}) does not continue row {next} of {} x{}",
                p.format.name(),
                p.rows,
                p.cols,
                first.format.name(),
                first.cols
            );
            shards.push(Self::upload_shard(gpu, label, *start, p)?);
            next += p.rows;
        }
        Ok(GpuWeight {
            format: first.format,
            rows: next,
            cols: first.cols,
            shards,
            mixed: first.mixed.clone(),
        })
    }

    fn upload_shard(gpu: &Gpu, label: &str, row_start: u32, p: &PackedWeight) -> Result<GpuShard> {
        let name = format!("{label}[{row_start}..{}]", row_start + p.rows);
        gpu.check_binding(&name, p.bytes())?;
        let buffer: Arc<wgpu::Buffer> = gpu.upload(&name, bytemuck::cast_slice(&p.words))?;
        let tensor = Tensor {
            buffer,
            offset: 0,
            size: p.bytes(),
            shape: vec![p.rows as usize, p.cols as usize],
            dtype: DType::U32,
        };
        Ok(GpuShard {
            tensor,
            row_start,
            rows: p.rows,
            planes: p.planes,
        })
    }

    /// Packed bytes on the GPU (all planes and padding).
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.tensor.size).sum()
    }

    /// Registers each shard as an external tensor `name.<i>` of `g`.
    pub fn add_to_graph(&self, g: &mut Graph, name: &str) -> WeightRef {
        let shards = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| Shard {
                tensor: g.external(format!("{name}.{i}"), s.tensor.clone()),
                row_start: s.row_start,
                rows: s.rows,
                planes: s.planes,
            })
            .collect();
        WeightRef {
            format: self.format,
            rows: self.rows,
            cols: self.cols,
            shards,
            mixed: self.mixed.clone(),
        }
    }
}

/// One row range of a weight, in its own buffer.
#[derive(Debug, Clone)]
pub struct Shard {
    pub tensor: TensorId,
    pub row_start: u32,
    pub rows: u32,
    pub planes: Planes,
}

/// A weight as an op sees it inside a graph.
#[derive(Debug, Clone)]
pub struct WeightRef {
    pub format: WeightFormat,
    pub rows: u32,
    pub cols: u32,
    pub shards: Vec<Shard>,
    /// Mixed only: the group widths.
    pub mixed: Option<Arc<MixedLayout>>,
}

impl WeightRef {
    pub fn first_tensor(&self) -> Option<TensorId> {
        self.shards.first().map(|s| s.tensor)
    }
    /// Checks that every shard tensor exists in `g`, holds its planes, and
    /// that the shards tile the rows in order.
    pub fn check(&self, g: &Graph, op: &'static str) -> crate::Result<()> {
        let mut next = 0u32;
        for s in &self.shards {
            crate::ensure_shape!(
                s.tensor < g.tensors.len(),
                op,
                "weight shard tensor {} not in graph",
                s.tensor
            );
            crate::ensure_shape!(
                s.row_start == next,
                op,
                "weight shard starts at row {}, expected {next}",
                s.row_start
            );
            crate::ops::check_bytes(
                g,
                op,
                "weight shard",
                s.tensor,
                4 * u64::from(s.planes.words),
            )?;
            next = next.saturating_add(s.rows);
        }
        let covered: u32 = self.shards.iter().map(|s| s.rows).sum();
        crate::ensure_shape!(
            covered == self.rows,
            op,
            "weight shards cover {covered} of {} rows",
            self.rows
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_aligns_planes() {
        let p = Planes::layout(WeightFormat::Q4_1, 3, 96);
        assert_eq!(p.codes, 0);
        assert_eq!(p.scales, 64); // 3 rows * 12 words, padded
        assert_eq!(p.mins, 128); // 9 groups -> 5 words, padded
        assert_eq!(p.words, 192);
        let f = Planes::layout(WeightFormat::F16, 3, 5);
        assert_eq!((f.scales, f.mins, f.words), (64, 64, 64));
    }

    #[test]
    fn shards_fit_and_cover() {
        let s = shard_rows(WeightFormat::Q8_0, 1000, 64, 4096);
        assert!(s.len() > 1);
        assert_eq!(s.iter().map(|x| x.1).sum::<u32>(), 1000);
        for (i, (start, n)) in s.iter().enumerate() {
            assert!(
                4 * u64::from(Planes::layout(WeightFormat::Q8_0, *n, 64).words) <= 4096,
                "shard {i}"
            );
            if i > 0 {
                assert_eq!(*start, s[i - 1].0 + s[i - 1].1);
            }
        }
    }
}
