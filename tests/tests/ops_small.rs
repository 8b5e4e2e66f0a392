//! Embedding, RoPE and SwiGLU against their CPU references on the test GPU,
//! at awkward sizes.

use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::ops::rope::RopeStyle;
use lamina_engine::ops::{embedding, rope, swiglu};
use lamina_engine::weight::{self, GpuWeight, HostData, HostWeight, Planes, dequantize_packed};
use lamina_engine::{Executor, WeightFormat};
use lamina_model::checkpoint::config::llama3_rope_factors;
use lamina_tests::{assert_close, f32_bytes, gpu, rand_vec, random_ggml, random_kquant, u32_bytes};
use rand::{Rng, SeedableRng};

/// Dequantization is exact: f16 scale times a small integer code (plus an
/// f16 min for Q4_1) is representable, so the GPU must match bit for bit.
const EMBED_TOL: f32 = 0.0;

/// RoPE, absolute error for |x| <= 1: two f32 ulps of the angle (ulp(a) <=
/// a * 2^-23, a <= pos rad) plus a little for sin/cos. The GPU's frequency
/// (an exp2 of the host's log2(theta)) and the reference's `1 / powf` are
/// each within about an ulp of theta^(-2j/d), so the rounded angles
/// `f32(pos) * freq` may differ by one step. Measured on lavapipe: worst
/// 6.6e-4 at pos 8190 (allowed 2.0e-3), 8e-6 at pos 76.
const ROPE_ATOL_PER_POS: f32 = 2.4e-7;
const ROPE_ATOL: f32 = 2e-6;

/// SwiGLU: GPU exp and division against the CPU's, a few ulp.
const SWIGLU_ATOL: f32 = 1e-6;
const SWIGLU_RTOL: f32 = 4e-6;

fn step(n_tokens: usize, pos: u32) -> Step {
    Step {
        n_tokens: n_tokens as u32,
        pos,
        ..Default::default()
    }
}

/// Runs the embedding op for `ids` on a `vocab x dim` table in `format`,
/// split into about `shards` shards; returns (got, want).
fn run_embedding(
    format: WeightFormat,
    vocab: u32,
    dim: u32,
    shards: u32,
    ids: &[u32],
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let gpu = gpu();
    let values;
    let bytes;
    let data = match format {
        WeightFormat::F32 | WeightFormat::F16 => {
            values = rand_vec(vocab as usize * dim as usize, seed, 2.0);
            HostData::F32(&values)
        }
        f if weight::kquant::is_kquant(f) => {
            bytes = random_kquant(format, vocab, dim, seed);
            HostData::Ggml(&bytes)
        }
        _ => {
            bytes = random_ggml(format, vocab, dim, seed);
            HostData::Ggml(&bytes)
        }
    };
    let host = HostWeight {
        format,
        rows: vocab,
        cols: dim,
        data,
    };
    // A binding limit that makes `shards` shards.
    let whole = 4 * u64::from(Planes::layout(format, vocab, dim).words);
    let w = GpuWeight::upload_sharded(
        &gpu,
        "table",
        &host,
        whole.div_ceil(u64::from(shards)) + 1024,
    )
    .unwrap();
    let table = dequantize_packed(&host.pack_rows(0, vocab).unwrap());

    let n = ids.len();
    let mut g = Graph::new();
    let ids_t = g.input("ids", 4 * n as u64);
    let out = g.output("out", 4 * n as u64 * u64::from(dim));
    let table_ref = w.add_to_graph(&mut g, "table");
    let n_shards = table_ref.shards.len();
    g.push(
        "embed",
        Op::Embedding(embedding::Embedding {
            ids: ids_t,
            table: table_ref,
            out,
            max_rows: n as u32,
        }),
    )
    .unwrap();
    let mut ex = Executor::new(gpu, g).unwrap();
    assert_eq!(ex.dispatch_count(), n_shards);
    ex.write(ids_t, 0, &u32_bytes(ids));
    // Poison the output so rows nobody writes show up.
    ex.write(out, 0, &f32_bytes(&vec![f32::NAN; n * dim as usize]));
    ex.run(&step(n, 0)).unwrap();
    let got = ex.read_f32(out, n * dim as usize).unwrap();
    (got, embedding::reference(&table, dim as usize, ids))
}

#[test]
fn embedding_matches_reference_in_every_format() {
    use WeightFormat::*;
    let cases = [
        (F32, 1000, 1, 1, 7),
        (F32, 1000, 1757, 3, 77),
        (F32, 500, 1000, 2, 7),
        (F16, 1000, 1, 2, 7),
        (F16, 1000, 1757, 3, 7),
        (F16, 77, 576, 1, 1),
        (Q4_0, 1000, 64, 3, 77),
        (Q4_0, 300, 576, 2, 7),
        (Q4_1, 1000, 576, 3, 77),
        (Q4_1, 50, 64, 1, 1),
        (Q8_0, 1000, 576, 3, 77),
        (Q8_0, 7, 64, 1, 7),
        (Q5_0, 300, 576, 2, 7),
        (Q5_1, 1000, 64, 3, 77),
        (IQ4_NL, 50, 96, 1, 7),
        (Q2_K, 1000, 256, 3, 77),
        (Q3_K, 300, 768, 2, 7),
        (Q4_K, 1000, 512, 3, 77),
        (Q5_K, 50, 256, 1, 7),
        (Q6_K, 1000, 768, 3, 77),
        (IQ4_XS, 300, 256, 2, 7),
    ];
    for (i, &(format, vocab, dim, shards, n)) in cases.iter().enumerate() {
        let mut r = rand::rngs::StdRng::seed_from_u64(100 + i as u64);
        let mut ids: Vec<u32> = (0..n).map(|_| r.random_range(0..vocab)).collect();
        // The ends of the vocabulary and ids past it (zero rows, no reads).
        if n >= 7 {
            ids[0] = 0;
            ids[1] = vocab - 1;
            ids[2] = vocab;
            ids[3] = u32::MAX;
        }
        let (got, want) = run_embedding(format, vocab, dim, shards, &ids, i as u64);
        assert_close(
            &format!(
                "embedding {} vocab {vocab} dim {dim} shards {shards} tokens {n}",
                format.name()
            ),
            &got,
            &want,
            EMBED_TOL,
            0.0,
        );
    }
}

#[test]
fn embedding_step_with_fewer_tokens_leaves_the_rest() {
    let gpu = gpu();
    let (vocab, dim, n) = (100u32, 64u32, 7usize);
    let values = rand_vec((vocab * dim) as usize, 9, 1.0);
    let host = HostWeight {
        format: WeightFormat::F32,
        rows: vocab,
        cols: dim,
        data: HostData::F32(&values),
    };
    let w = GpuWeight::upload(&gpu, "table", &host).unwrap();
    let mut g = Graph::new();
    let ids_t = g.input("ids", 4 * n as u64);
    let out = g.output("out", 4 * (n * dim as usize) as u64);
    let table = w.add_to_graph(&mut g, "table");
    g.push(
        "embed",
        Op::Embedding(embedding::Embedding {
            ids: ids_t,
            table,
            out,
            max_rows: n as u32,
        }),
    )
    .unwrap();
    let mut ex = Executor::new(gpu, g).unwrap();
    let ids: Vec<u32> = (0..n as u32).map(|i| 3 * i + 1).collect();
    ex.write(ids_t, 0, &u32_bytes(&ids));
    let sentinel = vec![7.0f32; n * dim as usize];
    ex.write(out, 0, &f32_bytes(&sentinel));
    ex.run(&step(3, 0)).unwrap();
    let got = ex.read_f32(out, n * dim as usize).unwrap();
    let mut want = embedding::reference(&values, dim as usize, &ids[..3]);
    want.extend_from_slice(&sentinel[3 * dim as usize..]);
    assert_close("embedding 3 of 7 tokens", &got, &want, 0.0, 0.0);
}

/// Runs RoPE in place on `heads` query and `kv_heads` key heads; returns
/// (got, want), the queries then the keys.
#[allow(clippy::too_many_arguments)]
fn run_rope(
    n: usize,
    (heads, kv_heads): (usize, usize),
    hd: usize,
    pos: u32,
    theta: f32,
    factors: &[f32],
    style: RopeStyle,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let q = rand_vec(n * heads * hd, seed, 1.0);
    let k = rand_vec(n * kv_heads * hd, seed + 1, 1.0);
    let mut g = Graph::new();
    let qt = g.output("q", 4 * q.len() as u64);
    let kt = g.output("k", 4 * k.len() as u64);
    let ft = (!factors.is_empty()).then(|| g.input("factors", 4 * factors.len() as u64));
    let op = rope::Rope {
        q: qt,
        n_heads: heads as u32,
        k: kt,
        n_kv_heads: kv_heads as u32,
        head_dim: hd as u32,
        theta,
        style,
        max_rows: n as u32,
        freq_factors: ft,
    };
    g.push("rope", Op::Rope(op)).unwrap();
    let mut ex = Executor::new(gpu(), g).unwrap();
    ex.write(qt, 0, &f32_bytes(&q));
    ex.write(kt, 0, &f32_bytes(&k));
    if let Some(t) = ft {
        ex.write(t, 0, &f32_bytes(factors));
    }
    ex.run(&step(n, pos)).unwrap();
    let mut got = ex.read_f32(qt, q.len()).unwrap();
    got.extend(ex.read_f32(kt, k.len()).unwrap());
    let (mut want, mut want_k) = (q, k);
    rope::reference(&mut want, heads, hd, theta, factors, pos, style);
    rope::reference(&mut want_k, kv_heads, hd, theta, factors, pos, style);
    want.extend(want_k);
    (got, want)
}

#[test]
fn rope_matches_reference() {
    let cases = [
        // (tokens, (query heads, key heads), head_dim, pos)
        (1usize, (1usize, 1usize), 64usize, 0u32),
        (7, (3, 1), 64, 5),
        (77, (2, 2), 128, 0),
        (77, (1, 3), 40, 1000),
        (7, (4, 2), 128, 8185),
        (1, (9, 3), 64, 8191),
        (77, (1, 1), 40, 8114),
    ];
    let mut worst = (0.0f32, String::new());
    for (i, &(n, heads, hd, pos)) in cases.iter().enumerate() {
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            for (theta, scaled) in [(10000.0f32, false), (500000.0, false), (500000.0, true)] {
                // Llama 3.1's scaling (factor 8, low 1, high 4, 8192 positions).
                let factors = if scaled {
                    llama3_rope_factors(hd, theta, 8.0, 1.0, 4.0, 8192.0)
                } else {
                    Vec::new()
                };
                let (got, want) = run_rope(n, heads, hd, pos, theta, &factors, style, i as u64);
                let what = format!(
                    "rope {n}x{heads:?}x{hd} pos {pos} {style:?} theta {theta} scaled {scaled}"
                );
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                if err > worst.0 {
                    worst = (err, what.clone());
                }
                let last = (pos as usize + n - 1) as f32;
                assert_close(
                    &what,
                    &got,
                    &want,
                    ROPE_ATOL + ROPE_ATOL_PER_POS * last,
                    0.0,
                );
            }
        }
    }
    eprintln!("rope: worst abs error {:e} ({})", worst.0, worst.1);
}

#[test]
fn rope_pairs_follow_the_style() {
    // One head, x = e_0 at position 1: interleaved moves mass to element 1,
    // neox to element head_dim / 2.
    for (style, other) in [(RopeStyle::Interleaved, 1usize), (RopeStyle::Neox, 32)] {
        let mut g = Graph::new();
        let xt = g.output("x", 4 * 64);
        let kt = g.output("k", 4 * 64);
        let op = rope::Rope {
            q: xt,
            n_heads: 1,
            k: kt,
            n_kv_heads: 1,
            head_dim: 64,
            theta: 10000.0,
            style,
            max_rows: 1,
            freq_factors: None,
        };
        g.push("rope", Op::Rope(op)).unwrap();
        let mut ex = Executor::new(gpu(), g).unwrap();
        let mut x = vec![0.0f32; 64];
        x[0] = 1.0;
        ex.write(xt, 0, &f32_bytes(&x));
        ex.run(&step(1, 1)).unwrap();
        let got = ex.read_f32(xt, 64).unwrap();
        let mut want = vec![0.0f32; 64];
        want[0] = 1f32.cos();
        want[other] = 1f32.sin();
        assert_close(&format!("rope basis {style:?}"), &got, &want, 1e-6, 0.0);
    }
}

/// RoPE with the f16 cache write in one dispatch (`RopeKvF16`) against
/// RoPE then `kv_f16_write` on the GPU: the same queries and the same cache
/// words, bit for bit (one rotation, one rounding), with q, k and v views of
/// one tensor as the model lays them out; rows past the cache are dropped.
#[test]
fn rope_and_cache_write_in_one_dispatch() {
    let cases = [
        // (tokens, (query heads, key heads), head_dim, pos, max_ctx)
        (1usize, (9usize, 3usize), 64usize, 0u32, 16u32),
        (7, (3, 1), 64, 5, 64),
        (5, (2, 2), 128, 30, 32),
        (3, (1, 3), 40, 100, 200),
    ];
    for (i, &(n, (heads, kv_heads), hd, pos, max_ctx)) in cases.iter().enumerate() {
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            for scaled in [false, true] {
                let factors = if scaled {
                    llama3_rope_factors(hd, 500000.0, 8.0, 1.0, 4.0, 8192.0)
                } else {
                    Vec::new()
                };
                let what = format!(
                    "rope_kv {n}x({heads},{kv_heads})x{hd} pos {pos} ctx {max_ctx} {style:?} scaled {scaled}"
                );
                let [fused, split] = [true, false].map(|fused| {
                    run_rope_kv(
                        fused,
                        n,
                        (heads, kv_heads),
                        hd,
                        pos,
                        max_ctx,
                        &factors,
                        style,
                        i as u64,
                    )
                });
                assert_eq!(fused.0, split.0, "{what}: queries");
                assert_eq!(fused.1, split.1, "{what}: key cache");
                assert_eq!(fused.2, split.2, "{what}: value cache");
            }
        }
    }
}

/// Queries after RoPE, then the two caches' words, after one step of
/// `RopeKvF16` (`fused`) or of `Rope` and `KvF16Write`.
#[allow(clippy::too_many_arguments)]
fn run_rope_kv(
    fused: bool,
    n: usize,
    (heads, kv_heads): (usize, usize),
    hd: usize,
    pos: u32,
    max_ctx: u32,
    factors: &[f32],
    style: RopeStyle,
    seed: u64,
) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    use lamina_engine::mmout::part_offsets;
    use lamina_engine::ops::kv_f16_write;
    let (qw, kw) = ((heads * hd) as u32, (kv_heads * hd) as u32);
    let offs = part_offsets(&[qw, kw, kw], n as u32);
    let total = offs[2] + 4 * u64::from(kw) * n as u64;
    let mut g = Graph::new();
    let qkv = g.output("qkv", total);
    let q = g
        .view("q", qkv, offs[0], 4 * u64::from(qw) * n as u64)
        .unwrap();
    let k = g
        .view("k", qkv, offs[1], 4 * u64::from(kw) * n as u64)
        .unwrap();
    let v = g
        .view("v", qkv, offs[2], 4 * u64::from(kw) * n as u64)
        .unwrap();
    let cache = lamina_engine::kv::cache_bytes(kv_heads as u32, hd as u32, max_ctx);
    let (kc, vc) = (g.output("k_cache", cache), g.output("v_cache", cache));
    let ft = (!factors.is_empty()).then(|| g.input("factors", 4 * factors.len() as u64));
    let r = rope::Rope {
        q,
        n_heads: heads as u32,
        k,
        n_kv_heads: kv_heads as u32,
        head_dim: hd as u32,
        theta: 500000.0,
        style,
        max_rows: n as u32,
        freq_factors: ft,
    };
    if fused {
        let op = rope::RopeKvF16 {
            rope: r,
            v,
            k_cache: kc,
            v_cache: vc,
            max_ctx,
            seqs: None,
        };
        g.push("rope_kv", Op::RopeKvF16(op)).unwrap();
    } else {
        g.push("rope", Op::Rope(r)).unwrap();
        let op = kv_f16_write::KvF16Write {
            k,
            v,
            k_cache: kc,
            v_cache: vc,
            n_kv_heads: kv_heads as u32,
            head_dim: hd as u32,
            max_ctx,
            max_rows: n as u32,
        };
        g.push("kv_write", Op::KvF16Write(op)).unwrap();
    }
    let mut ex = Executor::new(gpu(), g).unwrap();
    ex.write(qkv, 0, &f32_bytes(&rand_vec(total as usize / 4, seed, 2.0)));
    // A marker in every cache word, so untouched rows show.
    let marker = vec![0x7c01_7c01u32; cache as usize / 4];
    ex.write(kc, 0, &u32_bytes(&marker));
    ex.write(vc, 0, &u32_bytes(&marker));
    if let Some(t) = ft {
        ex.write(t, 0, &f32_bytes(factors));
    }
    ex.run(&step(n, pos)).unwrap();
    let words = |t, len: u64| -> Vec<u32> {
        ex.read(t, len)
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let kcw = words(kc, cache);
    // Rows at or past max_ctx are never written: the marker stays in
    // every row the step does not reach.
    let row = hd / 2;
    for h in 0..kv_heads {
        for p in 0..max_ctx as usize {
            let written = p >= pos as usize && p < pos as usize + n;
            let w = &kcw[(h * max_ctx as usize + p) * row..][..row];
            assert_eq!(
                w.iter().all(|&x| x == 0x7c01_7c01),
                !written,
                "row {p} of head {h} (fused {fused})"
            );
        }
    }
    (
        words(q, 4 * u64::from(qw) * n as u64),
        kcw,
        words(vc, cache),
    )
}

fn run_swiglu(n: usize, dim: usize, gate: &[f32], up: &[f32]) -> Vec<f32> {
    let bytes = 4 * (n * dim) as u64;
    let mut g = Graph::new();
    let gt = g.output("gate", bytes);
    let ut = g.input("up", bytes);
    let out = g.output("out", bytes);
    let op = swiglu::SwiGlu {
        gate: gt,
        up: ut,
        out,
        dim: dim as u32,
        max_rows: n as u32,
    };
    g.push("swiglu", Op::SwiGlu(op)).unwrap();
    let mut ex = Executor::new(gpu(), g).unwrap();
    ex.write(gt, 0, &f32_bytes(gate));
    ex.write(ut, 0, &f32_bytes(up));
    ex.run(&step(n, 0)).unwrap();
    ex.read_f32(out, n * dim).unwrap()
}

#[test]
fn swiglu_matches_reference() {
    for (i, &(n, dim)) in [(1usize, 1usize), (7, 64), (1, 576), (7, 1000), (77, 1757)]
        .iter()
        .enumerate()
    {
        let gate = rand_vec(n * dim, 10 + i as u64, 12.0);
        let up = rand_vec(n * dim, 20 + i as u64, 2.0);
        let got = run_swiglu(n, dim, &gate, &up);
        let want = swiglu::reference(&gate, &up);
        assert_close(
            &format!("swiglu {n}x{dim}"),
            &got,
            &want,
            SWIGLU_ATOL,
            SWIGLU_RTOL,
        );
    }
}

#[test]
fn swiglu_is_finite_for_large_inputs() {
    let gate = [
        -f32::MAX,
        -1e30,
        -1e4,
        -100.0,
        -88.8,
        -87.0,
        -20.0,
        -1e-30,
        -0.0,
        0.0,
        1e-30,
        20.0,
        87.0,
        88.8,
        100.0,
        1e4,
        1e30,
        f32::MAX,
    ];
    let up = vec![0.5f32; gate.len()];
    let got = run_swiglu(1, gate.len(), &gate, &up);
    for (i, (&g, &y)) in gate.iter().zip(&got).enumerate() {
        assert!(y.is_finite(), "swiglu({g}) = {y} at index {i}");
    }
    // Large negative gates give (signed) zero, large positive ones x * up.
    let want: Vec<f32> = gate
        .iter()
        .map(|&g| match g {
            g if g < -100.0 => 0.0,
            g if g > 100.0 => g * 0.5,
            g => g / (1.0 + (-g).exp()) * 0.5,
        })
        .collect();
    assert_close("swiglu extremes", &got, &want, SWIGLU_ATOL, SWIGLU_RTOL);
}
