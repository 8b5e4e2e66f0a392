//! Packing on the host: f32 values, llama.cpp's block encodings and Mixed
//! codes are repacked into the planes of `layout.rs` (bits are moved, never
//! dequantized), whole or a row range at a time ([`HostWeight::pack_rows`]).

use std::sync::Arc;

use half::f16;

use super::kquant;
use super::layout::{GROUP, MixedLayout, Planes, check_dims, code_words_per_row, ggml_row_bytes};
use crate::tensor::WeightFormat;
use crate::{EngineError, Result};

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
    pub(super) fn zeroed(format: WeightFormat, rows: u32, cols: u32) -> PackedWeight {
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
    pub(super) fn put_half(&mut self, base: u32, g: usize, bits: u16) {
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
        _ => kquant::pack_rows(&mut p, bytes)?,
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
