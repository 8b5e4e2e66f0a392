//! Loads a Llama-family model: [`load`] picks the loader by what the path
//! is (a GGUF file, read here; a Hugging Face directory, `crate::hf`; a
//! `.lamina.safetensors` file, `crate::lamina_file`). Each fills a
//! [`LoadedModel`], the checkpoint in memory.
//!
//! GGUF keys and tensor names follow llama.cpp's `llama` and `qwen2`
//! architectures (`convert_hf_to_gguf.py`; keys are prefixed with the
//! architecture). For Llama, llama.cpp permutes the rows of `attn_q` and
//! `attn_k` when converting, so that RoPE rotates interleaved pairs
//! (2i, 2i+1); such a model runs with [`RopeStyle::Interleaved`] and its
//! weights as stored. Qwen2 files keep Hugging Face's order and run
//! [`RopeStyle::Neox`].

use std::path::Path;

use crate::checkpoint::{LayerTensor, LlamaWeights, LoadedModel, ModelTensor, TokenizerSpec};
use crate::gguf::GgufFile;
use crate::{LlamaConfig, ModelError, Result, RopeStyle};

/// Loads a `.gguf` file, or a Hugging Face directory (config.json + safetensors).
pub fn load(path: &Path) -> Result<LoadedModel> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if meta.is_dir() {
        return crate::hf::load_dir(path);
    }
    if crate::lamina_file::is_lamina_file(path) {
        return crate::lamina_file::load(path);
    }
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !is_gguf && !starts_with_gguf_magic(path) {
        return Err(ModelError::Input(format!(
            "{}: expected a .gguf file, a .lamina.safetensors file or a Hugging Face model directory",
            path.display()
        )));
    }
    load_gguf(&GgufFile::open(path)?)
}

fn starts_with_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == crate::gguf::GGUF_MAGIC
}

/// Builds a [`LoadedModel`] from an open GGUF file.
pub fn load_gguf(g: &GgufFile) -> Result<LoadedModel> {
    let config = config_from_gguf(g)?;
    let weights = weights_from_gguf(g, &config)?;
    let tokenizer_spec = tokenizer_from_gguf(g, config.vocab_size)?;
    Ok(LoadedModel {
        file_type: gguf_file_type(g)?,
        recipe: None,
        config,
        weights,
        tokenizer_spec,
        source: g.path().display().to_string(),
        pivot: None,
    })
}

/// A required metadata value.
fn need<T>(key: &str, v: Option<T>) -> Result<T> {
    v.ok_or_else(|| ModelError::Invalid(format!("GGUF metadata `{key}` is missing")))
}

fn need_usize(g: &GgufFile, key: &str) -> Result<usize> {
    let v = need(key, g.get_u64(key)?)?;
    usize::try_from(v).map_err(|_| ModelError::Invalid(format!("`{key}` = {v} is too large")))
}

fn opt_usize(g: &GgufFile, key: &str) -> Result<Option<usize>> {
    g.get_u64(key)?
        .map(|v| {
            usize::try_from(v)
                .map_err(|_| ModelError::Invalid(format!("`{key}` = {v} is too large")))
        })
        .transpose()
}

/// The GGUF architectures Lamina runs: Llama (2, 3.x, TinyLlama, SmolLM),
/// Mistral (llama.cpp writes it as `llama`; `mistral` is accepted too) and
/// Qwen2 (q/k/v biases, RoPE on rotate-half pairs, not permuted).
pub const GGUF_ARCHS: [&str; 3] = ["llama", "mistral", "qwen2"];

/// Reads the `<arch>.*` hyperparameters.
pub fn config_from_gguf(g: &GgufFile) -> Result<LlamaConfig> {
    let arch = need("general.architecture", g.get_str("general.architecture")?)?;
    if !GGUF_ARCHS.contains(&arch) {
        return Err(ModelError::Unsupported(format!(
            "architecture `{arch}`: Lamina runs {}",
            GGUF_ARCHS.join(", ")
        )));
    }
    // Every hyperparameter key is prefixed with the architecture's name.
    let key = |k: &str| format!("{arch}.{k}");
    if opt_usize(g, &key("expert_count"))?.unwrap_or(0) > 0 {
        return Err(ModelError::Unsupported(
            "mixture-of-experts Llama models (llama.expert_count > 0)".into(),
        ));
    }
    let dim = need_usize(g, &key("embedding_length"))?;
    let n_heads = need_usize(g, &key("attention.head_count"))?;
    let n_kv_heads = opt_usize(g, &key("attention.head_count_kv"))?.unwrap_or(n_heads);
    if n_heads == 0 {
        return Err(ModelError::Invalid(format!(
            "{arch}.attention.head_count is 0"
        )));
    }
    let head_dim = match opt_usize(g, &key("attention.key_length"))? {
        Some(k) => k,
        None if dim.is_multiple_of(n_heads) => dim / n_heads,
        None => {
            return Err(ModelError::Invalid(format!(
                "embedding_length {dim} is not a multiple of head_count {n_heads}"
            )));
        }
    };
    if let Some(v) = opt_usize(g, &key("attention.value_length"))?
        && v != head_dim
    {
        return Err(ModelError::Unsupported(format!(
            "value_length {v} != key_length {head_dim}"
        )));
    }
    if let Some(r) = opt_usize(g, &key("rope.dimension_count"))?
        && r != head_dim
    {
        return Err(ModelError::Unsupported(format!(
            "partial RoPE (rope.dimension_count {r} < head_dim {head_dim})"
        )));
    }
    check_rope_scaling(g, arch)?;
    let qkv_bias = g.tensor_info(&LayerTensor::Bq.gguf_name(0)).is_some();

    let vocab_size = match g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(tokens) => tokens.len(),
        None => match opt_usize(g, &key("vocab_size"))? {
            Some(v) => v,
            None => g
                .tensor_info(ModelTensor::TokenEmbd.gguf_name())
                .map_or(0, |t| t.shape()[0]),
        },
    };
    let config = LlamaConfig {
        arch: arch.to_string(),
        n_layers: need_usize(g, &key("block_count"))?,
        dim,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: need_usize(g, &key("feed_forward_length"))?,
        vocab_size,
        norm_eps: need(
            &key("attention.layer_norm_rms_epsilon"),
            g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        )?,
        rope_theta: g.get_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        // llama.cpp permutes Llama's q/k rows for interleaved pairs; Qwen2
        // keeps Hugging Face's order and runs rotate-half (NeoX) RoPE.
        rope_style: if arch == "qwen2" {
            RopeStyle::Neox
        } else {
            RopeStyle::Interleaved
        },
        max_seq_len: need_usize(g, &key("context_length"))?,
        tied_embeddings: g.tensor_info(ModelTensor::Output.gguf_name()).is_none(),
        hadamard: Default::default(),
        rope_factors: rope_factors(g, head_dim)?,
        qkv_bias,
    };
    config.validate()?;
    Ok(config)
}

/// Refuses RoPE scalings that change every position's angles (linear, YaRN:
/// the config cannot express them). Llama 3.x's scaling has no key: the
/// converter stores it as the `rope_freqs` tensor ([`rope_factors`]).
fn check_rope_scaling(g: &GgufFile, arch: &str) -> Result<()> {
    let kind = g
        .get_str(&format!("{arch}.rope.scaling.type"))?
        .unwrap_or("none");
    let factor = g
        .get_f32(&format!("{arch}.rope.scaling.factor"))?
        .unwrap_or(1.0);
    if kind != "none" && factor != 1.0 {
        return Err(ModelError::Unsupported(format!(
            "RoPE scaling `{kind}` (factor {factor})"
        )));
    }
    Ok(())
}

/// Llama 3.x's RoPE frequency divisors from `rope_freqs.weight` (one f32
/// per pair), empty when the file has none.
fn rope_factors(g: &GgufFile, head_dim: usize) -> Result<Vec<f32>> {
    if g.tensor_info("rope_freqs.weight").is_none() {
        return Ok(Vec::new());
    }
    let t = g.load_tensor("rope_freqs.weight")?;
    if t.numel() != head_dim / 2 {
        return Err(ModelError::Invalid(format!(
            "rope_freqs.weight has {} values, head_dim {head_dim} has {} RoPE pairs",
            t.numel(),
            head_dim / 2
        )));
    }
    t.to_f32()
}

/// Maps llama.cpp tensor names to [`LlamaWeights`], checking shapes.
pub fn weights_from_gguf(g: &GgufFile, c: &LlamaConfig) -> Result<LlamaWeights> {
    for other in [
        "blk.0.attn_output.bias",
        "blk.0.ffn_down.bias",
        "blk.0.ffn_up.bias",
    ] {
        if g.tensor_info(other).is_some() {
            return Err(ModelError::Unsupported(format!(
                "biases other than q/k/v ({other})"
            )));
        }
    }
    LlamaWeights::try_from_table(c, |role| g.load_tensor(&role.gguf_name()))
}

/// Fills a [`TokenizerSpec`] from `tokenizer.ggml.*` metadata.
pub fn tokenizer_from_gguf(g: &GgufFile, vocab_size: usize) -> Result<TokenizerSpec> {
    let model = need("tokenizer.ggml.model", g.get_str("tokenizer.ggml.model")?)?.to_string();
    let tokens = need(
        "tokenizer.ggml.tokens",
        g.get_str_array("tokenizer.ggml.tokens")?,
    )?;
    if tokens.len() != vocab_size {
        return Err(ModelError::Invalid(format!(
            "tokenizer has {} tokens but the model's vocab size is {vocab_size}",
            tokens.len()
        )));
    }
    let token_types = g
        .get_i32_array("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    let scores = g
        .get_f32_array("tokenizer.ggml.scores")?
        .unwrap_or_default();
    for (what, len) in [("token_type", token_types.len()), ("scores", scores.len())] {
        if len != 0 && len != tokens.len() {
            return Err(ModelError::Invalid(format!(
                "tokenizer.ggml.{what} has {len} entries for {} tokens",
                tokens.len()
            )));
        }
    }
    let id = |key: &str| -> Result<Option<u32>> {
        match g.get_u32(key)? {
            Some(v) if v as usize >= tokens.len() => Err(ModelError::Invalid(format!(
                "`{key}` = {v} is outside the vocabulary of {}",
                tokens.len()
            ))),
            v => Ok(v),
        }
    };
    let pre = g.get_str("tokenizer.ggml.pre")?.map(str::to_string);
    // llama.cpp's defaults when the flag is absent: SentencePiece vocabularies
    // and Llama 3's BPE add BOS; other BPE vocabularies do not.
    let default_bos = model == "llama" || pre.as_deref() == Some("llama-bpe");
    Ok(TokenizerSpec {
        merges: g
            .get_str_array("tokenizer.ggml.merges")?
            .unwrap_or_default(),
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        unk_id: id("tokenizer.ggml.unknown_token_id")?,
        pad_id: id("tokenizer.ggml.padding_token_id")?,
        add_bos: g
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(default_bos),
        add_eos: g.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        chat_template: g.get_str("tokenizer.chat_template")?.map(str::to_string),
        hf_json: None,
        model,
        pre,
        tokens,
        token_types,
        scores,
    })
}

/// llama.cpp's `llama_ftype` names, from `general.file_type`; without that
/// key, the type of the first attention matrix.
fn gguf_file_type(g: &GgufFile) -> Result<String> {
    #[rustfmt::skip]
    const NAMES: [(u32, &str); 33] = [
        (0, "F32"), (1, "F16"), (2, "Q4_0"), (3, "Q4_1"), (7, "Q8_0"), (8, "Q5_0"),
        (9, "Q5_1"), (10, "Q2_K"), (11, "Q3_K_S"), (12, "Q3_K_M"), (13, "Q3_K_L"),
        (14, "Q4_K_S"), (15, "Q4_K_M"), (16, "Q5_K_S"), (17, "Q5_K_M"), (18, "Q6_K"),
        (19, "IQ2_XXS"), (20, "IQ2_XS"), (21, "Q2_K_S"), (22, "IQ3_XS"), (23, "IQ3_XXS"),
        (24, "IQ1_S"), (25, "IQ4_NL"), (26, "IQ3_S"), (27, "IQ3_M"), (28, "IQ2_S"),
        (29, "IQ2_M"), (30, "IQ4_XS"), (31, "IQ1_M"), (32, "BF16"), (36, "TQ1_0"),
        (37, "TQ2_0"), (38, "MXFP4_MOE"),
    ];
    // Bit 10 is llama.cpp's LLAMA_FTYPE_GUESSED flag.
    Ok(match g.get_u32("general.file_type")?.map(|f| f & !1024) {
        Some(f) => match NAMES.iter().find(|(id, _)| *id == f) {
            Some((_, name)) => (*name).to_string(),
            None => format!("ftype {f}"),
        },
        None => g
            .tensor_info(&LayerTensor::Wq.gguf_name(0))
            .map_or_else(|| "unknown".to_string(), |t| t.type_name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;
    use crate::gguf::{GgufArray, GgufValue};

    /// A two-layer f32 Llama with tiny dims, as GGUF bytes.
    fn tiny_gguf(arch: &str, tied: bool) -> Vec<u8> {
        let (dim, heads, kv_heads, ffn, vocab) = (8usize, 2u32, 1u32, 16usize, 5usize);
        let hd = dim / heads as usize;
        let mut w = GgufWriter::new();
        w.kv("general.architecture", arch.into())
            .kv("general.file_type", GgufValue::U32(0))
            .kv("llama.block_count", GgufValue::U32(2))
            .kv("llama.context_length", GgufValue::U32(64))
            .kv("llama.embedding_length", GgufValue::U32(dim as u32))
            .kv("llama.feed_forward_length", GgufValue::U32(ffn as u32))
            .kv("llama.attention.head_count", GgufValue::U32(heads))
            .kv("llama.attention.head_count_kv", GgufValue::U32(kv_heads))
            .kv(
                "llama.attention.layer_norm_rms_epsilon",
                GgufValue::F32(1e-5),
            )
            .kv("llama.rope.freq_base", GgufValue::F32(500.0))
            .kv("tokenizer.ggml.model", "gpt2".into())
            .kv("tokenizer.ggml.pre", "smollm".into())
            .kv(
                "tokenizer.ggml.tokens",
                (0..vocab)
                    .map(|i| format!("t{i}"))
                    .collect::<Vec<_>>()
                    .into(),
            )
            .kv(
                "tokenizer.ggml.token_type",
                GgufValue::Array(GgufArray::I32(vec![1; vocab])),
            )
            .kv("tokenizer.ggml.merges", vec!["t t".to_string()].into())
            .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
            .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(2))
            .kv("tokenizer.chat_template", "{{ x }}".into());
        let mut t = |name: &str, shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            w.tensor_f32(name, shape, &v);
        };
        t("token_embd.weight", &[vocab, dim]);
        for l in 0..2 {
            t(&format!("blk.{l}.attn_norm.weight"), &[dim]);
            t(&format!("blk.{l}.attn_q.weight"), &[dim, dim]);
            t(&format!("blk.{l}.attn_k.weight"), &[hd, dim]);
            t(&format!("blk.{l}.attn_v.weight"), &[hd, dim]);
            t(&format!("blk.{l}.attn_output.weight"), &[dim, dim]);
            t(&format!("blk.{l}.ffn_norm.weight"), &[dim]);
            t(&format!("blk.{l}.ffn_gate.weight"), &[ffn, dim]);
            t(&format!("blk.{l}.ffn_up.weight"), &[ffn, dim]);
            t(&format!("blk.{l}.ffn_down.weight"), &[dim, ffn]);
        }
        t("output_norm.weight", &[dim]);
        if !tied {
            t("output.weight", &[vocab, dim]);
        }
        w.to_bytes()
    }

    #[test]
    fn loads_tiny_model() {
        let g = GgufFile::from_bytes("tiny.gguf", &tiny_gguf("llama", true)).unwrap();
        let m = load_gguf(&g).unwrap();
        let c = &m.config;
        assert_eq!(
            (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim),
            (2, 8, 2, 1, 4)
        );
        assert_eq!((c.ffn_dim, c.vocab_size, c.max_seq_len), (16, 5, 64));
        assert_eq!(
            (c.rope_theta, c.norm_eps, c.rope_style),
            (500.0, 1e-5, RopeStyle::Interleaved)
        );
        assert!(c.tied_embeddings && m.weights.output.is_none());
        assert_eq!(m.weights.layers[1].wk.shape, [4, 8]);
        assert_eq!(m.file_type, "F32");
        let t = &m.tokenizer_spec;
        assert_eq!(
            (t.model.as_str(), t.pre.as_deref()),
            ("gpt2", Some("smollm"))
        );
        assert_eq!(
            (t.tokens.len(), t.token_types.len(), t.merges.len()),
            (5, 5, 1)
        );
        assert_eq!(
            (t.bos_id, t.eos_id, t.unk_id, t.add_bos),
            (Some(1), Some(2), None, false)
        );
        assert_eq!(t.chat_template.as_deref(), Some("{{ x }}"));

        let g = GgufFile::from_bytes("untied.gguf", &tiny_gguf("llama", false)).unwrap();
        let m = load_gguf(&g).unwrap();
        assert!(!m.config.tied_embeddings);
        assert_eq!(m.weights.lm_head().name, "output.weight");
    }

    #[test]
    fn wrong_architecture() {
        let g = GgufFile::from_bytes("gpt.gguf", &tiny_gguf("gpt2", true)).unwrap();
        let err = load_gguf(&g).unwrap_err().to_string();
        assert!(
            err.contains("architecture `gpt2`") && err.contains("llama, mistral, qwen2"),
            "{err}"
        );
    }

    #[test]
    fn shape_mismatch_names_tensor() {
        let mut w = GgufWriter::new();
        let g0 = GgufFile::from_bytes("t", &tiny_gguf("llama", true)).unwrap();
        for (k, v) in g0.metadata() {
            let v = if k == "llama.feed_forward_length" {
                GgufValue::U32(12)
            } else {
                v.clone()
            };
            w.kv(k.clone(), v);
        }
        for t in g0.tensors() {
            w.host_tensor(t.name.clone(), &g0.load_tensor(&t.name).unwrap());
        }
        let g = GgufFile::from_bytes("t", &w.to_bytes()).unwrap();
        let err = load_gguf(&g).unwrap_err().to_string();
        assert!(
            err.contains("blk.0.ffn_gate.weight")
                && err.contains("[16, 8]")
                && err.contains("[12, 8]"),
            "{err}"
        );
    }
}
