//! MatMul against a packed weight: `out[t, r] = sum_c x[t, c] * W[r, c]`.
//!
//! W is `[rows, cols]` in one of the [`WeightFormat`]s, packed in planes as
//! documented in `weight/mod.rs` and split by rows into shards (one storage
//! binding each). Quantized formats are never dequantized in memory: the
//! kernels stream the packed codes and f16 scales and dequantize in
//! registers, accumulating in f32.
//!
//! Two kernel shapes per format, one WGSL entry point each:
//! - `matvec_<fmt>` for one token (decode, or `last_row_only`). Memory
//!   bound on a GPU: each weight row is read once at its packed size.
//! - `matmul_<fmt>` for several tokens (prefill), tiled over tokens x rows so
//!   that each decoded weight serves several tokens and each x block several
//!   rows: 8 tokens x 4 rows an invocation.
//! - `matmul4_<fmt>` for 2 to 4 tokens (a batched decode step of a few
//!   sequences, a short prompt): 4 tokens x 4 rows, so a step of 4 tokens
//!   does not load and multiply x blocks for 4 more that are not there. All
//!   block formats but Mixed; those run `matmul_<fmt>`. (Two blocks a step,
//!   as `matvec2_<fmt>` does, measured no faster here on lavapipe.)
//!
//! The block formats (Q4_0, Q4_1, Q8_0, the GGUF types of
//! `weight::kquant`), and F32 / F16 when `cols % 32 == 0`, run the kernels
//! of `shaders/lib/qmatmul.wgsl`, reading 32-column blocks as vec4s of code
//! words: an invocation owns whole rows (no reduction) and the workgroup
//! shares its tokens' x blocks, through subgroup broadcasts
//! (`matmul_q_sg.wgsl` / `matmul_k_sg.wgsl`, when the device has subgroups)
//! or by loading them in every invocation (`matmul_q.wgsl` /
//! `matmul_k.wgsl`; `_k` holds the GGUF types, whose decoders the `_q`
//! modules leave out: on lavapipe every pipeline's build time grows with the
//! code in its module, 1.4 s against 0.3 s for a Q4_1 mat-vec). All have
//! the same grids, so `step()` needs no device knowledge. Measured on lavapipe, where this shape halves
//! the instructions of a split-K mat-vec with a workgroup reduction and cuts
//! those of a shared-memory tiled matmul by 3x: see the shader's comments.
//! Other F32 / F16 weights (any column count, scalar loads) run
//! `matmul_f.wgsl`: split-K mat-vec and shared-x tiles.
//!
//! `last_row_only` computes only the step's last token (t = n_tokens - 1)
//! into out row 0: the lm_head while generating.
//!
//! Fused layers (decode's seven dispatches a layer): `out_layout`
//! (`crate::mmout`) writes a weight of several linear layers' rows as one
//! matrix per part, or adds to `out` (the residual add); `matvec_in` lets
//! the mat-vec apply RMSNorm or SwiGLU to its input itself ([`MatVecIn`]).
//!
//! # Shapes
//! x: `[max_rows, cols]` f32, out: `[max_rows, rows]` f32 (`[1, rows]` with
//! `last_row_only`; in parts as `out_layout` says). Block formats need
//! `cols % 32 == 0`. Shard `i` writes out columns `row_start .. row_start +
//! rows` of the whole weight.
//!
//! # Bindings (every kernel)
//! 1 x, 2 codes plane, 3 scales plane, 4 mins plane, 5 out; Mixed: 6 group
//! table, 7 codes as vec4s; block kernels then RMSNorm's weight (6, Mixed 8).
//! A binding a kernel does not read gets another in its place (never read),
//! so all kernels of a module share one layout.

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::mmout::{self, MmOut, OutLayout, part_offsets};
use crate::pipeline::Kernel;
use crate::shader::ShaderSource;
use crate::shader::lib::{
    GLU, KBLOCK, KBLOCK_NONE, KFORMAT, MMOUT, MXCODES, MXMATMUL, QBLOCK, QMATMUL, TILES, XLOAD,
    XLOAD_SG, XNORM,
};
use crate::tensor::WeightFormat;
use crate::weight::{GROUP, MixedLayout, Planes, Shard, WeightRef, col_multiple, kquant};
use crate::{Caps, Result};

crate::shader!(
    SHADER_Q,
    "matmul_q",
    [
        QBLOCK,
        KFORMAT,
        KBLOCK_NONE,
        QMATMUL,
        TILES,
        GLU,
        XLOAD,
        XNORM,
        MMOUT
    ],
    MatMulParams,
    [MmOut]
);
crate::shader!(
    SHADER_Q_SG,
    "matmul_q_sg",
    [
        QBLOCK,
        KFORMAT,
        KBLOCK_NONE,
        QMATMUL,
        TILES,
        GLU,
        XLOAD_SG,
        XNORM,
        MMOUT
    ],
    MatMulParams,
    [MmOut]
);
crate::shader!(
    SHADER_K,
    "matmul_k",
    [
        QBLOCK, KFORMAT, KBLOCK, QMATMUL, TILES, GLU, XLOAD, XNORM, MMOUT
    ],
    MatMulParams,
    [MmOut]
);
crate::shader!(
    SHADER_K_SG,
    "matmul_k_sg",
    [
        QBLOCK, KFORMAT, KBLOCK, QMATMUL, TILES, GLU, XLOAD_SG, XNORM, MMOUT
    ],
    MatMulParams,
    [MmOut]
);
crate::shader!(
    SHADER_MX,
    "matmul_mx",
    [MXCODES, MXMATMUL, TILES, GLU, XLOAD, XNORM, MMOUT],
    MixedMatMulParams,
    [MmOut]
);
crate::shader!(
    SHADER_MX_SG,
    "matmul_mx_sg",
    [MXCODES, MXMATMUL, TILES, GLU, XLOAD_SG, XNORM, MMOUT],
    MixedMatMulParams,
    [MmOut]
);
crate::shader!(SHADER_F, "matmul_f", [GLU, MMOUT], MatMulParams, [MmOut]);

/// Every matmul shader, for the naga translation tests.
pub fn shaders() -> Vec<&'static ShaderSource> {
    vec![
        &SHADER_Q,
        &SHADER_Q_SG,
        &SHADER_K,
        &SHADER_K_SG,
        &SHADER_MX,
        &SHADER_MX_SG,
        &SHADER_F,
    ]
}

/// Workgroup size of every matmul kernel (mirrors `WG` in the shaders).
pub const WG: u32 = 64;
/// Block formats, tiled: tokens per workgroup and rows per invocation
/// (mirror `TA`, `TB` in lib/qmatmul.wgsl).
pub const Q_TILE_TOKENS: u32 = 8;
pub const Q_TILE_ROWS_PER_INVOCATION: u32 = 4;
/// Block formats, small tiles (2 to 4 tokens): tokens per workgroup and
/// rows per invocation (mirror `TA4`, `TB4` in lib/qmatmul.wgsl).
pub const Q_SMALL_TILE_TOKENS: u32 = 4;
pub const Q_SMALL_TILE_ROWS_PER_INVOCATION: u32 = 4;
/// F32 / F16: rows each split-K mat-vec thread computes (mirrors `R` in
/// matmul_f.wgsl) and the largest number of threads sharing one row.
pub const F_MV_ROWS: u32 = 4;
pub const F_MV_MAX_LANES: u32 = 16;
/// F32 / F16 tiled: tokens and rows per workgroup (mirror `TM`, `TN`).
pub const F_TILE_TOKENS: u32 = 32;
pub const F_TILE_ROWS: u32 = 64;

crate::params_struct! {
    /// Mirrors `Params` in lib/qblock.wgsl (matmul_q, matmul_q_sg) and
    /// matmul_f.wgsl.
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
        /// Workgroups along rows (the tiled grid folds (token, row) tiles into one id).
        pub row_tiles: u32,
        /// With `glu`: the element of x where up starts.
        pub x_up: u32,
        /// With `norm`: RMSNorm's epsilon.
        pub eps: f32,
        pub _pad1: u32,
        pub _pad2: u32,
        /// Where the results go (crate::mmout).
        pub o: MmOut,
    }
}

crate::params_struct! {
    /// Mirrors `Params` in lib/mxmatmul.wgsl (matmul_mx, matmul_mx_sg): the
    /// fields of [`MatMulParams`], then the Mixed layout's.
    pub struct MixedMatMulParams {
        pub rows: u32,
        pub cols: u32,
        pub nb: u32,
        pub n_tokens: u32,
        pub x_row: u32,
        pub out_stride: u32,
        pub out_col: u32,
        pub row_tiles: u32,
        /// Column groups, code words per row, columns per group.
        pub n_groups: u32,
        pub row_words: u32,
        pub group: u32,
        pub _pad: u32,
        pub x_up: u32,
        pub eps: f32,
        pub _pad1: u32,
        pub _pad2: u32,
        pub o: MmOut,
    }
}

impl MixedMatMulParams {
    fn new(p: MatMulParams, l: &MixedLayout) -> Self {
        MixedMatMulParams {
            rows: p.rows,
            cols: p.cols,
            nb: p.nb,
            n_tokens: p.n_tokens,
            x_row: p.x_row,
            out_stride: p.out_stride,
            out_col: p.out_col,
            row_tiles: p.row_tiles,
            n_groups: l.n_groups(),
            row_words: l.row_words(),
            group: l.group,
            _pad: 0,
            x_up: p.x_up,
            eps: p.eps,
            _pad1: 0,
            _pad2: 0,
            o: p.o,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MatMul {
    pub x: TensorId,
    pub w: WeightRef,
    pub out: TensorId,
    /// How `out` is laid out (parts of a concatenated weight) and whether
    /// the result is added to it.
    pub out_layout: OutLayout,
    /// What the mat-vec reads in place of `x` (decode's fused layers).
    pub matvec_in: MatVecIn,
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
        /// 2 to 4 tokens: `matmul4_<fmt>` where the format has it.
        Small,
    }
}

fn is_block_format(f: WeightFormat) -> bool {
    !matches!(f, WeightFormat::F32 | WeightFormat::F16)
}

/// The mat-vec that takes two blocks per scale word (`matvec2_<fmt>`), for
/// the formats with one f16 scale per block when a row has an even count.
fn pair_entry(f: WeightFormat, nb: u32) -> Option<&'static str> {
    if !nb.is_multiple_of(2) {
        return None;
    }
    match f {
        WeightFormat::Q4_0 => Some("matvec2_q4_0"),
        WeightFormat::Q4_1 => Some("matvec2_q4_1"),
        WeightFormat::Q8_0 => Some("matvec2_q8_0"),
        _ => None,
    }
}

/// Whether a weight runs the block kernels (lib/qmatmul.wgsl): the block
/// formats, and F32 / F16 whose rows are whole 32-column blocks. Other
/// F32 / F16 weights run matmul_f.wgsl, which handles any column count.
fn block_kernels(f: WeightFormat, cols: u32) -> bool {
    is_block_format(f) || cols.is_multiple_of(GROUP)
}

fn entries(format: WeightFormat) -> (&'static str, &'static str) {
    match format {
        WeightFormat::F32 => ("matvec_f32", "matmul_f32"),
        WeightFormat::F16 => ("matvec_f16", "matmul_f16"),
        WeightFormat::Q4_0 => ("matvec_q4_0", "matmul_q4_0"),
        WeightFormat::Q4_1 => ("matvec_q4_1", "matmul_q4_1"),
        WeightFormat::Q8_0 => ("matvec_q8_0", "matmul_q8_0"),
        WeightFormat::Mixed => ("matvec_mixed", "matmul_mixed"),
        WeightFormat::Q5_0 => ("matvec_q5_0", "matmul_q5_0"),
        WeightFormat::Q5_1 => ("matvec_q5_1", "matmul_q5_1"),
        WeightFormat::IQ4_NL => ("matvec_iq4_nl", "matmul_iq4_nl"),
        WeightFormat::Q2_K => ("matvec_q2_k", "matmul_q2_k"),
        WeightFormat::Q3_K => ("matvec_q3_k", "matmul_q3_k"),
        WeightFormat::Q4_K => ("matvec_q4_k", "matmul_q4_k"),
        WeightFormat::Q5_K => ("matvec_q5_k", "matmul_q5_k"),
        WeightFormat::Q6_K => ("matvec_q6_k", "matmul_q6_k"),
        WeightFormat::IQ4_XS => ("matvec_iq4_xs", "matmul_iq4_xs"),
    }
}

/// The small tiled kernel of a weight, where it has one: the block kernels
/// of lib/qmatmul.wgsl (not Mixed's lib/mxmatmul.wgsl, nor matmul_f.wgsl).
fn small_entry(format: WeightFormat, cols: u32) -> Option<&'static str> {
    if !block_kernels(format, cols) {
        return None;
    }
    Some(match format {
        WeightFormat::F32 => "matmul4_f32",
        WeightFormat::F16 => "matmul4_f16",
        WeightFormat::Q4_0 => "matmul4_q4_0",
        WeightFormat::Q4_1 => "matmul4_q4_1",
        WeightFormat::Q8_0 => "matmul4_q8_0",
        WeightFormat::Mixed => return None,
        WeightFormat::Q5_0 => "matmul4_q5_0",
        WeightFormat::Q5_1 => "matmul4_q5_1",
        WeightFormat::IQ4_NL => "matmul4_iq4_nl",
        WeightFormat::Q2_K => "matmul4_q2_k",
        WeightFormat::Q3_K => "matmul4_q3_k",
        WeightFormat::Q4_K => "matmul4_q4_k",
        WeightFormat::Q5_K => "matmul4_q5_k",
        WeightFormat::Q6_K => "matmul4_q6_k",
        WeightFormat::IQ4_XS => "matmul4_iq4_xs",
    })
}

/// Block formats' mat-vec: rows per invocation (`R`). Four rows share each
/// x block (on llvmpipe four cost 40% fewer instructions per row than one);
/// fewer for small matrices so the rows still spread over a few workgroups.
pub fn q_matvec_rows(rows: u32) -> u32 {
    if rows >= 512 {
        4
    } else if rows >= 128 {
        2
    } else {
        1
    }
}

/// F32 / F16 mat-vec: threads sharing a row, the largest power of two up to
/// [`F_MV_MAX_LANES`] that divides the block count, so every thread gets the
/// same number of blocks.
pub fn f_matvec_lanes(nb: u32) -> u32 {
    let mut l = F_MV_MAX_LANES;
    while l > 1 && !nb.is_multiple_of(l) {
        l /= 2;
    }
    l
}

/// What the mat-vec (one token: decode, `last_row_only`) reads in place of
/// `x`, doing the layer before it itself so that layer takes no dispatch of
/// its own. The tiled kernels (several tokens) always read `x`: at prefill
/// that layer runs as its own pass, which does each token once, where
/// folded into the matmul every tile of rows would redo it (and on
/// llvmpipe each extra load of x costs a per-lane gather). Measured for the
/// small tile (4 tokens, a batched decode step of the default model on
/// lavapipe): RMSNorm folded in cost 6.5 ms a step against 3.5 for its
/// passes, SwiGLU 2.6 against 1.9, though 90 dispatches fewer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum MatVecIn {
    /// `x` itself.
    #[default]
    X,
    /// `RMSNorm(x) * weight` of `x`'s rows (`[max_rows, cols]` f32, weight
    /// `[cols]` f32): the NORM override, shaders/lib/xnorm.wgsl. Block
    /// kernels only ([`folds_norm`]).
    Norm {
        x: TensorId,
        weight: TensorId,
        eps: f32,
    },
    /// `silu(gate) * up` of a fused gate/up matmul's output (gate and up
    /// `[max_rows, cols]` each at [`glu_x`]'s offsets): the GLU override,
    /// shaders/lib/glu.wgsl.
    Glu { gate_up: TensorId },
}

/// Whether a weight's kernels can fold RMSNorm in: the block kernels (every
/// format but F32 / F16 rows that are not whole 32-column blocks).
pub fn folds_norm(format: WeightFormat, cols: u32) -> bool {
    block_kernels(format, cols)
}

/// A SwiGLU input of `cols` columns for `max_rows` tokens (`MatVecIn::Glu`):
/// the bytes of the gate/up tensor and the byte offset of up in it, as a
/// fused gate/up matmul writes them (`crate::mmout`, two parts).
pub fn glu_x(cols: u32, max_rows: u32) -> (u64, u64) {
    let parts = OutLayout::parts(&[cols, cols]);
    let up = part_offsets(&parts.parts, max_rows)[1];
    (parts.bytes(2 * cols, max_rows), up)
}

impl MatMul {
    /// The tensor the kernel of `path` reads as x, and its bytes.
    fn x_of(&self, path: Path) -> (TensorId, u64) {
        let plain = 4 * u64::from(self.w.cols) * u64::from(self.max_rows);
        match (path, self.matvec_in) {
            (Path::MatVec, MatVecIn::Norm { x, .. }) => (x, plain),
            (Path::MatVec, MatVecIn::Glu { gate_up }) => {
                (gate_up, glu_x(self.w.cols, self.max_rows).0)
            }
            _ => (self.x, plain),
        }
    }
    fn nb(&self) -> u32 {
        self.w.cols.div_ceil(GROUP)
    }
    fn out_rows(&self) -> u32 {
        if self.last_row_only { 1 } else { self.max_rows }
    }
    /// The tiled paths exist only in graphs that can see several tokens,
    /// the 8-token tile only in those that can see more than 4 where the
    /// format has the small one.
    fn paths(&self) -> &'static [Path] {
        let small = small_entry(self.w.format, self.w.cols).is_some();
        match (self.max_rows, small) {
            (_, _) if self.max_rows <= 1 || self.last_row_only => &[Path::MatVec],
            (2..=Q_SMALL_TILE_TOKENS, true) => &[Path::MatVec, Path::Small],
            (_, true) => &[Path::MatVec, Path::Small, Path::Tiled],
            (_, false) => &[Path::MatVec, Path::Tiled],
        }
    }
    /// The path a step of `n` tokens runs.
    fn path_for(&self, n: u32) -> Path {
        if n <= 1 || self.last_row_only {
            Path::MatVec
        } else if n <= Q_SMALL_TILE_TOKENS && small_entry(self.w.format, self.w.cols).is_some() {
            Path::Small
        } else {
            Path::Tiled
        }
    }
    /// Weight rows one workgroup of `path` covers in a shard of `rows` rows.
    fn rows_per_workgroup(&self, path: Path, rows: u32) -> u32 {
        match (block_kernels(self.w.format, self.w.cols), path) {
            (true, Path::MatVec) => WG * q_matvec_rows(rows),
            (true, Path::Tiled) => WG * Q_TILE_ROWS_PER_INVOCATION,
            (true, Path::Small) => WG * Q_SMALL_TILE_ROWS_PER_INVOCATION,
            (false, Path::MatVec) => WG / f_matvec_lanes(self.nb()) * F_MV_ROWS,
            (false, Path::Tiled | Path::Small) => F_TILE_ROWS,
        }
    }
    fn tokens_per_workgroup(&self, path: Path) -> u32 {
        match (block_kernels(self.w.format, self.w.cols), path) {
            (true, Path::Small) => Q_SMALL_TILE_TOKENS,
            (true, _) => Q_TILE_TOKENS,
            (false, _) => F_TILE_TOKENS,
        }
    }
    fn kernel(&self, path: Path, shard: &Shard<TensorId>, caps: &Caps) -> Kernel {
        let mut k = self.base_kernel(path, shard, caps);
        // Overrides only where set, so other kernels keep their keys.
        if self.out_layout.accumulate {
            k = k.with(mmout::ACC, 1);
        }
        match (path, self.matvec_in) {
            (Path::MatVec, MatVecIn::Norm { .. }) => k.with("NORM", 1),
            (Path::MatVec, MatVecIn::Glu { .. }) => k.with("GLU", 1),
            _ => k,
        }
    }
    fn base_kernel(&self, path: Path, shard: &Shard<TensorId>, caps: &Caps) -> Kernel {
        let (mv, mm) = entries(self.w.format);
        let entry = match path {
            Path::MatVec => mv,
            Path::Tiled => mm,
            // paths() offers Small only where the entry exists.
            Path::Small => small_entry(self.w.format, self.w.cols).unwrap_or(mm),
        };
        if !block_kernels(self.w.format, self.w.cols) {
            return match path {
                Path::MatVec => Kernel::new(&SHADER_F, entry).with("L", f_matvec_lanes(self.nb())),
                Path::Tiled | Path::Small => Kernel::new(&SHADER_F, entry),
            };
        }
        let kq = kquant::is_kquant(self.w.format);
        let shader = match (self.w.format == WeightFormat::Mixed, kq, caps.subgroups) {
            (true, _, true) => &SHADER_MX_SG,
            (true, _, false) => &SHADER_MX,
            (false, true, true) => &SHADER_K_SG,
            (false, true, false) => &SHADER_K,
            (false, false, true) => &SHADER_Q_SG,
            (false, false, false) => &SHADER_Q,
        };
        if let Some(l) = self.w.mixed.as_deref() {
            // Only the group classes this shard has get code (see lib/mxmatmul.wgsl).
            let classes = (0..l.n_groups())
                .map(|g| 1u32 << l.group_class(shard.rows, g))
                .fold(0, |a, b| a | b);
            return match path {
                Path::MatVec => Kernel::new(shader, entry)
                    .with("R", q_matvec_rows(shard.rows))
                    .with("CLASSES", classes),
                Path::Tiled | Path::Small => Kernel::new(shader, entry).with("CLASSES", classes),
            };
        }
        match path {
            Path::MatVec => {
                let entry = pair_entry(self.w.format, self.nb()).unwrap_or(entry);
                Kernel::new(shader, entry).with("R", q_matvec_rows(shard.rows))
            }
            Path::Tiled | Path::Small => Kernel::new(shader, entry),
        }
    }
    fn bindings(&self, path: Path, s: &Shard<TensorId>) -> Vec<Binding> {
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
        let (x, x_bytes) = self.x_of(path);
        let out_bytes = self.out_layout.bytes(self.w.rows, self.out_rows());
        let mut b = vec![
            Binding::read_range(x, 0, x_bytes),
            codes,
            scales,
            mins,
            Binding {
                range: Some((0, out_bytes)),
                ..Binding::write(self.out)
            },
        ];
        if self.w.format == WeightFormat::Mixed {
            // 6: the group table; 7: the codes again, read as vec4s.
            b.push(Binding::read_range(
                s.tensor,
                4 * u64::from(p.table),
                p.table_bytes(),
            ));
            b.push(Binding::read_range(
                s.tensor,
                4 * u64::from(p.codes),
                p.code_bytes(),
            ));
        }
        if block_kernels(self.w.format, self.w.cols) {
            // RMSNorm's weight (NORM), or x again, never read.
            b.push(match (path, self.matvec_in) {
                (Path::MatVec, MatVecIn::Norm { weight, .. }) => {
                    Binding::read_range(weight, 0, 4 * u64::from(self.w.cols))
                }
                _ => b[0].clone(),
            });
        }
        b
    }
}

impl OpDef for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        const OP: &str = "matmul";
        let (rows, cols, f) = (self.w.rows, self.w.cols, self.w.format);
        crate::ensure_shape!(rows > 0 && cols > 0, OP, "empty weight {rows}x{cols}");
        crate::ensure_shape!(self.max_rows > 0, OP, "max_rows is 0");
        let m = col_multiple(f);
        crate::ensure_shape!(
            cols.is_multiple_of(m),
            OP,
            "{} weight needs cols % {m} == 0, got {cols}",
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
        // Kernels index x and out in u32 elements.
        let x_bytes = 4 * u64::from(cols) * u64::from(self.max_rows);
        let out_bytes = self.out_layout.bytes(rows, self.out_rows());
        crate::ensure_shape!(
            x_bytes < (1 << 34) && out_bytes < (1 << 34),
            OP,
            "x ({x_bytes} bytes) or out ({out_bytes} bytes) too large for u32 indexing"
        );
        check_bytes(g, OP, "x", self.x, x_bytes)?;
        match self.matvec_in {
            MatVecIn::X => {}
            MatVecIn::Norm { x, weight, .. } => {
                crate::ensure_shape!(
                    folds_norm(f, cols),
                    OP,
                    "RMSNorm can be folded into block kernels only ({} weight of {cols} columns)",
                    f.name()
                );
                check_bytes(g, OP, "unnormed x", x, x_bytes)?;
                check_bytes(g, OP, "norm weight", weight, 4 * u64::from(cols))?;
            }
            MatVecIn::Glu { gate_up } => {
                let bytes = glu_x(cols, self.max_rows).0;
                check_bytes(g, OP, "gate/up", gate_up, bytes)?;
            }
        }
        check_bytes(g, OP, "out", self.out, out_bytes)
    }

    fn calls(&self, caps: &Caps) -> Vec<Call> {
        let mut calls = Vec::new();
        for (i, s) in self.w.shards.iter().enumerate() {
            for &path in self.paths() {
                calls.push(
                    Call::new(self.kernel(path, s, caps), self.bindings(path, s))
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
        let want = self.path_for(n);
        let row_groups = shard
            .rows
            .div_ceil(self.rows_per_workgroup(path, shard.rows));
        let mut p = MatMulParams {
            rows: shard.rows,
            cols: self.w.cols,
            nb: self.nb(),
            n_tokens: 1,
            x_row: n.saturating_sub(1),
            out_stride: self.w.rows,
            out_col: shard.row_start,
            row_tiles: row_groups,
            x_up: match (path, self.matvec_in) {
                (Path::MatVec, MatVecIn::Glu { .. }) => {
                    (glu_x(self.w.cols, self.max_rows).1 / 4) as u32
                }
                _ => 0,
            },
            eps: match self.matvec_in {
                MatVecIn::Norm { eps, .. } => eps,
                _ => 0.0,
            },
            _pad1: 0,
            _pad2: 0,
            o: self.out_layout.params(self.w.rows, self.out_rows()),
        };
        if path != Path::MatVec {
            p.n_tokens = n;
            p.x_row = 0;
        }
        match self.w.mixed.as_deref() {
            Some(l) => write_params(params, &MixedMatMulParams::new(p, l)),
            None => write_params(params, &p),
        }
        if n == 0 || path != want {
            return [0; 3];
        }
        match path {
            Path::MatVec => grid1(row_groups),
            Path::Tiled | Path::Small => {
                grid1(row_groups * n.div_ceil(self.tokens_per_workgroup(path)))
            }
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
