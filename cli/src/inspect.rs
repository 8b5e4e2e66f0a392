//! `lamina inspect`: what is in a model file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use lamina_model::gguf::GgufFile;
use lamina_model::gguf::{GgufArray, GgufValue};
use lamina_model::loader;

use crate::fetch;

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// A .gguf file, a .lamina.safetensors file or an HF directory
    /// (default: the default model).
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// List every tensor (GGUF files).
    #[arg(long)]
    pub tensors: bool,
    /// Print every metadata key, long arrays abbreviated (GGUF files).
    #[arg(long)]
    pub metadata: bool,
}

pub fn run(a: &InspectArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let path = match &a.model {
        Some(p) => p.clone(),
        None => fetch::default_model_path()?,
    };
    let lamina = lamina_model::lamina_file::is_lamina_file(&path);
    let gguf = !lamina && (path.extension().is_some_and(|e| e == "gguf") || path.is_file());
    if !gguf && (a.tensors || a.metadata) {
        eprintln!("note: --tensors and --metadata list a GGUF file's; this is not one");
    }
    if gguf {
        let g = GgufFile::open(&path)?;
        writeln!(
            out,
            "file: {} ({} bytes, GGUF v{})",
            path.display(),
            g.file_len(),
            g.version()
        )?;
        if a.metadata {
            for (k, v) in g.metadata() {
                writeln!(out, "  {k} = {}", summary(v, 80))?;
            }
        }
        let mut by_type: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
        let mut total_elems = 0u64;
        let mut total_bytes = 0u64;
        for t in g.tensors() {
            let e = by_type.entry(t.type_name()).or_default();
            e.0 += 1;
            e.1 += t.numel();
            e.2 += t.n_bytes.unwrap_or(0) as u64;
            total_elems += t.numel();
            total_bytes += t.n_bytes.unwrap_or(0) as u64;
            if a.tensors {
                writeln!(
                    out,
                    "  {:<28} {:<6} {:?} {} bytes",
                    t.name,
                    t.type_name(),
                    t.shape(),
                    t.n_bytes.unwrap_or(0)
                )?;
            }
        }
        writeln!(
            out,
            "tensors: {} ({} parameters)",
            g.tensors().len(),
            total_elems
        )?;
        for (ty, (n, elems, bytes)) in &by_type {
            writeln!(
                out,
                "  {ty:<6} {n:>4} tensors, {elems:>11} params, {:>8.2} MiB, {:.3} bits/weight",
                *bytes as f64 / 1048576.0,
                8.0 * *bytes as f64 / (*elems).max(1) as f64
            )?;
        }
        writeln!(
            out,
            "bits per weight (all tensors): {:.3}",
            8.0 * total_bytes as f64 / total_elems.max(1) as f64
        )?;
    }
    let m = loader::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let c = &m.config;
    writeln!(
        out,
        "model: {} ({}), {} layers, dim {}, {} heads / {} KV heads x {}, ffn {}, vocab {}, ctx {}, rope theta {} ({:?}), eps {}, tied embeddings: {}",
        c.arch,
        m.file_type,
        c.n_layers,
        c.dim,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.ffn_dim,
        c.vocab_size,
        c.max_seq_len,
        c.rope_theta,
        c.rope_style,
        c.norm_eps,
        c.tied_embeddings
    )?;
    if !c.rope_factors.is_empty() {
        let max = c.rope_factors.iter().copied().fold(1.0f32, f32::max);
        writeln!(
            out,
            "rope scaling: llama3, {} of {} pairs' frequencies divided (by up to {max})",
            c.rope_factors.iter().filter(|&&f| f != 1.0).count(),
            c.rope_factors.len()
        )?;
    }
    if c.qkv_bias {
        writeln!(out, "attention: q, k and v biases")?;
    }
    print_kv_formats(&mut out, c, m.recipe.as_ref().and_then(|r| r.kv.as_ref()))?;
    if let Some(p) = &m.pivot {
        let tuned = m
            .recipe
            .as_ref()
            .is_some_and(|r| r.pivot_calibration.is_some());
        let prefix = m.recipe.as_ref().is_some_and(|r| r.prefix.is_some());
        writeln!(
            out,
            "pivot KV ({}, from the full-precision source{}): tokens {:?}",
            if prefix {
                "PrefixQuant's prefix"
            } else {
                "IntactKV"
            },
            if tuned {
                ", calibrated for these weights"
            } else {
                ""
            },
            p.tokens
        )?;
    }
    if c.hadamard.down || c.hadamard.qk {
        writeln!(
            out,
            "rotated: online Hadamard at the down input {}, on Q/K heads {}",
            c.hadamard.down, c.hadamard.qk
        )?;
    }
    if let Some(r) = &m.recipe {
        if let Some(rot) = &r.rotation {
            writeln!(
                out,
                "rotation: {} residual rotation, seed {}, lm_head {}",
                rot.residual,
                rot.seed,
                if rot.untied {
                    "untied"
                } else {
                    "tied (rotated twice)"
                }
            )?;
        }
        if let Some(p) = &r.prefix {
            writeln!(
                out,
                "prefix (PrefixQuant, --prefix {}): {} token(s); outlier threshold {}x the median \
                 token max, worst layer {:.2} outliers per window",
                p.mode,
                p.tokens.len(),
                p.threshold,
                p.worst_layer_mean
            )?;
            for ((t, text), ratio) in p.tokens.iter().zip(&p.texts).zip(&p.ratios) {
                writeln!(out, "  {t:>6} {text:?}: {ratio:.0}x the median")?;
            }
        }
        if let Some(a) = &r.act {
            let kind = if a.dynamic {
                "dynamic per-token"
            } else {
                "static per-tensor"
            };
            writeln!(out, "activations: {}-bit, {kind} scales", a.bits)?;
            if !a.dynamic {
                for (l, (s, clip)) in a.scales.iter().zip(&a.clip).enumerate() {
                    writeln!(
                        out,
                        "  blk.{l:<3} scales q/k/v {:.3e} o {:.3e} gate/up {:.3e} down {:.3e}; \
                         clip {:.2} {:.2} {:.2} {:.2}",
                        s[0], s[1], s[2], s[3], clip[0], clip[1], clip[2], clip[3]
                    )?;
                }
            }
        }
        if let Some(kv) = &r.kv {
            writeln!(
                out,
                "KV cache: {}-bit, static {} scales (run with --kv static, the default for \
                 this file)",
                kv.bits,
                if kv.k_channel {
                    "per-channel key and per-head value"
                } else {
                    "per-head"
                }
            )?;
            for l in 0..kv.k.len() {
                let list = |x: &[f32]| {
                    if x.len() > c.n_kv_heads {
                        // Per channel: each head's range of scales.
                        return x
                            .chunks(c.head_dim)
                            .map(|h| {
                                let lo = h.iter().copied().fold(f32::INFINITY, f32::min);
                                let hi = h.iter().copied().fold(0.0f32, f32::max);
                                format!("{lo:.2e}..{hi:.2e}")
                            })
                            .collect::<Vec<_>>()
                            .join(" ");
                    }
                    x.iter()
                        .map(|v| format!("{v:.3e}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let clip = |x: &[f32]| {
                    x.iter()
                        .map(|v| format!("{v:.2}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                writeln!(
                    out,
                    "  blk.{l:<3} K {} (clip {}); V {} (clip {})",
                    list(&kv.k[l]),
                    clip(&kv.k_clip[l]),
                    list(&kv.v[l]),
                    clip(&kv.v_clip[l])
                )?;
            }
        }
        // As JSON, keys sorted (serde_json's map), as the file's header had it.
        // (The activation and KV scales are listed above.)
        let mut j = serde_json::to_value(r)?;
        if let Some(a) = j.get_mut("act").and_then(|a| a.as_object_mut()) {
            a.remove("scales");
            a.remove("clip");
        }
        if let Some(kv) = j.get_mut("kv").and_then(|a| a.as_object_mut()) {
            for key in ["k", "v", "k_min", "k_clip", "v_clip"] {
                kv.remove(key);
            }
        }
        writeln!(out, "recipe: {j}")?;
        let (bpw, bytes, params) = lamina_model::quant::pipeline::bits_per_weight(&m.weights);
        writeln!(
            out,
            "weights: {params} parameters in {bytes} bytes: {bpw:.3} bits per weight (all tensors, scales and mins included)"
        )?;
        let mut lin_bytes = 0u64;
        let mut lin_params = 0u64;
        for (i, l) in m.weights.layers.iter().enumerate() {
            let mut line = format!("  blk.{i:<3}");
            for (name, t) in [
                ("q", &l.wq),
                ("k", &l.wk),
                ("v", &l.wv),
                ("o", &l.wo),
                ("gate", &l.w_gate),
                ("up", &l.w_up),
                ("down", &l.w_down),
            ] {
                lin_bytes += t.byte_size() as u64;
                lin_params += t.numel() as u64;
                match &t.mixed {
                    Some(mx) => {
                        let bits: String = mx.layout.bits.iter().map(|b| b.to_string()).collect();
                        line.push_str(&format!(
                            " {name} {bits} ({:.2})",
                            8.0 * t.byte_size() as f64 / t.numel() as f64
                        ));
                    }
                    None => line.push_str(&format!(" {name} {:?}", t.dtype)),
                }
            }
            writeln!(out, "{line}")?;
        }
        writeln!(
            out,
            "linear layers: {:.3} bits per weight (codes, f16 scales and mins); token_embd {:?}",
            8.0 * lin_bytes as f64 / lin_params.max(1) as f64,
            m.weights.token_embd.dtype
        )?;
    }
    let s = &m.tokenizer_spec;
    writeln!(
        out,
        "tokenizer: {} (pre {}), {} tokens, bos {}, eos {}, add_bos {}, chat template: {}",
        s.model,
        s.pre.as_deref().unwrap_or("-"),
        s.tokens.len(),
        s.bos_id.map_or("none".into(), |i| i.to_string()),
        s.eos_id.map_or("none".into(), |i| i.to_string()),
        s.add_bos,
        if s.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    )?;
    Ok(())
}

/// A value on one line: strings cut at `max` chars, arrays as type and length.
fn summary(v: &GgufValue, max: usize) -> String {
    let cut = |s: &str| {
        let one_line = s.replace('\n', "\\n");
        if one_line.chars().count() > max {
            format!("{:?}...", one_line.chars().take(max).collect::<String>())
        } else {
            format!("{one_line:?}")
        }
    };
    match v {
        GgufValue::String(s) => cut(s),
        GgufValue::Array(GgufArray::String(a)) if a.len() <= 4 => format!("{a:?}"),
        GgufValue::Array(a) => format!("[{:?}; {}]", a.elem_type(), a.len()),
        GgufValue::U8(x) => x.to_string(),
        GgufValue::I8(x) => x.to_string(),
        GgufValue::U16(x) => x.to_string(),
        GgufValue::I16(x) => x.to_string(),
        GgufValue::U32(x) => x.to_string(),
        GgufValue::I32(x) => x.to_string(),
        GgufValue::U64(x) => x.to_string(),
        GgufValue::I64(x) => x.to_string(),
        GgufValue::F32(x) => x.to_string(),
        GgufValue::F64(x) => x.to_string(),
        GgufValue::Bool(x) => x.to_string(),
    }
}

/// KV bytes per token of every format (all layers, keys and values, scales,
/// norms and outlier indices included), the fixed f16 window of the
/// quantized ones, and the longest context a budget holds; with the
/// model's static KV scales `file_kv`, its `static` cache too.
fn print_kv_formats(
    out: &mut impl Write,
    c: &lamina_model::LlamaConfig,
    file_kv: Option<&lamina_model::checkpoint::KvStatic>,
) -> Result<()> {
    use lamina_model::kv_cache::{DEFAULT_BATCH, KvFormat};
    writeln!(
        out,
        "KV cache per token (defaults: {DEFAULT_BATCH}-token steps, 128 recent tokens in f16):"
    )?;
    writeln!(
        out,
        "  format               bytes/token  vs f16   fixed MiB  ctx in 1 GiB  ctx in 4 GiB"
    )?;
    let f16 = KvFormat::F16.bytes_per_token(c);
    let formats = ["f16", "q8", "q4", "q2", "k=q4,v=q2", "qjl", "k=qjl,v=q4"]
        .into_iter()
        .filter_map(|n| Some((n.to_string(), n.parse::<KvFormat>().ok()?)));
    let q8_outliers = KvFormat {
        qjl_outlier_q8: true,
        ..KvFormat::F16
    };
    let q8_outliers = ["qjl", "k=qjl,v=q4"].into_iter().filter_map(|n| {
        let f: KvFormat = n.parse().ok()?;
        Some((
            format!("{n} +q8 out"),
            KvFormat {
                k: f.k,
                v: f.v,
                ..q8_outliers
            },
        ))
    });
    let file_static = file_kv
        .and_then(|kv| KvFormat::static_for(kv).ok())
        .map(|f| ("static".to_string(), f));
    for (name, f) in formats.chain(q8_outliers).chain(file_static) {
        if f.check(c).is_err() {
            writeln!(
                out,
                "  {name:<19}  (does not fit this model's head_dim {})",
                c.head_dim
            )?;
            continue;
        }
        let per = f.bytes_per_token(c);
        let fixed = if f.is_f16() {
            0.0
        } else {
            let l = f.layout(c, c.max_seq_len.max(2), 0);
            c.n_layers as f64 * (2.0 * l.window_bytes() as f64 + 4.0 * f64::from(l.sketch_len()))
        };
        let fits = |gib: f64| ((gib * 1073741824.0 - fixed) / per).max(0.0) as u64;
        writeln!(
            out,
            "  {name:<19}  {per:>11.1}  {:>5.2}x  {:>9.2}  {:>12}  {:>12}",
            f16 / per,
            fixed / 1048576.0,
            fits(1.0),
            fits(4.0)
        )?;
    }
    Ok(())
}
