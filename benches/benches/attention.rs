//! f16-cache attention (op kv_f16_attention) benches: split-KV decode at kv_len 512 / 2048 / 8192 and a
//! 512-token prefill, on SmolLM2-135M's shape (9 query heads, 3 KV heads,
//! head_dim 64) and Llama-7B's (32 / 32, head_dim 128). GPU time comes from
//! `iter_custom`: `iters` submits, then a wait for the device.
//!
//! Run: `cargo bench -p lamina-benches --bench attention [-- filter]`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lamina_benches::{gpu, time_steps};
use lamina_engine::Executor;
use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::kv;
use lamina_engine::ops::kv_f16_attention;
use rand::{Rng, SeedableRng};

struct Shape {
    name: &'static str,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "smollm2-135m",
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    },
    Shape {
        name: "llama-7b",
        n_heads: 32,
        n_kv_heads: 32,
        head_dim: 128,
    },
];

/// An executor running only Attention over a cache of `max_ctx` random
/// f16 rows (values in [-1, 1)), for steps of up to `max_rows` tokens.
fn attention_executor(s: &Shape, max_ctx: u32, max_rows: u32) -> Executor {
    let (nh, nkv, hd) = (s.n_heads, s.n_kv_heads, s.head_dim);
    let mut g = Graph::new();
    let q_bytes = 4 * u64::from(max_rows * nh * hd);
    let q = g.input("q", q_bytes);
    let cache_bytes = kv::cache_bytes(nkv, hd, max_ctx);
    let k_cache = g.input("k_cache", cache_bytes);
    let v_cache = g.input("v_cache", cache_bytes);
    let out = g.output("out", q_bytes);
    let scratch = Some(g.intermediate(
        "scratch",
        kv_f16_attention::scratch_bytes(nh, hd, max_ctx, max_rows),
    ));
    g.push(
        "attn",
        Op::KvF16Attention(kv_f16_attention::KvF16Attention {
            q,
            k_cache,
            v_cache,
            out,
            scratch,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            max_ctx,
            max_rows,
            scale: 1.0 / (hd as f32).sqrt(),
            seqs: None,
        }),
    )
    .expect("attention graph");
    let ex = Executor::new(gpu(), g).expect("executor");
    let mut r = rand::rngs::StdRng::seed_from_u64(7);
    // Random f16 bits with the exponent's top bit cleared: finite, |x| < 1.
    let f16_rand = |r: &mut rand::rngs::StdRng, n: u64| -> Vec<u8> {
        (0..n / 2)
            .flat_map(|_| (r.random::<u16>() & 0xbbff).to_le_bytes())
            .collect()
    };
    ex.write(k_cache, 0, &f16_rand(&mut r, cache_bytes));
    ex.write(v_cache, 0, &f16_rand(&mut r, cache_bytes));
    let qv: Vec<u8> = (0..q_bytes / 4)
        .flat_map(|_| r.random_range(-1.0f32..1.0).to_le_bytes())
        .collect();
    ex.write(q, 0, &qv);
    ex
}

/// K and V bytes one step streams: every key once per KV head.
fn kv_bytes(s: &Shape, kv_len: u32) -> u64 {
    2 * kv::cache_bytes(s.n_kv_heads, s.head_dim, kv_len)
}

fn decode(c: &mut Criterion) {
    let mut grp = c.benchmark_group("kv_f16_attention_decode");
    grp.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for s in &SHAPES {
        let mut ex = attention_executor(s, 8192, 1);
        for kv_len in [512u32, 2048, 8192] {
            let step = Step {
                n_tokens: 1,
                pos: kv_len - 1,
                ..Default::default()
            };
            grp.throughput(Throughput::Bytes(kv_bytes(s, kv_len)));
            grp.bench_function(BenchmarkId::new(s.name, kv_len), |b| {
                b.iter_custom(|iters| time_steps(&mut ex, &step, iters))
            });
        }
    }
    grp.finish();
}

fn prefill(c: &mut Criterion) {
    let mut grp = c.benchmark_group("kv_f16_attention_prefill");
    grp.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for s in &SHAPES {
        let n = 512u32;
        let mut ex = attention_executor(s, n, n);
        let step = Step {
            n_tokens: n,
            pos: 0,
            ..Default::default()
        };
        grp.throughput(Throughput::Elements(u64::from(n)));
        grp.bench_function(BenchmarkId::new(s.name, n), |b| {
            b.iter_custom(|iters| time_steps(&mut ex, &step, iters))
        });
    }
    grp.finish();
}

criterion_group!(benches, decode, prefill);
criterion_main!(benches);
