//! `lamina serve`: the model behind an OpenAI-compatible HTTP API
//! (lamina-server). This file loads the model, makes one session per slot
//! (each with a KV cache of its own, the weights shared) and turns
//! `--pivot-prompt` into the chat template's system turn.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use lamina_model::chat::{ChatMessage, ChatTemplate};
use lamina_model::session::Session;
use lamina_model::tokenizer::Tokenizer;
use lamina_server::{ServeOptions, ServedModel};

use crate::common::{ModelArgs, gpu_model, load_host_model, spinner, tokenizer_for};
use crate::generate::SamplingArgs;

/// Context per slot when `-c` is not given (or the model's, if smaller).
const DEFAULT_CTX: usize = 4096;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sampling for requests that do not set it (each request may).
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "LAMINA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sequences served at once, each with a KV cache of -c positions.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a free slot; beyond them the answer is 503.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// The model's id in the API (default: the model file's name).
    #[arg(long)]
    pub alias: Option<String>,
}

/// The id clients name: the file name without its model extension.
fn model_name(source: &str) -> String {
    let name = Path::new(source)
        .file_name()
        .map_or_else(|| source.to_string(), |n| n.to_string_lossy().into_owned());
    for ext in [".gguf", ".lamina.safetensors", ".safetensors"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    name
}

/// The text of `system`'s turn as the template renders it at a
/// conversation's start: the pivot, which every conversation with that
/// system message then starts with, token for token (checked).
fn system_turn(t: &ChatTemplate, tok: &Tokenizer, system: &str) -> Result<String> {
    let sys = ChatMessage::system(system);
    let turn = t.render_for(tok, std::slice::from_ref(&sys), false)?;
    let convo = t.render_for(tok, &[sys, ChatMessage::user("Hello.")], true)?;
    let (a, b) = (tok.encode(&turn, true)?, tok.encode(&convo, true)?);
    if turn.is_empty() || !convo.starts_with(&turn) || !b.starts_with(&a) {
        bail!(
            "--pivot-prompt: the chat template's system turn is not the start of its \
             conversations (text or tokens), so it cannot be a shared pivot"
        );
    }
    Ok(turn)
}

pub fn run(a: &ServeArgs) -> Result<()> {
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let sampler = a.sampling.config()?;
    let host = load_host_model(&a.model)?;
    let tok = tokenizer_for(&host)?;
    let template = match ChatTemplate::from_tokenizer(&tok) {
        Ok(t) => Some(t),
        Err(e) => {
            log::warn!("{e}: /v1/chat/completions will refuse requests");
            None
        }
    };
    let mut margs = a.model.clone();
    if margs.ctx_size.is_none() {
        margs.ctx_size = Some(host.config.max_seq_len.min(DEFAULT_CTX));
    }
    // With a chat template the pivot prompt is a system message: the pivot
    // holds its rendered turn.
    let system = match (&a.model.pivot_prompt, &template) {
        (Some(text), Some(t)) => {
            margs.pivot_prompt = Some(system_turn(t, &tok, text)?);
            Some(text.clone())
        }
        _ => None,
    };
    let name = a.alias.clone().unwrap_or_else(|| model_name(&host.source));
    let model = gpu_model(&margs, &host, 1)?;
    drop(host);
    let sp = spinner(&format!("preparing {} slots", a.parallel));
    // A fork per slot, their f16 caches side by side in one buffer per
    // layer: a batched step attends over all slots in one dispatch.
    let forks = match a.parallel {
        1 => vec![model.clone()],
        n => model
            .forks(n)
            .context("the slots' KV caches")?
            .into_iter()
            .map(Arc::new)
            .collect(),
    };
    let mut sessions = Vec::with_capacity(a.parallel);
    for m in forks {
        let mut s = Session::new(m, a.model.batch_size, sampler)?;
        s.prepare()?;
        sessions.push(s);
    }
    sp.finish_and_clear();
    let served = ServedModel {
        name,
        tokenizer: tok,
        template,
        ctx: model.kv.max_ctx,
        pivot: model.kv.pivot.clone(),
        system,
        defaults: sampler.sampling,
        default_seed: a.sampling.seed,
    };
    drop(model);
    let opts = ServeOptions {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        queue: a.queue,
    };
    lamina_server::serve(&opts, served, sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_drop_the_extension() {
        assert_eq!(
            model_name("/c/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(model_name("out/m.lamina.safetensors"), "m");
        assert_eq!(model_name("models/llama-dir"), "llama-dir");
    }
}
