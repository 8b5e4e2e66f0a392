//! Token embedding lookup: `out[t, :] = dequant(table[ids[t], :])`.
//!
//! The table is a packed weight (`weight`): any [`WeightFormat`], split by
//! rows into shards that each fit one storage binding. One call per shard;
//! each writes only the tokens whose id falls in its row range, so together
//! they cover every token once. An id at or past the vocabulary reads
//! nothing and its row becomes zeros (written by the first shard's call), so
//! a bad id can never read out of bounds; the host validates ids as well.
//!
//! # Shapes
//! ids: [max_rows] u32, table: [vocab, dim] packed, out: [max_rows, dim] f32.
//! One workgroup per token and shard; each invocation decodes whole code
//! words (1, 2, 4 or 8 elements) of the row.

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::pipeline::Kernel;
use crate::tensor::WeightFormat;
use crate::weight::{GROUP, Planes, WeightRef, code_words_per_row, col_multiple, kquant};
use crate::{Caps, Result, ensure_shape};

crate::shader!(SHADER, "embedding", [KFORMAT, KBLOCK], EmbeddingParams);
use crate::shader::lib::{KBLOCK, KFORMAT};

crate::params_struct! {
    /// Mirrors `Params` in shaders/embedding.wgsl.
    pub struct EmbeddingParams {
        pub n_tokens: u32,
        pub dim: u32,
        /// This shard's first row and row count.
        pub row_start: u32,
        pub rows: u32,
        pub vocab: u32,
        /// 1 for the call that zeroes the rows of out-of-range ids.
        pub zero_oob: u32,
        /// Word offsets of the planes in the shard buffer.
        pub codes: u32,
        pub scales: u32,
        pub mins: u32,
        /// Code words per row.
        pub row_words: u32,
        pub _pad: [u32; 2],
    }
}

#[derive(Debug, Clone)]
pub struct Embedding {
    /// [max_rows] u32 token ids.
    pub ids: TensorId,
    /// [vocab, dim], rows = vocab, cols = dim.
    pub table: WeightRef,
    /// [max_rows, dim] f32.
    pub out: TensorId,
    /// Tokens at the graph's largest step.
    pub max_rows: u32,
}

/// The shader's `FORMAT` override for each weight format.
fn format_code(f: WeightFormat) -> u32 {
    match f {
        WeightFormat::F32 => 0,
        WeightFormat::F16 => 1,
        WeightFormat::Q4_0 => 2,
        WeightFormat::Q4_1 => 3,
        WeightFormat::Q8_0 => 4,
        // Rejected by `check`.
        WeightFormat::Mixed => u32::MAX,
        // lib/kblock.wgsl's ids (5 and up).
        f => kquant::wgsl_id(f).unwrap_or(u32::MAX),
    }
}

impl OpDef for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        const OP: &str = "embedding";
        let t = &self.table;
        ensure_shape!(
            t.rows > 0 && t.cols > 0,
            OP,
            "empty table {}x{}",
            t.rows,
            t.cols
        );
        ensure_shape!(!t.shards.is_empty(), OP, "table has no shards");
        ensure_shape!(
            t.format != WeightFormat::Mixed,
            OP,
            "mixed-width tables are not supported for lookups (store the embedding as q8_0, q4_1, q4_0, f16 or f32)"
        );
        let quantized = !matches!(t.format, WeightFormat::F32 | WeightFormat::F16);
        let m = col_multiple(t.format);
        ensure_shape!(
            t.cols.is_multiple_of(m),
            OP,
            "{} table needs dim to be a multiple of {m}, got {}",
            t.format.name(),
            t.cols
        );
        if kquant::is_kquant(t.format) {
            for s in &t.shards {
                let want = Planes::layout(t.format, s.rows, t.cols);
                ensure_shape!(
                    s.planes == want,
                    OP,
                    "shard at row {} has planes {:?}, the {} layout is {want:?}",
                    s.row_start,
                    s.planes,
                    t.format.name()
                );
            }
        }
        t.check(g, OP)?;
        // Each plane must hold what the kernel reads for the shard's rows
        // (robust buffer access would hide a bad layout as wrong values).
        let wpr = u64::from(code_words_per_row(t.format, t.cols));
        for s in &t.shards {
            let p = s.planes;
            let rows = u64::from(s.rows);
            ensure_shape!(
                u64::from(p.codes) + rows * wpr <= u64::from(p.words),
                OP,
                "shard at row {}: codes plane overruns its {} words",
                s.row_start,
                p.words
            );
            if quantized && !kquant::is_kquant(t.format) {
                let half_words = (rows * u64::from(t.cols / GROUP)).div_ceil(2);
                let mut planes = vec![("scales", p.scales)];
                if t.format == WeightFormat::Q4_1 {
                    planes.push(("mins", p.mins));
                }
                for (what, at) in planes {
                    ensure_shape!(
                        u64::from(at) + half_words <= u64::from(p.words),
                        OP,
                        "shard at row {}: {what} plane overruns its {} words",
                        s.row_start,
                        p.words
                    );
                }
            }
        }
        check_bytes(g, OP, "ids", self.ids, 4 * u64::from(self.max_rows))?;
        check_bytes(
            g,
            OP,
            "out",
            self.out,
            4 * u64::from(t.cols) * u64::from(self.max_rows),
        )
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        let kernel =
            Kernel::new(&SHADER, "embedding").with("FORMAT", format_code(self.table.format));
        self.table
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let bindings = vec![
                    Binding::read(self.ids),
                    Binding::read(s.tensor),
                    Binding::write(self.out),
                ];
                Call::new(kernel.clone(), bindings).shard(i)
            })
            .collect()
    }
    fn step(&self, tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let t = &self.table;
        let s = &t.shards[tag.shard as usize];
        let n_tokens = step.n_tokens.min(self.max_rows);
        write_params(
            params,
            &EmbeddingParams {
                n_tokens,
                dim: t.cols,
                row_start: s.row_start,
                rows: s.rows,
                vocab: t.rows,
                zero_oob: u32::from(tag.shard == 0),
                codes: s.planes.codes,
                scales: s.planes.scales,
                mins: s.planes.mins,
                row_words: code_words_per_row(t.format, t.cols),
                _pad: [0; 2],
            },
        );
        // One workgroup per token; rows wider than the workgroup loop.
        grid1(n_tokens)
    }
}

/// CPU reference: rows of the dequantized `table` ([vocab, dim] f32); ids at
/// or past the vocabulary give zero rows.
pub fn reference(table: &[f32], dim: usize, ids: &[u32]) -> Vec<f32> {
    let vocab = table.len() / dim.max(1);
    let mut out = vec![0.0; ids.len() * dim];
    for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
        if (id as usize) < vocab {
            row.copy_from_slice(&table[id as usize * dim..(id as usize + 1) * dim]);
        }
    }
    out
}
