//! The Gram op (xᵀ x accumulated over steps, for GPTQ's Hessians) against
//! its CPU reference, at awkward sizes.

use lamina_engine::Executor;
use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::ops::gram;
use lamina_tests::{assert_close, f32_bytes, gpu, rand_vec};

/// Sums of up to 2 x 300 products of values in [-1, 1] in different
/// orders: f32 rounding, well under 1e-4 absolute.
const TOL: f32 = 1e-4;

fn run(dim: usize, steps: &[usize], max_rows: usize, seed: u64) {
    let mut g = Graph::new();
    let x = g.input("x", (4 * dim * max_rows) as u64);
    let out = g.output("out", (4 * dim * dim) as u64);
    g.push(
        "gram",
        Op::Gram(gram::Gram {
            x,
            out,
            dim: dim as u32,
            max_rows: max_rows as u32,
        }),
    )
    .unwrap();
    let mut ex = Executor::new(gpu(), g).unwrap();
    ex.write(out, 0, &f32_bytes(&vec![0.0; dim * dim]));
    let mut want = vec![0.0f32; dim * dim];
    for (k, &n) in steps.iter().enumerate() {
        let xs = rand_vec(max_rows * dim, seed + k as u64, 1.0);
        ex.write(x, 0, &f32_bytes(&xs));
        ex.run(&Step {
            n_tokens: n as u32,
            ..Default::default()
        })
        .unwrap();
        // Rows past the step are not part of it.
        gram::reference(&xs[..n * dim], dim, &mut want);
    }
    let mut got = ex.read_f32(out, dim * dim).unwrap();
    gram::symmetrize(&mut got, dim);
    assert_close(
        &format!("gram dim {dim} steps {steps:?}"),
        &got,
        &want,
        TOL,
        TOL,
    );
}

#[test]
fn gram_accumulates_over_steps() {
    // 8 (one tile), 72 (a partial workgroup), 576 and 200 (partial tiles at the edge).
    run(8, &[1, 3], 4, 1);
    run(72, &[17], 17, 2);
    run(200, &[5, 300, 1], 300, 3);
    run(576, &[64, 33], 64, 4);
}

#[test]
fn gram_rejects_bad_dims() {
    let mut g = Graph::new();
    let x = g.input("x", 4 * 12 * 2);
    let out = g.output("out", 4 * 12 * 12);
    let op = gram::Gram {
        x,
        out,
        dim: 12,
        max_rows: 2,
    };
    assert!(g.push("gram", Op::Gram(op)).is_err());
}
