//! Elementwise ops and RMSNorm against their CPU references on the test GPU.

use lamina_engine::Executor;
use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::ops::{add, rmsnorm};
use lamina_tests::{assert_close, f32_bytes, gpu, rand_vec};

#[test]
fn rmsnorm_matches_reference() {
    for (rows, dim) in [(1usize, 1usize), (7, 576), (3, 1000), (2, 1757)] {
        let x = rand_vec(rows * dim, 1, 3.0);
        let w = rand_vec(dim, 2, 1.0);
        let mut g = Graph::new();
        let xt = g.input("x", 4 * (rows * dim) as u64);
        let wt = g.input("w", 4 * dim as u64);
        let out = g.output("out", 4 * (rows * dim) as u64);
        g.push(
            "norm",
            Op::RmsNorm(rmsnorm::RmsNorm {
                x: xt,
                weight: wt,
                out,
                dim: dim as u32,
                eps: 1e-5,
                max_rows: rows as u32,
            }),
        )
        .unwrap();
        let mut ex = Executor::new(gpu(), g).unwrap();
        ex.write(xt, 0, &f32_bytes(&x));
        ex.write(wt, 0, &f32_bytes(&w));
        ex.run(&Step {
            n_tokens: rows as u32,
            ..Default::default()
        })
        .unwrap();
        let got = ex.read_f32(out, rows * dim).unwrap();
        assert_close(
            &format!("rmsnorm {rows}x{dim}"),
            &got,
            &rmsnorm::reference(&x, &w, 1e-5),
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn add_matches_reference_and_respects_step_rows() {
    for (rows, dim) in [(1usize, 1usize), (7, 1000), (5, 1757)] {
        let x = rand_vec(rows * dim, 3, 1.0);
        let y = rand_vec(rows * dim, 4, 1.0);
        let mut g = Graph::new();
        let xt = g.output("x", 4 * (rows * dim) as u64);
        let yt = g.input("y", 4 * (rows * dim) as u64);
        g.push(
            "add",
            Op::Add(add::Add {
                x: xt,
                y: yt,
                dim: dim as u32,
                max_rows: rows as u32,
                bias: false,
            }),
        )
        .unwrap();
        let mut ex = Executor::new(gpu(), g).unwrap();
        ex.write(xt, 0, &f32_bytes(&x));
        ex.write(yt, 0, &f32_bytes(&y));
        // A step with fewer rows than the maximum leaves the rest untouched.
        let n = rows.div_ceil(2);
        ex.run(&Step {
            n_tokens: n as u32,
            ..Default::default()
        })
        .unwrap();
        let got = ex.read_f32(xt, rows * dim).unwrap();
        let mut want = x.clone();
        add::reference(&mut want[..n * dim], &y[..n * dim]);
        assert_close(&format!("add {rows}x{dim}"), &got, &want, 0.0, 0.0);
    }
}
