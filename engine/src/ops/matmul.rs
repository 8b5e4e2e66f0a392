//! MatMul against a packed weight: `out[t, r] = sum_c x[t, c] * W[r, c]`.
//!
//! W is `[rows, cols]` in one of the [`WeightFormat`]s, packed in planes as
//! documented in `weight.rs` and split by rows into shards (one storage
//! binding each). Quantized formats are never dequantized in memory: the
//! kernels stream the packed codes and f16 scales and dequantize in
//! registers, accumulating in f32.
//!
//! Two kernel shapes per format, one WGSL entry point each:
//! - `matvec_<fmt>` for one token (decode, or `last_row_only`). Memory
//!   bound: each weight row is read once at its packed size. `L` threads
//!   split a row's 32-column blocks and each thread computes [`MV_ROWS`] rows
//!   at once, so the x block it holds in registers serves several rows; a
//!   workgroup reduction sums the `L` partial dots.
//! - `matmul_<fmt>` for several tokens (prefill): a workgroup computes a
//!   [`MM_TOKENS`] x [`MM_ROWS`] tile of `out`; the x tile of each K block is
//!   staged in workgroup memory, each thread keeps a 4-token x 8-row
//!   accumulator tile and dequantizes its rows' packed codes in registers
//!   (reading packed codes instead of a dequantized shared W tile moves 4-8x
//!   fewer bytes per weight through the memory system).
//!
//! `last_row_only` computes only the step's last token (t = n_tokens - 1)
//! into out row 0: the lm_head while generating.
//!
//! # Shapes
//! x: `[max_rows, cols]` f32, out: `[max_rows, rows]` f32 (`[1, rows]` with
//! `last_row_only`). Quantized formats need `cols % 32 == 0`. Shard `i`
//! writes out columns `row_start .. row_start + rows`.
//!
//! # Bindings (every kernel)
//! 1 x, 2 codes plane, 3 scales plane, 4 mins plane, 5 out. Formats without a
//! plane bind another in its place (never read), so all kernels share one layout.

use crate::graph::{Binding, Call, Graph, OpDef, PARAMS_BYTES, Step, TensorId};
use crate::ops::{check_bytes, grid1, write_params};
use crate::pipeline::Kernel;
use crate::shader::ShaderSource;
use crate::tensor::WeightFormat;
use crate::weight::{GROUP, Planes, Shard, WeightRef};
use crate::{Caps, Result};

crate::shader!(SHADER_Q, "matmul_q", [crate::shader::lib::QBLOCK]);
crate::shader!(SHADER_F, "matmul_f", []);

/// Every matmul shader, for the naga translation tests.
pub fn shaders() -> Vec<&'static ShaderSource> {
    vec![&SHADER_Q, &SHADER_F]
}

/// Workgroup size of every matmul kernel (mirrors `WG` in the shaders).
pub const WG: u32 = 64;
/// Rows each matvec thread computes (mirrors `R` in the shaders).
pub const MV_ROWS: u32 = 4;
/// Largest number of threads sharing one matvec row.
pub const MV_MAX_LANES: u32 = 16;
/// Tokens and weight rows of one tiled-matmul workgroup (mirror `TM`, `TN`).
pub const MM_TOKENS: u32 = 32;
pub const MM_ROWS: u32 = 64;

/// Mirrors `Params` in shaders/matmul_*.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MatMulParams {
    /// Rows of this shard.
    pub rows: u32,
    pub cols: u32,
    /// 32-column blocks per row, `ceil(cols / 32)`.
    pub nb: u32,
    /// Tokens in this step (tiled); 1 for matvec.
    pub n_tokens: u32,
    /// First x row read (matvec: the token; tiled: 0).
    pub x_row: u32,
    /// Elements per out row: the whole weight's rows.
    pub out_stride: u32,
    /// Out column of this shard's first row.
    pub out_col: u32,
    /// Tiled: workgroups along rows (the grid folds tiles into one id).
    pub row_tiles: u32,
}

#[derive(Debug, Clone)]
pub struct MatMul {
    pub x: TensorId,
    pub w: WeightRef,
    pub out: TensorId,
    /// Tokens at the graph's largest step.
    pub max_rows: u32,
    /// Compute only the step's last token, into out row 0.
    pub last_row_only: bool,
}

/// Which kernel a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    MatVec,
    Tiled,
}

fn shader_and_entries(format: WeightFormat) -> (&'static ShaderSource, &'static str, &'static str) {
    match format {
        WeightFormat::F32 => (&SHADER_F, "matvec_f32", "matmul_f32"),
        WeightFormat::F16 => (&SHADER_F, "matvec_f16", "matmul_f16"),
        WeightFormat::Q4_0 => (&SHADER_Q, "matvec_q4_0", "matmul_q4_0"),
        WeightFormat::Q4_1 => (&SHADER_Q, "matvec_q4_1", "matmul_q4_1"),
        WeightFormat::Q8_0 => (&SHADER_Q, "matvec_q8_0", "matmul_q8_0"),
    }
}

/// Threads sharing a matvec row: the largest power of two up to
/// [`MV_MAX_LANES`] that divides the block count, so every thread gets the
/// same number of blocks (no idle lanes in the K loop).
pub fn matvec_lanes(nb: u32) -> u32 {
    let mut l = MV_MAX_LANES;
    while l > 1 && nb % l != 0 {
        l /= 2;
    }
    l
}

impl MatMul {
    fn nb(&self) -> u32 {
        self.w.cols.div_ceil(GROUP)
    }
    fn out_rows(&self) -> u32 {
        if self.last_row_only { 1 } else { self.max_rows }
    }
    /// The tiled path exists only in graphs that can see several tokens.
    fn has_tiled(&self) -> bool {
        self.max_rows > 1 && !self.last_row_only
    }
    fn paths(&self) -> &'static [Path] {
        if self.has_tiled() { &[Path::MatVec, Path::Tiled] } else { &[Path::MatVec] }
    }
    fn bindings(&self, s: &Shard) -> Vec<Binding> {
        let p = s.planes;
        let codes = Binding::read_range(s.tensor, 4 * u64::from(p.codes), p.code_bytes());
        let scales = if p.scale_bytes() > 0 {
            Binding::read_range(s.tensor, 4 * u64::from(p.scales), p.scale_bytes())
        } else {
            codes.clone()
        };
        let mins = if p.min_bytes() > 0 {
            Binding::read_range(s.tensor, 4 * u64::from(p.mins), p.min_bytes())
        } else {
            scales.clone()
        };
        let x_bytes = 4 * u64::from(self.w.cols) * u64::from(self.max_rows);
        let out_bytes = 4 * u64::from(self.w.rows) * u64::from(self.out_rows());
        vec![
            Binding::read_range(self.x, 0, x_bytes),
            codes,
            scales,
            mins,
            Binding { range: Some((0, out_bytes)), ..Binding::write(self.out) },
        ]
    }
}

impl OpDef for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn check(&self, g: &Graph) -> Result<()> {
        const OP: &str = "matmul";
        let (rows, cols, f) = (self.w.rows, self.w.cols, self.w.format);
        crate::ensure_shape!(rows > 0 && cols > 0, OP, "empty weight {rows}x{cols}");
        crate::ensure_shape!(self.max_rows > 0, OP, "max_rows is 0");
        crate::ensure_shape!(
            f == WeightFormat::F32 || f == WeightFormat::F16 || cols % GROUP == 0,
            OP,
            "{} weight needs cols % {GROUP} == 0, got {cols}",
            f.name()
        );
        crate::ensure_shape!(!self.w.shards.is_empty(), OP, "weight has no shards");
        self.w.check(g, OP)?;
        for s in &self.w.shards {
            let want = Planes::layout(f, s.rows, cols);
            crate::ensure_shape!(
                s.planes == want,
                OP,
                "shard at row {} has planes {:?}, the {} layout of {}x{cols} is {want:?}",
                s.row_start,
                s.planes,
                f.name(),
                s.rows
            );
        }
        // Kernels index in u32 elements.
        let x_bytes = 4 * u64::from(cols) * u64::from(self.max_rows);
        let out_bytes = 4 * u64::from(rows) * u64::from(self.out_rows());
        crate::ensure_shape!(
            x_bytes < (1 << 34) && out_bytes < (1 << 34),
            OP,
            "x ({x_bytes} bytes) or out ({out_bytes} bytes) too large for u32 indexing"
        );
        check_bytes(g, OP, "x", self.x, x_bytes)?;
        check_bytes(g, OP, "out", self.out, out_bytes)
    }

    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        let (shader, mv, mm) = shader_and_entries(self.w.format);
        let lanes = matvec_lanes(self.nb());
        let mut calls = Vec::new();
        for s in &self.w.shards {
            for path in self.paths() {
                let kernel = match path {
                    Path::MatVec => Kernel::new(shader, mv).with("L", lanes),
                    Path::Tiled => Kernel::new(shader, mm),
                };
                calls.push(Call { kernel, bindings: self.bindings(s) });
            }
        }
        calls
    }

    fn step(&self, call: usize, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let paths = self.paths();
        let Some(shard) = self.w.shards.get(call / paths.len()) else { return [0; 3] };
        let path = paths[call % paths.len()];
        let n = step.n_tokens.min(self.max_rows);
        // One token (or only the last wanted): the matvec; several: the tiled kernel.
        let want = if n <= 1 || self.last_row_only { Path::MatVec } else { Path::Tiled };
        let mut p = MatMulParams {
            rows: shard.rows,
            cols: self.w.cols,
            nb: self.nb(),
            n_tokens: 1,
            x_row: n.saturating_sub(1),
            out_stride: self.w.rows,
            out_col: shard.row_start,
            row_tiles: 1,
        };
        if path == Path::Tiled {
            p.n_tokens = n;
            p.x_row = 0;
            p.row_tiles = shard.rows.div_ceil(MM_ROWS);
        }
        write_params(params, &p);
        if n == 0 || path != want {
            return [0; 3];
        }
        match path {
            Path::MatVec => {
                let rows_per_wg = WG / matvec_lanes(self.nb()) * MV_ROWS;
                grid1(shard.rows.div_ceil(rows_per_wg))
            }
            Path::Tiled => grid1(p.row_tiles * n.div_ceil(MM_TOKENS)),
        }
    }
}

/// CPU reference: `out[t, r] = sum_c x[t, c] * w[r, c]`, f32 accumulation,
/// with `w` row-major `[rows, cols]` (e.g. from `weight::dequantize_packed`).
pub fn reference(x: &[f32], w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let tokens = x.len() / cols.max(1);
    let mut out = vec![0.0f32; tokens * rows];
    for t in 0..tokens {
        let xr = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            out[t * rows + r] = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
        }
    }
    out
}
