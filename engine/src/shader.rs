//! WGSL sources. Each op's `.wgsl` file lives in `shaders/` with the same
//! stem as its Rust file in `engine/src/ops/`. Helpers shared by several
//! shaders live in `shaders/lib/` and are prepended to the op's source (WGSL
//! has no include); a shader names the libs it uses in a comment at its top.

/// Shared WGSL helpers.
pub mod lib {
    /// f16 pairs packed in u32 words, read with `unpack2x16float`.
    pub const F16: &str = include_str!("../../shaders/lib/f16.wgsl");
    /// Workgroup sum / max reductions over 256 lanes.
    pub const REDUCE: &str = include_str!("../../shaders/lib/reduce.wgsl");
    /// 1 / RMS of a row in the order rmsnorm and rmsnorm_quant share (needs REDUCE).
    pub const ROWNORM: &str = include_str!("../../shaders/lib/rownorm.wgsl");
    /// Matmul parameter block, bindings and block-format decoding.
    pub const QBLOCK: &str = include_str!("../../shaders/lib/qblock.wgsl");
    /// Decoding of Q5_0 / Q5_1 / IQ4_NL and the super-block types (used by QBLOCK
    /// and the embedding; the includer provides the plane reads).
    pub const KBLOCK: &str = include_str!("../../shaders/lib/kblock.wgsl");
    /// RoPE's angles and pairs (rope, rope_kv_f16; needs TRIG).
    pub const ROPE: &str = include_str!("../../shaders/lib/rope.wgsl");
    /// The GGUF types' format ids (before KBLOCK or KBLOCK_NONE).
    pub const KFORMAT: &str = include_str!("../../shaders/lib/kformat.wgsl");
    /// Stand-ins for KBLOCK's decoders in the modules of the other block formats.
    pub const KBLOCK_NONE: &str = include_str!("../../shaders/lib/kblock_none.wgsl");
    /// sincos with Cody-Waite range reduction (accurate for large angles) and a ~1 ulp exp2, for RoPE.
    pub const TRIG: &str = include_str!("../../shaders/lib/trig.wgsl");
    /// The block-format matmul kernels (needs QBLOCK, TILES and XLOAD or XLOAD_SG).
    pub const QMATMUL: &str = include_str!("../../shaders/lib/qmatmul.wgsl");
    /// Mixed weight planes: chunks of codes, scales, mins, the class table.
    pub const MXCODES: &str = include_str!("../../shaders/lib/mxcodes.wgsl");
    /// The Mixed (per-group bit width) matmul kernels (needs MXCODES, TILES and XLOAD or XLOAD_SG).
    pub const MXMATMUL: &str = include_str!("../../shaders/lib/mxmatmul.wgsl");
    /// Int8 activation codes: the quantizer and its parameter block.
    pub const ACTQ: &str = include_str!("../../shaders/lib/actq.wgsl");
    /// The integer matmul kernels' parameter block, bindings, int8 lanes and dots.
    pub const IMATMUL: &str = include_str!("../../shaders/lib/imatmul.wgsl");
    /// The quantized KV cache's format ids, overrides, cache params and
    /// window addressing (kv_quant_store, kv_quant_attention).
    pub const KVCACHE: &str = include_str!("../../shaders/lib/kvcache.wgsl");
    /// Online-softmax blocks, accumulators and the split-KV combine of both attention shaders.
    pub const SOFTMAX4: &str = include_str!("../../shaders/lib/softmax4.wgsl");
    /// SwiGLU's silu (swiglu, and the matmul kernels' GLU input).
    pub const GLU: &str = include_str!("../../shaders/lib/glu.wgsl");
    /// RMSNorm folded into the block matmul kernels (the NORM override).
    pub const XNORM: &str = include_str!("../../shaders/lib/xnorm.wgsl");
    /// Where the matmul kernels write: parts of concatenated weights, the residual add.
    pub const MMOUT: &str = include_str!("../../shaders/lib/mmout.wgsl");
    /// A helper of the tiled matmul kernels.
    pub const TILES: &str = include_str!("../../shaders/lib/tiles.wgsl");
    /// x blocks for the matmul kernels, loaded by every invocation.
    pub const XLOAD: &str = include_str!("../../shaders/lib/xload.wgsl");
    /// x blocks for the matmul kernels, shared through subgroup broadcasts.
    pub const XLOAD_SG: &str = include_str!("../../shaders/lib/xload_sg.wgsl");
}

/// A Rust struct that mirrors a WGSL struct byte for byte: a call's
/// parameter block (group 0, binding 0) or a struct nested in one. Declared
/// with [`params_struct!`](crate::params_struct), which also records the
/// field offsets the contract tests compare with the WGSL struct naga parses.
pub trait Params: bytemuck::Pod {
    const LAYOUT: ParamsLayout;
}

/// A params struct's name (the WGSL struct's, for nested structs), size and
/// field offsets in bytes.
#[derive(Debug, Clone, Copy)]
pub struct ParamsLayout {
    pub name: &'static str,
    pub size: usize,
    pub fields: &'static [(&'static str, usize)],
}

/// Declares a `#[repr(C)]` params struct and its [`Params`] impl:
/// `params_struct! { pub struct AddParams { pub n: u32, pub _pad: [u32; 3] } }`.
/// Fields whose names start with `_` are padding.
#[macro_export]
macro_rules! params_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),+ $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t),+
        }
        impl $crate::shader::Params for $name {
            const LAYOUT: $crate::shader::ParamsLayout = $crate::shader::ParamsLayout {
                name: stringify!($name),
                size: ::core::mem::size_of::<$name>(),
                fields: &[$((stringify!($f), ::core::mem::offset_of!($name, $f))),+],
            };
        }
    };
}

/// One `.wgsl` file, the libs it needs, and the Rust mirrors of its structs.
#[derive(Debug)]
pub struct ShaderSource {
    /// File stem, e.g. "rmsnorm" for shaders/rmsnorm.wgsl.
    pub name: &'static str,
    pub libs: &'static [&'static str],
    pub source: &'static str,
    /// The parameter block every entry point reads at group 0, binding 0.
    pub params: ParamsLayout,
    /// Structs nested in the parameter block, found in the module by name.
    pub structs: &'static [ParamsLayout],
}

impl ShaderSource {
    /// The full module text: libs first, then the shader itself.
    pub fn compose(&self) -> String {
        let mut s = String::with_capacity(
            self.source.len() + self.libs.iter().map(|l| l.len() + 1).sum::<usize>(),
        );
        for l in self.libs {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(self.source);
        s
    }

    /// Whether the module's code (not its comments) uses subgroup
    /// operations, which need a device with SUBGROUP: only kernels chosen
    /// where `Caps::subgroups` holds do.
    pub fn uses_subgroups(&self) -> bool {
        self.libs
            .iter()
            .chain([&self.source])
            .flat_map(|part| part.lines())
            .any(|line| {
                line.split("//")
                    .next()
                    .is_some_and(|code| code.contains("subgroup"))
            })
    }

    /// Parses and validates the module with naga.
    pub fn validate(&self) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
        let module = naga::front::wgsl::parse_str(&self.compose())
            .map_err(|e| e.emit_to_string(&self.compose()))?;
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .map_err(|e| format!("{e:?}"))?;
        Ok((module, info))
    }
}

/// Declares an op's shader and the params struct it reads:
/// `shader!(SHADER, "rmsnorm", [lib::REDUCE], RmsNormParams)`, with the
/// structs nested in it after: `shader!(.., KvQuantStoreParams, [KvCacheParams])`.
#[macro_export]
macro_rules! shader {
    ($ident:ident, $name:literal, [$($lib:expr),*], $params:ty $(, [$($nested:ty),*])?) => {
        pub static $ident: $crate::shader::ShaderSource = $crate::shader::ShaderSource {
            name: $name,
            libs: &[$($lib),*],
            source: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
            params: <$params as $crate::shader::Params>::LAYOUT,
            structs: &[$($(<$nested as $crate::shader::Params>::LAYOUT),*)?],
        };
    };
}
