//! Options shared by the commands that run a model, and model loading.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lamina_engine::{DeviceOptions, Gpu};
use lamina_model::kv_cache::{KvFormat, Pivot};
use lamina_model::llama::{GpuModel, WeightMode};
use lamina_model::loader::{self, LoadedModel};
use lamina_model::synthetic;
use lamina_model::tokenizer::Tokenizer;
use lamina_model::weights::HostDType;

use crate::fetch;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file or a Hugging Face model directory (default: SmolLM2-135M-Instruct Q4_1, fetched if missing).
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// A Llama of this shape with seeded random weights instead of a checkpoint
    /// (tiny, 135m, 1b, 7b, or L<layers>-d<dim>-h<heads>-kv<kv>-f<ffn>-v<vocab>); for speed only.
    #[arg(long, conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// Weight format of --synthetic models: q4_0, q4_1, q8_0, f16, f32.
    #[arg(long, default_value = "q4_1", requires = "synthetic")]
    pub synthetic_format: String,
    /// How weights are stored on the GPU: native (as shipped: GGUF Q4_1 stays 4-bit), f16 or f32.
    #[arg(long, default_value = "native")]
    pub weights: String,
    /// KV cache format: f16, q8, q4, q2 (keys and values alike), qjl (QJL keys, q2 values),
    /// or k=FORMAT,v=FORMAT (keys: f16, q8, q4, q2, qjl; values: f16, q8, q4, q2).
    #[arg(long, default_value = "f16")]
    pub kv: String,
    /// Quantized KV cache: the fewest recent tokens kept in f16.
    #[arg(long, default_value_t = lamina_model::kv_cache::DEFAULT_RECENT)]
    pub kv_recent: u32,
    /// Quantized KV cache: channels per scale group of q8/q4/q2 (divides head_dim).
    #[arg(long, default_value_t = 32)]
    pub kv_group: u32,
    /// q8/q4/q2 keys: scales per channel over each group of 32 tokens (as KIVI does), or per
    /// token in groups of --kv-group channels (as values are).
    #[arg(long, default_value = "channel", value_parser = ["channel", "token"])]
    pub kv_keys: String,
    /// Quantized KV cache: the first N positions (the pivot's included) are never quantized,
    /// like the pivot but filled by the sequence itself (attention sinks).
    #[arg(long, default_value_t = lamina_model::kv_cache::DEFAULT_SINK)]
    pub kv_sink: u32,
    /// QJL keys: sketch rows (bits per key), a multiple of 32; 0 = twice head_dim.
    #[arg(long, default_value_t = 0)]
    pub qjl_m: u32,
    /// QJL keys: outlier channels per group of 32 tokens, sketched apart (0-4).
    #[arg(long, default_value_t = 4)]
    pub qjl_outliers: u32,
    /// QJL keys: how the outlier channels are stored: sketched apart with m/2 rows (as the
    /// paper does), or as 8-bit codes with per-channel scales over the group of 32 tokens.
    #[arg(long, default_value = "sketch", value_parser = ["sketch", "q8"])]
    pub qjl_outlier_format: String,
    /// QJL keys: the first N layers get twice the sketch rows (as QJL's code does).
    #[arg(long, default_value_t = 0)]
    pub qjl_initial_layers: u32,
    /// Quantized KV cache: a prompt step attends to its own tokens in f16 (as QJL's code
    /// does); only later steps see them quantized. Not what `perplexity` reports by default.
    #[arg(long)]
    pub kv_exact_prompt: bool,
    /// Pivot tokens kept lossless ahead of every sequence (IntactKV): none, bos, or auto
    /// ([BOS] with a quantized KV cache when the model starts its sequences with BOS).
    #[arg(long, default_value = "auto")]
    pub pivot: String,
    /// Text for the pivot (e.g. the chat template's system turn): its KV too comes from
    /// the full-precision model and stays f16; prompts that start with it reuse it.
    #[arg(long)]
    pub pivot_prompt: Option<String>,
    /// Which weights compute the pivot's KV: `full`, the full-precision source (IntactKV);
    /// or `model`, the weights being run, quantized or not (to measure what `full` adds).
    #[arg(long, default_value = "full", value_parser = ["full", "model"])]
    pub pivot_source: String,
    /// Context size (positions in the KV cache); 0 = the model's training context.
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Most tokens processed in one prompt step.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: u32,
}

impl ModelArgs {
    /// The defaults for `model` (or the default model), as if no flag were given.
    pub fn plain(model: Option<PathBuf>) -> Self {
        ModelArgs {
            model,
            synthetic: None,
            synthetic_format: "q4_1".into(),
            weights: "native".into(),
            kv: "f16".into(),
            kv_recent: lamina_model::kv_cache::DEFAULT_RECENT,
            kv_group: 32,
            kv_keys: "channel".into(),
            kv_sink: lamina_model::kv_cache::DEFAULT_SINK,
            qjl_m: 0,
            qjl_outliers: 4,
            qjl_outlier_format: "sketch".into(),
            qjl_initial_layers: 0,
            kv_exact_prompt: false,
            pivot: "auto".into(),
            pivot_prompt: None,
            pivot_source: "full".into(),
            ctx_size: None,
            batch_size: 512,
        }
    }
}

pub fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} [{elapsed} < {eta}]")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

pub fn parse_synthetic_format(s: &str) -> Result<HostDType> {
    Ok(match s {
        "q4_0" => HostDType::Q4_0,
        "q4_1" => HostDType::Q4_1,
        "q8_0" => HostDType::Q8_0,
        "f16" => HostDType::F16,
        "f32" => HostDType::F32,
        _ => anyhow::bail!("unknown --synthetic-format `{s}` (q4_0, q4_1, q8_0, f16, f32)"),
    })
}

/// Loads the checkpoint named by `--model` (or the default one, fetching it)
/// or builds the synthetic one.
pub fn load_host_model(a: &ModelArgs) -> Result<LoadedModel> {
    if let Some(preset) = &a.synthetic {
        let dtype = parse_synthetic_format(&a.synthetic_format)?;
        let sp = spinner(&format!("generating synthetic {preset} weights"));
        let m = synthetic::synthetic_model(preset, dtype, 0)?;
        sp.finish_and_clear();
        return Ok(m);
    }
    let path = match &a.model {
        Some(p) => p.clone(),
        None => fetch::ensure_default_model()?,
    };
    loader::load(&path).with_context(|| format!("loading model {}", path.display()))
}

pub fn open_gpu() -> Result<Arc<Gpu>> {
    let gpu = Gpu::with_options(&DeviceOptions::from_env()?)?;
    log::info!("GPU: {}", gpu.describe());
    Ok(gpu)
}

/// The KV cache format the flags in `a` ask for.
pub fn kv_format(a: &ModelArgs) -> Result<KvFormat> {
    let mut kv: KvFormat = a.kv.parse()?;
    kv.recent = a.kv_recent;
    kv.qgroup = a.kv_group;
    kv.k_channel = a.kv_keys == "channel";
    kv.sink = a.kv_sink;
    kv.qjl_m = a.qjl_m;
    kv.qjl_outliers = a.qjl_outliers;
    kv.qjl_outlier_q8 = a.qjl_outlier_format == "q8";
    kv.qjl_initial_layers = a.qjl_initial_layers;
    if a.kv_exact_prompt && kv.is_f16() {
        anyhow::bail!("--kv-exact-prompt needs a quantized cache (--kv q8, q4, q2 or qjl)");
    }
    kv.exact_prompt = a.kv_exact_prompt;
    Ok(kv)
}

/// The pivot tokens the flags in `a` ask for (empty: none): `bos` gives
/// [BOS] then `--pivot-prompt`'s tokens; `auto` gives the prompt's tokens as
/// the tokenizer encodes a sequence's start (with BOS where it adds one),
/// and without a prompt [BOS] for a quantized cache of a model whose
/// sequences start with BOS.
pub fn pivot_tokens(a: &ModelArgs, m: &LoadedModel, kv: &KvFormat) -> Result<Vec<u32>> {
    let tok = || Tokenizer::from_spec(&m.tokenizer_spec);
    let bos = |t: &Tokenizer| {
        t.bos_id().ok_or_else(|| {
            anyhow::anyhow!("the model's tokenizer has no BOS token to start a pivot with")
        })
    };
    let tokens = match (a.pivot.as_str(), &a.pivot_prompt) {
        ("none", None) => Vec::new(),
        ("none", Some(_)) => anyhow::bail!("--pivot-prompt needs a pivot; drop --pivot none"),
        ("bos", p) => {
            let t = tok()?;
            let mut v = vec![bos(&t)?];
            if let Some(p) = p {
                v.extend(t.encode(p, false)?);
            }
            v
        }
        ("auto", Some(p)) => tok()?.encode(p, true)?,
        ("auto", None) if !kv.is_f16() && m.tokenizer_spec.add_bos => vec![bos(&tok()?)?],
        ("auto", None) => Vec::new(),
        (other, _) => anyhow::bail!("unknown --pivot `{other}` (none, bos, auto)"),
    };
    if a.pivot_prompt.is_some() && tokens.is_empty() {
        anyhow::bail!("--pivot-prompt encodes to no tokens");
    }
    Ok(tokens)
}

/// Uploads `m` to the GPU with the options in `a`, with room for `min_ctx`
/// positions after the pivot.
pub fn gpu_model(a: &ModelArgs, m: &LoadedModel, min_ctx: usize) -> Result<Arc<GpuModel>> {
    let gpu = open_gpu()?;
    let mode: WeightMode = a.weights.parse()?;
    let kv = kv_format(a)?;
    let tokens = pivot_tokens(a, m, &kv)?;
    let pivot = if tokens.is_empty() {
        None
    } else {
        let full = a.pivot_source == "full";
        let sp = spinner(&format!(
            "computing the pivot KV of {} tokens with the {} model",
            tokens.len(),
            if full { "full-precision" } else { "loaded" }
        ));
        let p = if full {
            Pivot::for_model(m, &tokens)?
        } else {
            Pivot::compute(&m.config, &m.weights, &tokens)?
        };
        sp.finish_and_clear();
        Some(p)
    };
    let p = tokens.len();
    let mut ctx = match a.ctx_size {
        None | Some(0) => m.config.max_seq_len.max(min_ctx),
        Some(c) => c,
    };
    if ctx < min_ctx + p {
        if a.ctx_size.is_some_and(|c| c > 0) && p == 0 {
            anyhow::bail!(
                "context size {ctx} is smaller than the {min_ctx} positions this run needs"
            );
        }
        ctx = min_ctx + p;
    }
    let pb = bar(1, "uploading weights");
    let model = GpuModel::with_pivot(gpu, m, mode, ctx, kv, pivot.as_ref(), |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    log::info!(
        "model: {} ({}), weights {:.1} MiB on GPU as {:?}, KV cache {} x {} = {:.1} MiB \
         ({:.0} bytes per token), pivot {:?}",
        m.source,
        m.file_type,
        model.weight_bytes() as f64 / 1048576.0,
        mode,
        ctx,
        kv.name(),
        model.kv.bytes() as f64 / 1048576.0,
        kv.bytes_per_token(&m.config),
        model.kv.pivot
    );
    Ok(Arc::new(model))
}

pub fn list_devices() -> Result<()> {
    let opts = DeviceOptions::from_env()?;
    let adapters = lamina_engine::device::list_adapters(&opts);
    if adapters.is_empty() {
        println!("no adapters");
    }
    for a in adapters {
        println!("{a}");
    }
    match Gpu::with_options(&opts) {
        Ok(g) => println!("selected: {}", g.describe()),
        Err(e) => println!("selected: none ({e})"),
    }
    Ok(())
}
