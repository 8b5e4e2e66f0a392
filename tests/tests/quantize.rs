//! `lamina quantize`'s pipeline end to end on a synthetic Llama: RTN, GPTQ
//! and SliM-LLM models run on the GPU (mixed-width kernels, every width
//! class present) and match the CPU reference forward pass over the same
//! dequantized weights; GPTQ and SliM-LLM beat RTN on output error; the
//! `.lamina.safetensors` file round-trips exactly.

use lamina_engine::graph::Step;
use lamina_model::checkpoint::HostDType;
use lamina_model::checkpoint::LoadedModel;
use lamina_model::kv_cache::KvFormat;
use lamina_model::lamina_file;
use lamina_model::llama::{GpuModel, Head, WeightMode};
use lamina_model::quant::pipeline::{Method, QuantizeOptions, quantize_model};
use lamina_model::reference::Reference;
use lamina_model::session::Compiled;
use lamina_model::synthetic;
use lamina_tests::gpu;
use rand::{Rng, SeedableRng};

/// dim 256 (two full 128-column groups: the vector path), ffn 416 (three
/// full groups and a short one of 32: the scalar path), 2 layers.
const SPEC: &str = "L2-d256-h4-kv2-f416-v300";

/// GPU logits against the CPU reference of the same weights: f16 KV cache
/// and summation order; logits here are O(1).
const TOL: f32 = 2e-2;

fn source() -> LoadedModel {
    synthetic::synthetic_model(SPEC, HostDType::F32, 3).unwrap()
}

fn windows(n: usize, len: usize, vocab: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..len).map(|_| r.random_range(0..vocab)).collect())
        .collect()
}

/// All-position logits of `m` on the GPU (native weights) for `toks`.
fn gpu_logits(m: &LoadedModel, toks: &[u32]) -> Vec<f32> {
    let model = GpuModel::new(gpu(), m, WeightMode::Native, 64, KvFormat::F16, |_, _| {}).unwrap();
    let mut c = Compiled::new(&model, 64, Head::AllLogits).unwrap();
    let ids: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
    c.exec.write(c.io.ids, 0, &ids);
    c.exec
        .run(&Step {
            n_tokens: toks.len() as u32,
            ..Default::default()
        })
        .unwrap();
    c.exec
        .read_f32(c.io.logits, toks.len() * m.config.vocab_size)
        .unwrap()
}

fn cpu_logits(m: &LoadedModel, toks: &[u32]) -> Vec<f32> {
    let mut r = Reference::new(&m.config, &m.weights, 64).unwrap();
    r.forward(toks, 0).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn quantized_models_match_the_reference_and_round_trip() {
    let src = source();
    let vocab = src.config.vocab_size as u32;
    let calib = windows(4, 48, vocab, 1);
    let toks = windows(1, 40, vocab, 2).remove(0);
    let full = cpu_logits(&src, &toks);
    let dir = tempdir();
    let mut errs = Vec::new();
    for (method, bits) in [
        (Method::Rtn, 2.5),
        (Method::Gptq, 3.0),
        (Method::Slim, 2.0),
        (Method::Slim, 3.0),
    ] {
        let opts = QuantizeOptions {
            method,
            bits,
            group: 128,
            ..Default::default()
        };
        let (q, reports) =
            quantize_model(&gpu(), &src, &calib, &opts, &mut |_, _, _, _, _| {}).unwrap();
        assert_eq!(reports.len(), 7 * src.config.n_layers);
        let what = format!("{} {bits}", method.name());
        // The mean width over each matrix's columns is at most the target.
        for r in &reports {
            assert!(
                r.mean_bits <= bits + 1e-9,
                "{what} {}: {}",
                r.name,
                r.mean_bits
            );
        }
        let g = gpu_logits(&q, &toks);
        let c = cpu_logits(&q, &toks);
        let d = max_diff(&g, &c);
        assert!(d <= TOL, "{what}: GPU vs CPU reference {d}");
        errs.push((what.clone(), max_diff(&c, &full)));
        // File round trip.
        let path = dir.join(format!("{}-{bits}.lamina.safetensors", method.name()));
        lamina_file::write(&path, &q).unwrap();
        assert!(lamina_file::is_lamina_file(&path));
        let back = lamina_model::loader::load(&path).unwrap();
        assert_eq!(back.config, q.config);
        for (a, b) in back.weights.layers.iter().zip(&q.weights.layers) {
            assert_eq!(a.wq.mixed, b.wq.mixed, "{what}");
            assert_eq!(a.w_down.mixed, b.w_down.mixed, "{what}");
        }
        assert_eq!(
            back.weights.token_embd.data.as_slice(),
            q.weights.token_embd.data.as_slice()
        );
        assert_eq!(cpu_logits(&back, &toks), c);
    }
    // GPTQ at 3 bits moves the logits less than RTN at 2.5, SliM-LLM at 3
    // bits less than at 2.
    assert!(errs[1].1 < errs[0].1, "{errs:?}");
    assert!(errs[3].1 < errs[2].1, "{errs:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_quantize_options_are_errors() {
    let src = source();
    let calib = windows(2, 16, 300, 1);
    for (method, bits, group) in [
        (Method::Rtn, 0.5, 128),
        (Method::Rtn, 9.0, 128),
        (Method::Rtn, 2.0, 48),
    ] {
        let opts = QuantizeOptions {
            method,
            bits,
            group,
            ..Default::default()
        };
        assert!(quantize_model(&gpu(), &src, &calib, &opts, &mut |_, _, _, _, _| {}).is_err());
    }
    // Calibrated methods need windows, of one length, inside the vocabulary.
    let opts = QuantizeOptions {
        method: Method::Gptq,
        ..Default::default()
    };
    assert!(quantize_model(&gpu(), &src, &[], &opts, &mut |_, _, _, _, _| {}).is_err());
    let ragged = vec![vec![1u32, 2, 3], vec![1u32, 2]];
    assert!(quantize_model(&gpu(), &src, &ragged, &opts, &mut |_, _, _, _, _| {}).is_err());
    let oov = vec![vec![1u32, 300]];
    assert!(quantize_model(&gpu(), &src, &oov, &opts, &mut |_, _, _, _, _| {}).is_err());
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lamina-quantize-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
