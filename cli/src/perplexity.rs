//! `lamina perplexity`: llama.cpp's method and output line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use lamina_model::eval::{self, KlBase};
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::WeightMode;
use lamina_model::logits_file::{self, LogitsReader, LogitsShape, LogitsWriter};
use lamina_model::tokenizer::Tokenizer;

use crate::common::{ModelArgs, PivotMode, bar, gpu_model, load_host_model, spinner};

#[derive(Args, Debug, Clone)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to evaluate (e.g. WikiText-2's wiki.test.raw).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Evaluate only the first N chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Write per-chunk mean NLL as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also report the KL divergence of this model's token distributions from
    /// a base: a model run beside it with f32 weights (e.g. the GGUF a
    /// quantized file was made from: the full-precision reference), or a
    /// file of logits saved by `--save-logits`.
    #[arg(long = "kl-base")]
    pub kl_base: Option<PathBuf>,
    /// Save this run's logits at the scored positions (f32, about 50 MB a
    /// chunk for a 49k vocabulary) as a KL base for later runs. An existing
    /// file is not overwritten.
    #[arg(long = "save-logits")]
    pub save_logits: Option<PathBuf>,
}

pub fn run(a: &PerplexityArgs) -> Result<()> {
    if let Some(p) = &a.save_logits
        && p.exists()
    {
        bail!("{} exists; remove it or choose another name", p.display());
    }
    for p in a.save_logits.iter().chain(&a.json) {
        crate::common::check_output_folder(p)?;
    }
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let text = crate::common::without_final_newline(text);
    if text.is_empty() {
        bail!("{} is empty", a.file.display());
    }
    let ctx = match a.model.ctx_size {
        None | Some(0) => 512,
        Some(c) => c,
    };
    if let Some(0) = a.chunks {
        bail!("--chunks must be at least 1");
    }
    let host = load_host_model(&a.model)?;
    if host.tokenizer_spec.tokens.is_empty() && host.tokenizer_spec.hf_json.is_none() {
        bail!(
            "{} has no tokenizer: perplexity needs a real model",
            host.source
        );
    }
    let tok = Tokenizer::from_spec(&host.tokenizer_spec)?;
    let sp = spinner("tokenizing");
    let t0 = Instant::now();
    let tokens = tok.encode(&text, false)?;
    sp.finish_and_clear();
    eprintln!(
        "tokenized {} bytes into {} tokens in {:.1} s",
        text.len(),
        tokens.len(),
        t0.elapsed().as_secs_f64()
    );
    // llama.cpp puts BOS at each chunk's start only when the tokenizer adds BOS.
    let bos = if host.tokenizer_spec.add_bos {
        tok.bos_id()
    } else {
        None
    };
    let mut margs = a.model.clone();
    margs.ctx_size = Some(ctx);
    // Steps of at most -b tokens (512), within a chunk.
    margs.batch_size = margs.batch_size.min(ctx as u32).max(1);
    let model = gpu_model(&margs, &host, ctx)?;
    drop(host);
    let mut saved_base = match &a.kl_base {
        Some(p) if logits_file::is_logits_file(p) => Some(LogitsReader::open(p)?),
        _ => None,
    };
    let base = match &a.kl_base {
        Some(_) if saved_base.is_some() => None,
        Some(p) => {
            let mut bargs = margs.clone();
            bargs.model = Some(p.clone());
            bargs.weights = WeightMode::F32;
            bargs.kv = Some(KvFormat::F16);
            // The same pivot tokens (kept f16 by both).
            bargs.pivot = if model.kv.pivot.is_empty() {
                PivotMode::None
            } else {
                PivotMode::Bos
            };
            let bh = load_host_model(&bargs)?;
            if bh.config.vocab_size != model.config.vocab_size {
                bail!(
                    "KL base {} has a vocabulary of {}, the model {}",
                    p.display(),
                    bh.config.vocab_size,
                    model.config.vocab_size
                );
            }
            Some(gpu_model(&bargs, &bh, ctx)?)
        }
        None => None,
    };
    let available = tokens.len() / ctx;
    let n = a.chunks.map_or(available, |c| c.min(available));
    let kv_bytes = model.kv.format.bytes_per_token(&model.config);
    eprintln!(
        "perplexity: {n} chunks of {ctx} tokens (of {available}), BOS {}; KV {} ({kv_bytes:.1} bytes/token{}), pivot {:?}",
        if bos.is_some() {
            "at each chunk"
        } else {
            "not added"
        },
        model.kv.format.name(),
        match model.kv.layout {
            Some(l) => format!(", {} recent tokens in f16", l.recent),
            None => String::new(),
        },
        model.kv.pivot
    );
    let mut writer = match &a.save_logits {
        Some(p) => Some(LogitsWriter::create(
            p,
            LogitsShape {
                vocab: model.config.vocab_size,
                ctx,
                first: ctx / 2,
            },
        )?),
        None => None,
    };
    let kl_base = match (saved_base.as_mut(), base.as_deref()) {
        (Some(r), _) => Some(KlBase::Saved(r)),
        (None, Some(m)) => Some(KlBase::Model(m)),
        _ => None,
    };
    let pb = bar(n as u64, "perplexity");
    let t0 = Instant::now();
    let (r, per_chunk) = eval::perplexity_kl(
        &model,
        kl_base,
        writer.as_mut(),
        &tokens,
        ctx,
        a.chunks,
        bos,
        |done, _total, ppl| {
            pb.set_position(done as u64);
            pb.set_message(format!("ppl {ppl:.4}"));
        },
    )?;
    pb.finish_and_clear();
    if let Some(w) = writer {
        let p = w.finish()?;
        eprintln!("saved the scored logits to {}", p.display());
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} chunks, {} tokens scored, {:.2} s ({:.2} s per chunk, {:.1} t/s)",
        r.chunks,
        r.tokens_scored,
        secs,
        secs / r.chunks as f64,
        (r.chunks * ctx) as f64 / secs
    );
    if let Some(k) = r.kl {
        println!(
            "KL divergence from {}: {:.6} +/- {:.6}; same top token {:.2}%",
            a.kl_base
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            k.mean,
            k.err,
            100.0 * k.top1_agree
        );
    }
    println!("Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_err);
    // Written last: a failed write loses none of the printed results.
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "ctx": ctx, "chunks": r.chunks, "ppl": r.ppl, "ppl_err": r.ppl_err,
            "mean_nll": r.mean_nll,
            "chunk_mean_nll": per_chunk.iter().map(|c| c.mean_nll).collect::<Vec<_>>(),
            // The estimates over the first k chunks, k = 1 ..= chunks.
            "so_far": per_chunk.iter().map(|c| serde_json::json!({
                "ppl": c.so_far.ppl, "ppl_err": c.so_far.ppl_err,
                "kl": c.so_far.kl.map(|k| k.mean), "kl_err": c.so_far.kl.map(|k| k.err),
                "top1_agree": c.so_far.kl.map(|k| k.top1_agree),
            })).collect::<Vec<_>>(),
            "weights": a.model.weights.name(), "kv": model.kv.format.name(),
            "kv_bytes_per_token": kv_bytes, "kv_recent": model.kv.layout.map(|l| l.recent),
            "pivot": model.kv.pivot,
            "kl": r.kl.map(|k| k.mean), "kl_err": r.kl.map(|k| k.err),
            "top1_agree": r.kl.map(|k| k.top1_agree),
        });
        std::fs::write(p, serde_json::to_string_pretty(&j)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
