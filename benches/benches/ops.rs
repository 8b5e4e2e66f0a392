//! Per-op GPU benches. Each op has its own function registered in
//! `criterion_group!` below; GPU time is measured with `iter_custom`, which
//! submits `iters` steps and waits for the device before stopping the clock.
//!
//! Shapes are SmolLM2-135M's (dim 576, ffn 1536, vocab 49152).
//! Run: `cargo bench -p lamina-benches --bench ops [-- filter]`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lamina_benches::{gpu, time_steps};
use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::ops::matmul::MatMul;
use lamina_engine::weight::{
    self, GpuWeight, HostData, HostWeight, MixedData, MixedLayout, Planes, ggml_row_bytes,
};
use lamina_engine::{Executor, Gpu, WeightFormat};
use rand::{Rng, SeedableRng};

/// A random weight in llama.cpp's block encoding with small f16 scales.
fn random_ggml(format: WeightFormat, rows: u32, cols: u32, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; ggml_row_bytes(format, cols) * rows as usize];
    r.fill(&mut bytes[..]);
    // f16 0x2000 = 2^-7 as every scale (and Q4_1 min), so values stay finite.
    let (block, halves) = match format {
        WeightFormat::Q4_0 => (18, 1),
        WeightFormat::Q4_1 => (20, 2),
        WeightFormat::Q8_0 => (34, 1),
        WeightFormat::F16 => {
            // Random bits may be NaN; use small values instead.
            for c in bytes.chunks_exact_mut(2) {
                c[1] &= 0x23;
            }
            return bytes;
        }
        WeightFormat::F32 => {
            for c in bytes.chunks_exact_mut(4) {
                c[3] &= 0x3c;
            }
            return bytes;
        }
        // Built by random_mixed.
        WeightFormat::Mixed => return Vec::new(),
        f => {
            let per = weight::col_multiple(f);
            let block = ggml_row_bytes(f, per);
            for b in bytes.chunks_exact_mut(block) {
                for &at in weight::kquant::f16_offsets(f) {
                    b[at] = 0;
                    b[at + 1] = 0x20;
                }
            }
            return bytes;
        }
    };
    for b in bytes.chunks_exact_mut(block) {
        for h in 0..halves {
            b[2 * h] = 0;
            b[2 * h + 1] = 0x20;
        }
    }
    bytes
}

// ---------------------------------------------------------------------------
// matmul

struct MatMulShape {
    name: &'static str,
    format: WeightFormat,
    rows: u32,
    cols: u32,
    /// Mixed only: every group's width (groups of 128 columns).
    bits: u8,
}

/// Random codes of a Mixed weight with every group `bits` wide, scale 2^-7.
fn random_mixed(rows: u32, cols: u32, bits: u8, seed: u64) -> MixedTensorOwned {
    let layout = Arc::new(
        MixedLayout::new(128, cols, vec![bits; cols.div_ceil(128) as usize]).expect("layout"),
    );
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut codes = vec![0u32; (rows * layout.row_words()) as usize];
    r.fill(&mut codes[..]);
    let n = (rows * layout.n_groups()) as usize;
    MixedTensorOwned {
        layout,
        codes,
        scales: vec![0x2000; n],
        mins: vec![0xa000; n],
    }
}

struct MixedTensorOwned {
    layout: Arc<MixedLayout>,
    codes: Vec<u32>,
    scales: Vec<u16>,
    mins: Vec<u16>,
}

const MATMUL_SHAPES: [MatMulShape; 6] = [
    MatMulShape {
        name: "ffn_up_576x1536_q4_1",
        format: WeightFormat::Q4_1,
        rows: 1536,
        cols: 576,
        bits: 0,
    },
    MatMulShape {
        name: "ffn_up_576x1536_mixed2",
        format: WeightFormat::Mixed,
        rows: 1536,
        cols: 576,
        bits: 2,
    },
    MatMulShape {
        name: "ffn_up_576x1536_mixed3",
        format: WeightFormat::Mixed,
        rows: 1536,
        cols: 576,
        bits: 3,
    },
    MatMulShape {
        name: "ffn_up_576x1536_mixed4",
        format: WeightFormat::Mixed,
        rows: 1536,
        cols: 576,
        bits: 4,
    },
    MatMulShape {
        name: "ffn_down_1536x576_q4_1",
        format: WeightFormat::Q4_1,
        rows: 576,
        cols: 1536,
        bits: 0,
    },
    MatMulShape {
        name: "lm_head_576x49152_q8_0",
        format: WeightFormat::Q8_0,
        rows: 49152,
        cols: 576,
        bits: 0,
    },
];

/// Weights streamed per decode step: more than the last-level cache, so the
/// decode numbers are memory streaming, as in a real model's token.
const DECODE_STREAM_BYTES: u64 = 96 << 20;

/// A graph of `copies` matmuls over distinct weights with the same x and
/// out, so one submit carries many dispatches as a model's step does.
fn matmul_graph(gpu: &Arc<Gpu>, s: &MatMulShape, tokens: u32, copies: u32) -> (Executor, u64) {
    let mut g = Graph::new();
    let x = g.input("x", 4 * u64::from(s.cols * tokens));
    let out = g.output("out", 4 * u64::from(s.rows * tokens));
    let mut weight_bytes = 0;
    for i in 0..copies {
        let bytes = random_ggml(s.format, s.rows, s.cols, u64::from(i));
        let mixed = random_mixed(s.rows, s.cols, s.bits.max(1), u64::from(i));
        let data = if s.format == WeightFormat::Mixed {
            HostData::Mixed(MixedData {
                layout: &mixed.layout,
                codes: &mixed.codes,
                scales: &mixed.scales,
                mins: &mixed.mins,
            })
        } else {
            HostData::Ggml(&bytes)
        };
        let host = HostWeight {
            format: s.format,
            rows: s.rows,
            cols: s.cols,
            data,
        };
        let w = GpuWeight::upload(gpu, s.name, &host).expect("upload");
        weight_bytes += w.bytes();
        let wr = w.add_to_graph(&mut g, &format!("w{i}"));
        let op = MatMul {
            x,
            w: wr,
            out,
            out_layout: Default::default(),
            matvec_in: Default::default(),
            max_rows: tokens,
            last_row_only: false,
        };
        g.push(format!("mm{i}"), Op::MatMul(op)).expect("graph");
    }
    let ex = Executor::new(gpu.clone(), g).expect("executor");
    let xs: Vec<u8> = (0..s.cols * tokens)
        .flat_map(|i| ((i % 13) as f32 * 0.1 - 0.6).to_le_bytes())
        .collect();
    ex.write(x, 0, &xs);
    (ex, weight_bytes)
}

fn matmul(c: &mut Criterion) {
    let gpu = gpu();
    let mut group = c.benchmark_group("matmul");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for s in &MATMUL_SHAPES {
        let layout = random_mixed(1, s.cols, s.bits.max(1), 0).layout;
        let l = (s.format == WeightFormat::Mixed).then_some(&*layout);
        let one = 4 * u64::from(Planes::of(s.format, l, s.rows, s.cols).words);
        // Decode: one token, weights streamed from memory (reported as weight GB/s).
        let copies = DECODE_STREAM_BYTES.div_ceil(one).clamp(1, 192) as u32;
        let (mut ex, bytes) = matmul_graph(&gpu, s, 1, copies);
        group.throughput(Throughput::Bytes(bytes));
        let step = Step {
            n_tokens: 1,
            ..Default::default()
        };
        group.bench_function(BenchmarkId::new(format!("decode_x{copies}"), s.name), |b| {
            b.iter_custom(|iters| time_steps(&mut ex, &step, iters))
        });
        drop(ex);
        // Prefill: 64 tokens; compute bound (reported as elements = FLOPs).
        let tokens = 64;
        let copies = 4;
        let (mut ex, _) = matmul_graph(&gpu, s, tokens, copies);
        let flops =
            2 * u64::from(s.rows) * u64::from(s.cols) * u64::from(tokens) * u64::from(copies);
        group.throughput(Throughput::Elements(flops));
        let step = Step {
            n_tokens: tokens,
            ..Default::default()
        };
        group.bench_function(
            BenchmarkId::new(format!("prefill{tokens}_x{copies}_flop"), s.name),
            |b| b.iter_custom(|iters| time_steps(&mut ex, &step, iters)),
        );
    }
    group.finish();
}

criterion_group!(benches, matmul);
criterion_main!(benches);
