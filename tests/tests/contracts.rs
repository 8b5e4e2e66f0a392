//! The contracts between Rust and WGSL, checked against what naga parses
//! from the shaders (no GPU needed):
//! - every shader's parameter block (the uniform at group 0, binding 0), and
//!   each struct nested in it, has the size and named field offsets of the
//!   Rust params struct the op registered with `shader!` (padding fields,
//!   named `_...`, are skipped by name; the size covers them);
//! - the quantized KV cache's format ids: each `KvQuant` has a WGSL
//!   `const KV_<NAME>` equal to its `id()` in every shader that includes
//!   lib/kvcache.wgsl, and no other `KV_*` const exists;
//! - override constants: every constant an op's call passes is an
//!   `override` of its shader, every override of a shader is set by some
//!   call of the example ops below (so the KV layout's overrides, which
//!   come from `kv::KvOverride`, match lib/kvcache.wgsl both ways), and
//!   every call's entry point exists;
//! - the workgroup sizes and tile sizes Rust plans grids with are the
//!   shaders' consts (both attention shaders, hadamard, rope_hadamard).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use lamina_engine::act::{ActBits, ActScale};
use lamina_engine::dispatch::{Call, OpDef};
use lamina_engine::kv::{ATTENTION_WG, BLOCK, KvLayout, KvOverride, KvQuant, QjlShape};
use lamina_engine::mmout::OutLayout;
use lamina_engine::ops::{
    act_quant, add, all_shaders, embedding, gram, hadamard, kv_f16_attention, kv_f16_write,
    kv_quant_attention, kv_quant_store, matmul, matmul_int, rmsnorm, rmsnorm_quant, rope, sample,
    swiglu,
};
use lamina_engine::shader::{ParamsLayout, ShaderSource, lib};
use lamina_engine::weight::{self, MixedLayout, Planes, Shard, WeightRef};
use lamina_engine::{Caps, WeightFormat};
use naga::{AddressSpace, Expression, Literal, Module, ResourceBinding, TypeInner};

fn parse(s: &ShaderSource) -> Module {
    s.validate().unwrap_or_else(|e| panic!("{}: {e}", s.name)).0
}

/// `(name, offset)` of a WGSL struct's fields, padding left out, and its size.
fn wgsl_struct(m: &Module, ty: naga::Handle<naga::Type>) -> (BTreeMap<String, usize>, usize) {
    let TypeInner::Struct { members, span } = &m.types[ty].inner else {
        panic!("{:?} is not a struct", m.types[ty].name);
    };
    let fields = members
        .iter()
        .filter_map(|f| {
            let name = f.name.clone()?;
            (!name.starts_with('_')).then_some((name, f.offset as usize))
        })
        .collect();
    (fields, *span as usize)
}

fn rust_struct(l: &ParamsLayout) -> (BTreeMap<String, usize>, usize) {
    let fields = l
        .fields
        .iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .map(|&(name, offset)| (name.to_string(), offset))
        .collect();
    (fields, l.size)
}

/// Differences between the WGSL struct `ty` and the Rust struct `l`.
fn compare(what: &str, m: &Module, ty: naga::Handle<naga::Type>, l: &ParamsLayout) -> Vec<String> {
    let (wgsl, wgsl_size) = wgsl_struct(m, ty);
    let (rust, rust_size) = rust_struct(l);
    let mut errs = Vec::new();
    if wgsl_size != rust_size {
        errs.push(format!(
            "{what}: WGSL size {wgsl_size}, Rust {} size {rust_size}",
            l.name
        ));
    }
    for name in wgsl.keys().chain(rust.keys()).collect::<BTreeSet<_>>() {
        let (w, r) = (wgsl.get(name), rust.get(name));
        if w != r {
            errs.push(format!(
                "{what}.{name}: WGSL offset {w:?}, Rust {} offset {r:?}",
                l.name
            ));
        }
    }
    errs
}

#[test]
fn params_structs_match_their_wgsl_structs() {
    let mut errs = Vec::new();
    for s in all_shaders() {
        let m = parse(s);
        let uniform = m.global_variables.iter().find(|(_, g)| {
            g.space == AddressSpace::Uniform
                && g.binding
                    == Some(ResourceBinding {
                        group: 0,
                        binding: 0,
                    })
        });
        let Some((_, p)) = uniform else {
            errs.push(format!("{}: no uniform at group 0, binding 0", s.name));
            continue;
        };
        errs.extend(compare(s.name, &m, p.ty, &s.params));
        // Nested structs: registered, and matching by name.
        let TypeInner::Struct { members, .. } = &m.types[p.ty].inner else {
            continue;
        };
        for f in members {
            if let TypeInner::Struct { .. } = m.types[f.ty].inner {
                let name = m.types[f.ty].name.clone().unwrap_or_default();
                if !s.structs.iter().any(|l| l.name == name) {
                    errs.push(format!(
                        "{}: nested struct {name} has no registered Rust mirror",
                        s.name
                    ));
                }
            }
        }
        for l in s.structs {
            match m
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some(l.name))
            {
                Some((ty, _)) => {
                    errs.extend(compare(&format!("{}::{}", s.name, l.name), &m, ty, l))
                }
                None => errs.push(format!("{}: no WGSL struct {}", s.name, l.name)),
            }
        }
    }
    assert!(
        errs.is_empty(),
        "params layout mismatches:\n{}",
        errs.join("\n")
    );
}

/// The `u32` value of a module-scope `const`.
fn const_u32(m: &Module, c: &naga::Constant) -> Option<u32> {
    match m.global_expressions[c.init] {
        Expression::Literal(Literal::U32(v)) => Some(v),
        _ => None,
    }
}

/// The `u32` value of the module-scope `const` called `name`.
fn named_u32(m: &Module, name: &str) -> Option<u32> {
    m.constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .and_then(|(_, c)| const_u32(m, c))
}

/// Every shader that includes `lib`.
fn including(lib: &str) -> Vec<&'static ShaderSource> {
    all_shaders()
        .into_iter()
        .filter(|s| s.libs.contains(&lib))
        .collect()
}

#[test]
fn kv_format_ids_match_the_shaders() {
    let kv_shaders = including(lib::KVCACHE);
    assert_eq!(kv_shaders.len(), 2, "the quantized cache's two shaders");
    for s in kv_shaders {
        let m = parse(s);
        let wgsl: BTreeMap<String, Option<u32>> = m
            .constants
            .iter()
            .filter_map(|(_, c)| {
                let name = c.name.clone()?;
                name.starts_with("KV_").then(|| (name, const_u32(&m, c)))
            })
            .collect();
        let rust: BTreeMap<String, Option<u32>> = KvQuant::ALL
            .iter()
            .map(|q| (format!("KV_{}", q.name().to_uppercase()), Some(q.id())))
            .collect();
        assert_eq!(
            wgsl, rust,
            "{}: WGSL format consts (left) vs KvQuant ids (right)",
            s.name
        );
        let overrides: BTreeSet<&str> = m
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.as_deref())
            .collect();
        for o in KvOverride::ALL {
            assert!(
                overrides.contains(o.name()),
                "{}: no override {} ({o:?})",
                s.name,
                o.name()
            );
        }
    }
}

/// The RoPE every example op rotates with: 2 query heads, 1 key head of 64.
fn example_rope(style: rope::RopeStyle, freq_factors: Option<usize>) -> rope::Rope {
    rope::Rope {
        q: 0,
        n_heads: 2,
        k: 1,
        n_kv_heads: 1,
        head_dim: 64,
        theta: 10000.0,
        style,
        max_rows: 8,
        freq_factors,
    }
}

/// The GGUF types of `weight::kquant` have one id in Rust (`wgsl_id`) and
/// one const in lib/kformat.wgsl (named as the format, upper case), the
/// same in every shader that includes it; lib/kblock.wgsl's IQ4 table
/// matches Rust's.
#[test]
fn kquant_format_ids_match_the_shaders() {
    let shaders = including(lib::KFORMAT);
    assert_eq!(
        shaders.len(),
        5,
        "matmul_q, matmul_q_sg, matmul_k, matmul_k_sg and embedding"
    );
    for s in shaders {
        let m = parse(s);
        for f in WeightFormat::ALL {
            let name = f.name().to_uppercase();
            let wgsl = named_u32(&m, &name);
            let rust = weight::kquant::wgsl_id(f);
            if rust.is_some() {
                assert_eq!(wgsl, rust, "{}: {name}", s.name);
            }
        }
    }
    let shaders = including(lib::KBLOCK);
    assert_eq!(shaders.len(), 3, "matmul_k, matmul_k_sg and embedding");
    for s in shaders {
        let m = parse(s);
        // The IQ4 table, as the signed bytes of four words.
        for (j, vals) in weight::kquant::IQ4_VALUES.chunks(4).enumerate() {
            let name = format!("IQ4_W{j}");
            let wgsl = named_u32(&m, &name);
            let rust = u32::from_le_bytes([vals[0], vals[1], vals[2], vals[3]].map(|v| v as u8));
            assert_eq!(wgsl, Some(rust), "{}: {name}", s.name);
        }
    }
}

/// Both attention shaders take their workgroup size and key block from the
/// Rust constants that size their grids and decode ranges (`kv`).
#[test]
fn attention_constants_match_the_shaders() {
    let attn = including(lib::SOFTMAX4);
    assert_eq!(attn.len(), 2, "the two attention shaders");
    for s in attn {
        let m = parse(s);
        assert_eq!(named_u32(&m, "WG"), Some(ATTENTION_WG), "{}: WG", s.name);
        assert_eq!(named_u32(&m, "KB"), Some(BLOCK), "{}: KB", s.name);
    }
    // The f16 cache's several-sequence ops: as many sequences as kv::Seqs allows.
    for s in [&kv_f16_attention::SHADER, &rope::SHADER_KV] {
        let most = kv_f16_attention::MAX_SEQS as u32;
        assert_eq!(
            named_u32(&parse(s), "MAX_SEQS"),
            Some(most),
            "{}: MAX_SEQS",
            s.name
        );
    }
}

/// The block matmul kernels' workgroup size and tiles (8 tokens x 4 rows an
/// invocation; the small tile's 4 x 4) are the Rust constants that size
/// their grids.
#[test]
fn matmul_tiles_match_the_shaders() {
    let q = including(lib::QMATMUL);
    assert_eq!(q.len(), 4, "matmul_q, matmul_k and their subgroup twins");
    for s in q {
        let m = parse(s);
        for (name, rust) in [
            ("WG", matmul::WG),
            ("TA", matmul::Q_TILE_TOKENS),
            ("TB", matmul::Q_TILE_ROWS_PER_INVOCATION),
            ("TA4", matmul::Q_SMALL_TILE_TOKENS),
            ("TB4", matmul::Q_SMALL_TILE_ROWS_PER_INVOCATION),
        ] {
            assert_eq!(named_u32(&m, name), Some(rust), "{}: {name}", s.name);
        }
    }
}

/// The Hadamard shader's tile and workgroup size are the Rust constants
/// that plan its passes and grids; rope.wgsl's head array for
/// rope_hadamard is as large as the head_dim `RopeHadamard::check` allows.
#[test]
fn hadamard_constants_match_the_shader() {
    let m = parse(&hadamard::SHADER);
    assert_eq!(named_u32(&m, "TILE"), Some(hadamard::TILE), "TILE");
    assert_eq!(named_u32(&m, "WG"), Some(hadamard::WG), "WG");
    let m = parse(&rope::SHADER);
    let hd_max = named_u32(&m, "HD_MAX");
    assert_eq!(hd_max, Some(rope::HADAMARD_MAX_DIM), "rope.wgsl HD_MAX");
}

const EMPTY_QJL: QjlShape = QjlShape {
    m: 0,
    m_out: 0,
    outliers: 0,
    outlier_q8: false,
};

fn weight(format: WeightFormat, rows: u32, cols: u32, mixed: Option<MixedLayout>) -> WeightRef {
    let planes = Planes::of(format, mixed.as_ref(), rows, cols);
    WeightRef {
        format,
        rows,
        cols,
        shards: vec![Shard {
            tensor: 0,
            row_start: 0,
            rows,
            planes,
        }],
        mixed: mixed.map(Arc::new),
    }
}

fn kv_layout(k: KvQuant, qjl: QjlShape) -> KvLayout {
    KvLayout {
        n_kv_heads: 2,
        head_dim: 64,
        max_ctx: 256,
        pivot: 1,
        recent: 32,
        ring: KvLayout::ring_for(32, 8),
        k,
        v: KvQuant::Q4,
        qgroup: 32,
        k_channel: false,
        qjl,
        exact_prompt: false,
        static_scales: false,
    }
}

/// At least one op of every kind, in configurations that together reach
/// every shader and every override.
fn example_ops() -> Vec<Box<dyn OpDef>> {
    let mixed = MixedLayout::new(64, 128, vec![2, 3]).unwrap();
    let mut ops: Vec<Box<dyn OpDef>> = vec![
        Box::new(add::Add {
            x: 0,
            y: 1,
            dim: 64,
            max_rows: 8,
            bias: false,
        }),
        Box::new(rmsnorm::RmsNorm {
            x: 0,
            weight: 1,
            out: 2,
            dim: 64,
            eps: 1e-5,
            max_rows: 8,
        }),
        Box::new(swiglu::SwiGlu {
            gate: 0,
            up: 1,
            out: 2,
            dim: 64,
            max_rows: 8,
        }),
        Box::new(example_rope(rope::RopeStyle::Neox, None)),
        Box::new(hadamard::Hadamard {
            x: 0,
            n: 64,
            width: 576,
            max_rows: 8,
            transposed: false,
        }),
        Box::new(hadamard::Hadamard {
            x: 0,
            n: 14336,
            width: 14336,
            max_rows: 8,
            transposed: true,
        }),
        Box::new(rope::RopeHadamard {
            rope: example_rope(rope::RopeStyle::Interleaved, None),
        }),
        // RoPE and the f16 cache write in one dispatch, plain and scaled.
        Box::new(rope::RopeKvF16 {
            rope: example_rope(rope::RopeStyle::Neox, None),
            v: 2,
            k_cache: 3,
            v_cache: 4,
            max_ctx: 256,
            seqs: None,
        }),
        Box::new(rope::RopeKvF16 {
            rope: example_rope(rope::RopeStyle::Interleaved, Some(5)),
            v: 2,
            k_cache: 3,
            v_cache: 4,
            max_ctx: 256,
            seqs: None,
        }),
        // Llama 3's scaled frequencies: the `_scaled` entry points.
        Box::new(rope::Rope {
            q: 0,
            n_heads: 2,
            k: 1,
            n_kv_heads: 1,
            head_dim: 64,
            theta: 500000.0,
            style: rope::RopeStyle::Interleaved,
            max_rows: 8,
            freq_factors: Some(2),
        }),
        Box::new(rope::RopeHadamard {
            rope: rope::Rope {
                q: 0,
                n_heads: 2,
                k: 1,
                n_kv_heads: 1,
                head_dim: 64,
                theta: 500000.0,
                style: rope::RopeStyle::Interleaved,
                max_rows: 8,
                freq_factors: Some(2),
            },
        }),
        Box::new(gram::Gram {
            x: 0,
            out: 1,
            dim: 64,
            max_rows: 8,
        }),
        Box::new(sample::Sample {
            logits: 0,
            history: 1,
            scratch: 2,
            out: 3,
            vocab: 1000,
            history_len: 64,
        }),
        Box::new(embedding::Embedding {
            ids: 1,
            table: weight(WeightFormat::Q4_0, 100, 64, None),
            out: 2,
            max_rows: 8,
        }),
        Box::new(kv_f16_write::KvF16Write {
            k: 0,
            v: 1,
            k_cache: 2,
            v_cache: 3,
            n_kv_heads: 2,
            head_dim: 64,
            max_ctx: 256,
            max_rows: 8,
        }),
        Box::new(kv_f16_attention::KvF16Attention {
            q: 0,
            k_cache: 1,
            v_cache: 2,
            out: 3,
            scratch: Some(4),
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
            max_ctx: 256,
            max_rows: 8,
            scale: 0.125,
            seqs: None,
        }),
    ];
    for (format, cols, mixed) in [
        (WeightFormat::F32, 100, None),
        (WeightFormat::Q4_0, 128, None),
        (WeightFormat::Mixed, 128, Some(mixed)),
        (WeightFormat::Q6_K, 256, None),
    ] {
        ops.push(Box::new(matmul::MatMul {
            x: 1,
            w: weight(format, 64, cols, mixed.clone()),
            out: 2,
            out_layout: Default::default(),
            matvec_in: Default::default(),
            max_rows: 8,
            last_row_only: false,
        }));
        // The down projection's SwiGLU on load (the GLU override) with the
        // residual add (ACC), and RMSNorm folded in (NORM) where the kernels
        // can.
        let mut fused = vec![matmul::MatVecIn::Glu { gate_up: 3 }];
        if matmul::folds_norm(format, cols) {
            fused.push(matmul::MatVecIn::Norm {
                x: 3,
                weight: 4,
                eps: 1e-5,
            });
        }
        for matvec_in in fused {
            ops.push(Box::new(matmul::MatMul {
                x: 1,
                w: weight(format, 64, cols, mixed.clone()),
                out: 2,
                out_layout: match matvec_in {
                    matmul::MatVecIn::Glu { .. } => OutLayout::accumulate(),
                    _ => OutLayout::plain(),
                },
                matvec_in,
                max_rows: 8,
                last_row_only: false,
            }));
        }
    }
    ops.push(Box::new(act_quant::ActQuant {
        x: 0,
        codes: 1,
        scales: 2,
        cols: 64,
        bits: ActBits::Int8,
        scale: ActScale::Dynamic,
        max_rows: 8,
    }));
    ops.push(Box::new(rmsnorm_quant::RmsNormQuant {
        x: 0,
        weight: 1,
        codes: 2,
        scales: 3,
        dim: 64,
        eps: 1e-5,
        bits: ActBits::Int4,
        scale: ActScale::Static(0.1),
        max_rows: 8,
    }));
    let mixed = MixedLayout::new(64, 128, vec![2, 8]).unwrap();
    for (format, mixed) in [
        (WeightFormat::Q4_1, None),
        (WeightFormat::Mixed, Some(mixed)),
    ] {
        // Plain, and the residual add (the ACC override).
        for out_layout in [OutLayout::plain(), OutLayout::accumulate()] {
            ops.push(Box::new(matmul_int::MatMulInt {
                x: 0,
                x_scales: 1,
                w: weight(format, 64, 128, mixed.clone()),
                out: 2,
                out_layout,
                max_rows: 8,
                last_row_only: false,
            }));
        }
    }
    let qjl = QjlShape {
        m: 128,
        m_out: 64,
        outliers: 4,
        outlier_q8: false,
    };
    let static_q4 = KvLayout {
        v: KvQuant::Q4,
        recent: 0,
        static_scales: true,
        ..kv_layout(KvQuant::Q4, EMPTY_QJL)
    };
    for layout in [
        kv_layout(KvQuant::Q8, EMPTY_QJL),
        kv_layout(KvQuant::Qjl, qjl),
        static_q4,
    ] {
        ops.push(Box::new(kv_quant_store::KvQuantStore {
            k: 0,
            v: 1,
            k_win: 2,
            v_win: 3,
            k_store: 4,
            v_store: 5,
            layout,
            max_rows: 8,
        }));
        ops.push(Box::new(kv_quant_attention::KvQuantAttention {
            q: 0,
            k_win: 2,
            v_win: 3,
            k_store: 4,
            v_store: 5,
            out: 6,
            scratch: 7,
            layout,
            n_heads: 4,
            max_rows: 8,
            scale: 0.125,
        }));
    }
    ops
}

fn caps(subgroups: bool) -> Caps {
    Caps {
        shader_f16: false,
        subgroups,
        timestamps: false,
        max_binding: 128 << 20,
        max_buffer: 256 << 20,
        max_workgroups_per_dim: 65535,
        min_storage_align: 256,
        min_uniform_align: 256,
    }
}

#[test]
fn override_names_and_entry_points_match_the_shaders() {
    let calls: Vec<Call> = example_ops()
        .iter()
        .flat_map(|op| [false, true].map(|sg| op.calls(&caps(sg))))
        .flatten()
        .collect();
    let mut errs = BTreeSet::new();
    for s in all_shaders() {
        let m = parse(s);
        let declared: BTreeSet<&str> = m
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.as_deref())
            .collect();
        let entries: BTreeSet<&str> = m.entry_points.iter().map(|e| e.name.as_str()).collect();
        let mine: Vec<&Call> = calls
            .iter()
            .filter(|c| std::ptr::eq(c.kernel.shader, s))
            .collect();
        if mine.is_empty() {
            errs.insert(format!(
                "{}: no example op calls it (add one to example_ops)",
                s.name
            ));
            continue;
        }
        let mut set = BTreeSet::new();
        for c in mine {
            if !entries.contains(c.kernel.entry) {
                errs.insert(format!("{}: no entry point {}", s.name, c.kernel.entry));
            }
            for (name, _) in &c.kernel.constants {
                if !declared.contains(name) {
                    errs.insert(format!("{}:{}: no override {name}", s.name, c.kernel.entry));
                }
                set.insert(*name);
            }
        }
        for name in declared.difference(&set) {
            errs.insert(format!("{}: override {name} is set by no call", s.name));
        }
    }
    assert!(
        errs.is_empty(),
        "override / entry point mismatches:\n{}",
        errs.into_iter().collect::<Vec<_>>().join("\n")
    );
}
