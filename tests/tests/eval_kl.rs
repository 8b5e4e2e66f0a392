//! Perplexity with a KL base: the base's logits saved to a file
//! (`perplexity --save-logits`) and read back give the same KL divergence as
//! running the base beside the model, and a file that does not fit the run
//! is refused.

use lamina_model::checkpoint::HostDType;
use lamina_model::checkpoint::LoadedModel;
use lamina_model::eval::{ChunkResult, KlBase, PerplexityResult, perplexity_kl};
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, WeightMode};
use lamina_model::logits_file::{LogitsReader, LogitsShape, LogitsWriter};
use lamina_model::quant::pipeline::{Method, QuantizeOptions, quantize_model};
use lamina_model::synthetic;
use lamina_tests::gpu;
use rand::{Rng, SeedableRng};

const CTX: usize = 32;

fn gpu_model(m: &LoadedModel) -> GpuModel {
    GpuModel::new(gpu(), m, WeightMode::Native, CTX, KvFormat::F16, |_, _| {}).unwrap()
}

/// `model` over `tokens` in chunks of `ctx`, against the logits saved in `path`.
fn against_saved(
    model: &GpuModel,
    path: &std::path::Path,
    tokens: &[u32],
    ctx: usize,
) -> lamina_model::Result<(PerplexityResult, Vec<ChunkResult>)> {
    let mut rd = LogitsReader::open(path)?;
    perplexity_kl(
        model,
        Some(KlBase::Saved(&mut rd)),
        None,
        tokens,
        ctx,
        None,
        None,
        |_, _, _| {},
    )
}

#[test]
fn saved_base_logits_give_the_live_kl() {
    let src = synthetic::synthetic_model("L2-d128-h4-kv2-f256-v200", HostDType::F32, 5).unwrap();
    let opts = QuantizeOptions {
        method: Method::Rtn,
        bits: 2.0,
        group: 64,
        ..Default::default()
    };
    let (q, _) = quantize_model(&gpu(), &src, &[], &opts, &mut |_, _, _, _, _| {}).unwrap();
    let (base, model) = (gpu_model(&src), gpu_model(&q));
    let mut r = rand::rngs::StdRng::seed_from_u64(9);
    let tokens: Vec<u32> = (0..3 * CTX).map(|_| r.random_range(0..200)).collect();

    let dir = std::env::temp_dir().join(format!("lamina-evalkl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("base.logits");
    let shape = LogitsShape {
        vocab: 200,
        ctx: CTX,
        first: CTX / 2,
    };
    let mut w = LogitsWriter::create(&path, shape).unwrap();
    let (rb, _) = perplexity_kl(
        &base,
        None,
        Some(&mut w),
        &tokens,
        CTX,
        None,
        None,
        |_, _, _| {},
    )
    .unwrap();
    w.finish().unwrap();
    assert_eq!(rb.chunks, 3);

    // The base against its own saved logits: no divergence.
    let (self_kl, _) = against_saved(&base, &path, &tokens, CTX).unwrap();
    let k = self_kl.kl.unwrap();
    assert!(k.mean < 1e-9 && k.top1_agree == 1.0, "{k:?}");
    assert_eq!(self_kl.ppl, rb.ppl);

    // The 2-bit model: live base and saved base agree, and the divergence is real.
    let (live, per_chunk) = perplexity_kl(
        &model,
        Some(KlBase::Model(&base)),
        None,
        &tokens,
        CTX,
        None,
        None,
        |_, _, _| {},
    )
    .unwrap();
    let (saved, _) = against_saved(&model, &path, &tokens, CTX).unwrap();
    let (a, b) = (live.kl.unwrap(), saved.kl.unwrap());
    assert!(a.mean > 1e-3, "{a:?}");
    assert!((a.mean - b.mean).abs() <= 1e-6 * a.mean, "{a:?} {b:?}");
    assert_eq!(a.top1_agree, b.top1_agree);
    assert_eq!(live.ppl, saved.ppl);
    // The running estimate after the last chunk is the result.
    assert_eq!(per_chunk.len(), 3);
    assert_eq!(per_chunk[2].so_far, live);
    assert_eq!(per_chunk[0].so_far.chunks, 1);

    // Other tokens, a longer run or another context are refused.
    let mut other = tokens.clone();
    other[CTX + 5] = (other[CTX + 5] + 1) % 200;
    let e = against_saved(&model, &path, &other, CTX).unwrap_err();
    assert!(e.to_string().contains("different tokens"), "{e}");
    let longer: Vec<u32> = tokens.iter().chain(&tokens[..CTX]).copied().collect();
    assert!(against_saved(&model, &path, &longer, CTX).is_err());
    assert!(against_saved(&model, &path, &tokens, CTX / 2).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
