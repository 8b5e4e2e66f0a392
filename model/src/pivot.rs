//! The pivot (IntactKV, arXiv 2403.01241; PrefixQuant's prefix): the KV of a
//! few tokens every sequence starts with ([BOS], a system prompt), computed
//! once by the full-precision model and kept lossless at the front of the
//! cache.
//!
//! [`Pivot`] (in the checkpoint) is the stored form; this module makes one:
//! [`compute`] runs the tokens through the CPU f32 reference of some
//! weights, and [`for_model`] finds the full-precision KV for a model: the
//! pivot its `.lamina.safetensors` file carries, or its own weights, or the
//! source checkpoint its recipe names. `crate::kv_cache` uploads it;
//! `crate::quant::intactkv` tunes it for quantized weights.

use crate::checkpoint::{LlamaWeights, LoadedModel, Pivot};
use crate::reference::Reference;
use crate::{LlamaConfig, ModelError, Result};

/// Runs `tokens` through the CPU f32 reference of `weights` (the
/// full-precision model: a GGUF or HF source dequantized to f32).
pub fn compute(cfg: &LlamaConfig, weights: &LlamaWeights, tokens: &[u32]) -> Result<Pivot> {
    if tokens.is_empty() {
        return Err(ModelError::Input(
            "an empty pivot has nothing to compute".into(),
        ));
    }
    let mut r = Reference::new(cfg, weights, tokens.len().min(cfg.max_seq_len))?;
    r.forward_last(tokens, 0)?;
    let kvd = cfg.kv_dim();
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for l in 0..cfg.n_layers {
        let (kl, vl) = r.layer_kv(l);
        k.push(kl[..tokens.len() * kvd].to_vec());
        v.push(vl[..tokens.len() * kvd].to_vec());
    }
    Ok(Pivot {
        tokens: tokens.to_vec(),
        k,
        v,
    })
}

/// The pivot of `tokens` for model `m`, from its full-precision weights:
/// the KV stored in a `.lamina.safetensors` file for the same tokens;
/// else, for a GGUF or HF checkpoint, its own weights (the source
/// dequantized to f32); else the quantized file's source checkpoint, named
/// in its recipe, when it is at hand.
pub fn for_model(m: &LoadedModel, tokens: &[u32]) -> Result<Pivot> {
    if let Some(p) = &m.pivot
        && p.tokens == tokens
    {
        return Ok(p.clone());
    }
    let Some(recipe) = &m.recipe else {
        return compute(&m.config, &m.weights, tokens);
    };
    let source = recipe.source_path().filter(|p| p.exists());
    if source.is_none() {
        return Err(ModelError::Input(format!(
            "{} holds no pivot KV for tokens {tokens:?} and its full-precision source `{}` \
             is not at hand to compute it (quantize again, or run without a pivot: --pivot none)",
            m.source, recipe.source
        )));
    }
    log::info!(
        "computing the pivot KV from the source checkpoint {}",
        recipe.source
    );
    let src = load_source(m)?;
    compute(&src.config, &src.weights, tokens)
}

/// The full-precision source checkpoint that `m`'s recipe names (rotated
/// as the recipe says), checked to have `m`'s layers, attention widths and
/// vocabulary.
pub fn load_source(m: &LoadedModel) -> Result<LoadedModel> {
    let source = m.recipe.as_ref().and_then(|r| r.source_path());
    let Some(path) = source.filter(|p| p.exists()) else {
        return Err(ModelError::Input(format!(
            "its full-precision source `{}` is not at hand",
            source.map_or(String::new(), |p| p.display().to_string())
        )));
    };
    let mut src = crate::loader::load(path)?;
    // A rotated file's full-precision model is its source rotated the same way.
    if let Some(rot) = m.recipe.as_ref().and_then(|r| r.rotation.as_ref()) {
        let o = crate::rotate::RotateOptions {
            seed: rot.seed,
            untie: rot.untied,
        };
        src = crate::rotate::rotate(&src, &o)?;
    }
    if !src.config.same_attention_shape(&m.config) || src.config.vocab_size != m.config.vocab_size {
        return Err(ModelError::Input(format!(
            "the source checkpoint {} does not match {} (layers, attention widths or vocabulary)",
            path.display(),
            m.source
        )));
    }
    Ok(src)
}
