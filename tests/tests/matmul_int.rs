//! The integer path (PrefixQuant's W8A8 / W4A8 / W4A4): `act_quant` against
//! its CPU reference bit for bit.

use lamina_engine::Executor;
use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::ops::act_quant::{self, ActBits, ActQuant, ActScale};
use lamina_tests::{f32_bytes, gpu, rand_vec};

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
                let want = act_quant::pack_codes(&q);
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
        assert_eq!(got, act_quant::pack_codes(want), "A{}", bits.bits());
        assert_eq!(got_s, vec![0.5]);
    }
    // Codes pack lane 0 into the low byte, as i8.
    assert_eq!(
        act_quant::pack_codes(&[1, -1, 127, -127]),
        vec![0x817f_ff01]
    );
}
