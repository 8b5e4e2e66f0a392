//! Integer MatMul: int8 activation codes against a packed quantized weight,
//! the W4A8 / W4A4 / W8A8 path of PrefixQuant (arXiv 2410.05265), with
//! SliM-LLM's mixed-width groups (arXiv 2405.14917) as one of the formats:
//!
//! `out[t, r] = xs[t] * sum_g ( d[r,g] * sum_{c in g} qx[t,c] * q[r,c]
//!                            + m[r,g] * sum_{c in g} qx[t,c] )`
//!
//! where `x[t, c] ≈ xs[t] * qx[t, c]` comes from [`act_quant`](super::act_quant)
//! and `w[r, c] = d[r,g] * q[r,c] + m[r,g]` is the weight's own encoding
//! (Q8_0: m = 0; Q4_0: m = -8d; Q4_1 and Mixed: an f16 min). The inner sums
//! are exact: codes are widened to int8 lanes and multiplied with WGSL's
//! `dot4I8Packed` into i32, one group at a time (32 columns for the block
//! formats, the group of a Mixed weight); each group then adds its two f32
//! terms, centred on the codes' midpoint `z = 2^(b-1)`:
//! `d * (Σ q qx - z Σ qx) + (m + z d) * Σ qx`, integer part exact, so that
//! an asymmetric group (m ≈ -z d) does not cancel two large f32 terms.
//! 8-bit Mixed codes (0..255) do not fit an int8 lane and are flipped to
//! `q - 128` (their top bit XORed) instead. `lib/imatmul.wgsl` has the
//! lane widening.
//!
//! `dot4I8Packed` (WGSL's packed_4x8_integer_dot_product) is core WGSL and
//! naga 30 writes it for every backend: SPIR-V `OpSDot` where the device
//! has VK_KHR_shader_integer_dot_product (wgpu enables the capability;
//! lavapipe has it), else shifts and multiplies; MSL `packed_char4` dots;
//! HLSL `dot4add_i8packed` from shader model 6.4, else a shift polyfill.
//!
//! F32 and F16 weights have no integer path: [`OpDef::check`] refuses them.
//!
//! Kernel shapes as [`MatMul`](super::matmul)'s block kernels: `matvec_<fmt>`
//! for one token (decode, `last_row_only`), `matmul_<fmt>` tiled over tokens
//! x rows for prefill; one call per weight shard and path. Q8_0 / Q4_0 /
//! Q4_1 run `matmul_int.wgsl`, Mixed `matmul_int_mx.wgsl`.
//!
//! # Shapes
//! x: `[max_rows, cols / 4]` u32 (int8 codes, four per word), x scales:
//! `[max_rows]` f32, out: `[max_rows, rows]` f32 (`[1, rows]` with
//! `last_row_only`). `cols % 32 == 0`. Shard `i` writes out columns
//! `row_start .. row_start + rows`.
//!
//! # Bindings (every kernel)
//! 1 x codes, 2 x scales, 3 codes plane, 4 scales plane, 5 mins plane, 6 out;
//! Mixed adds 7 the group table and 8 the codes again, read as vec4s.
//! Formats without a mins plane bind the scales in its place (never read).

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::mmout::{self, MmOut, OutLayout};
use crate::pipeline::Kernel;
use crate::shader::ShaderSource;
use crate::shader::lib::{F16, IMATMUL, MMOUT, MXCODES};
use crate::tensor::WeightFormat;
use crate::weight::{GROUP, Planes, Shard, WeightRef};
use crate::{Caps, Result};

crate::shader!(
    SHADER,
    "matmul_int",
    [F16, IMATMUL, MMOUT],
    MatMulIntParams,
    [MmOut]
);
crate::shader!(
    SHADER_MX,
    "matmul_int_mx",
    [MXCODES, IMATMUL, MMOUT],
    MatMulIntParams,
    [MmOut]
);

/// Both integer matmul shaders, for the naga translation tests.
pub fn shaders() -> Vec<&'static ShaderSource> {
    vec![&SHADER, &SHADER_MX]
}

/// Workgroup size (mirrors `WG` in lib/imatmul.wgsl).
pub const WG: u32 = 64;
/// Tiled kernels: tokens per workgroup and rows per invocation (mirror `TA`,
/// `TB` in both shaders).
pub const TILE_TOKENS: u32 = 8;
pub const TILE_ROWS_PER_INVOCATION: u32 = 4;
/// Largest Mixed group: its i32 dot, up to 128 * 127 per column, must not
/// overflow.
pub const MAX_GROUP: u32 = (i32::MAX as u32) / (128 * 127);

crate::params_struct! {
    /// Mirrors `Params` in lib/imatmul.wgsl (both shaders).
    pub struct MatMulIntParams {
        /// Rows of this shard.
        pub rows: u32,
        pub cols: u32,
        /// 32-column blocks per row, `cols / 32`.
        pub nb: u32,
        /// Tokens in this step (tiled); 1 for matvec.
        pub n_tokens: u32,
        /// The x row the mat-vec reads (tiled: 0).
        pub x_row: u32,
        /// Elements per out row: the whole weight's rows.
        pub out_stride: u32,
        /// Out column of this shard's first row.
        pub out_col: u32,
        /// Workgroups along rows (the tiled grid folds (token, row) tiles into one id).
        pub row_tiles: u32,
        /// Mixed only: column groups and columns per group.
        pub n_groups: u32,
        pub group: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        /// Where the results go (crate::mmout).
        pub o: MmOut,
    }
}

#[derive(Debug, Clone)]
pub struct MatMulInt {
    /// Activation codes, `[max_rows, cols / 4]` u32 (from act_quant).
    pub x: TensorId,
    /// Activation scales, `[max_rows]` f32.
    pub x_scales: TensorId,
    pub w: WeightRef,
    pub out: TensorId,
    /// How `out` is laid out (parts of a concatenated weight) and whether
    /// the result is added to it.
    pub out_layout: OutLayout,
    /// Tokens at the graph's largest step.
    pub max_rows: u32,
    /// Compute only the step's last token, into out row 0.
    pub last_row_only: bool,
}

crate::passes! {
    /// Which kernel a call runs (each shard has a call per path).
    enum Path {
        /// One token: `matvec_<fmt>`.
        MatVec,
        /// Several tokens: `matmul_<fmt>`.
        Tiled,
    }
}

fn entries(format: WeightFormat) -> Option<(&'static str, &'static str)> {
    match format {
        WeightFormat::Q4_0 => Some(("matvec_q4_0", "matmul_q4_0")),
        WeightFormat::Q4_1 => Some(("matvec_q4_1", "matmul_q4_1")),
        WeightFormat::Q8_0 => Some(("matvec_q8_0", "matmul_q8_0")),
        WeightFormat::Mixed => Some(("matvec_mixed", "matmul_mixed")),
        _ => None,
    }
}

/// Mat-vec rows per invocation (`R`): four rows share each x block, fewer
/// for small matrices so the rows still spread over a few workgroups.
pub fn matvec_rows(rows: u32) -> u32 {
    if rows >= 512 {
        4
    } else if rows >= 128 {
        2
    } else {
        1
    }
}

impl MatMulInt {
    fn out_rows(&self) -> u32 {
        if self.last_row_only { 1 } else { self.max_rows }
    }
    /// The tiled path exists only in graphs that can see several tokens.
    fn paths(&self) -> &'static [Path] {
        if self.max_rows > 1 && !self.last_row_only {
            &[Path::MatVec, Path::Tiled]
        } else {
            &[Path::MatVec]
        }
    }
    fn rows_per_workgroup(path: Path, rows: u32) -> u32 {
        match path {
            Path::MatVec => WG * matvec_rows(rows),
            Path::Tiled => WG * TILE_ROWS_PER_INVOCATION,
        }
    }
    fn kernel(&self, path: Path, shard: &Shard<TensorId>) -> Kernel {
        // check() has refused the formats without entries.
        let (mv, mm) = entries(self.w.format).unwrap_or(("", ""));
        let mut k = match (self.w.mixed.as_deref(), path) {
            (Some(_), Path::MatVec) => Kernel::new(&SHADER_MX, mv),
            (Some(_), Path::Tiled) => Kernel::new(&SHADER_MX, mm),
            (None, Path::MatVec) => Kernel::new(&SHADER, mv),
            (None, Path::Tiled) => Kernel::new(&SHADER, mm),
        };
        if path == Path::MatVec {
            k = k.with("R", matvec_rows(shard.rows));
        }
        if let Some(l) = self.w.mixed.as_deref() {
            // Only the group classes this shard has get code (lib/mxcodes.wgsl).
            let classes = (0..l.n_groups())
                .map(|g| 1u32 << l.group_class(shard.rows, g))
                .fold(0, |a, b| a | b);
            k = k.with("CLASSES", classes);
        }
        if self.out_layout.accumulate {
            k = k.with(mmout::ACC, 1);
        }
        k
    }
    fn bindings(&self, s: &Shard<TensorId>) -> Vec<Binding> {
        let p = s.planes;
        let codes = Binding::read_range(s.tensor, 4 * u64::from(p.codes), p.code_bytes());
        let scales = Binding::read_range(s.tensor, 4 * u64::from(p.scales), p.scale_bytes());
        let mins = if p.min_bytes() > 0 {
            Binding::read_range(s.tensor, 4 * u64::from(p.mins), p.min_bytes())
        } else {
            scales.clone()
        };
        let x_bytes = u64::from(self.w.cols) * u64::from(self.max_rows);
        let out_bytes = self.out_layout.bytes(self.w.rows, self.out_rows());
        let mut b = vec![
            Binding::read_range(self.x, 0, x_bytes),
            Binding::read_range(self.x_scales, 0, 4 * u64::from(self.max_rows)),
            codes.clone(),
            scales,
            mins,
            Binding {
                range: Some((0, out_bytes)),
                ..Binding::write(self.out)
            },
        ];
        if self.w.format == WeightFormat::Mixed {
            b.push(Binding::read_range(
                s.tensor,
                4 * u64::from(p.table),
                p.table_bytes(),
            ));
            b.push(codes);
        }
        b
    }
}

impl OpDef for MatMulInt {
    fn name(&self) -> &'static str {
        "matmul_int"
    }

    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        const OP: &str = "matmul_int";
        let (rows, cols, f) = (self.w.rows, self.w.cols, self.w.format);
        crate::ensure_shape!(
            entries(f).is_some(),
            OP,
            "{} weights have no integer path (quantize them: q8_0, q4_0, q4_1 or mixed)",
            f.name()
        );
        crate::ensure_shape!(rows > 0 && cols > 0, OP, "empty weight {rows}x{cols}");
        crate::ensure_shape!(self.max_rows > 0, OP, "max_rows is 0");
        crate::ensure_shape!(
            cols.is_multiple_of(GROUP),
            OP,
            "{} weight needs cols % {GROUP} == 0, got {cols}",
            f.name()
        );
        crate::ensure_shape!(!self.w.shards.is_empty(), OP, "weight has no shards");
        let mixed = self.w.mixed.as_deref();
        crate::ensure_shape!(
            (f == WeightFormat::Mixed) == mixed.is_some() && mixed.is_none_or(|l| l.cols == cols),
            OP,
            "{} weight of {cols} columns with mixed layout {mixed:?}",
            f.name()
        );
        if let Some(l) = mixed {
            crate::ensure_shape!(
                l.group <= MAX_GROUP,
                OP,
                "mixed groups of {} columns could overflow the i32 dot (at most {MAX_GROUP})",
                l.group
            );
        }
        self.w.check(g, OP)?;
        for s in &self.w.shards {
            let want = Planes::of(f, mixed, s.rows, cols);
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
        self.out_layout.check(rows, OP)?;
        // Kernels index x (as vec4s) and out in u32 elements.
        let x_bytes = u64::from(cols) * u64::from(self.max_rows);
        let out_bytes = self.out_layout.bytes(rows, self.out_rows());
        crate::ensure_shape!(
            x_bytes < (1 << 34) && out_bytes < (1 << 34),
            OP,
            "x ({x_bytes} bytes) or out ({out_bytes} bytes) too large for u32 indexing"
        );
        check_bytes(g, OP, "x", self.x, x_bytes)?;
        check_bytes(
            g,
            OP,
            "x_scales",
            self.x_scales,
            4 * u64::from(self.max_rows),
        )?;
        check_bytes(g, OP, "out", self.out, out_bytes)
    }

    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        let mut calls = Vec::new();
        for (i, s) in self.w.shards.iter().enumerate() {
            for &path in self.paths() {
                calls.push(
                    Call::new(self.kernel(path, s), self.bindings(s))
                        .pass(path)
                        .shard(i),
                );
            }
        }
        calls
    }

    fn step(&self, tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let Some(shard) = self.w.shards.get(tag.shard as usize) else {
            return [0; 3];
        };
        let path: Path = tag.pass();
        let n = step.n_tokens.min(self.max_rows);
        // One token (or only the last wanted): the mat-vec; several: the tiled kernel.
        let want = if n <= 1 || self.last_row_only {
            Path::MatVec
        } else {
            Path::Tiled
        };
        let row_groups = shard
            .rows
            .div_ceil(Self::rows_per_workgroup(path, shard.rows));
        let mixed = self.w.mixed.as_deref();
        let tiled = path == Path::Tiled;
        write_params(
            params,
            &MatMulIntParams {
                rows: shard.rows,
                cols: self.w.cols,
                nb: self.w.cols / GROUP,
                n_tokens: if tiled { n } else { 1 },
                x_row: if tiled { 0 } else { n.saturating_sub(1) },
                out_stride: self.w.rows,
                out_col: shard.row_start,
                row_tiles: row_groups,
                n_groups: mixed.map_or(0, |l| l.n_groups()),
                group: mixed.map_or(0, |l| l.group),
                _pad0: 0,
                _pad1: 0,
                o: self.out_layout.params(self.w.rows, self.out_rows()),
            },
        );
        if n == 0 || path != want {
            return [0; 3];
        }
        match path {
            Path::MatVec => grid1(row_groups),
            Path::Tiled => grid1(row_groups * n.div_ceil(TILE_TOKENS)),
        }
    }
}

/// CPU reference: the dequantized weight `w` (row-major `[rows, cols]`,
/// e.g. from `weight::dequantize_packed`) times the dequantized activations
/// `scales[t] * codes[t, c]`, accumulated in f64.
pub fn reference(codes: &[i8], scales: &[f32], w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(scales.len() * rows);
    for (xr, &s) in codes.chunks_exact(cols).zip(scales) {
        for wr in w.chunks_exact(cols).take(rows) {
            let dot: f64 = xr
                .iter()
                .zip(wr)
                .map(|(&q, &v)| f64::from(q) * f64::from(v))
                .sum();
            out.push((f64::from(s) * dot) as f32);
        }
    }
    out
}
