//! MatMul kernels (matvec and tiled, every weight format) and weight packing
//! against CPU references: the packed weight is dequantized on the host and
//! multiplied in f32, so the kernels are checked on exactly the math they do.

use std::sync::Arc;

use half::f16;
use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::mmout::{self, OutLayout};
use lamina_engine::ops::matmul::{self, MatMul, MatVecIn};
use lamina_engine::ops::rmsnorm;
use lamina_engine::ops::swiglu;
use lamina_engine::weight::{
    self, GpuWeight, HostData, HostWeight, Planes, dequantize_packed, pack_f32, pack_ggml,
};
use lamina_engine::{EngineError, Executor, Gpu, WeightFormat};
use lamina_tests::{RandomMixed, assert_close, f32_bytes, gpu, rand_vec, random_ggml};

/// Error budgets (absolute, plus the same relative part) of the GPU result
/// against the f32 reference of the dequantized weight, for outputs of
/// magnitude up to ~10 summed over up to 1536 columns. Both sides sum in f32
/// in different orders, and the block formats' mat-vec regroups each block as
/// d * sum(q x) + m * sum(x); the worst errors seen on lavapipe are ~5e-6.
const TOL_F32: f32 = 2e-5;
const TOL_F16: f32 = 2e-5;
const TOL_Q4_0: f32 = 3e-5;
const TOL_Q4_1: f32 = 3e-5;
const TOL_Q8_0: f32 = 3e-5;
const TOL_MIXED: f32 = 3e-5;
/// The GGUF types of `weight::kquant` (folded as a * q + m per half block).
const TOL_KQUANT: f32 = 3e-5;

fn tol(f: WeightFormat) -> f32 {
    match f {
        WeightFormat::F32 => TOL_F32,
        WeightFormat::F16 => TOL_F16,
        WeightFormat::Q4_0 => TOL_Q4_0,
        WeightFormat::Q4_1 => TOL_Q4_1,
        WeightFormat::Q8_0 => TOL_Q8_0,
        WeightFormat::Mixed => TOL_MIXED,
        _ => TOL_KQUANT,
    }
}

const ALL: [WeightFormat; 15] = WeightFormat::ALL;

/// `cols` rounded up to what `format` accepts (256 for the super-block
/// types), so every test's shapes apply to every format.
fn fit(format: WeightFormat, cols: u32) -> u32 {
    cols.next_multiple_of(weight::col_multiple(format))
}

/// Runs `x @ W^T` for the steps' token counts in one graph of `max_rows`.
struct Case {
    format: WeightFormat,
    rows: u32,
    cols: u32,
    max_rows: u32,
    last_row_only: bool,
    /// Forces shards no larger than this (bytes).
    max_binding: Option<u64>,
    /// Device to run on (the shared test GPU when `None`).
    gpu: Option<Arc<Gpu>>,
    /// Parts of a concatenated weight, the residual add (crate::mmout).
    out_layout: OutLayout,
    /// SwiGLU on load: x holds gate and up, the input is silu(gate) * up.
    glu: bool,
    /// RMSNorm folded in (a random weight): the input is RMSNorm(x) * w.
    norm: bool,
}

impl Case {
    fn new(format: WeightFormat, rows: u32, cols: u32, max_rows: u32) -> Case {
        Case {
            format,
            rows,
            cols,
            max_rows,
            last_row_only: false,
            max_binding: None,
            gpu: None,
            out_layout: OutLayout::plain(),
            glu: false,
            norm: false,
        }
    }

    /// Returns the number of shards used.
    fn run(&self, steps: &[u32], seed: u64) -> usize {
        let (rows, cols) = (self.rows, self.cols);
        let bytes = random_ggml(self.format, rows, cols, seed);
        let mixed =
            (self.format == WeightFormat::Mixed).then(|| RandomMixed::by_seed(rows, cols, seed));
        let host = if let Some(m) = &mixed {
            m.host(rows)
        } else {
            HostWeight {
                format: self.format,
                rows,
                cols,
                data: HostData::Ggml(&bytes),
            }
        };
        let w_ref = dequantize_packed(&host.pack_rows(0, rows).unwrap());
        let gpu = self.gpu.clone().unwrap_or_else(gpu);
        let w = match self.max_binding {
            Some(m) => GpuWeight::upload_sharded(&gpu, "w", &host, m).unwrap(),
            None => GpuWeight::upload(&gpu, "w", &host).unwrap(),
        };
        let max_rows = self.max_rows as usize;
        let x_len = max_rows * cols as usize;
        let (x, input) = if self.glu {
            // gate and up where a fused gate/up matmul puts them, the
            // kernel's input silu(gate) * up.
            let (bytes, up) = matmul::glu_x(cols, self.max_rows);
            let x = rand_vec(bytes as usize / 4, seed + 1, 3.0);
            let up = up as usize / 4;
            let act = swiglu::reference(&x[..x_len], &x[up..up + x_len]);
            (x, act)
        } else {
            let x = rand_vec(x_len, seed + 1, 1.0);
            (x.clone(), x)
        };
        // RMSNorm's weight around 1, an epsilon large enough to matter.
        let norm_w = rand_vec(cols as usize, seed + 3, 0.5)
            .into_iter()
            .map(|v| 1.0 + v)
            .collect::<Vec<_>>();
        let eps = 1e-2;
        let input = if self.norm {
            input
                .chunks(cols as usize)
                .flat_map(|row| rmsnorm::reference(row, &norm_w, eps))
                .collect()
        } else {
            input
        };
        let out_rows = if self.last_row_only { 1 } else { max_rows };
        let mut g = Graph::new();
        // With a fused layer the mat-vec reads `raw` (gate/up, or x before
        // the norm) and the tiled kernel the layer's output, here made on
        // the host as the layer's own pass makes it in a model.
        let raw = g.input("raw", 4 * x.len() as u64);
        let xt = g.input("x", 4 * input.len() as u64);
        let wt = g.input("norm_w", 4 * u64::from(cols));
        let out_len = (self.out_layout.bytes(rows, out_rows as u32) / 4) as usize;
        let out = g.output("out", 4 * out_len as u64);
        let wr = w.add_to_graph(&mut g, "w");
        let matvec_in = match (self.glu, self.norm) {
            (true, _) => MatVecIn::Glu { gate_up: raw },
            (false, true) => MatVecIn::Norm {
                x: raw,
                weight: wt,
                eps,
            },
            (false, false) => MatVecIn::X,
        };
        let op = MatMul {
            x: if self.glu || self.norm { xt } else { raw },
            w: wr,
            out,
            out_layout: self.out_layout.clone(),
            matvec_in,
            max_rows: self.max_rows,
            last_row_only: self.last_row_only,
        };
        g.push("mm", Op::MatMul(op)).unwrap();
        let mut ex = Executor::new(gpu, g).unwrap();
        ex.write(raw, 0, &f32_bytes(&x));
        ex.write(xt, 0, &f32_bytes(&input));
        ex.write(wt, 0, &f32_bytes(&norm_w));
        let want_all = matmul::reference(&input, &w_ref, rows as usize, cols as usize);
        let t = tol(self.format);
        for &n in steps {
            // NaN where nothing may be written; with the residual add, values to add to.
            let before = if self.out_layout.accumulate {
                rand_vec(out_len, seed + 2 + u64::from(n), 1.0)
            } else {
                vec![f32::NAN; out_len]
            };
            ex.write(out, 0, &f32_bytes(&before));
            ex.run(&Step {
                n_tokens: n,
                ..Default::default()
            })
            .unwrap();
            let what = format!(
                "{} {rows}x{cols} max_rows {} n_tokens {n}{}",
                self.format.name(),
                self.max_rows,
                if self.last_row_only {
                    " last_row_only"
                } else {
                    ""
                }
            );
            let r = rows as usize;
            let y = if self.last_row_only {
                let last = n as usize - 1;
                &want_all[last * r..(last + 1) * r]
            } else {
                &want_all[..n as usize * r]
            };
            let mut want = before.clone();
            mmout::reference_store(&self.out_layout, y, rows, out_rows as u32, &mut want);
            let got = ex.read_f32(out, out_len).unwrap();
            // Nothing beyond the step's tokens (or between parts) is written.
            let untouched = want.iter().zip(&got).filter(|(w, _)| w.is_nan());
            assert!(
                untouched.clone().all(|(_, g)| g.is_nan()),
                "{what}: wrote outside the step's rows"
            );
            let (want, got): (Vec<f32>, Vec<f32>) =
                want.iter().zip(&got).filter(|(w, _)| !w.is_nan()).unzip();
            // Every output was written (with the residual add, every element is compared).
            if !self.out_layout.accumulate {
                assert_eq!(want.len(), y.len(), "{what}");
            }
            assert_close(&what, &got, &want, t, t);
        }
        w.shards.len()
    }
}

#[test]
fn matmul_every_format_and_shape() {
    for (fi, format) in ALL.into_iter().enumerate() {
        let mut cols = vec![32u32, 576, 1536];
        if matches!(format, WeightFormat::F32 | WeightFormat::F16) {
            cols.extend([45, 1001]); // not multiples of 32; odd for F16's half-word padding
        }
        // The GGUF types of weight::kquant share every kernel line but the
        // block decode, so they take fewer shapes (the lavapipe time).
        let kq = weight::kquant::is_kquant(format);
        let (rows, steps): (&[u32], &[u32]) = if kq {
            (&[7, 1757], &[1, 3, 77])
        } else {
            // 3 and 4 tokens: the small tile (one short, one whole).
            (&[1, 7, 1000, 1757], &[1, 3, 4, 64, 77])
        };
        if kq {
            cols.retain(|&c| c != 576);
        }
        for &rows in rows {
            for &c in &cols {
                let c = fit(format, c);
                Case::new(format, rows, c, 77).run(steps, 100 * fi as u64 + u64::from(rows + c));
            }
        }
    }
}

#[test]
fn fused_parts_and_residual_add() {
    // A weight of three linear layers' rows (q, k, v at the default model's
    // ratio, uneven) written as three matrices, and one part added to what
    // out holds (o_proj, down_proj): decode (max_rows 1), a batched decode
    // step of 4 sequences (the small tile alone), prefill, the lm_head's
    // last row, and shards that straddle the parts.
    for (fi, format) in ALL.into_iter().enumerate() {
        let cols = fit(format, 576);
        let seed = 300 + fi as u64;
        let parts = OutLayout::parts(&[576, 192, 193]);
        for max_rows in [1u32, 4, 19] {
            let case = Case {
                out_layout: parts.clone(),
                ..Case::new(format, 961, cols, max_rows)
            };
            case.run(&[1, max_rows], seed);
            let case = Case {
                out_layout: OutLayout::accumulate(),
                ..Case::new(format, 577, cols, max_rows)
            };
            case.run(&[1, max_rows], seed + 50);
        }
        let case = Case {
            out_layout: OutLayout::parts(&[100, 200]),
            last_row_only: true,
            ..Case::new(format, 300, cols, 5)
        };
        case.run(&[5], seed + 100);
        let total = {
            let mixed = RandomMixed::by_seed(961, cols, seed + 150);
            let l = (format == WeightFormat::Mixed).then_some(&*mixed.layout);
            4 * u64::from(Planes::of(format, l, 961, cols).words)
        };
        let case = Case {
            out_layout: parts.clone(),
            max_binding: Some((total / 3 + 4096).next_multiple_of(256)),
            ..Case::new(format, 961, cols, 19)
        };
        assert_eq!(case.run(&[1, 19], seed + 150), 3, "{}", format.name());
    }
}

#[test]
fn swiglu_on_load() {
    // The down projection reading gate and up and adding to the residual,
    // as the graph runs it: every format, decode, a batched decode step
    // and prefill, both x loads.
    for (fi, format) in ALL.into_iter().enumerate() {
        let cols = fit(format, 1536);
        for max_rows in [1u32, 4, 19] {
            let case = Case {
                glu: true,
                out_layout: OutLayout::accumulate(),
                ..Case::new(format, 577, cols, max_rows)
            };
            case.run(&[1, max_rows], 400 + fi as u64);
        }
    }
    // Columns that are not whole blocks: F32 / F16 through matmul_f.
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let case = Case {
            glu: true,
            ..Case::new(format, 70, 45, 9)
        };
        case.run(&[1, 9], 450);
    }
}

#[test]
fn rmsnorm_folded_in() {
    // q/k/v as the graph runs them: RMSNorm folded into a weight of three
    // parts; gate/up; the lm_head's last row. Every format with block
    // kernels, decode, a batched decode step (the small tile, which reads
    // the norm's output as the 8-token tile does) and prefill (8-token
    // tiles with a short last one).
    for (fi, format) in ALL.into_iter().enumerate() {
        let cols = fit(format, 576);
        let seed = 500 + fi as u64;
        for max_rows in [1u32, 4, 19] {
            let case = Case {
                norm: true,
                out_layout: OutLayout::parts(&[576, 192, 193]),
                ..Case::new(format, 961, cols, max_rows)
            };
            case.run(&[1, max_rows], seed);
        }
        let case = Case {
            norm: true,
            last_row_only: true,
            ..Case::new(format, 300, cols, 5)
        };
        case.run(&[1, 5], seed + 50);
    }
    // Rows that are not whole blocks (matmul_f) cannot fold it: an error.
    let gpu = gpu();
    let host = HostWeight {
        format: WeightFormat::F32,
        rows: 4,
        cols: 45,
        data: HostData::F32(&[0.5; 180]),
    };
    assert!(!matmul::folds_norm(WeightFormat::F32, 45));
    let w = GpuWeight::upload(&gpu, "w", &host).unwrap();
    let mut g = Graph::new();
    let x = g.input("x", 4 * 45);
    let wt = g.input("norm_w", 4 * 45);
    let out = g.output("out", 16);
    let op = MatMul {
        x,
        w: w.add_to_graph(&mut g, "w"),
        out,
        out_layout: OutLayout::plain(),
        matvec_in: MatVecIn::Norm {
            x,
            weight: wt,
            eps: 1e-5,
        },
        max_rows: 1,
        last_row_only: false,
    };
    let e = g.push("mm", Op::MatMul(op)).unwrap_err();
    assert!(e.to_string().contains("RMSNorm"), "{e}");
}

#[test]
fn out_parts_are_checked() {
    let gpu = gpu();
    let host_bytes = random_ggml(WeightFormat::Q8_0, 10, 64, 1);
    let host = HostWeight {
        format: WeightFormat::Q8_0,
        rows: 10,
        cols: 64,
        data: HostData::Ggml(&host_bytes),
    };
    let w = GpuWeight::upload(&gpu, "w", &host).unwrap();
    for parts in [vec![3u32, 3], vec![0, 10], vec![1, 2, 3, 4]] {
        let mut g = Graph::new();
        let x = g.input("x", 4 * 64);
        let out = g.output("out", 1 << 16);
        let op = MatMul {
            x,
            w: w.add_to_graph(&mut g, "w"),
            out,
            out_layout: OutLayout::parts(&parts),
            matvec_in: Default::default(),
            max_rows: 1,
            last_row_only: false,
        };
        let e = g.push("mm", Op::MatMul(op)).unwrap_err();
        assert!(e.to_string().contains("out parts"), "{parts:?}: {e}");
    }
}

#[test]
fn matvec_in_decode_graph() {
    // max_rows 1: a decode graph has no tiled call at all.
    for format in ALL {
        for (rows, cols) in [(1u32, 32u32), (7, 576), (1757, 1536), (576, 64)] {
            let cols = fit(format, cols);
            Case::new(format, rows, cols, 1).run(&[1], u64::from(rows * 3 + cols));
        }
    }
}

#[test]
fn last_row_only_reads_the_last_token() {
    for format in ALL {
        let case = Case {
            last_row_only: true,
            ..Case::new(format, 1000, fit(format, 576), 9)
        };
        case.run(&[1, 2, 9], 7);
    }
}

#[test]
fn sharded_weight_matches_unsharded_reference() {
    for format in ALL {
        let (rows, cols) = (1757u32, fit(format, 576));
        // The layout Case::run draws for seed 11.
        let mixed = RandomMixed::by_seed(rows, cols, 11);
        let l = (format == WeightFormat::Mixed).then_some(&*mixed.layout);
        // A limit just above a third of the packed size gives three shards.
        let total = 4 * u64::from(Planes::of(format, l, rows, cols).words);
        let limit = (total / 3 + 4096).next_multiple_of(256);
        assert_eq!(
            weight::shard_rows_of(format, l, rows, cols, limit).len(),
            3,
            "{}",
            format.name()
        );
        let case = Case {
            max_binding: Some(limit),
            ..Case::new(format, rows, cols, 70)
        };
        assert_eq!(case.run(&[1, 5, 70], 11), 3);
        let case = Case {
            max_binding: Some(limit),
            last_row_only: true,
            ..Case::new(format, rows, cols, 4)
        };
        case.run(&[4], 12);
    }
}

#[test]
fn portable_kernels_without_subgroups() {
    // The test GPU (lavapipe) has subgroups, so the block kernels run
    // matmul_q_sg.wgsl; a device that reports none gets matmul_q.wgsl.
    let mut plain = Gpu::new().expect("test GPU");
    let Some(g) = Arc::get_mut(&mut plain) else {
        panic!("fresh Gpu is shared")
    };
    g.caps.subgroups = false;
    // Of weight::kquant's types: odd widths with half-block scales, a 6-bit
    // width with i8 scales, and the table (they differ only in the decode).
    let portable = ALL.into_iter().filter(|&f| {
        !weight::kquant::is_kquant(f)
            || matches!(
                f,
                WeightFormat::Q3_K | WeightFormat::Q6_K | WeightFormat::IQ4_XS
            )
    });
    for format in portable {
        for (rows, cols) in [(7u32, 576u32), (1000, 32), (1757, 1536)] {
            let cols = fit(format, cols);
            let case = Case {
                gpu: Some(plain.clone()),
                ..Case::new(format, rows, cols, 77)
            };
            case.run(&[1, 3, 77], u64::from(rows + cols));
        }
        let case = Case {
            gpu: Some(plain.clone()),
            last_row_only: true,
            ..Case::new(format, 300, fit(format, 64), 5)
        };
        case.run(&[5], 9);
        // lib/xload.wgsl's SwiGLU on load and RMSNorm weight, parts and
        // the residual add.
        for (glu, norm, out_layout) in [
            (true, false, OutLayout::accumulate()),
            (false, true, OutLayout::parts(&[100, 60, 140])),
        ] {
            let case = Case {
                gpu: Some(plain.clone()),
                glu,
                norm,
                out_layout,
                ..Case::new(format, 300, fit(format, 576), 19)
            };
            case.run(&[1, 19], 10);
        }
    }
}

#[test]
fn mixed_dequantizes_as_d_q_plus_m() {
    let m = RandomMixed::by_seed(3, 576, 2);
    let p = m.host(3).pack_rows(1, 2).unwrap();
    let w = dequantize_packed(&p);
    let l = &m.layout;
    let (ng, rw) = (l.n_groups() as usize, l.row_words() as usize);
    for (r, row) in w.chunks_exact(576).enumerate() {
        let src = r + 1;
        for (c, &v) in row.iter().enumerate() {
            let g = c / l.group as usize;
            let bits = u32::from(l.bits[g]);
            let in_group = c - g * l.group as usize;
            let at = src * rw + l.group_offset(g as u32) as usize + in_group / 32 * bits as usize;
            let q = weight::mixed_code(&m.codes[at..], bits, in_group % 32) as f32;
            let d = f16::from_bits(m.scales[src * ng + g]).to_f32();
            let mn = f16::from_bits(m.mins[src * ng + g]).to_f32();
            assert_eq!(v, d * q + mn, "row {r} col {c}");
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let bad = pack_ggml(WeightFormat::Q4_0, 1, 48, &[0; 27]);
    assert!(matches!(bad, Err(EngineError::Shape { .. })), "{bad:?}");
    assert!(matches!(
        pack_ggml(WeightFormat::Q8_0, 2, 32, &[0; 34]),
        Err(EngineError::Shape { .. })
    ));
    assert!(matches!(
        pack_f32(WeightFormat::Q4_1, 1, 32, &[0.0; 32]),
        Err(EngineError::Shape { .. })
    ));

    let gpu = gpu();
    let v = vec![0.0f32; 64 * 8];
    let host = HostWeight {
        format: WeightFormat::F32,
        rows: 8,
        cols: 64,
        data: HostData::F32(&v),
    };
    let w = GpuWeight::upload(&gpu, "w", &host).unwrap();
    let mut g = Graph::new();
    let x = g.input("x", 4 * 64 * 2 - 4); // one float short of 2 tokens
    let out = g.output("out", 4 * 8 * 2);
    let wr = w.add_to_graph(&mut g, "w");
    let op = MatMul {
        x,
        w: wr.clone(),
        out,
        out_layout: Default::default(),
        matvec_in: Default::default(),
        max_rows: 2,
        last_row_only: false,
    };
    let e = g.push("mm", Op::MatMul(op));
    assert!(
        matches!(e, Err(EngineError::Shape { op: "matmul", .. })),
        "{e:?}"
    );
    let op = MatMul {
        x,
        w: wr,
        out,
        out_layout: Default::default(),
        matvec_in: Default::default(),
        max_rows: 1,
        last_row_only: false,
    };
    g.push("mm", Op::MatMul(op)).unwrap();
}

#[test]
fn matmul_shaders_translate() {
    use naga::back::{hlsl, msl, spv};
    for s in matmul::shaders() {
        let (module, info) = s.validate().unwrap_or_else(|e| panic!("{}: {e}", s.name));
        // Every override has a default; the backends need them resolved.
        let consts = naga::back::PipelineConstants::default();
        let (module, info) =
            naga::back::pipeline_constants::process_overrides(&module, &info, None, &consts)
                .unwrap_or_else(|e| panic!("{}: overrides: {e}", s.name));
        spv::write_vec(&module, &info, &spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{}: spir-v: {e}", s.name));
        msl::write_string(
            &module,
            &info,
            &msl::Options::default(),
            &msl::PipelineOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{}: msl: {e}", s.name));
        let mut out = String::new();
        hlsl::Writer::new(
            &mut out,
            &hlsl::Options::default(),
            &hlsl::PipelineOptions::default(),
        )
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{}: hlsl: {e}", s.name));
    }
}
