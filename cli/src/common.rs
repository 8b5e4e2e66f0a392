//! Options shared by the commands that run a model, and model loading.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lamina_engine::{DeviceOptions, Gpu};
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, WeightMode};
use lamina_model::loader::{self, LoadedModel};
use lamina_model::synthetic;
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
    /// KV cache format.
    #[arg(long, default_value = "f16")]
    pub kv: String,
    /// Context size (positions in the KV cache); 0 = the model's training context.
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Most tokens processed in one prompt step.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: u32,
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
        let config = synthetic::synthetic_config(preset)?;
        let dtype = parse_synthetic_format(&a.synthetic_format)?;
        let sp = spinner(&format!("generating synthetic {preset} weights"));
        let weights = synthetic::synthetic_weights(&config, dtype, 0)?;
        sp.finish_and_clear();
        return Ok(LoadedModel {
            config,
            weights,
            tokenizer_spec: Default::default(),
            source: format!("synthetic:{preset}"),
            file_type: a.synthetic_format.to_uppercase(),
            recipe: None,
        });
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

/// Uploads `m` to the GPU with the options in `a`.
pub fn gpu_model(a: &ModelArgs, m: &LoadedModel, min_ctx: usize) -> Result<Arc<GpuModel>> {
    let gpu = open_gpu()?;
    let mode: WeightMode = a.weights.parse()?;
    let kv: KvFormat = a.kv.parse()?;
    let ctx = match a.ctx_size {
        None | Some(0) => m.config.max_seq_len.max(min_ctx),
        Some(c) => c,
    };
    if ctx < min_ctx {
        anyhow::bail!("context size {ctx} is smaller than the {min_ctx} positions this run needs");
    }
    let pb = bar(1, "uploading weights");
    let model = GpuModel::new(gpu, m, mode, ctx, kv, |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    log::info!(
        "model: {} ({}), weights {:.1} MiB on GPU as {:?}, KV cache {} x {} = {:.1} MiB",
        m.source,
        m.file_type,
        model.weight_bytes() as f64 / 1048576.0,
        mode,
        ctx,
        kv.name(),
        model.kv.bytes() as f64 / 1048576.0
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
