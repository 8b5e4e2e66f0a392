//! Where the matmul ops write (`ops/matmul.rs`, `ops/matmul_int.rs`; WGSL:
//! shaders/lib/mmout.wgsl).
//!
//! A weight may hold several linear layers' rows, concatenated (q, k and v;
//! gate and up): one dispatch reads the shared input once and computes them
//! all. Each part's result is still a matrix of its own, `[out_rows,
//! part_rows]` row-major, at its own byte offset of `out` ([`part_offsets`],
//! aligned so each part can be bound as a graph view); with one part, `out`
//! is plainly `[out_rows, rows]`. With `accumulate` the result is added to
//! what `out` holds: the residual add in the output projection's and the
//! down projection's epilogue (the kernels' `ACC` override, [`ACC`]).

use crate::Result;

/// The override constant that turns `accumulate` on in every matmul kernel.
pub const ACC: &str = "ACC";

/// Most parts one weight may have (mirrors the three in lib/mmout.wgsl).
pub const MAX_PARTS: usize = 3;
/// Byte alignment of each part in `out`: the largest storage-offset
/// alignment a WebGPU device may ask for, so any device can bind a part.
pub const PART_ALIGN: u64 = 256;

/// How a matmul lays out its result (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutLayout {
    /// Weight rows of each part, in order, summing to the weight's rows;
    /// empty for one part.
    pub parts: Vec<u32>,
    /// `out += W x` instead of `out = W x`.
    pub accumulate: bool,
}

crate::params_struct! {
    /// Mirrors `MmOut` in lib/mmout.wgsl, nested in each matmul's parameter block.
    pub struct MmOut {
        /// First weight row of part 1 and of part 2 (the weight's rows where
        /// there is no such part).
        pub part1: u32,
        pub part2: u32,
        /// Element offsets of parts 1 and 2 in `out`.
        pub base1: u32,
        pub base2: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
        pub _pad3: u32,
    }
}

/// Byte offset of each part of a weight whose parts have `rows` rows, in an
/// `out` of `out_rows` token rows.
pub fn part_offsets(rows: &[u32], out_rows: u32) -> Vec<u64> {
    let mut at = 0u64;
    rows.iter()
        .map(|&r| {
            let o = at;
            at = (o + 4 * u64::from(r) * u64::from(out_rows)).next_multiple_of(PART_ALIGN);
            o
        })
        .collect()
}

impl OutLayout {
    /// One part, overwritten.
    pub fn plain() -> OutLayout {
        OutLayout::default()
    }
    /// One part, added to.
    pub fn accumulate() -> OutLayout {
        OutLayout {
            parts: Vec::new(),
            accumulate: true,
        }
    }
    /// Parts of these row counts, overwritten.
    pub fn parts(rows: &[u32]) -> OutLayout {
        OutLayout {
            parts: rows.to_vec(),
            accumulate: false,
        }
    }
    /// The parts' rows for a weight of `rows` rows.
    pub fn part_rows(&self, rows: u32) -> Vec<u32> {
        if self.parts.is_empty() {
            vec![rows]
        } else {
            self.parts.clone()
        }
    }
    /// Bytes of `out`: up to the end of the last part.
    pub fn bytes(&self, rows: u32, out_rows: u32) -> u64 {
        let parts = self.part_rows(rows);
        let offs = part_offsets(&parts, out_rows);
        match (offs.last(), parts.last()) {
            (Some(o), Some(r)) => o + 4 * u64::from(*r) * u64::from(out_rows),
            _ => 0,
        }
    }
    /// Checks the parts against a weight of `rows` rows.
    pub fn check(&self, rows: u32, op: &'static str) -> Result<()> {
        let sum: u64 = self.parts.iter().map(|&r| u64::from(r)).sum();
        crate::ensure_shape!(
            self.parts.is_empty()
                || (self.parts.len() <= MAX_PARTS
                    && self.parts.iter().all(|&r| r > 0)
                    && sum == u64::from(rows)),
            op,
            "out parts {:?} do not split {rows} rows into at most {MAX_PARTS} non-empty parts",
            self.parts
        );
        Ok(())
    }
    /// The kernels' fields for `out_rows` token rows.
    pub fn params(&self, rows: u32, out_rows: u32) -> MmOut {
        let parts = self.part_rows(rows);
        let offs = part_offsets(&parts, out_rows);
        let start = |i: usize| -> u32 {
            if i < parts.len() {
                parts[..i].iter().sum()
            } else {
                rows
            }
        };
        let base = |i: usize| offs.get(i).map_or(0, |&o| (o / 4) as u32);
        MmOut {
            part1: start(1),
            part2: start(2),
            base1: base(1),
            base2: base(2),
            ..Default::default()
        }
    }
}

/// CPU reference of the layout: `y` (`[tokens, rows]` row-major, all parts
/// side by side) written into an `out` laid out as `m` says, added to it
/// with `accumulate`.
pub fn reference_store(m: &OutLayout, y: &[f32], rows: u32, out_rows: u32, out: &mut [f32]) {
    let parts = m.part_rows(rows);
    let offs = part_offsets(&parts, out_rows);
    let tokens = y.len() / rows.max(1) as usize;
    let mut first = 0usize;
    for (&pr, &off) in parts.iter().zip(&offs) {
        let (pr, base) = (pr as usize, off as usize / 4);
        for t in 0..tokens {
            for r in 0..pr {
                let v = y[t * rows as usize + first + r];
                let o = &mut out[base + t * pr + r];
                *o = if m.accumulate { *o + v } else { v };
            }
        }
        first += pr;
    }
}
