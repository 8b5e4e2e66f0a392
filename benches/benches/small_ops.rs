//! Benches for the per-layer ops around the matmuls: embedding, RMSNorm,
//! RoPE, SwiGLU, residual add, and GPU sampling, at SmolLM2-135M's shapes
//! (dim 576, 9 heads x 64, ffn 1536, vocab 49152).
//!
//! These ops are small, so at decode a single dispatch is mostly launch
//! cost. Each graph therefore holds `LAYERS` copies of the op, as a model's
//! step does (one per layer), and the figure is the time for all of them:
//! divide by `LAYERS` for one dispatch. Prefill runs 512 tokens.
//!
//! Run: `cargo bench -p lamina-benches --bench small_ops [-- filter]`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lamina_benches::{gpu, time_steps};
use lamina_engine::graph::{Graph, Op, Sampling, Step, TensorId};
use lamina_engine::ops::{add, embedding, rmsnorm, rope, sample, swiglu};
use lamina_engine::weight::{GpuWeight, HostData, HostWeight};
use lamina_engine::{Executor, Gpu, WeightFormat};
use rand::{Rng, SeedableRng};

const DIM: u32 = 576;
const HEADS: u32 = 9;
const KV_HEADS: u32 = 3;
const HEAD_DIM: u32 = 64;
const FFN: u32 = 1536;
const VOCAB: u32 = 49152;
/// Copies of the op per graph (SmolLM2-135M has 30 layers).
const LAYERS: u32 = 30;
const PREFILL: u32 = 512;

fn random_f32(n: u32, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .flat_map(|_| r.random_range(-1.0f32..1.0).to_le_bytes())
        .collect()
}

fn step(n_tokens: u32) -> Step {
    Step {
        n_tokens,
        pos: 0,
        ..Default::default()
    }
}

/// Builds an executor over `g` and fills each listed f32 input with random values.
fn executor(gpu: &Arc<Gpu>, g: Graph, inputs: &[(TensorId, u32)]) -> Executor {
    let ex = Executor::new(gpu.clone(), g).expect("executor");
    for (i, &(t, n)) in inputs.iter().enumerate() {
        ex.write(t, 0, &random_f32(n, i as u64));
    }
    ex
}

/// Benches `build(tokens)` at decode (1 token) and prefill shapes.
fn bench_op(
    c: &mut Criterion,
    name: &str,
    gpu: &Arc<Gpu>,
    bytes_per_token: u64,
    build: impl Fn(u32) -> (Graph, Vec<(TensorId, u32)>),
) {
    let mut grp = c.benchmark_group(name);
    grp.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for tokens in [1, PREFILL] {
        let (g, inputs) = build(tokens);
        let mut ex = executor(gpu, g, &inputs);
        let st = step(tokens);
        grp.throughput(Throughput::Bytes(
            bytes_per_token * u64::from(tokens) * u64::from(LAYERS),
        ));
        let label = if tokens == 1 { "decode" } else { "prefill" };
        grp.bench_function(
            BenchmarkId::new(format!("{label}_x{LAYERS}"), tokens),
            |b| b.iter_custom(|iters| time_steps(&mut ex, &st, iters)),
        );
    }
    grp.finish();
}

fn small_ops(c: &mut Criterion) {
    let gpu = gpu();

    // RMSNorm: read x and write out, dim floats each.
    bench_op(c, "rmsnorm", &gpu, 8 * u64::from(DIM), |t| {
        let mut g = Graph::new();
        let x = g.input("x", 4 * u64::from(DIM * t));
        let w = g.input("w", 4 * u64::from(DIM));
        let out = g.output("out", 4 * u64::from(DIM * t));
        for l in 0..LAYERS {
            let op = rmsnorm::RmsNorm {
                x,
                weight: w,
                out,
                dim: DIM,
                eps: 1e-5,
                max_rows: t,
            };
            g.push(format!("norm{l}"), Op::RmsNorm(op)).expect("graph");
        }
        (g, vec![(x, DIM * t), (w, DIM)])
    });

    // RoPE on the query and key heads, in place, one dispatch.
    let heads = HEADS + KV_HEADS;
    bench_op(c, "rope", &gpu, 8 * u64::from(heads * HEAD_DIM), |t| {
        let mut g = Graph::new();
        let (nq, nk) = (HEADS * HEAD_DIM * t, KV_HEADS * HEAD_DIM * t);
        let q = g.output("q", 4 * u64::from(nq));
        let k = g.output("k", 4 * u64::from(nk));
        for l in 0..LAYERS {
            let op = rope::Rope {
                q,
                n_heads: HEADS,
                k,
                n_kv_heads: KV_HEADS,
                head_dim: HEAD_DIM,
                theta: 100_000.0,
                style: rope::RopeStyle::Interleaved,
                max_rows: t,
                freq_factors: None,
            };
            g.push(format!("rope{l}"), Op::Rope(op)).expect("graph");
        }
        (g, vec![(q, nq), (k, nk)])
    });

    // SwiGLU: read gate and up, write out.
    bench_op(c, "swiglu", &gpu, 12 * u64::from(FFN), |t| {
        let mut g = Graph::new();
        let n = FFN * t;
        let gate = g.input("gate", 4 * u64::from(n));
        let up = g.input("up", 4 * u64::from(n));
        let out = g.output("out", 4 * u64::from(n));
        for l in 0..LAYERS {
            let op = swiglu::SwiGlu {
                gate,
                up,
                out,
                dim: FFN,
                max_rows: t,
            };
            g.push(format!("swiglu{l}"), Op::SwiGlu(op)).expect("graph");
        }
        (g, vec![(gate, n), (up, n)])
    });

    // Residual add x += y.
    bench_op(c, "add", &gpu, 12 * u64::from(DIM), |t| {
        let mut g = Graph::new();
        let n = DIM * t;
        let x = g.output("x", 4 * u64::from(n));
        let y = g.input("y", 4 * u64::from(n));
        for l in 0..LAYERS {
            let op = add::Add {
                x,
                y,
                dim: DIM,
                max_rows: t,
                bias: false,
            };
            g.push(format!("add{l}"), Op::Add(op)).expect("graph");
        }
        (g, vec![(x, n), (y, n)])
    });

    // Embedding lookup from a Q8_0 table (the model's tied token_embd).
    let table = {
        // Random Q8_0 blocks (34 bytes: f16 scale, 32 i8 codes) with scale 2^-7.
        let mut r = rand::rngs::StdRng::seed_from_u64(3);
        let mut bytes = vec![0u8; 34 * (VOCAB * DIM / 32) as usize];
        r.fill(&mut bytes[..]);
        for b in bytes.chunks_exact_mut(34) {
            b[0] = 0;
            b[1] = 0x20;
        }
        let host = HostWeight {
            format: WeightFormat::Q8_0,
            rows: VOCAB,
            cols: DIM,
            data: HostData::Ggml(&bytes),
        };
        GpuWeight::upload(&gpu, "token_embd", &host).expect("upload")
    };
    // Bytes: one Q8_0 row read and one f32 row written per token.
    bench_op(
        c,
        "embedding",
        &gpu,
        34 * u64::from(DIM / 32) + 4 * u64::from(DIM),
        |t| {
            let mut g = Graph::new();
            let ids = g.input("ids", 4 * u64::from(t));
            let out = g.output("out", 4 * u64::from(DIM * t));
            let tab = table.add_to_graph(&mut g, "table");
            for l in 0..LAYERS {
                let op = embedding::Embedding {
                    ids,
                    table: tab.clone(),
                    out,
                    max_rows: t,
                };
                g.push(format!("embd{l}"), Op::Embedding(op))
                    .expect("graph");
            }
            (g, Vec::new())
        },
    );

    // Sampling over the vocabulary: greedy, and temperature + top-k + top-p +
    // repetition penalty (llama.cpp's defaults), one token per step.
    let mut grp = c.benchmark_group("sample");
    grp.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let history_len = 64;
    let mut g = Graph::new();
    let logits = g.input("logits", 4 * u64::from(VOCAB));
    let history = g.input("history", sample::history_bytes(history_len));
    let scratch = g.intermediate("scratch", sample::scratch_bytes(VOCAB));
    let out = g.output("token", 4);
    g.push(
        "sample",
        Op::Sample(sample::Sample {
            logits,
            history,
            scratch,
            out,
            vocab: VOCAB,
            history_len,
        }),
    )
    .expect("graph");
    let ex = executor(&gpu, g, &[(logits, VOCAB)]);
    let hist: Vec<u8> = std::iter::once(history_len)
        .chain((0..history_len).map(|i| i * 701 % VOCAB))
        .flat_map(|v| v.to_le_bytes())
        .collect();
    ex.write(history, 0, &hist);
    let mut ex = ex;
    grp.throughput(Throughput::Elements(u64::from(VOCAB)));
    let settings = [
        ("greedy", Sampling::default()),
        (
            "temp0.8_topk40_topp0.95_rep1.1",
            Sampling {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                repeat_penalty: 1.1,
                uniform: 0.37,
            },
        ),
    ];
    for (name, s) in settings {
        let st = Step {
            n_tokens: 1,
            pos: 0,
            sampling: s,
        };
        grp.bench_function(name, |b| {
            b.iter_custom(|iters| time_steps(&mut ex, &st, iters))
        });
    }
    grp.finish();
}

criterion_group!(benches, small_ops);
criterion_main!(benches);
