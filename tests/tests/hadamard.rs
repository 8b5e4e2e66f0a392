//! The Hadamard op against its CPU reference on the test GPU: head-sized
//! chunks several to a tile, whole rows with a K factor, chunks too large
//! for one tile (two passes), both directions, steps shorter than the graph;
//! RoPE fused with the head-wise transform.

use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::ops::hadamard::{self, Hadamard};
use lamina_engine::ops::rope::{self, RopeStyle};
use lamina_engine::{EngineError, Executor};
use lamina_tests::{assert_close, f32_bytes, gpu, rand_vec};

/// The GPU adds in the CPU's order (the same butterflies, then the K sums
/// in order), so only fused multiply-adds or a different rounding of the
/// scale could separate them: a few ulp of the output's magnitude. Inputs
/// are in [-1, 1), outputs O(1).
const ATOL: f32 = 1e-6;
const RTOL: f32 = 1e-5;

/// Runs `n_tokens` rows of a `[max_rows, width]` graph; returns the whole
/// tensor (rows past the step must be untouched) and the expectation.
fn run(n: u32, width: u32, max_rows: u32, n_tokens: u32, transposed: bool) -> (Vec<f32>, Vec<f32>) {
    let len = (width * max_rows) as usize;
    let x = rand_vec(len, u64::from(n * 31 + width + n_tokens), 1.0);
    let mut g = Graph::new();
    let xt = g.output("x", 4 * len as u64);
    let op = Hadamard {
        x: xt,
        n,
        width,
        max_rows,
        transposed,
    };
    g.push("hadamard", Op::Hadamard(op)).unwrap();
    let mut ex = Executor::new(gpu(), g).unwrap();
    ex.write(xt, 0, &f32_bytes(&x));
    let step = Step {
        n_tokens,
        ..Default::default()
    };
    ex.run(&step).unwrap();
    let got = ex.read_f32(xt, len).unwrap();
    let done = (width * n_tokens) as usize;
    let mut want = hadamard::reference(&x[..done], n as usize, transposed).unwrap();
    want.extend_from_slice(&x[done..]);
    (got, want)
}

#[test]
fn hadamard_matches_reference() {
    let cases = [
        // (n, width, max_rows, n_tokens)
        (64u32, 576u32, 17u32, 17u32), // 9 heads of 64, 16 chunks a tile
        (64, 576, 20, 3),
        (64, 192, 5, 1),
        (1536, 1536, 4, 3), // 12 * 128
        (576, 576, 17, 17), // 36 * 16
        (576, 1152, 3, 1),
        (12, 36, 7, 7),     // K only, 85 chunks a tile
        (144, 288, 18, 17), // 36 * 4
        (20, 60, 3, 2),
        (28, 56, 2, 1),
        (2048, 2048, 2, 1),
        (4096, 4096, 3, 2),
        (8192, 8192, 2, 2),   // two passes, K = 1
        (14336, 14336, 2, 1), // two passes, 28 * 512
        (4608, 9216, 3, 3),   // two passes, 36 * 128
    ];
    for (n, width, max_rows, n_tokens) in cases {
        for transposed in [false, true] {
            let (got, want) = run(n, width, max_rows, n_tokens, transposed);
            let what = format!(
                "hadamard n {n} width {width} rows {n_tokens}/{max_rows} transposed {transposed}"
            );
            assert_close(&what, &got, &want, ATOL, RTOL);
        }
    }
}

#[test]
fn forward_then_transposed_is_identity() {
    let (n, width, rows) = (1536u32, 3072u32, 3u32);
    let len = (width * rows) as usize;
    let x = rand_vec(len, 5, 1.0);
    let mut g = Graph::new();
    let xt = g.output("x", 4 * len as u64);
    for transposed in [false, true] {
        let op = Hadamard {
            x: xt,
            n,
            width,
            max_rows: rows,
            transposed,
        };
        g.push("hadamard", Op::Hadamard(op)).unwrap();
    }
    let mut ex = Executor::new(gpu(), g).unwrap();
    ex.write(xt, 0, &f32_bytes(&x));
    let step = Step {
        n_tokens: rows,
        ..Default::default()
    };
    ex.run(&step).unwrap();
    let got = ex.read_f32(xt, len).unwrap();
    assert_close("H then Hᵀ", &got, &x, 1e-5, 1e-5);
}

#[test]
fn bad_shapes_are_errors() {
    let mut g = Graph::new();
    let xt = g.output("x", 4 * 960 * 4);
    for (n, width, max_rows) in [
        (960u32, 960u32, 4u32), // 15 * 64: no H_15
        (11008, 11008, 1),      // 43 * 256
        (0, 960, 4),
        (64, 960 + 32, 1), // width not a multiple of n
        (64, 960, 5),      // more rows than the tensor holds
    ] {
        let op = Hadamard {
            x: xt,
            n,
            width,
            max_rows,
            transposed: false,
        };
        let err = g.push("hadamard", Op::Hadamard(op));
        assert!(
            matches!(err, Err(EngineError::Shape { .. })),
            "n {n} width {width} rows {max_rows}: {err:?}"
        );
    }
}

/// RoPE's own error against its reference (tests/tests/ops_small.rs), for
/// |x| <= 1: an absolute floor plus a share of the position.
const ROPE_ATOL: f32 = 2e-6;
const ROPE_ATOL_PER_POS: f32 = 2.4e-7;

/// Runs `RopeHadamard`, and `Rope` then `Hadamard` (three dispatches) on
/// the same queries (`heads`) and keys (`heads / 2`, at least 1); returns
/// (fused, split ops, CPU rope::reference + transform), queries then keys.
fn run_rope_hadamard(
    n_tokens: u32,
    max_rows: u32,
    heads: u32,
    hd: u32,
    pos: u32,
    style: RopeStyle,
    scaled: bool,
) -> [Vec<f32>; 3] {
    let kv = (heads / 2).max(1);
    let len = |h: u32| (max_rows * h * hd) as usize;
    let q = rand_vec(len(heads), u64::from(hd + heads + pos), 1.0);
    let k = rand_vec(len(kv), u64::from(hd + heads + pos) + 1, 1.0);
    // Frequency divisors from 1 up, as Llama 3's scaling has them.
    let factors: Vec<f32> = if scaled {
        (0..hd / 2).map(|j| 1.0 + j as f32 / 3.0).collect()
    } else {
        Vec::new()
    };
    let mut g = Graph::new();
    let ft = scaled.then(|| g.input("factors", 2 * u64::from(hd)));
    let rope = |q, k| rope::Rope {
        q,
        n_heads: heads,
        k,
        n_kv_heads: kv,
        head_dim: hd,
        theta: 10000.0,
        style,
        max_rows,
        freq_factors: ft,
    };
    let fused = [
        g.output("fused_q", 4 * len(heads) as u64),
        g.output("fused_k", 4 * len(kv) as u64),
    ];
    let split = [
        g.output("split_q", 4 * len(heads) as u64),
        g.output("split_k", 4 * len(kv) as u64),
    ];
    let op = rope::RopeHadamard {
        rope: rope(fused[0], fused[1]),
    };
    g.push("rope_hadamard", Op::RopeHadamard(op)).unwrap();
    g.push("rope", Op::Rope(rope(split[0], split[1]))).unwrap();
    for (x, h) in [(split[0], heads), (split[1], kv)] {
        let had = Hadamard {
            x,
            n: hd,
            width: h * hd,
            max_rows,
            transposed: false,
        };
        g.push("hadamard", Op::Hadamard(had)).unwrap();
    }
    let mut ex = Executor::new(gpu(), g).unwrap();
    for (t, x) in fused.iter().chain(&split).zip([&q, &k, &q, &k]) {
        ex.write(*t, 0, &f32_bytes(x));
    }
    if let Some(t) = ft {
        ex.write(t, 0, &f32_bytes(&factors));
    }
    let step = Step {
        n_tokens,
        pos,
        ..Default::default()
    };
    ex.run(&step).unwrap();
    let mut want = Vec::new();
    for (x, h) in [(&q, heads), (&k, kv)] {
        let done = (n_tokens * h * hd) as usize;
        let mut w = x.clone();
        rope::reference(
            &mut w[..done],
            h as usize,
            hd as usize,
            10000.0,
            &factors,
            pos,
            style,
        );
        hadamard::transform(&mut w[..done], hd as usize).unwrap();
        want.extend(w);
    }
    let read = |[q, k]: [usize; 2]| {
        let mut v = ex.read_f32(q, len(heads)).unwrap();
        v.extend(ex.read_f32(k, len(kv)).unwrap());
        v
    };
    [read(fused), read(split), want]
}

#[test]
fn rope_hadamard_is_rope_then_hadamard() {
    let cases = [
        // (tokens, max_rows, heads, head_dim, pos)
        (1u32, 1u32, 9u32, 64u32, 0u32),
        (3, 5, 9, 64, 17),
        (17, 17, 2, 128, 1000),
        (7, 9, 3, 256, 5),
        (5, 5, 4, 2, 3),
        (1, 4, 32, 128, 8191),
    ];
    for (n, max_rows, heads, hd, pos) in cases {
        for (style, scaled) in [
            (RopeStyle::Interleaved, false),
            (RopeStyle::Neox, false),
            (RopeStyle::Interleaved, true),
        ] {
            let [fused, split, want] =
                run_rope_hadamard(n, max_rows, heads, hd, pos, style, scaled);
            let what = format!(
                "rope_hadamard {n}/{max_rows} x {heads} x {hd} pos {pos} {style:?} scaled {scaled}"
            );
            // Same angles, same butterflies: equal to the two ops (exactly
            // on lavapipe; a compiler may still contract differently).
            assert_close(&format!("{what} vs two ops"), &fused, &split, ATOL, RTOL);
            // The rotation mixes d RoPE errors with weights ±1/sqrt(d).
            let last = (pos + n - 1) as f32;
            let atol = (ROPE_ATOL + ROPE_ATOL_PER_POS * last) * (hd as f32).sqrt();
            assert_close(&format!("{what} vs CPU"), &fused, &want, atol, RTOL);
        }
    }
}

#[test]
fn rope_hadamard_rejects_other_head_dims() {
    let mut g = Graph::new();
    let xt = g.output("x", 4 * 4 * 512);
    let kt = g.output("k", 4 * 2 * 512);
    for hd in [0u32, 1, 96, 512] {
        let op = rope::RopeHadamard {
            rope: rope::Rope {
                q: xt,
                n_heads: 4,
                k: kt,
                n_kv_heads: 2,
                head_dim: hd,
                theta: 10000.0,
                style: RopeStyle::Neox,
                max_rows: 1,
                freq_factors: None,
            },
        };
        let err = g.push("rope_hadamard", Op::RopeHadamard(op));
        assert!(
            matches!(err, Err(EngineError::Shape { .. })),
            "head_dim {hd}: {err:?}"
        );
    }
}

/// The fused transform + quantization against `reference_quant`: scales
/// within float noise and every code within one step (the GPU's transform
/// differs from the CPU's in the last bits, which can move a value across
/// a rounding boundary), few codes off at all; static and dynamic, 8 and 4
/// bits, rows shorter than the graph; sizes that do not fit are errors.
#[test]
fn hadamard_quant_matches_reference() {
    use lamina_engine::act::{ActBits, ActScale};
    use lamina_engine::ops::hadamard::HadamardQuant;
    for (n, max_rows, n_tokens) in [(1536u32, 4u32, 3u32), (288, 5, 5), (64, 2, 1), (576, 9, 7)] {
        for bits in [ActBits::Int8, ActBits::Int4] {
            for scale in [ActScale::Dynamic, ActScale::Static(0.02)] {
                let len = (n * max_rows) as usize;
                let x = rand_vec(len, u64::from(n + n_tokens), 1.0);
                let mut g = Graph::new();
                let xt = g.input("x", 4 * len as u64);
                let codes = g.output("codes", len as u64);
                let scales = g.output("scales", 4 * u64::from(max_rows));
                let op = HadamardQuant {
                    x: xt,
                    codes,
                    scales,
                    n,
                    bits,
                    scale,
                    max_rows,
                };
                g.push("hq", Op::HadamardQuant(op)).unwrap();
                let mut ex = Executor::new(gpu(), g).unwrap();
                ex.write(xt, 0, &f32_bytes(&x));
                let step = Step {
                    n_tokens,
                    ..Default::default()
                };
                ex.run(&step).unwrap();
                let rows = n_tokens as usize;
                let done = rows * n as usize;
                let (q, s) =
                    hadamard::reference_quant(&x[..done], n as usize, bits, scale).unwrap();
                let words = ex.read(codes, done as u64).unwrap();
                let got_s = ex.read_f32(scales, rows).unwrap();
                let what = format!("hadamard_quant n {n} {bits:?} {scale:?}");
                assert_close(&what, &got_s, &s, 0.0, 1e-5);
                let got: Vec<i8> = words.iter().map(|&b| b as i8).collect();
                let off = got.iter().zip(&q).filter(|(a, b)| a != b).count();
                assert!(
                    got.iter()
                        .zip(&q)
                        .all(|(a, b)| (i32::from(*a) - i32::from(*b)).abs() <= 1),
                    "{what}: a code more than one step off"
                );
                assert!(
                    off * 100 <= done,
                    "{what}: {off} of {done} codes off by one"
                );
            }
        }
    }
    assert!(!HadamardQuant::fits(4096) && !HadamardQuant::fits(960) && HadamardQuant::fits(1536));
}
