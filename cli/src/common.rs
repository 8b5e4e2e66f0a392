//! Options shared by the commands that run a model, and model loading.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use lamina_engine::{DeviceOptions, Gpu};
use lamina_model::checkpoint::{ActQuant, HostDType, KvStatic, LoadedModel};
use lamina_model::kv_cache::{DEFAULT_BATCH, DEFAULT_RECENT, DEFAULT_SINK, KvFormat};
use lamina_model::llama::{GpuModel, WeightMode};
use lamina_model::loader;
use lamina_model::pivot;
use lamina_model::synthetic;
use lamina_model::tokenizer::Tokenizer;

use crate::fetch;

/// `--kv-keys`: how q8/q4/q2 keys get their scales (see the flag's help).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvKeys {
    Channel,
    Token,
}

impl KvKeys {
    /// What the format `f` does.
    fn of(f: &KvFormat) -> Self {
        if f.k_channel {
            KvKeys::Channel
        } else {
            KvKeys::Token
        }
    }
}

/// `--qjl-outlier-format`: how QJL keys store their outlier channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QjlOutlierFormat {
    Sketch,
    Q8,
}

impl QjlOutlierFormat {
    /// What the format `f` does.
    fn of(f: &KvFormat) -> Self {
        if f.qjl_outlier_q8 {
            QjlOutlierFormat::Q8
        } else {
            QjlOutlierFormat::Sketch
        }
    }
}

/// `--pivot`: which pivot tokens the cache starts with ([`pivot_tokens`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PivotMode {
    None,
    Bos,
    Auto,
}

/// `--pivot-source`: which weights compute the pivot's KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PivotSource {
    Full,
    Model,
}

/// The formats `--synthetic-format` offers.
const SYNTHETIC_FORMATS: [HostDType; 14] = [
    HostDType::Q4_0,
    HostDType::Q4_1,
    HostDType::Q8_0,
    HostDType::Q5_0,
    HostDType::Q5_1,
    HostDType::IQ4_NL,
    HostDType::Q2_K,
    HostDType::Q3_K,
    HostDType::Q4_K,
    HostDType::Q5_K,
    HostDType::Q6_K,
    HostDType::IQ4_XS,
    HostDType::F16,
    HostDType::F32,
];

/// A flag's parser for the weight formats in `allowed`, by their names
/// ([`HostDType::name`]); clap lists them in the help and on a bad value.
pub fn host_dtype_parser(allowed: &[HostDType]) -> impl TypedValueParser<Value = HostDType> {
    PossibleValuesParser::new(allowed.iter().map(|d| d.name()))
        .try_map(|name| name.parse::<HostDType>())
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file or a Hugging Face model directory (default: SmolLM2-135M-Instruct Q4_1, fetched if missing).
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// A Llama of this shape with seeded random weights instead of a checkpoint
    /// (tiny, 135m, 1b, 7b, or L<layers>-d<dim>-h<heads>-kv<kv>-f<ffn>-v<vocab>); for speed only.
    #[arg(long, conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// Weight format of --synthetic models.
    #[arg(
        long,
        value_parser = host_dtype_parser(&SYNTHETIC_FORMATS),
        default_value_t = HostDType::Q4_1,
        requires = "synthetic"
    )]
    pub synthetic_format: HostDType,
    /// How weights are stored on the GPU: native (as shipped: GGUF Q4_1 stays 4-bit), f16 or f32.
    #[arg(long, default_value = "native")]
    pub weights: WeightMode,
    /// KV cache format: f16, q8, q4, q2 (keys and values alike), qjl (QJL keys, q2 values),
    /// k=FORMAT,v=FORMAT (keys: f16, q8, q4, q2, qjl; values: f16, q8, q4, q2), or static
    /// (the model's static per-head scales, PrefixQuant's KV4: `quantize --kv-bits`).
    /// Default: static for a model that has such scales, else f16.
    #[arg(long)]
    pub kv: Option<KvFormat>,
    /// Quantized KV cache: the fewest recent tokens kept in f16 [default: 128; static: 0].
    #[arg(long)]
    pub kv_recent: Option<u32>,
    /// Quantized KV cache: channels per scale group of q8/q4/q2 (divides head_dim).
    #[arg(long, default_value_t = KvFormat::F16.qgroup)]
    pub kv_group: u32,
    /// q8/q4/q2 keys: scales per channel over each group of 32 tokens (as KIVI does), or per
    /// token in groups of --kv-group channels (as values are).
    #[arg(long, value_enum, default_value_t = KvKeys::of(&KvFormat::F16))]
    pub kv_keys: KvKeys,
    /// Quantized KV cache: the first N positions (the pivot's included) are never quantized,
    /// like the pivot but filled by the sequence itself (attention sinks) [default: 4;
    /// static: 0].
    #[arg(long)]
    pub kv_sink: Option<u32>,
    /// QJL keys: sketch rows (bits per key), a multiple of 32; 0 = twice head_dim.
    #[arg(long, default_value_t = KvFormat::F16.qjl_m)]
    pub qjl_m: u32,
    /// QJL keys: outlier channels per group of 32 tokens, sketched apart (0-4).
    #[arg(long, default_value_t = KvFormat::F16.qjl_outliers)]
    pub qjl_outliers: u32,
    /// QJL keys: how the outlier channels are stored: sketched apart with m/2 rows (as the
    /// paper does), or as 8-bit codes with per-channel scales over the group of 32 tokens.
    #[arg(long, value_enum, default_value_t = QjlOutlierFormat::of(&KvFormat::F16))]
    pub qjl_outlier_format: QjlOutlierFormat,
    /// QJL keys: the first N layers get twice the sketch rows (as QJL's code does).
    #[arg(long, default_value_t = KvFormat::F16.qjl_initial_layers)]
    pub qjl_initial_layers: u32,
    /// Quantized KV cache: a prompt step attends to its own tokens in f16 (as QJL's code
    /// does); only later steps see them quantized. Not what `perplexity` reports by default.
    #[arg(long)]
    pub kv_exact_prompt: bool,
    /// Pivot tokens kept lossless ahead of every sequence (IntactKV): none, bos, or auto
    /// ([BOS] with a quantized KV cache when the model starts its sequences with BOS).
    #[arg(long, value_enum, default_value_t = PivotMode::Auto, hide_possible_values = true)]
    pub pivot: PivotMode,
    /// Text for the pivot (e.g. the chat template's system turn): its KV too comes from
    /// the full-precision model and stays f16; prompts that start with it reuse it.
    #[arg(long)]
    pub pivot_prompt: Option<String>,
    /// Which weights compute the pivot's KV: `full`, the full-precision source (IntactKV);
    /// or `model`, the weights being run, quantized or not (to measure what `full` adds).
    #[arg(long, value_enum, default_value_t = PivotSource::Full)]
    pub pivot_source: PivotSource,
    /// Integer activations: 8 or 4 bits, for a model quantized with `lamina quantize
    /// --act-bits` (its own width by default; a --act-dynamic model at either width),
    /// or 0 for float activations with the same weights.
    #[arg(long)]
    pub act_bits: Option<u32>,
    /// Integer activations with per-token scales computed at run time instead of the
    /// file's static ones (for comparison; the same weights).
    #[arg(long)]
    pub act_dynamic: bool,
    /// Context size (positions in the KV cache). Unset or 0: generate
    /// sizes it to the prompt plus -n (at least 512), bench to its test,
    /// perplexity takes 512, serve 4096 a slot and chat the model's
    /// training context, never past that context.
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Most tokens processed in one prompt step.
    #[arg(short = 'b', long = "batch-size", default_value_t = DEFAULT_BATCH,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
}

/// [`ModelArgs`] alone as a command line, so that [`ModelArgs::plain`] gets
/// the defaults from the flags' own definitions.
#[derive(Parser)]
struct NoFlags {
    #[command(flatten)]
    model: ModelArgs,
}

impl ModelArgs {
    /// The defaults for `model` (or the default model), as if no flag were given.
    pub fn plain(model: Option<PathBuf>) -> Self {
        let defaults = NoFlags::try_parse_from(["lamina"])
            .expect("every ModelArgs flag has a valid default")
            .model;
        ModelArgs { model, ..defaults }
    }
}

/// A prompt or text read from a file or stdin, less one trailing newline
/// (as llama.cpp's -f: the newline a file ends with is not part of it).
pub fn without_final_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
    }
    text
}

/// Refuses an output path whose folder does not exist, before a long run
/// whose result it would then lose.
pub fn check_output_folder(path: &std::path::Path) -> Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !folder.is_dir() {
        anyhow::bail!(
            "{}: the folder {} does not exist",
            path.display(),
            folder.display()
        );
    }
    Ok(())
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

/// Loads the checkpoint named by `--model` (or the default one, fetching it)
/// or builds the synthetic one.
pub fn load_host_model(a: &ModelArgs) -> Result<LoadedModel> {
    if let Some(preset) = &a.synthetic {
        let sp = spinner(&format!("generating synthetic {preset} weights"));
        let m = synthetic::synthetic_model(preset, a.synthetic_format, 0)?;
        sp.finish_and_clear();
        return Ok(m);
    }
    let path = match &a.model {
        Some(p) => p.clone(),
        None => fetch::ensure_default_model()?,
    };
    loader::load(&path).with_context(|| format!("loading model {}", path.display()))
}

/// The tokenizer `m` carries, or an error for a model without one.
pub fn tokenizer_for(m: &LoadedModel) -> Result<Tokenizer> {
    if m.tokenizer_spec.tokens.is_empty() && m.tokenizer_spec.hf_json.is_none() {
        anyhow::bail!(
            "{} has no tokenizer (synthetic models can only be benchmarked)",
            m.source
        );
    }
    Ok(Tokenizer::from_spec(&m.tokenizer_spec)?)
}

pub fn open_gpu() -> Result<Arc<Gpu>> {
    let mut opts = DeviceOptions::from_env()?;
    // Compiled pipelines kept for the next run (where the driver has a cache).
    opts.pipeline_cache = fetch::cache_dir().ok().map(|d| d.join("pipelines"));
    let gpu = Gpu::with_options(&opts)?;
    log::info!("GPU: {}", gpu.describe());
    Ok(gpu)
}

/// The KV cache format the flags in `a` ask for, for a model whose static
/// KV scales (PrefixQuant) are `file_kv`: without `--kv`, the model's
/// static cache when it has one, else f16.
pub fn kv_format(a: &ModelArgs, file_kv: Option<&KvStatic>) -> Result<KvFormat> {
    let mut kv = match (a.kv, file_kv) {
        (Some(kv), _) => kv,
        (None, Some(_)) => "static".parse()?,
        (None, None) => KvFormat::F16,
    };
    let is_static = kv.static_scales;
    kv.recent = a
        .kv_recent
        .unwrap_or(if is_static { 0 } else { DEFAULT_RECENT });
    kv.sink = a
        .kv_sink
        .unwrap_or(if is_static { 0 } else { DEFAULT_SINK });
    kv.qgroup = a.kv_group;
    kv.k_channel = a.kv_keys == KvKeys::Channel;
    kv.qjl_m = a.qjl_m;
    kv.qjl_outliers = a.qjl_outliers;
    kv.qjl_outlier_q8 = a.qjl_outlier_format == QjlOutlierFormat::Q8;
    kv.qjl_initial_layers = a.qjl_initial_layers;
    if a.kv_exact_prompt && (kv.is_f16() || is_static) {
        anyhow::bail!(
            "--kv-exact-prompt needs a quantized cache with dynamic scales (--kv q8, q4, q2 or qjl)"
        );
    }
    kv.exact_prompt = a.kv_exact_prompt;
    kv.batch = a.batch_size.max(1);
    if is_static {
        let Some(file_kv) = file_kv else {
            anyhow::bail!(
                "--kv static: the model has no static KV scales (make them: lamina quantize \
                 --kv-bits 4, with --act-bits)"
            );
        };
        kv = kv.with_static(file_kv)?;
    }
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
    let mut tokens = match (a.pivot, &a.pivot_prompt) {
        (PivotMode::None, None) => Vec::new(),
        (PivotMode::None, Some(_)) => {
            anyhow::bail!("--pivot-prompt needs a pivot; drop --pivot none")
        }
        (PivotMode::Bos, p) => {
            let t = tok()?;
            let mut v = vec![bos(&t)?];
            if let Some(p) = p {
                v.extend(t.encode(p, false)?);
            }
            v
        }
        (PivotMode::Auto, Some(p)) => tok()?.encode(p, true)?,
        (PivotMode::Auto, None) if !kv.is_f16() && m.tokenizer_spec.add_bos => {
            vec![bos(&tok()?)?]
        }
        (PivotMode::Auto, None) => Vec::new(),
    };
    if a.pivot_prompt.is_some() && tokens.is_empty() {
        anyhow::bail!("--pivot-prompt encodes to no tokens");
    }
    // PrefixQuant's prefix is part of the model: it leads every pivot (once,
    // when it ends with the BOS the pivot starts with).
    let prefix = m.recipe.as_ref().and_then(|r| r.prefix.as_ref());
    if let Some(p) = prefix.filter(|p| !p.tokens.is_empty()) {
        if !tokens.is_empty() && tokens.first() == p.tokens.last() {
            tokens.remove(0);
        }
        tokens.splice(0..0, p.tokens.iter().copied());
    }
    Ok(tokens)
}

/// `m` with the activation quantization `--act-bits` and `--act-dynamic`
/// ask for: the file's (no flag), none (0), per-token scales at the file's
/// or any width (`--act-dynamic`), or a dynamic file's at another width.
pub fn with_act_bits(a: &ModelArgs, m: &LoadedModel) -> Result<Option<LoadedModel>> {
    let file_act = m.recipe.as_ref().and_then(|r| r.act.as_ref());
    if a.act_dynamic && file_act.is_none() {
        anyhow::bail!(
            "--act-dynamic: {} has no activation quantization (make a model with it: \
             lamina quantize --act-bits 8)",
            m.source
        );
    }
    if a.act_dynamic && a.act_bits == Some(0) {
        anyhow::bail!("--act-dynamic needs integer activations, not --act-bits 0");
    }
    // Per-token scales make any width possible.
    let dynamic = file_act.filter(|_| a.act_dynamic).map(|f| ActQuant {
        bits: a.act_bits.unwrap_or(f.bits),
        dynamic: true,
        ..Default::default()
    });
    let Some(bits) = a.act_bits.or(dynamic.as_ref().map(|d| d.bits)) else {
        return Ok(None);
    };
    let act = dynamic.as_ref().or(file_act);
    let mut out = m.clone();
    let recipe = out.recipe.get_or_insert_with(Default::default);
    match (bits, act) {
        (0, _) => recipe.act = None,
        (b, None) => anyhow::bail!(
            "--act-bits {b}: {} has no activation quantization (make a model with it: \
             lamina quantize --act-bits {b})",
            m.source
        ),
        (b, Some(_)) if !lamina_model::checkpoint::act::ACT_BITS.contains(&b) => {
            anyhow::bail!("--act-bits {b}: the integer kernels take 8 or 4 (or 0 for float)")
        }
        (b, Some(act)) if act.dynamic => {
            let mut act = act.clone();
            act.bits = b;
            recipe.act = Some(act);
        }
        (b, Some(act)) if act.bits != b => anyhow::bail!(
            "--act-bits {b}: {}'s static activation scales are for {} bits (quantize again \
             with --act-bits {b}, or --act-dynamic)",
            m.source,
            act.bits
        ),
        _ => {}
    }
    Ok(Some(out))
}

/// Uploads `m` to the GPU with the options in `a`, with room for `min_ctx`
/// positions after the pivot.
pub fn gpu_model(a: &ModelArgs, m: &LoadedModel, min_ctx: usize) -> Result<Arc<GpuModel>> {
    let changed = with_act_bits(a, m)?;
    let m = changed.as_ref().unwrap_or(m);
    let gpu = open_gpu()?;
    let mode = a.weights;
    let kv = kv_format(a, m.recipe.as_ref().and_then(|r| r.kv.as_ref()))?;
    let tokens = pivot_tokens(a, m, &kv)?;
    let pivot = if tokens.is_empty() {
        None
    } else {
        let full = a.pivot_source == PivotSource::Full;
        let sp = spinner(&format!(
            "computing the pivot KV of {} tokens with the {} model",
            tokens.len(),
            if full { "full-precision" } else { "loaded" }
        ));
        let p = if full {
            pivot::for_model(m, &tokens)?
        } else {
            pivot::compute(&m.config, &m.weights, &tokens)?
        };
        sp.finish_and_clear();
        Some(p)
    };
    let p = tokens.len();
    if let Some(c) = a.ctx_size.filter(|&c| c > 0 && c <= p) {
        let what = match m.recipe.as_ref().and_then(|r| r.prefix.as_ref()) {
            Some(_) => "the pivot (with the model's PrefixQuant prefix)",
            None => "the pivot",
        };
        anyhow::bail!(
            "a context of {c} positions leaves no room after {what}, {p} tokens: raise --ctx-size"
        );
    }
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
    let mut out = std::io::stdout().lock();
    if adapters.is_empty() {
        writeln!(out, "no adapters")?;
    }
    for a in adapters {
        writeln!(out, "{a}")?;
    }
    match Gpu::with_options(&opts) {
        Ok(g) => writeln!(out, "selected: {}", g.describe())?,
        Err(e) => writeln!(out, "selected: none ({e})")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_give_the_models_defaults() {
        let a = ModelArgs::plain(None);
        assert_eq!(a.synthetic_format, HostDType::Q4_1);
        assert_eq!(a.weights, WeightMode::Native);
        assert_eq!(a.pivot, PivotMode::Auto);
        assert_eq!(a.pivot_source, PivotSource::Full);
        assert_eq!(a.batch_size, DEFAULT_BATCH);
        // Every KV flag left alone: the model's default format, unchanged.
        assert_eq!(
            kv_format(&a, None).expect("default KV format"),
            KvFormat::F16
        );
    }

    #[test]
    fn kv_flags_reach_the_format() {
        let a = NoFlags::try_parse_from([
            "lamina",
            "--kv",
            "k=q4,v=q2",
            "--kv-keys",
            "token",
            "--qjl-outlier-format",
            "q8",
            "-b",
            "64",
        ])
        .expect("valid flags")
        .model;
        let kv = kv_format(&a, None).expect("valid format");
        assert_eq!(kv.name(), "k=q4,v=q2, keys per token");
        assert!(kv.qjl_outlier_q8);
        assert_eq!(kv.batch, 64);
    }

    #[test]
    fn weights_names_parse_back() {
        for mode in WeightMode::ALL {
            let name = mode.name();
            assert_eq!(name.parse::<WeightMode>().ok(), Some(mode), "{name}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_choices() {
        for (flag, bad, choices) in [
            ("--kv-keys", "foo", "channel, token"),
            ("--pivot", "xx", "none, bos, auto"),
            ("--pivot-source", "half", "full, model"),
            ("--qjl-outlier-format", "q4", "sketch, q8"),
            ("--weights", "q3", "native, f16, f32"),
            ("--kv", "q3", "f16, q8, q4, q2, qjl, static"),
        ] {
            let e = NoFlags::try_parse_from(["lamina", flag, bad])
                .err()
                .unwrap_or_else(|| panic!("{flag} {bad} parsed"))
                .to_string();
            assert!(e.contains(flag) && e.contains(choices), "{flag} {bad}: {e}");
        }
        let e = NoFlags::try_parse_from([
            "lamina",
            "--synthetic",
            "tiny",
            "--synthetic-format",
            "bf16",
        ])
        .err()
        .expect("bf16 is not offered")
        .to_string();
        assert!(
            e.contains("q4_0, q4_1, q8_0, q5_0") && e.contains("iq4_xs, f16, f32"),
            "{e}"
        );
    }
}
