//! `lamina quantize`: a model to 1..8-bit mixed-width groups (RTN, GPTQ or
//! SliM-LLM), written as one `.lamina.safetensors` file; with `--rotate`,
//! `--prefix` and `--act-bits`, PrefixQuant's rotated model with prefixed
//! outlier tokens and static integer activations.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use lamina_model::checkpoint::{HostDType, PivotCalibration};
use lamina_model::lamina_file;
use lamina_model::quant::act_scales::{self, ActScaleOptions};
use lamina_model::quant::gptq::GptqOptions;
use lamina_model::quant::intactkv;
use lamina_model::quant::kv_scales::{self, KvScaleOptions};
use lamina_model::quant::pipeline::{self, Method, QuantizeOptions};
use lamina_model::quant::prefix::{self, PrefixMode, PrefixOptions};
use lamina_model::rotate::{self, RotateOptions};

use crate::common;

#[derive(Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// Source model: .gguf, Hugging Face directory or .lamina.safetensors
    /// (default: SmolLM2-135M-Instruct Q4_1, fetched if missing). Its weights
    /// dequantized to f32 are the full-precision reference.
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Output file (conventionally NAME.lamina.safetensors).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// rtn (round-to-nearest), gptq, or slim (SliM-LLM: salience-driven
    /// mixed precision on top of GPTQ).
    #[arg(long, default_value = Method::Slim.name())]
    pub method: Method,
    /// Mean code width per weight: 1 to 8, fractional allowed (2.5 = groups at 2 and 3 bits).
    #[arg(long, default_value_t = 4.0)]
    pub bits: f64,
    /// Input columns per group (a multiple of 32; a last shorter group is allowed).
    #[arg(long, default_value_t = 128)]
    pub group: u32,
    /// Calibration text (default: $LAMINA_CALIB, else
    /// ../shared/data/wikitext-2/wiki.valid.tokens when present). Never the test text.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration windows (8 x 512 tokens: about 4 minutes for SmolLM2-135M
    /// on 2 CPU cores under lavapipe; raise it for larger machines).
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Tokens per calibration window.
    #[arg(long = "seq-len", default_value_t = 512)]
    pub seq_len: usize,
    /// Seed of the calibration windows' offsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// GPTQ damping, a fraction of the Hessian's mean diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// GPTQ act-order (columns by decreasing Hessian diagonal, static groups).
    #[arg(long)]
    pub act_order: bool,
    /// Encoding of the token embedding (and an untied lm_head).
    #[arg(
        long,
        value_parser = common::host_dtype_parser(&EMBED_FORMATS),
        default_value_t = HostDType::Q8_0
    )]
    pub embed: HostDType,
    /// IntactKV: tune the [BOS] pivot's KV for the quantized weights on the calibration
    /// windows (each layer's attention output against the full-precision model's; see
    /// docs/kv-cache.md), instead of storing the full-precision pivot as it is.
    #[arg(long)]
    pub calibrate_pivot: bool,
    /// Adam steps per layer of --calibrate-pivot.
    #[arg(long, default_value_t = 150)]
    pub pivot_steps: usize,
    /// Keep the weights of MODEL, a .lamina.safetensors file, and only compute its pivot
    /// again from the full-precision source its recipe names (with --calibrate-pivot: tuned).
    #[arg(long)]
    pub pivot_only: bool,
    /// Rotate the weights first (QuaRot / SpinQuant style: norms folded, a tied lm_head
    /// untied, a random-sign Hadamard rotation of the residual stream fused into the
    /// weights, online Hadamards at the down projection's input and on Q/K heads).
    #[arg(long)]
    pub rotate: bool,
    /// Seed of the rotation's random signs.
    #[arg(long, default_value_t = 0, requires = "rotate")]
    pub rotate_seed: u64,
    /// With --rotate on a tied model: keep the lm_head tied, folding the final norm into
    /// the shared matrix and rotating it twice, as PrefixQuant's reference code does
    /// (it breaks the model; for comparison only).
    #[arg(long, requires = "rotate", hide = true)]
    pub keep_tied: bool,
    /// PrefixQuant's prefix: outlier tokens whose full-precision KV leads every sequence:
    /// `auto` (found on the calibration text), `none`, or a count N.
    #[arg(long, default_value = "none")]
    pub prefix: PrefixMode,
    /// Calibration windows the outlier-token search runs (on the CPU).
    #[arg(long, default_value_t = 4)]
    pub prefix_samples: usize,
    /// Quantize the linear layers' inputs to 8 or 4 bits (static scales per tensor,
    /// calibrated with a clipping search), run by integer kernels.
    #[arg(long)]
    pub act_bits: Option<u32>,
    /// With --act-bits: per-token scales computed at run time instead of static ones.
    #[arg(long, requires = "act_bits")]
    pub act_dynamic: bool,
    /// Static KV cache: 4 or 8 bits with one symmetric scale per layer and KV head,
    /// calibrated after the prefix (PrefixQuant's KV4); the file then runs with it
    /// (`--kv static`) unless told otherwise.
    #[arg(long)]
    pub kv_bits: Option<u32>,
    /// With --kv-bits: the keys' static scales, one symmetric scale per KV head (as
    /// PrefixQuant does) or one (scale, min) per channel of each head.
    #[arg(long, value_enum, default_value_t = StaticKeys::Head, requires = "kv_bits")]
    pub kv_keys: StaticKeys,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs `work` with a progress bar named `what`, to which `work`'s
/// `(phase, done, total)` reports go.
fn with_phase_bar<T>(
    what: &str,
    work: impl FnOnce(&mut dyn FnMut(&str, usize, usize)) -> lamina_model::Result<T>,
) -> Result<T> {
    let pb = common::bar(1, what);
    let out = work(&mut |phase, i, n| {
        pb.set_length(n as u64);
        pb.set_position(i as u64);
        pb.set_message(format!("{what}: {phase}"));
    })?;
    pb.finish_and_clear();
    Ok(out)
}

/// `--kv-keys`: how static keys are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StaticKeys {
    Head,
    Channel,
}

/// The formats `--embed` offers.
const EMBED_FORMATS: [HostDType; 4] = [
    HostDType::Q8_0,
    HostDType::Q4_1,
    HostDType::Q4_0,
    HostDType::F16,
];

const DEFAULT_CALIB: &str = "../shared/data/wikitext-2/wiki.valid.tokens";

fn calib_path(a: &QuantizeArgs) -> Result<PathBuf> {
    let p = match (&a.calib, std::env::var_os("LAMINA_CALIB")) {
        (Some(p), _) => p.clone(),
        (None, Some(env)) => PathBuf::from(env),
        (None, None) if Path::new(DEFAULT_CALIB).exists() => PathBuf::from(DEFAULT_CALIB),
        (None, None) => bail!(
            "no calibration text: pass --calib FILE (any plain text in the model's language; \
             WikiText-2's validation split is the usual choice) or set LAMINA_CALIB"
        ),
    };
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.starts_with("wiki.test") {
        bail!(
            "{} is the WikiText-2 test text, which perplexity is measured on: calibrate on other text (e.g. wiki.valid.tokens)",
            p.display()
        );
    }
    Ok(p)
}

/// IntactKV's calibration of `full`, the source `m`'s pivot, for the
/// quantized `q` on `windows`: the tuned pivot and the recipe's record of it.
fn tune_pivot(
    a: &QuantizeArgs,
    m: &lamina_model::checkpoint::LoadedModel,
    q: &lamina_model::checkpoint::LoadedModel,
    full: &lamina_model::checkpoint::Pivot,
    windows: &[Vec<u32>],
    calib_file: Option<&Path>,
) -> Result<(lamina_model::checkpoint::Pivot, PivotCalibration)> {
    let pb = common::bar(1, "tuning the pivot");
    let o = intactkv::PivotCalibOptions {
        steps: a.pivot_steps,
        ..Default::default()
    };
    let (tuned, fits) = intactkv::calibrate_pivot(
        (&m.config, &m.weights),
        (&q.config, &q.weights),
        full,
        windows,
        &o,
        &mut |phase, done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
            pb.set_message(phase.to_string());
        },
    )?;
    pb.finish_and_clear();
    let mean = |f: &dyn Fn(&intactkv::LayerFit) -> f64| {
        fits.iter().map(f).sum::<f64>() / fits.len().max(1) as f64
    };
    let (before, after) = (mean(&|f| f.mse_before), mean(&|f| f.mse_after));
    eprintln!(
        "pivot calibration: attention-output MSE {before:.3e} -> {after:.3e} (mean over {} layers, {} windows)",
        fits.len(),
        windows.len()
    );
    let record = PivotCalibration {
        steps: o.steps,
        lr: o.lr,
        windows: windows.len(),
        seq_len: Some(a.seq_len),
        seed: Some(a.seed),
        calib: calib_file.map(|p| p.display().to_string()),
        mse_before: fits.iter().map(|f| f.mse_before).collect(),
        mse_after: fits.iter().map(|f| f.mse_after).collect(),
        ..Default::default()
    };
    Ok((tuned, record))
}

pub fn run(a: &QuantizeArgs) -> Result<()> {
    let method = a.method;
    if a.output.exists() && !a.force {
        bail!("{} exists; pass --force to replace it", a.output.display());
    }
    if a.output.is_dir() {
        bail!("{} is a directory", a.output.display());
    }
    common::check_output_folder(&a.output)?;
    let mut opts = QuantizeOptions {
        method,
        bits: a.bits,
        group: a.group,
        samples: a.samples,
        seq_len: a.seq_len,
        seed: a.seed,
        gptq: GptqOptions {
            damp: a.damp,
            act_order: a.act_order,
            ..Default::default()
        },
        embed: a.embed,
        ..Default::default()
    };
    if !(1.0..=8.0).contains(&opts.bits) {
        bail!("--bits {} outside 1..=8", opts.bits);
    }
    if opts.group == 0 || !opts.group.is_multiple_of(32) {
        bail!("--group {} is not a positive multiple of 32", opts.group);
    }
    if let Some(b) = a.act_bits
        && !lamina_model::checkpoint::act::ACT_BITS.contains(&b)
    {
        bail!("--act-bits {b}: the integer kernels take 8 or 4");
    }
    if let Some(b) = a.kv_bits
        && ![4, 8].contains(&b)
    {
        bail!("--kv-bits {b}: the KV cache stores 4 or 8 bits");
    }
    if a.pivot_only
        && (a.rotate || a.prefix != PrefixMode::None || a.act_bits.is_some() || a.kv_bits.is_some())
    {
        bail!(
            "--pivot-only keeps the file's weights: drop --rotate, --prefix, --act-bits and --kv-bits"
        );
    }
    if a.pivot_steps == 0 && a.calibrate_pivot {
        bail!("--pivot-steps 0 tunes nothing; drop --calibrate-pivot instead");
    }
    let static_act = a.act_bits.is_some() && !a.act_dynamic;
    let needs_calib = a.calibrate_pivot
        || (method != Method::Rtn && !a.pivot_only)
        || a.prefix != PrefixMode::None
        || static_act
        || a.kv_bits.is_some();
    let calib_file = needs_calib.then(|| calib_path(a)).transpose()?;
    let calib = calib_file
        .as_ref()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading calibration text {}", p.display()))?;
            eprintln!(
                "calibration: {} ({} windows of {} tokens, seed {})",
                p.display(),
                a.samples,
                a.seq_len,
                a.seed
            );
            Ok::<_, anyhow::Error>(text)
        })
        .transpose()?;
    let margs = common::ModelArgs::plain(a.model.clone());
    let loaded = common::load_host_model(&margs)?;
    // With --pivot-only, `loaded` is the quantized file and `m` its source.
    let (m, kept) = if a.pivot_only {
        if loaded
            .recipe
            .as_ref()
            .and_then(|r| r.source_path())
            .is_none()
        {
            bail!(
                "--pivot-only needs a .lamina.safetensors file whose recipe names a full-precision \
                 source; {} names none",
                loaded.source
            );
        }
        let src = lamina_model::pivot::load_source(&loaded)
            .with_context(|| format!("--pivot-only: the source of {}", loaded.source))?;
        (src, Some(loaded))
    } else {
        (loaded, None)
    };
    let m = if a.rotate {
        let sp = common::spinner("rotating the weights");
        let o = RotateOptions {
            seed: a.rotate_seed,
            untie: !a.keep_tied,
        };
        let r = rotate::rotate(&m, &o)?;
        sp.finish_and_clear();
        r
    } else {
        m
    };
    let windows = match &calib {
        Some(text) => {
            let tok = lamina_model::tokenizer::Tokenizer::from_spec(&m.tokenizer_spec)?;
            pipeline::calibration_windows(&tok, text, &opts)?
        }
        None => Vec::new(),
    };
    let tok = lamina_model::tokenizer::Tokenizer::from_spec(&m.tokenizer_spec)?;
    let start = Instant::now();
    // PrefixQuant's outlier tokens, found with the full-precision (rotated) model.
    let prefix = if a.prefix == PrefixMode::None {
        None
    } else {
        let bos = tok.bos_id();
        let search: Vec<Vec<u32>> = windows
            .iter()
            .take(a.prefix_samples.max(1))
            .map(|w| {
                bos.into_iter()
                    .chain(w.iter().copied())
                    .take(w.len())
                    .collect()
            })
            .collect();
        let pb = common::bar(search.len() as u64, "searching outlier tokens");
        let o = PrefixOptions {
            mode: a.prefix,
            ..Default::default()
        };
        let stats = prefix::outlier_stats(&m.config, &m.weights, &search, o.threshold, |i, _| {
            pb.set_position(i as u64)
        })?;
        pb.finish_and_clear();
        let text = |t: u32| tok.decode(&[t]).unwrap_or_else(|_| format!("<{t}>"));
        let rec = prefix::choose(&stats, &o, bos, text)?;
        eprintln!(
            "prefix: {} token(s) {:?} (ratios to the median token max {:?}); worst layer: {:.2} \
             outliers per window over {} windows",
            rec.tokens.len(),
            rec.texts,
            rec.ratios.iter().map(|r| r.round()).collect::<Vec<_>>(),
            rec.worst_layer_mean,
            search.len()
        );
        Some(rec)
    };
    // The prefix's full-precision KV: GPTQ / SliM-LLM calibration and the
    // activation scales run every window after it (each window shortened
    // so that prefix and window fill --seq-len), and the file stores it.
    let prefix_kv = match &prefix {
        Some(p) if !p.tokens.is_empty() => Some(lamina_model::pivot::compute(
            &m.config, &m.weights, &p.tokens,
        )?),
        _ => None,
    };
    let p_len = prefix_kv.as_ref().map_or(0, |p| p.len());
    if p_len >= a.seq_len {
        bail!(
            "--prefix {}: its {p_len} tokens leave no room in calibration windows of --seq-len {}",
            a.prefix.name(),
            a.seq_len
        );
    }
    let windows: Vec<Vec<u32>> = windows
        .iter()
        .map(|w| w[..w.len().saturating_sub(p_len)].to_vec())
        .collect();
    opts.prefix = prefix_kv.clone();
    let (mut q, reports) = match kept {
        Some(q) => (q, Vec::new()),
        None => {
            let gpu = common::open_gpu()?;
            let pb = common::bar(m.config.n_layers as u64, "quantizing");
            let mut progress = |layer: usize, _n: usize, phase: &str, done: usize, total: usize| {
                pb.set_position(layer as u64);
                pb.set_message(format!("{} {phase} {done}/{total}", method.name()));
            };
            let r = pipeline::quantize_model(&gpu, &m, &windows, &opts, &mut progress)?;
            pb.finish_and_clear();
            r
        }
    };
    // The pivot's KV from the full-precision (rotated) model, stored in the file:
    // PrefixQuant's prefix, else IntactKV's [BOS].
    let mut pivot_fit = None;
    q.pivot = None;
    let pivot_tokens = match (&prefix, tok.bos_id()) {
        (Some(p), _) if !p.tokens.is_empty() => Some(p.tokens.clone()),
        (Some(_), _) => None,
        (None, bos) => bos.map(|b| vec![b]),
    };
    if let Some(tokens) = pivot_tokens {
        let full = match &prefix_kv {
            Some(p) if p.tokens == tokens => p.clone(),
            _ => lamina_model::pivot::compute(&m.config, &m.weights, &tokens)?,
        };
        q.pivot = Some(if a.calibrate_pivot {
            let (tuned, fit) = tune_pivot(a, &m, &q, &full, &windows, calib_file.as_deref())?;
            pivot_fit = Some(fit);
            tuned
        } else {
            full
        });
    } else if a.calibrate_pivot {
        bail!("the model's tokenizer has no BOS token, so there is no pivot to calibrate");
    }
    // Static activation scales, calibrated after the prefix.
    let act = a
        .act_bits
        .map(|bits| {
            let o = ActScaleOptions {
                bits,
                dynamic: a.act_dynamic,
                ..Default::default()
            };
            with_phase_bar("activation scales", |progress| {
                act_scales::calibrate(
                    &q.config,
                    &q.weights,
                    prefix_kv.as_ref(),
                    &windows,
                    &o,
                    progress,
                )
            })
        })
        .transpose()?;
    // Static KV scales, after the activation scales (keys and values come
    // from quantized activations) and the prefix.
    let kv = a
        .kv_bits
        .map(|bits| {
            let o = KvScaleOptions {
                bits,
                k_channel: a.kv_keys == StaticKeys::Channel,
                ..Default::default()
            };
            with_phase_bar("KV cache scales", |progress| {
                kv_scales::calibrate(
                    &q.config,
                    &q.weights,
                    act.as_ref(),
                    prefix_kv.as_ref(),
                    &windows,
                    &o,
                    progress,
                )
            })
        })
        .transpose()?;
    let secs = start.elapsed().as_secs_f64();
    let rotation = m.recipe.as_ref().and_then(|r| r.rotation.clone());
    let recipe = q.recipe.get_or_insert_with(Default::default);
    if !a.pivot_only {
        recipe.rotation = rotation;
        recipe.prefix = prefix;
        recipe.act = act;
        recipe.kv = kv;
    }
    // The quantization's time stays that of the weights kept.
    let rounded = Some((secs * 10.0).round() / 10.0);
    if a.pivot_only {
        recipe.pivot_seconds = rounded;
    } else {
        recipe.seconds = rounded;
        if let Some(c) = &calib {
            recipe.calib_bytes = Some(c.len());
        }
        if let Some(p) = a.calib.as_ref() {
            recipe.calib = Some(p.display().to_string());
        }
    }
    recipe.pivot_calibration = pivot_fit;
    let sp = common::spinner(&format!("writing {}", a.output.display()));
    lamina_file::write(&a.output, &q).with_context(|| format!("writing {}", a.output.display()))?;
    sp.finish_and_clear();
    let (bpw, bytes, params) = pipeline::bits_per_weight(&q.weights);
    let mut hist = [0usize; 9];
    let mut linear_bits = 0.0;
    let mut linear_params = 0.0;
    for r in &reports {
        for &b in &r.bits {
            hist[b as usize] += 1;
        }
    }
    for l in &q.weights.layers {
        for (_, t) in l.linears() {
            linear_bits += 8.0 * t.byte_size() as f64;
            linear_params += t.numel() as f64;
        }
    }
    eprintln!(
        "{}: {} in {:.0} s; {:.2} MiB, {:.3} bits per weight over all {} parameters ({:.3} in the linear layers, scales and mins included)",
        a.output.display(),
        q.file_type,
        secs,
        bytes as f64 / 1048576.0,
        bpw,
        params,
        linear_bits / linear_params.max(1.0),
    );
    let widths: Vec<String> = (1..=8)
        .filter(|&b| hist[b] > 0)
        .map(|b| format!("{b}-bit: {}", hist[b]))
        .collect();
    if !widths.is_empty() {
        eprintln!("column groups by width: {}", widths.join(", "));
    }
    Ok(())
}
