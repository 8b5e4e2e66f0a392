//! Where a packed weight's values sit: the planes of a shard's buffer
//! ([`Planes`]), the Mixed format's group widths and GPU code order
//! ([`MixedLayout`]), and the row sizes of each format (ours and llama.cpp's).
//! The layouts themselves are described in `weight/mod.rs`.

use super::kquant;
use crate::Result;
use crate::tensor::WeightFormat;

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
    pub(super) fn gpu_segment(&self, base: u32, r: u32, g: u32, j: u32, seg: usize) -> usize {
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
        let (scale_words, min_words) = if kquant::is_kquant(format) {
            kquant::plane_words(format, rows, cols)
        } else if is_quantized(format) {
            let halves = (u64::from(rows) * u64::from(cols / GROUP)).div_ceil(2);
            (
                halves,
                if format == WeightFormat::Q4_1 {
                    halves
                } else {
                    0
                },
            )
        } else {
            (0, 0)
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
    !matches!(format, WeightFormat::F32 | WeightFormat::F16)
}

/// Columns a row of `format` must be a multiple of: 256 for the
/// super-block formats, 32 for the other quantized ones, 1 for floats.
pub fn col_multiple(format: WeightFormat) -> u32 {
    if kquant::is_super(format) {
        kquant::SUPER
    } else if is_quantized(format) {
        GROUP
    } else {
        1
    }
}

/// Code words per row in `format` (Mixed: see [`MixedLayout::row_words`]; 0 here).
pub fn code_words_per_row(format: WeightFormat, cols: u32) -> u32 {
    match format {
        WeightFormat::F32 => cols,
        WeightFormat::F16 => cols.div_ceil(2),
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => cols / 8,
        WeightFormat::Q8_0 => cols / 4,
        WeightFormat::Mixed => 0,
        f => cols / GROUP * kquant::code_bits(f).unwrap_or(0),
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
        f => kquant::file_row_bytes(f, cols),
    }
}

pub(super) fn check_dims(
    op: &'static str,
    format: WeightFormat,
    rows: u32,
    cols: u32,
) -> Result<()> {
    crate::ensure_shape!(rows > 0 && cols > 0, op, "empty weight {rows}x{cols}");
    let m = col_multiple(format);
    crate::ensure_shape!(
        cols.is_multiple_of(m),
        op,
        "{} needs cols to be a multiple of {m}, got {cols}",
        format.name()
    );
    Ok(())
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
}
