//! The quantized KV cache and the pivot segment inside a whole model
//! (synthetic, f32 weights, head_dim 32):
//! - a quantized cache whose recent window holds every token never
//!   quantizes anything, and gives the f16 cache's logits;
//! - with nothing kept recent, the error grows as the bits shrink: q8 < q4
//!   < q2 in KL divergence from the f16 cache, and QJL keys improve with
//!   more sketch rows;
//! - a pivot computed by the CPU reference ahead of a sequence gives the
//!   logits of running the pivot tokens as the sequence's start, in the f16
//!   and the quantized layouts;
//! - a `.lamina.safetensors` file carries its pivot;
//! - a pivot computed from a quantized model's own weights (`--pivot-source
//!   model`) equals running its tokens first on that model, and differs
//!   from the full-precision pivot IntactKV uses.

use lamina_engine::graph::Step;
use lamina_model::checkpoint::HostDType;
use lamina_model::checkpoint::LoadedModel;
use lamina_model::checkpoint::Pivot;
use lamina_model::eval::{KlBase, kl_row, perplexity_kl};
use lamina_model::kv_cache::KvFormat;
use lamina_model::lamina_file;
use lamina_model::llama::{GpuModel, Head, WeightMode};
use lamina_model::pivot;
use lamina_model::quant::pipeline::{Method, QuantizeOptions, quantize_model};
use lamina_model::session::Compiled;
use lamina_model::synthetic;
use lamina_tests::{f32_from_bytes, gpu, u32_bytes};
use rand::{Rng, SeedableRng};

const SPEC: &str = "L2-d128-h4-kv2-f256-v200";

fn source() -> LoadedModel {
    synthetic::synthetic_model(SPEC, HostDType::F32, 5).unwrap()
}

fn model(m: &LoadedModel, ctx: usize, kv: KvFormat, pivot: Option<&Pivot>) -> GpuModel {
    GpuModel::with_pivot(gpu(), m, WeightMode::Native, ctx, kv, pivot, |_, _| {}).unwrap()
}

fn fmt(s: &str, recent: u32) -> KvFormat {
    let mut f: KvFormat = s.parse().unwrap();
    f.recent = recent;
    f
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(0..200)).collect()
}

/// KL divergence of `m` from `base` over `toks` in chunks of `ctx`.
fn kl(m: &GpuModel, base: &GpuModel, toks: &[u32], ctx: usize) -> f64 {
    let (r, _) = perplexity_kl(
        m,
        Some(KlBase::Model(base)),
        None,
        toks,
        ctx,
        None,
        None,
        |_, _, _| {},
    )
    .unwrap();
    r.kl.unwrap().mean
}

/// Logits `[toks.len(), vocab]` of `toks` fed at `pos` in one step.
fn logits(m: &GpuModel, toks: &[u32], pos: usize) -> Vec<f32> {
    let mut c = Compiled::new(m, toks.len() as u32, Head::AllLogits).unwrap();
    c.exec.write(c.io.ids, 0, &u32_bytes(toks));
    let step = Step {
        n_tokens: toks.len() as u32,
        pos: pos as u32,
        ..Default::default()
    };
    let b = c
        .exec
        .run_read(
            &step,
            c.io.logits,
            4 * (toks.len() * m.config.vocab_size) as u64,
        )
        .unwrap();
    f32_from_bytes(&b)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn window_only_cache_matches_f16() {
    let src = source();
    let ctx = 96;
    let toks = tokens(3 * ctx, 1);
    let base = model(&src, ctx, KvFormat::F16, None);
    for f in ["q2", "qjl", "k=q8,v=q4"] {
        let m = model(&src, ctx, fmt(f, ctx as u32), None);
        let k = kl(&m, &base, &toks, ctx);
        assert!(k < 1e-9, "{f}: KL {k} with every token in the f16 window");
    }
}

#[test]
fn error_grows_as_bits_shrink() {
    let src = source();
    let ctx = 96;
    let toks = tokens(4 * ctx, 2);
    let base = model(&src, ctx, KvFormat::F16, None);
    let kls: Vec<f64> = ["q8", "q4", "q2"]
        .iter()
        .map(|f| kl(&model(&src, ctx, fmt(f, 0), None), &base, &toks, ctx))
        .collect();
    assert!(
        kls[0] < kls[1] && kls[1] < kls[2] && kls[0] > 0.0,
        "KL q8 / q4 / q2: {kls:?}"
    );
    let qjl = |m: u32| {
        let mut f = fmt("k=qjl,v=f16", 0);
        f.qjl_m = m;
        kl(&model(&src, ctx, f, None), &base, &toks, ctx)
    };
    let (small, big) = (qjl(64), qjl(256));
    assert!(
        big < small && big > 0.0,
        "QJL keys: KL {small} at m 64, {big} at m 256"
    );
}

#[test]
fn pivot_equals_running_its_tokens_first() {
    let src = source();
    let pivot_tokens = [7u32, 42];
    let pivot = pivot::compute(&src.config, &src.weights, &pivot_tokens).unwrap();
    let toks = tokens(40, 3);
    let whole: Vec<u32> = pivot_tokens.iter().chain(&toks).copied().collect();
    let plain = model(&src, 64, KvFormat::F16, None);
    let want = logits(&plain, &whole, 0);
    let vocab = src.config.vocab_size;
    let want = &want[pivot_tokens.len() * vocab..];
    // The pivot's K and V are rounded to f16 like any cached value.
    for f in [KvFormat::F16, fmt("q4", 64)] {
        let m = model(&src, 64, f, Some(&pivot));
        assert_eq!(m.kv.pivot, pivot_tokens);
        let got = logits(&m, &toks, pivot_tokens.len());
        let d = max_diff(&got, want);
        assert!(d < 2e-3, "{}: logits differ by {d}", f.name());
    }
    // A pivot that fills the context is refused.
    let e = GpuModel::with_pivot(
        gpu(),
        &src,
        WeightMode::Native,
        2,
        KvFormat::F16,
        Some(&pivot),
        |_, _| {},
    );
    assert!(e.is_err());
}

/// A prompt that starts with the pivot's tokens fills their positions
/// once (the session skips them); any other prompt comes after them.
#[test]
fn prompt_positions_count_the_pivot_once() {
    use lamina_model::session::{SamplerConfig, Session};
    let src = source();
    let pivot_tokens = [7u32, 42];
    let pivot = pivot::compute(&src.config, &src.weights, &pivot_tokens).unwrap();
    let m = std::sync::Arc::new(model(&src, 64, KvFormat::F16, Some(&pivot)));
    let mut s = Session::new(m, 8, SamplerConfig::greedy()).unwrap();
    let toks = tokens(10, 5);
    let whole: Vec<u32> = pivot_tokens.iter().chain(&toks).copied().collect();
    assert_eq!(s.positions_for(&whole), whole.len());
    assert_eq!(s.positions_for(&toks), pivot_tokens.len() + toks.len());
    // What feeding them does.
    s.feed(&whole).unwrap();
    assert_eq!(s.pos(), s.positions_for(&whole));
    s.reset();
    s.feed(&toks).unwrap();
    assert_eq!(s.pos(), s.positions_for(&toks));
}

#[test]
fn lamina_file_carries_its_pivot() {
    let mut m = source();
    m.recipe = Some(lamina_model::checkpoint::Recipe {
        name: "test".into(),
        ..Default::default()
    });
    let pivot = pivot::compute(&m.config, &m.weights, &[3]).unwrap();
    m.pivot = Some(pivot.clone());
    let dir = std::env::temp_dir().join(format!("lamina-kvmodel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.lamina.safetensors");
    lamina_file::write(&path, &m).unwrap();
    let back = lamina_file::load(&path).unwrap();
    assert_eq!(back.pivot.as_ref(), Some(&pivot));
    // The stored pivot serves its tokens; others need the source, which a
    // synthetic model does not name.
    assert_eq!(pivot::for_model(&back, &[3]).unwrap(), pivot);
    assert!(pivot::for_model(&back, &[4]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `src` quantized round-to-nearest at `bits`.
fn rtn(src: &LoadedModel, bits: f64) -> LoadedModel {
    let opts = QuantizeOptions {
        method: Method::Rtn,
        bits,
        ..Default::default()
    };
    quantize_model(&gpu(), src, &[], &opts, &mut |_, _, _, _, _| {})
        .unwrap()
        .0
}

#[test]
fn quantized_model_pivot_from_its_own_weights() {
    let src = source();
    let q = rtn(&src, 2.0);
    let pivot_tokens = [7u32, 42, 9];
    let own = pivot::compute(&q.config, &q.weights, &pivot_tokens).unwrap();
    let full = pivot::compute(&src.config, &src.weights, &pivot_tokens).unwrap();
    // 2-bit weights move the pivot's KV well beyond f16 rounding.
    let moved = own.k[1]
        .iter()
        .zip(&full.k[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        moved > 0.05,
        "2-bit weights leave the pivot's keys within {moved}"
    );
    // The quantized model's own pivot is its own start, computed on the CPU.
    let toks = tokens(24, 8);
    let whole: Vec<u32> = pivot_tokens.iter().chain(&toks).copied().collect();
    let plain = model(&q, 64, KvFormat::F16, None);
    let want = logits(&plain, &whole, 0);
    let want = &want[pivot_tokens.len() * q.config.vocab_size..];
    let m = model(&q, 64, KvFormat::F16, Some(&own));
    let d = max_diff(&logits(&m, &toks, pivot_tokens.len()), want);
    // f16 KV rounding, on logits larger than the f32 source's.
    assert!(
        d < 1e-2,
        "the quantized model's own pivot: logits differ by {d}"
    );
    let m = model(&q, 64, KvFormat::F16, Some(&full));
    let d = max_diff(&logits(&m, &toks, pivot_tokens.len()), want);
    assert!(d > 0.5, "the full-precision pivot changes nothing ({d})");
}

/// Mean KL divergence of `b` from `a` over rows of `vocab` logits.
fn mean_kl(a: &[f32], b: &[f32], vocab: usize) -> f64 {
    let rows = a.len() / vocab;
    (0..rows)
        .map(|r| kl_row(&a[r * vocab..][..vocab], &b[r * vocab..][..vocab]).0)
        .sum::<f64>()
        / rows as f64
}

#[test]
fn calibrated_pivot_brings_a_quantized_model_closer() {
    use lamina_model::quant::intactkv::{PivotCalibOptions, calibrate_pivot};
    use lamina_model::reference::Reference;
    let src = source();
    let q = rtn(&src, 3.0);
    let full = pivot::compute(&src.config, &src.weights, &[7]).unwrap();
    let windows: Vec<Vec<u32>> = (0..6).map(|i| tokens(48, 20 + i)).collect();
    let (tuned, fits) = calibrate_pivot(
        (&src.config, &src.weights),
        (&q.config, &q.weights),
        &full,
        &windows,
        &PivotCalibOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    // Every layer's fit is at least as good as the untuned pivot's, and the
    // layers together gain.
    for (l, f) in fits.iter().enumerate() {
        assert!(f.mse_after <= f.mse_before, "layer {l}: {f:?}");
    }
    let sum = |f: &dyn Fn(&lamina_model::quant::intactkv::LayerFit) -> f64| {
        fits.iter().map(f).sum::<f64>()
    };
    let (before, after) = (sum(&|f| f.mse_before), sum(&|f| f.mse_after));
    assert!(after < 0.97 * before, "MSE {before} -> {after}");
    // On held-out tokens the quantized model with the tuned pivot is closer
    // to the full-precision model with its own.
    let vocab = src.config.vocab_size;
    let run = |m: &LoadedModel, p: &Pivot, toks: &[u32]| {
        let mut r = Reference::new(&m.config, &m.weights, 64).unwrap();
        r.load_prefix(p).unwrap();
        r.forward(toks, p.len()).unwrap()
    };
    let (mut kl_full, mut kl_tuned) = (0.0, 0.0);
    for seed in 40..44 {
        let toks = tokens(48, seed);
        let want = run(&src, &full, &toks);
        kl_full += mean_kl(&want, &run(&q, &full, &toks), vocab);
        kl_tuned += mean_kl(&want, &run(&q, &tuned, &toks), vocab);
    }
    assert!(
        kl_tuned < kl_full,
        "KL {kl_full} with the full-precision pivot, {kl_tuned} tuned"
    );
    eprintln!("KL {kl_full} -> {kl_tuned}; MSE {before} -> {after}");
}
