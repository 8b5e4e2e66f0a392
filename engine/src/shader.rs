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
    /// Matmul parameter block, bindings and block-format decoding.
    pub const QBLOCK: &str = include_str!("../../shaders/lib/qblock.wgsl");
    /// sincos with Cody-Waite range reduction (accurate for large angles) and a ~1 ulp exp2, for RoPE.
    pub const TRIG: &str = include_str!("../../shaders/lib/trig.wgsl");
    /// The block-format matmul kernels (needs QBLOCK, TILES and XLOAD or XLOAD_SG).
    pub const QMATMUL: &str = include_str!("../../shaders/lib/qmatmul.wgsl");
    /// The Mixed (per-group bit width) matmul kernels (needs TILES and XLOAD or XLOAD_SG).
    pub const MXMATMUL: &str = include_str!("../../shaders/lib/mxmatmul.wgsl");
    /// The quantized KV cache's parameter block and window addressing (kv_store, kv_attention).
    pub const KVCACHE: &str = include_str!("../../shaders/lib/kvcache.wgsl");
    /// Online-softmax blocks, accumulators and the split-KV combine of both attention shaders.
    pub const SOFTMAX4: &str = include_str!("../../shaders/lib/softmax4.wgsl");
    /// A helper of the tiled matmul kernels.
    pub const TILES: &str = include_str!("../../shaders/lib/tiles.wgsl");
    /// x blocks for the matmul kernels, loaded by every invocation.
    pub const XLOAD: &str = include_str!("../../shaders/lib/xload.wgsl");
    /// x blocks for the matmul kernels, shared through subgroup broadcasts.
    pub const XLOAD_SG: &str = include_str!("../../shaders/lib/xload_sg.wgsl");
}

/// One `.wgsl` file and the libs it needs.
#[derive(Debug)]
pub struct ShaderSource {
    /// File stem, e.g. "rmsnorm" for shaders/rmsnorm.wgsl.
    pub name: &'static str,
    pub libs: &'static [&'static str],
    pub source: &'static str,
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

/// Declares an op's shader: `shader!(RMSNORM, "rmsnorm", [lib::F16])`.
#[macro_export]
macro_rules! shader {
    ($ident:ident, $name:literal, [$($lib:expr),*]) => {
        pub static $ident: $crate::shader::ShaderSource = $crate::shader::ShaderSource {
            name: $name,
            libs: &[$($lib),*],
            source: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
        };
    };
}
