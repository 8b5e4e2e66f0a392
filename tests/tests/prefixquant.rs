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
    logits_steps(m, toks, 0, toks.len())
}

/// Logits `[toks.len(), vocab]` of `toks` fed from position `pos`: the
/// first `prompt` tokens in one step, then one token a step (decode).
fn logits_steps(m: &GpuModel, toks: &[u32], pos: usize, prompt: usize) -> Vec<f32> {
    let mut c = Compiled::new(m, prompt as u32, Head::AllLogits).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < toks.len() {
        let n = if at == 0 { prompt } else { 1 };
        c.exec.write(c.io.ids, 0, &u32_bytes(&toks[at..at + n]));
        let step = Step {
            n_tokens: n as u32,
            pos: (pos + at) as u32,
            ..Default::default()
        };
        let bytes = 4 * (n * m.config.vocab_size) as u64;
        out.extend(f32_from_bytes(
            &c.exec.run_read(&step, c.io.logits, bytes).unwrap(),
        ));
        at += n;
    }
    out
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

/// Calibration text for the synthetic models: 3 windows of 40 tokens.
fn calibration_windows() -> Vec<Vec<u32>> {
    (0..3u32)
        .map(|w| (0..40).map(|i| (i * 17 + w * 101 + 3) % 300).collect())
        .collect()
}

/// A (rotated,) RTN-quantized 8-bit synthetic model with activation scales
/// calibrated after a one-token prefix.
fn quantized(rotated: bool, act_bits: u32, dynamic: bool) -> LoadedModel {
    use lamina_model::quant::act_scales::{ActScaleOptions, calibrate};
    use lamina_model::quant::pipeline::{Method, QuantizeOptions, quantize_model};
    let src = synthetic::synthetic_model("L2-d96-h3-kv1-f288-v300", HostDType::F32, 3).unwrap();
    let rot = match rotated {
        true => rotate(&src, &RotateOptions::default()).unwrap(),
        false => src,
    };
    let prefix = lamina_model::pivot::compute(&rot.config, &rot.weights, &[1]).unwrap();
    let o = QuantizeOptions {
        method: Method::Rtn,
        bits: 8.0,
        group: 32,
        ..Default::default()
    };
    let (mut q, _) = quantize_model(&gpu(), &rot, &[], &o, &mut |_, _, _, _, _| {}).unwrap();
    let windows = calibration_windows();
    let ao = ActScaleOptions {
        bits: act_bits,
        dynamic,
        sample_every: 2,
    };
    let act = calibrate(
        &q.config,
        &q.weights,
        Some(&prefix),
        &windows,
        &ao,
        |_, _, _| {},
    )
    .unwrap();
    let recipe = q.recipe.as_mut().unwrap();
    recipe.act = Some(act);
    q.pivot = Some(prefix);
    q
}

/// The integer path (act_quant + matmul_int over Mixed weights) on the GPU
/// against the CPU reference simulating the same quantization, after the
/// prefix, with keys and values rounded to f16 as the GPU's cache stores
/// them: equal within float noise. Rounding to integers turns the last
/// bits of a value into a whole step when it lies at a boundary, so the
/// comparison is exact only where both sides compute bit-identical inputs:
/// in a rotated model the GPU's Hadamard transforms differ from the CPU's
/// in the last bit, and only the size of the quantization error is
/// compared there (float vs integer activations, GPU vs CPU). 4-bit
/// activations cost more than 8-bit ones.
#[test]
fn integer_activations_match_the_reference() {
    let toks: Vec<u32> = (0..23).map(|i| (i * 41 + 7) % 300).collect();
    let mut costs = Vec::new();
    for (rotated, act_bits, dynamic) in [
        (false, 8, false),
        (false, 4, false),
        (false, 8, true),
        (true, 8, false),
        (true, 4, true),
    ] {
        let q = quantized(rotated, act_bits, dynamic);
        let pv = q.pivot.clone().unwrap();
        let act = q.recipe.as_ref().unwrap().act.clone().unwrap();
        let run = |q: &LoadedModel| {
            let gm = GpuModel::with_pivot(
                gpu(),
                q,
                WeightMode::Native,
                40,
                KvFormat::F16,
                Some(&pv),
                |_, _| {},
            )
            .unwrap();
            logits_steps(&gm, &toks, pv.len(), toks.len())
        };
        let got = run(&q);
        let mut qf = q.clone();
        qf.recipe.as_mut().unwrap().act = None;
        let gpu_float = run(&qf);
        let mut r = Reference::new(&q.config, &q.weights, 40).unwrap();
        r.set_f16_cache(true);
        r.load_prefix(&pv).unwrap();
        let float = r.forward(&toks, pv.len()).unwrap();
        r.set_act_quant(Some(act)).unwrap();
        r.load_prefix(&pv).unwrap();
        let want = r.forward(&toks, pv.len()).unwrap();
        let (d, cost, gpu_cost) = (
            rel_diff(&want, &got),
            rel_diff(&float, &want),
            rel_diff(&gpu_float, &got),
        );
        let what = format!("rotated {rotated} A{act_bits} dynamic {dynamic}");
        eprintln!(
            "{what}: GPU vs reference {d:.2e}; cost {cost:.2e} (reference), {gpu_cost:.2e} (GPU)"
        );
        assert!(cost > 1e-3, "{what}: quantized activations changed nothing");
        if rotated {
            assert!(
                gpu_cost > 0.5 * cost && gpu_cost < 2.0 * cost,
                "{what}: the GPU's quantization error {gpu_cost} is not the reference's {cost}"
            );
        } else {
            assert!(d < 1e-5, "{what}: GPU vs reference {d} (cost {cost})");
            costs.push(cost);
        }
    }
    assert!(
        costs[1] > costs[0],
        "4-bit activations should cost more than 8-bit: {costs:?}"
    );
}

/// PrefixQuant's static KV4 cache in a whole model: scales calibrated after
/// the prefix, the GPU's static cache (every position past the prefix
/// quantized as it is written, prompt and decode steps) against the CPU
/// reference simulating the same cache. Unrotated, both sides quantize
/// bit-identical keys and values, so they agree within float noise, while
/// the cache's quantization moves the logits far more; rotated (online
/// Hadamard on Q and K), only the sizes of the error are compared, as for
/// the activations above. 8-bit caches cost less than 4-bit ones. Keys
/// with per-channel scales take the same path.
#[test]
fn static_kv_cache_matches_the_reference() {
    use lamina_model::quant::kv_scales::{KvScaleOptions, calibrate};
    let toks: Vec<u32> = (0..23).map(|i| (i * 41 + 7) % 300).collect();
    let mut costs = Vec::new();
    for (rotated, kv_bits, k_channel) in [
        (false, 4, false),
        (false, 8, false),
        (false, 4, true),
        (true, 4, false),
        (true, 4, true),
    ] {
        let mut q = quantized(rotated, 8, false);
        let pv = q.pivot.clone().unwrap();
        let act = q.recipe.as_ref().unwrap().act.clone().unwrap();
        let o = KvScaleOptions {
            bits: kv_bits,
            query_every: 2,
            k_channel,
            ..Default::default()
        };
        let kv = calibrate(
            &q.config,
            &q.weights,
            Some(&act),
            Some(&pv),
            &calibration_windows(),
            &o,
            |_, _, _| {},
        )
        .unwrap();
        q.recipe.as_mut().unwrap().kv = Some(kv.clone());
        let format = KvFormat::static_for(&kv).unwrap();
        let gm = GpuModel::with_pivot(
            gpu(),
            &q,
            WeightMode::Native,
            40,
            format,
            Some(&pv),
            |_, _| {},
        )
        .unwrap();
        // A prompt step of 15 tokens, then 8 decode steps.
        let got = logits_steps(&gm, &toks, pv.len(), 15);
        let mut r = Reference::new(&q.config, &q.weights, 40).unwrap();
        r.set_f16_cache(true);
        r.set_act_quant(Some(act)).unwrap();
        r.load_prefix(&pv).unwrap();
        let f16_cache = r.forward(&toks, pv.len()).unwrap();
        r.set_kv_static(Some(kv)).unwrap();
        r.load_prefix(&pv).unwrap();
        let want = r.forward(&toks, pv.len()).unwrap();
        let (d, cost) = (rel_diff(&want, &got), rel_diff(&f16_cache, &want));
        let what = format!("rotated {rotated} KV{kv_bits} keys per channel {k_channel}");
        eprintln!("{what}: GPU vs reference {d:.2e}; the cache's cost {cost:.2e}");
        assert!(cost > 1e-4, "{what}: the static cache changed nothing");
        if rotated {
            let gpu_cost = rel_diff(&f16_cache, &got);
            assert!(
                gpu_cost > 0.5 * cost && gpu_cost < 2.0 * cost,
                "{what}: the GPU's cache error {gpu_cost} is not the reference's {cost}"
            );
        } else {
            assert!(d < 1e-5, "{what}: GPU vs reference {d} (cost {cost})");
            costs.push(cost);
        }
    }
    assert!(
        costs[0] > costs[1],
        "a 4-bit cache should cost more than an 8-bit one: {costs:?}"
    );
}
