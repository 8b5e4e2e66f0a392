//! The integer matmul path against the float one, at SmolLM2-135M's FFN
//! shape (576 -> 1536): decode (one token; weights streamed as in a model's
//! step) and a 512-token prefill. Per format three graphs:
//! - `f32x`: `matmul` on f32 activations (the float path);
//! - `int`: `matmul_int` on int8 codes already quantized (the kernel alone);
//! - `quant+int`: `act_quant` (dynamic, 8-bit) then `matmul_int`, what a
//!   model's step would run in place of `f32x`.
//!
//! Run: `cargo bench -p lamina-benches --bench matmul_int [-- filter]`.
//!
//! On lavapipe (llvmpipe, 2 cores shared with other jobs; the best of 11
//! alternating rounds, ms per 1536x576 matmul, f32x / int / quant+int):
//! decode q8_0 1.92 / 2.17 / 2.17, q4_0 1.16 / 1.43 / 1.42, mixed4 1.27 /
//! 1.45 / 1.45; 512-token prefill q8_0 204 / 314 / 325, q4_0 182 / 280 /
//! 322, mixed4 220 / 361 / 368. The integer path is slower there: llvmpipe
//! runs `dot4I8Packed` as byte extracts and 32-bit multiplies, which a CPU
//! issues at half the rate of f32 FMAs; it is meant for GPUs with a packed
//! int8 dot instruction (DP4A and kin), where it also reads x at a quarter
//! of the bytes.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lamina_benches::{gpu, time_steps};
use lamina_engine::act::{ActBits, ActScale};
use lamina_engine::graph::{Graph, Op, Step, TensorId};
use lamina_engine::ops::act_quant::ActQuant;
use lamina_engine::ops::matmul::MatMul;
use lamina_engine::ops::matmul_int::MatMulInt;
use lamina_engine::weight::{GpuWeight, HostData, HostWeight, MixedData, MixedLayout};
use lamina_engine::{Executor, Gpu, WeightFormat, WeightRef};
use rand::{Rng, SeedableRng};

const ROWS: u32 = 1536;
const COLS: u32 = 576;
const PREFILL: u32 = 512;
/// Weights streamed per decode step (past the last-level cache).
const DECODE_STREAM_BYTES: u64 = 96 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Float,
    Int,
    QuantInt,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Float => "f32x",
            Path::Int => "int",
            Path::QuantInt => "quant+int",
        }
    }
}

/// A random weight of `format` (Mixed: every group 4 bits wide, groups of
/// 128), scales 2^-7.
fn upload(gpu: &Arc<Gpu>, format: WeightFormat, seed: u64) -> GpuWeight {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    if format == WeightFormat::Mixed {
        let layout =
            Arc::new(MixedLayout::new(128, COLS, vec![4; COLS.div_ceil(128) as usize]).unwrap());
        let mut codes = vec![0u32; (ROWS * layout.row_words()) as usize];
        r.fill(&mut codes[..]);
        let n = (ROWS * layout.n_groups()) as usize;
        let (scales, mins) = (vec![0x2000u16; n], vec![0xa000u16; n]);
        let data = MixedData {
            layout: &layout,
            codes: &codes,
            scales: &scales,
            mins: &mins,
        };
        let host = HostWeight {
            format,
            rows: ROWS,
            cols: COLS,
            data: HostData::Mixed(data),
        };
        return GpuWeight::upload(gpu, "w", &host).expect("upload");
    }
    let (block, halves) = match format {
        WeightFormat::Q4_0 => (18, 1),
        WeightFormat::Q4_1 => (20, 2),
        _ => (34, 1),
    };
    let mut bytes = vec![0u8; (ROWS * COLS / 32) as usize * block];
    r.fill(&mut bytes[..]);
    for b in bytes.chunks_exact_mut(block) {
        for h in 0..halves {
            b[2 * h] = 0;
            b[2 * h + 1] = 0x20;
        }
    }
    let host = HostWeight {
        format,
        rows: ROWS,
        cols: COLS,
        data: HostData::Ggml(&bytes),
    };
    GpuWeight::upload(gpu, "w", &host).expect("upload")
}

/// `copies` matmuls of `path` over distinct weights sharing x and out.
fn graph(gpu: &Arc<Gpu>, format: WeightFormat, path: Path, tokens: u32, copies: u32) -> Executor {
    let mut g = Graph::new();
    let x = g.input("x", 4 * u64::from(COLS * tokens));
    let codes = g.input("codes", u64::from(COLS * tokens));
    let scales = g.input("scales", 4 * u64::from(tokens));
    let out = g.output("out", 4 * u64::from(ROWS * tokens));
    if path == Path::QuantInt {
        let op = ActQuant {
            x,
            codes,
            scales,
            cols: COLS,
            bits: ActBits::Int8,
            scale: ActScale::Dynamic,
            max_rows: tokens,
        };
        g.push("aq", Op::ActQuant(op)).expect("graph");
    }
    for i in 0..copies {
        let w: WeightRef = upload(gpu, format, u64::from(i)).add_to_graph(&mut g, &format!("w{i}"));
        let op = match path {
            Path::Float => Op::MatMul(MatMul {
                x,
                w,
                out,
                out_layout: Default::default(),
                matvec_in: Default::default(),
                max_rows: tokens,
                last_row_only: false,
            }),
            Path::Int | Path::QuantInt => Op::MatMulInt(MatMulInt {
                x: codes,
                x_scales: scales,
                w,
                out,
                out_layout: Default::default(),
                max_rows: tokens,
                last_row_only: false,
            }),
        };
        g.push(format!("mm{i}"), op).expect("graph");
    }
    let ex = Executor::new(gpu.clone(), g).expect("executor");
    let xv: Vec<u8> = (0..COLS * tokens)
        .flat_map(|i| ((i % 13) as f32 * 0.1 - 0.6).to_le_bytes())
        .collect();
    ex.write(x, 0, &xv);
    write_codes(&ex, codes, scales, tokens);
    ex
}

/// Codes -6..6 and scale 0.1 for the `int` graphs (no act_quant in them).
fn write_codes(ex: &Executor, codes: TensorId, scales: TensorId, tokens: u32) {
    let q: Vec<u8> = (0..COLS * tokens)
        .map(|i| ((i % 13) as i8 - 6) as u8)
        .collect();
    ex.write(codes, 0, &q);
    let s: Vec<u8> = (0..tokens).flat_map(|_| 0.1f32.to_le_bytes()).collect();
    ex.write(scales, 0, &s);
}

fn matmul_int(c: &mut Criterion) {
    let gpu = gpu();
    let mut group = c.benchmark_group("matmul_int");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let formats = [
        (WeightFormat::Q8_0, "q8_0"),
        (WeightFormat::Q4_0, "q4_0"),
        (WeightFormat::Mixed, "mixed4"),
    ];
    for (format, fname) in formats {
        let one = upload(&gpu, format, 0).bytes();
        let copies = DECODE_STREAM_BYTES.div_ceil(one).clamp(1, 192) as u32;
        for path in [Path::Float, Path::Int, Path::QuantInt] {
            let mut ex = graph(&gpu, format, path, 1, copies);
            group.throughput(Throughput::Bytes(one * u64::from(copies)));
            let step = Step::default();
            let id = format!("{fname}/decode_x{copies}");
            group.bench_function(BenchmarkId::new(id, path.name()), |b| {
                b.iter_custom(|iters| time_steps(&mut ex, &step, iters))
            });
        }
        for path in [Path::Float, Path::Int, Path::QuantInt] {
            let mut ex = graph(&gpu, format, path, PREFILL, 1);
            let flops = 2 * u64::from(ROWS) * u64::from(COLS) * u64::from(PREFILL);
            group.throughput(Throughput::Elements(flops));
            let step = Step {
                n_tokens: PREFILL,
                ..Default::default()
            };
            let id = format!("{fname}/prefill{PREFILL}_flop");
            group.bench_function(BenchmarkId::new(id, path.name()), |b| {
                b.iter_custom(|iters| time_steps(&mut ex, &step, iters))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matmul_int);
criterion_main!(benches);
