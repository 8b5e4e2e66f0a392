//! The integer path (PrefixQuant's W8A8 / W4A8 / W4A4): `act_quant` against
//! its CPU reference bit for bit, `rmsnorm_quant` against `rmsnorm` +
//! `act_quant` bit for bit, and `matmul_int` (mat-vec and tiled, every
//! quantized weight format, sharded weights, `last_row_only`) against the
//! dequantized weight times the dequantized activations.

use std::sync::Arc;

use lamina_engine::act::{self, ActBits, ActScale};
use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::mmout::{self, OutLayout};
use lamina_engine::ops::act_quant::{self, ActQuant};
use lamina_engine::ops::matmul_int::{self, MatMulInt};
use lamina_engine::ops::rmsnorm::RmsNorm;
use lamina_engine::ops::rmsnorm_quant::{self, RmsNormQuant};
use lamina_engine::weight::{
    GpuWeight, HostData, HostWeight, MixedLayout, Planes, Shard, WeightRef, dequantize_packed,
};
use lamina_engine::{EngineError, Executor, WeightFormat};
use lamina_tests::{RandomMixed, assert_close, f32_bytes, gpu, rand_vec, random_ggml};

/// Error budget (absolute, and the same relative part) of the GPU result
/// against the f64 reference, for outputs of magnitude up to ~10 over up to
/// 1536 columns. The integer dots are exact; what is left is one f32
/// rounding per group's two terms and the f32 sum over groups: the worst
/// errors seen on lavapipe are ~5e-7.
const TOL: f32 = 1e-4;

const FORMATS: [WeightFormat; 4] = [
    WeightFormat::Q8_0,
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Mixed,
];

/// x (f32) -> act_quant -> matmul_int in one graph of `max_rows` tokens,
/// checked at each step's token count.
struct Case {
    format: WeightFormat,
    rows: u32,
    cols: u32,
    max_rows: u32,
    last_row_only: bool,
    bits: ActBits,
    scale: ActScale,
    /// Mixed: group size and the widths its groups cycle through.
    mixed: (u32, &'static [u8]),
    /// Forces shards no larger than this (bytes).
    max_binding: Option<u64>,
    /// Parts of a concatenated weight, the residual add (crate::mmout).
    out_layout: OutLayout,
}

impl Case {
    fn new(format: WeightFormat, rows: u32, cols: u32, max_rows: u32) -> Case {
        Case {
            format,
            rows,
            cols,
            max_rows,
            last_row_only: false,
            bits: ActBits::Int8,
            scale: ActScale::Dynamic,
            mixed: (64, &[2, 3, 4]),
            max_binding: None,
            out_layout: OutLayout::plain(),
        }
    }

    /// Returns the number of shards used.
    fn run(&self, steps: &[u32], seed: u64) -> usize {
        let (rows, cols) = (self.rows, self.cols);
        let bytes = random_ggml(self.format, rows, cols, seed);
        let mixed = (self.format == WeightFormat::Mixed)
            .then(|| RandomMixed::new(rows, cols, self.mixed.0, self.mixed.1, seed));
        let host = match &mixed {
            Some(m) => m.host(rows),
            None => HostWeight {
                format: self.format,
                rows,
                cols,
                data: HostData::Ggml(&bytes),
            },
        };
        let w_ref = dequantize_packed(&host.pack_rows(0, rows).unwrap());
        let gpu = gpu();
        let w = match self.max_binding {
            Some(m) => GpuWeight::upload_sharded(&gpu, "w", &host, m).unwrap(),
            None => GpuWeight::upload(&gpu, "w", &host).unwrap(),
        };
        let (m, c, r) = (self.max_rows as usize, cols as usize, rows as usize);
        let x = rand_vec(m * c, seed + 1, 1.0);
        let out_rows = if self.last_row_only { 1 } else { m };
        let mut g = Graph::new();
        let xt = g.input("x", 4 * (m * c) as u64);
        let codes = g.output("codes", (m * c) as u64);
        let scales = g.output("scales", 4 * m as u64);
        let out_len = (self.out_layout.bytes(rows, out_rows as u32) / 4) as usize;
        let out = g.output("out", 4 * out_len as u64);
        let wr = w.add_to_graph(&mut g, "w");
        let quant = ActQuant {
            x: xt,
            codes,
            scales,
            cols,
            bits: self.bits,
            scale: self.scale,
            max_rows: self.max_rows,
        };
        g.push("aq", Op::ActQuant(quant)).unwrap();
        let op = MatMulInt {
            x: codes,
            x_scales: scales,
            w: wr,
            out,
            out_layout: self.out_layout.clone(),
            max_rows: self.max_rows,
            last_row_only: self.last_row_only,
        };
        g.push("mm", Op::MatMulInt(op)).unwrap();
        let mut ex = Executor::new(gpu, g).unwrap();
        ex.write(xt, 0, &f32_bytes(&x));
        for &n in steps {
            let what = format!(
                "{} {rows}x{cols} A{} {:?} max_rows {m} n_tokens {n}{}",
                self.format.name(),
                self.bits.bits(),
                self.scale,
                if self.last_row_only {
                    " last_row_only"
                } else {
                    ""
                }
            );
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
            let n = n as usize;
            let (q_ref, s_ref) = act_quant::reference(&x[..n * c], c, self.bits, self.scale);
            check_codes(&what, &ex, codes, scales, &q_ref, &s_ref);
            let y = matmul_int::reference(&q_ref, &s_ref, &w_ref, r, c);
            let y = if self.last_row_only {
                &y[(n - 1) * r..]
            } else {
                &y[..]
            };
            let mut want = before.clone();
            mmout::reference_store(&self.out_layout, y, rows, out_rows as u32, &mut want);
            let got = ex.read_f32(out, out_len).unwrap();
            // Nothing beyond the step's tokens (or between parts) is written.
            let mut untouched = want.iter().zip(&got).filter(|(w, _)| w.is_nan());
            assert!(
                untouched.all(|(_, g)| g.is_nan()),
                "{what}: wrote outside the step's rows"
            );
            let (want, got): (Vec<f32>, Vec<f32>) =
                want.iter().zip(&got).filter(|(w, _)| !w.is_nan()).unzip();
            // Every output was written (with the residual add, every element is compared).
            if !self.out_layout.accumulate {
                assert_eq!(want.len(), y.len(), "{what}");
            }
            assert_close(&what, &got, &want, TOL, TOL);
        }
        w.shards.len()
    }
}

/// The kernel's codes and scales equal the reference's bit for bit.
fn check_codes(what: &str, ex: &Executor, codes: usize, scales: usize, q: &[i8], s: &[f32]) {
    let words = act::pack_codes(q);
    let got: Vec<u32> = ex
        .read(codes, 4 * words.len() as u64)
        .unwrap()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(i) = (0..words.len()).find(|&i| got[i] != words[i]) {
        panic!(
            "{what}: code word {i}: got {:08x} want {:08x} (x codes {:?})",
            got[i],
            words[i],
            &q[4 * i..4 * i + 4]
        );
    }
    let got = ex.read_f32(scales, s.len()).unwrap();
    for (i, (g, w)) in got.iter().zip(s).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: scale {i}: got {g} want {w}"
        );
    }
}

#[test]
fn every_format_and_awkward_shape() {
    for (fi, format) in FORMATS.into_iter().enumerate() {
        for rows in [1u32, 7, 65, 300] {
            for cols in [32u32, 96, 576, 1536] {
                let seed = 100 * fi as u64 + u64::from(rows + cols);
                Case::new(format, rows, cols, 17).run(&[1, 3, 17], seed);
            }
        }
    }
}

#[test]
fn activation_widths_and_static_scales() {
    let modes = [
        (ActBits::Int8, ActScale::Static(1.0 / 100.0)),
        (ActBits::Int4, ActScale::Dynamic),
        // Small enough that the largest |x| clamp at 7.
        (ActBits::Int4, ActScale::Static(0.1)),
    ];
    for format in FORMATS {
        for (bits, scale) in modes {
            let case = Case {
                bits,
                scale,
                ..Case::new(format, 65, 576, 17)
            };
            case.run(&[1, 17], 3);
        }
    }
}

#[test]
fn decode_graph_and_last_row_only() {
    for format in FORMATS {
        // max_rows 1: a decode graph has no tiled call at all.
        Case::new(format, 300, 576, 1).run(&[1], 5);
        let case = Case {
            last_row_only: true,
            ..Case::new(format, 300, 1536, 9)
        };
        case.run(&[1, 2, 9], 6);
    }
}

#[test]
fn mixed_every_width_in_one_matrix() {
    // Groups of 128 (vec4 loads) and 32 / 96 (word loads, short last
    // groups), widths 1..8 side by side: every class of the kernels.
    let all: &'static [u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
    for (group, cols) in [(128u32, 1536u32), (96, 576), (32, 288)] {
        let case = Case {
            mixed: (group, all),
            ..Case::new(WeightFormat::Mixed, 65, cols, 17)
        };
        case.run(&[1, 17], u64::from(group));
        let case = Case {
            mixed: (group, all),
            bits: ActBits::Int4,
            last_row_only: true,
            ..Case::new(WeightFormat::Mixed, 7, cols, 3)
        };
        case.run(&[3], 2);
    }
}

#[test]
fn fused_parts_and_residual_add() {
    // Three linear layers' rows in one weight, written as three matrices
    // (decode, prefill, across shards), and the residual add.
    for format in FORMATS {
        let parts = OutLayout::parts(&[64, 32, 33]);
        for max_rows in [1u32, 17] {
            let case = Case {
                out_layout: parts.clone(),
                ..Case::new(format, 129, 576, max_rows)
            };
            case.run(&[1, max_rows], 21);
            let case = Case {
                out_layout: OutLayout::accumulate(),
                ..Case::new(format, 65, 576, max_rows)
            };
            case.run(&[1, max_rows], 22);
        }
        let m = RandomMixed::new(129, 576, 64, &[2, 3, 4], 23);
        let l = (format == WeightFormat::Mixed).then_some(&*m.layout);
        let total = 4 * u64::from(Planes::of(format, l, 129, 576).words);
        let case = Case {
            out_layout: parts.clone(),
            max_binding: Some((total / 3 + 4096).next_multiple_of(256)),
            ..Case::new(format, 129, 576, 17)
        };
        assert_eq!(case.run(&[1, 17], 23), 3, "{}", format.name());
    }
}

#[test]
fn sharded_weights_match_unsharded_reference() {
    for format in FORMATS {
        let (rows, cols) = (300u32, 576u32);
        let m = RandomMixed::new(rows, cols, 64, &[2, 3, 4], 0);
        let l = (format == WeightFormat::Mixed).then_some(&*m.layout);
        let total = 4 * u64::from(Planes::of(format, l, rows, cols).words);
        let limit = (total / 3 + 4096).next_multiple_of(256);
        let case = Case {
            max_binding: Some(limit),
            ..Case::new(format, rows, cols, 17)
        };
        assert_eq!(case.run(&[1, 17], 11), 3, "{}", format.name());
    }
}

/// Quantizes `x` (`rows` rows of `cols`) on the GPU: codes and scales.
fn quantize_on_gpu(x: &[f32], cols: u32, bits: ActBits, scale: ActScale) -> (Vec<u32>, Vec<f32>) {
    let rows = (x.len() / cols as usize) as u32;
    let mut g = Graph::new();
    let xt = g.input("x", 4 * x.len() as u64);
    let codes = g.output("codes", x.len() as u64);
    let scales = g.output("scales", 4 * u64::from(rows));
    let op = ActQuant {
        x: xt,
        codes,
        scales,
        cols,
        bits,
        scale,
        max_rows: rows,
    };
    g.push("aq", Op::ActQuant(op)).unwrap();
    let mut ex = Executor::new(gpu(), g).unwrap();
    ex.write(xt, 0, &f32_bytes(x));
    ex.run(&Step {
        n_tokens: rows,
        ..Default::default()
    })
    .unwrap();
    let words = ex
        .read(codes, x.len() as u64)
        .unwrap()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (words, ex.read_f32(scales, rows as usize).unwrap())
}

#[test]
fn act_quant_matches_reference_exactly() {
    for bits in [ActBits::Int8, ActBits::Int4] {
        for scale in [ActScale::Dynamic, ActScale::Static(0.0123)] {
            for (rows, cols) in [(1u32, 32u32), (7, 96), (300, 576), (3, 1536)] {
                let mut x = rand_vec((rows * cols) as usize, u64::from(rows * cols), 2.0);
                // A row of zeros (dynamic: scale 0, codes 0) and a spike.
                if rows > 1 {
                    x[cols as usize..2 * cols as usize].fill(0.0);
                }
                x[0] = 50.0;
                let what = format!("A{} {scale:?} {rows}x{cols}", bits.bits());
                let (q, s) = act_quant::reference(&x, cols as usize, bits, scale);
                let (got, got_s) = quantize_on_gpu(&x, cols, bits, scale);
                let want = act::pack_codes(&q);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g, w, "{what}: word {i}: got {g:08x} want {w:08x}");
                }
                for (i, (g, w)) in got_s.iter().zip(&s).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{what}: scale {i}: {g} vs {w}");
                }
            }
        }
    }
}

#[test]
fn act_quant_rounds_half_to_even_and_clamps() {
    // Scale 0.5: x / scale = 0.5, 1.5, 2.5, -2.5, -0.5, 3.5, 200, -200, ...
    let mut x = vec![0.25f32, 0.75, 1.25, -1.25, -0.25, 1.75, 100.0, -100.0];
    x.resize(32, 0.0);
    let (q, s) = act_quant::reference(&x, 32, ActBits::Int8, ActScale::Static(0.5));
    assert_eq!(&q[..8], &[0, 2, 2, -2, 0, 4, 127, -127]);
    assert_eq!(s, vec![0.5]);
    let (q4, _) = act_quant::reference(&x, 32, ActBits::Int4, ActScale::Static(0.5));
    assert_eq!(&q4[..8], &[0, 2, 2, -2, 0, 4, 7, -7]);
    for (bits, want) in [(ActBits::Int8, &q), (ActBits::Int4, &q4)] {
        let (got, got_s) = quantize_on_gpu(&x, 32, bits, ActScale::Static(0.5));
        assert_eq!(got, act::pack_codes(want), "A{}", bits.bits());
        assert_eq!(got_s, vec![0.5]);
    }
    // Codes pack lane 0 into the low byte, as i8.
    assert_eq!(act::pack_codes(&[1, -1, 127, -127]), vec![0x817f_ff01]);
}

/// A weight reference with one shard in its planes, for check() tests.
fn weight_ref(format: WeightFormat, rows: u32, cols: u32, mixed: Option<MixedLayout>) -> WeightRef {
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

#[test]
fn bad_shapes_and_formats_are_errors() {
    let mut g = Graph::new();
    g.input("w", 1 << 20);
    let x = g.input("x", 64 * 4);
    let xs = g.input("xs", 4 * 4);
    let out = g.output("out", 4 * 4 * 8);
    let xf = g.input("xf", 4 * 4 * 32);
    let mm = |w: WeightRef, x_bytes_rows: u32| MatMulInt {
        x,
        x_scales: xs,
        w,
        out,
        out_layout: Default::default(),
        max_rows: x_bytes_rows,
        last_row_only: false,
    };
    let expect_err = |g: &mut Graph, op: Op, why: &str| {
        let e = g.push("bad", op);
        assert!(matches!(e, Err(EngineError::Shape { .. })), "{why}: {e:?}");
    };
    // Float weights have no integer path.
    for f in [WeightFormat::F32, WeightFormat::F16] {
        expect_err(
            &mut g,
            Op::MatMulInt(mm(weight_ref(f, 8, 64, None), 4)),
            f.name(),
        );
    }
    // x holds 4 tokens of 64 codes, not 5; the scales 4, not 5.
    let q = weight_ref(WeightFormat::Q4_0, 8, 64, None);
    expect_err(&mut g, Op::MatMulInt(mm(q.clone(), 5)), "x too small");
    g.push("ok", Op::MatMulInt(mm(q.clone(), 4))).unwrap();
    // Planes that are not the format's layout.
    let mut bad = q.clone();
    bad.shards[0].planes = Planes::layout(WeightFormat::Q8_0, 8, 64);
    expect_err(&mut g, Op::MatMulInt(mm(bad, 4)), "wrong planes");
    // Columns that are not whole blocks.
    expect_err(
        &mut g,
        Op::MatMulInt(mm(weight_ref(WeightFormat::Q8_0, 8, 48, None), 4)),
        "cols 48",
    );
    // A Mixed group wide enough to overflow the i32 dot.
    let wide =
        MixedLayout::new(matmul_int::MAX_GROUP.next_multiple_of(32) + 32, 64, vec![8]).unwrap();
    expect_err(
        &mut g,
        Op::MatMulInt(mm(weight_ref(WeightFormat::Mixed, 8, 64, Some(wide)), 4)),
        "group too wide",
    );
    let aq = |cols: u32, scale: ActScale, max_rows: u32| ActQuant {
        x: xf,
        codes: x,
        scales: xs,
        cols,
        bits: ActBits::Int8,
        scale,
        max_rows,
    };
    g.push("ok", Op::ActQuant(aq(32, ActScale::Static(0.1), 4)))
        .unwrap();
    for (cols, scale, rows, why) in [
        (48, ActScale::Dynamic, 4, "cols 48"),
        (32, ActScale::Static(0.0), 4, "scale 0"),
        (32, ActScale::Static(f32::NAN), 4, "scale NaN"),
        (32, ActScale::Static(-1.0), 4, "negative scale"),
        (32, ActScale::Dynamic, 5, "scales too small"),
        (32, ActScale::Dynamic, 0, "no rows"),
    ] {
        expect_err(&mut g, Op::ActQuant(aq(cols, scale, rows)), why);
    }
    let wt = g.input("norm weight", 4 * 32);
    let rq = |dim: u32, scale: ActScale| RmsNormQuant {
        x: xf,
        weight: wt,
        codes: x,
        scales: xs,
        dim,
        eps: 1e-5,
        bits: ActBits::Int4,
        scale,
        max_rows: 4,
    };
    g.push("ok", Op::RmsNormQuant(rq(32, ActScale::Dynamic)))
        .unwrap();
    expect_err(
        &mut g,
        Op::RmsNormQuant(rq(16, ActScale::Dynamic)),
        "dim 16",
    );
    expect_err(
        &mut g,
        Op::RmsNormQuant(rq(64, ActScale::Dynamic)),
        "weight too small",
    );
    expect_err(
        &mut g,
        Op::RmsNormQuant(rq(32, ActScale::Static(f32::INFINITY))),
        "scale inf",
    );
}

#[test]
fn rmsnorm_quant_equals_rmsnorm_then_act_quant() {
    let modes = [
        (ActBits::Int8, ActScale::Dynamic),
        (ActBits::Int8, ActScale::Static(0.02)),
        (ActBits::Int4, ActScale::Dynamic),
        (ActBits::Int4, ActScale::Static(0.3)),
    ];
    for (dim, max_rows) in [(32u32, 1u32), (576, 7), (1536, 17)] {
        let (d, m) = (dim as usize, max_rows as usize);
        let mut x = rand_vec(m * d, u64::from(dim), 3.0);
        x[0] = 40.0; // an outlier channel
        let w = rand_vec(d, 9, 2.0);
        for (bits, scale) in modes {
            let mut g = Graph::new();
            let xt = g.input("x", 4 * (m * d) as u64);
            let wt = g.input("w", 4 * d as u64);
            let normed = g.intermediate("normed", 4 * (m * d) as u64);
            let (c1, s1) = (g.output("c1", (m * d) as u64), g.output("s1", 4 * m as u64));
            let (c2, s2) = (g.output("c2", (m * d) as u64), g.output("s2", 4 * m as u64));
            let eps = 1e-5;
            let norm = RmsNorm {
                x: xt,
                weight: wt,
                out: normed,
                dim,
                eps,
                max_rows,
            };
            g.push("norm", Op::RmsNorm(norm)).unwrap();
            let quant = ActQuant {
                x: normed,
                codes: c1,
                scales: s1,
                cols: dim,
                bits,
                scale,
                max_rows,
            };
            g.push("quant", Op::ActQuant(quant)).unwrap();
            let fused = RmsNormQuant {
                x: xt,
                weight: wt,
                codes: c2,
                scales: s2,
                dim,
                eps,
                bits,
                scale,
                max_rows,
            };
            g.push("fused", Op::RmsNormQuant(fused)).unwrap();
            let mut ex = Executor::new(gpu(), g).unwrap();
            ex.write(xt, 0, &f32_bytes(&x));
            ex.write(wt, 0, &f32_bytes(&w));
            for n in [1, max_rows] {
                let what = format!("dim {dim} A{} {scale:?} n_tokens {n}", bits.bits());
                ex.run(&Step {
                    n_tokens: n,
                    ..Default::default()
                })
                .unwrap();
                let n = n as usize;
                let words = |t| ex.read(t, (n * d) as u64).unwrap();
                assert_eq!(words(c1), words(c2), "{what}: codes");
                let (a, b) = (ex.read_f32(s1, n).unwrap(), ex.read_f32(s2, n).unwrap());
                assert_eq!(a, b, "{what}: scales");
                // Against the CPU (another summation order): codes within one
                // step, scales within a few ulps.
                let (q, s) = rmsnorm_quant::reference(&x[..n * d], &w, eps, bits, scale);
                assert_close(&what, &b, &s, 0.0, 1e-5);
                let got = words(c2);
                for (i, (&g, &want)) in got.iter().zip(&q).enumerate() {
                    assert!(
                        (i32::from(g as i8) - i32::from(want)).abs() <= 1,
                        "{what}: code {i}: got {} want {want}",
                        g as i8
                    );
                }
            }
        }
    }
}
