//! `lamina generate` and `lamina chat`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use lamina_engine::Sampling;
use lamina_model::chat::{ChatMessage, ChatTemplate};
use lamina_model::session::{SamplerConfig, Session, seed_or_fresh};
use lamina_model::tokenizer::Tokenizer;

use crate::common::{
    ModelArgs, gpu_model, load_host_model, spinner, tokenizer_for, without_final_newline,
};

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy.
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true)]
    pub temp: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: u32,
    /// Nucleus sampling threshold (1.0 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// Penalty for tokens among the last 64 (1.0 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (default: a fresh one each run).
    #[arg(short = 's', long = "seed")]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The settings the sample op gets at every step (the one conversion
    /// from the flags), and the seed of the session's per-step draws.
    pub fn config(&self) -> Result<SamplerConfig> {
        let sampling = Sampling::checked(self.temp, self.top_k, self.top_p, self.repeat_penalty)
            .map_err(|(field, msg)| {
                let flag = match field {
                    "temperature" => "--temp".to_string(),
                    f => format!("--{}", f.replace('_', "-")),
                };
                anyhow::anyhow!("{flag} {msg}")
            })?;
        Ok(SamplerConfig {
            sampling,
            seed: seed_or_fresh(self.seed),
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The prompt; `-` or absent reads it from stdin.
    #[arg(short = 'p', long = "prompt")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    /// Tokens to generate (0 = none: only the prompt is processed; -1 =
    /// until end of generation or the context is full).
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    pub n_predict: i64,
    /// Apply the model's chat template, the prompt being the user's message.
    #[arg(long)]
    pub chat: bool,
    /// System prompt for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System prompt (default: the template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per answer.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    pub n_predict: usize,
}

/// The prompt: -p's text as given; a file's or stdin's less one trailing
/// newline.
fn read_prompt(a: &GenerateArgs) -> Result<String> {
    if let Some(f) = &a.file {
        return std::fs::read_to_string(f)
            .map(without_final_newline)
            .with_context(|| format!("reading prompt file {}", f.display()));
    }
    match a.prompt.as_deref() {
        Some("-") | None => {
            if a.prompt.is_none() && std::io::stdin().is_terminal() {
                bail!("no prompt: give -p/--prompt TEXT, -f FILE, or pipe it on stdin");
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            Ok(without_final_newline(s))
        }
        Some(p) => Ok(p.to_string()),
    }
}

/// Streams tokens to `out` until `n` tokens, end of generation or a full
/// context. `on_token` sees each token as it enters the KV cache (the last
/// printed token does not). Returns (tokens generated, seconds spent).
fn stream(
    session: &mut Session,
    tok: &Tokenizer,
    first: u32,
    n: Option<usize>,
    ignore_eos: bool,
    out: &mut impl Write,
    mut on_token: impl FnMut(u32),
) -> Result<(usize, f64)> {
    let t0 = Instant::now();
    let mut dec = tok.stream_decoder();
    let mut next = first;
    let mut count = 0;
    if n == Some(0) {
        return Ok((0, 0.0));
    }
    loop {
        if !ignore_eos && tok.is_eog(next) {
            break;
        }
        let text = dec.push(next)?;
        out.write_all(text.as_bytes())?;
        out.flush()?;
        count += 1;
        if n.is_some_and(|n| count >= n) || session.pos() >= session.max_ctx() {
            break;
        }
        on_token(next);
        next = session.feed(&[next])?;
    }
    out.write_all(dec.flush().as_bytes())?;
    out.flush()?;
    Ok((count, t0.elapsed().as_secs_f64()))
}

pub fn run_generate(a: &GenerateArgs) -> Result<()> {
    let prompt = read_prompt(a)?;
    if prompt.is_empty() {
        bail!("empty prompt: give some text to continue");
    }
    let sampler = a.sampling.config()?;
    let host = load_host_model(&a.model)?;
    let tok = tokenizer_for(&host)?;
    let text = if a.chat {
        let tmpl = ChatTemplate::from_tokenizer(&tok)?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::system(s));
        }
        msgs.push(ChatMessage::user(&prompt));
        tmpl.render_for(&tok, &msgs, true)?
    } else {
        prompt
    };
    let ids = tok.encode(&text, true)?;
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    if a.n_predict < -1 {
        bail!(
            "-n/--n-predict must be -1 (no limit), 0 or more, got {}",
            a.n_predict
        );
    }
    let n_predict = usize::try_from(a.n_predict).ok();
    let need = ids.len() + n_predict.unwrap_or(0);
    let ctx = a.model.ctx_size.filter(|&c| c > 0).unwrap_or(
        host.config
            .max_seq_len
            .min(need.max(512).next_power_of_two()),
    );
    if ids.len() >= ctx {
        bail!(
            "the prompt is {} tokens, which does not fit in a context of {ctx} (raise -c/--ctx-size; the model was trained for {})",
            ids.len(),
            host.config.max_seq_len
        );
    }
    let mut margs = a.model.clone();
    margs.ctx_size = Some(ctx);
    let model = gpu_model(&margs, &host, 1)?;
    drop(host);
    log::info!("sampling: {:?}, seed {}", sampler.sampling, sampler.seed);
    let mut session = Session::new(model, a.model.batch_size, sampler)?;
    let t0 = Instant::now();
    let sp = spinner(&format!("processing the prompt ({} tokens)", ids.len()));
    let first = session.feed(&ids);
    sp.finish_and_clear();
    let first = first?;
    let pp = t0.elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    let (n, tg) = stream(
        &mut session,
        &tok,
        first,
        n_predict,
        a.ignore_eos,
        &mut stdout,
        |_| {},
    )?;
    writeln!(stdout)?;
    if n_predict.is_none_or(|want| n < want) && session.pos() >= session.max_ctx() {
        eprintln!(
            "stopped: the context of {} positions is full (raise -c/--ctx-size)",
            session.max_ctx()
        );
    }
    eprintln!(
        "prompt: {} tokens in {:.2} s ({:.1} t/s); generated: {} tokens in {:.2} s ({:.1} t/s)",
        ids.len(),
        pp,
        ids.len() as f64 / pp.max(1e-9),
        n,
        tg,
        n as f64 / tg.max(1e-9)
    );
    Ok(())
}

pub fn run_chat(a: &ChatArgs) -> Result<()> {
    let sampler = a.sampling.config()?;
    let host = load_host_model(&a.model)?;
    let tok = tokenizer_for(&host)?;
    let tmpl = ChatTemplate::from_tokenizer(&tok)?;
    let model = gpu_model(&a.model, &host, 1)?;
    drop(host);
    let mut session = Session::new(model, a.model.batch_size, sampler)?;
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage::system(s));
    }
    // Tokens already in the KV cache; each turn feeds only what is new.
    let mut cached: Vec<u32> = Vec::new();
    let interactive = std::io::stdin().is_terminal();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    eprintln!("chat with the model; an empty line or Ctrl-D ends the session");
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            break;
        }
        messages.push(ChatMessage::user(line.trim()));
        let Some(ids) = fit_conversation(&tmpl, &tok, &mut messages, &session, a.n_predict)? else {
            messages.pop();
            eprintln!(
                "error: this message does not fit in the context of {} tokens with room for \
                 an answer (raise -c/--ctx-size); the conversation goes on without it",
                session.max_ctx()
            );
            continue;
        };
        let common = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        if common < cached.len() {
            // Earlier turns were dropped, or the template re-rendered them
            // differently: start over.
            session.reset();
            cached.clear();
        }
        let new = &ids[cached.len()..];
        let first = session.feed(new)?;
        cached = ids.clone();
        let mut answer_ids = Vec::new();
        let mut reply = Vec::new();
        let mut stdout = std::io::stdout().lock();
        let mut tee = Tee {
            a: &mut stdout,
            b: &mut reply,
        };
        let (n, secs) = stream(
            &mut session,
            &tok,
            first,
            Some(a.n_predict),
            false,
            &mut tee,
            |t| answer_ids.push(t),
        )?;
        writeln!(stdout)?;
        log::info!(
            "{n} tokens in {secs:.2} s ({:.1} t/s)",
            n as f64 / secs.max(1e-9)
        );
        cached.extend(&answer_ids);
        messages.push(ChatMessage::assistant(
            String::from_utf8_lossy(&reply).trim().to_string(),
        ));
    }
    Ok(())
}

/// The conversation's prompt tokens, leaving room for an answer of up to
/// `n_predict` tokens (at most a quarter of the context): the oldest
/// exchanges after the system message are dropped until it fits (said on
/// stderr); `None` when the newest message alone does not fit.
fn fit_conversation(
    tmpl: &ChatTemplate,
    tok: &Tokenizer,
    messages: &mut Vec<ChatMessage>,
    session: &Session,
    n_predict: usize,
) -> Result<Option<Vec<u32>>> {
    let ctx = session.max_ctx();
    let reserve = n_predict.clamp(1, (ctx / 4).max(1));
    let keep = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    let mut dropped = 0;
    loop {
        let ids = tok.encode(&tmpl.render_for(tok, messages, true)?, true)?;
        if session.positions_for(&ids) + reserve <= ctx {
            if dropped > 0 {
                eprintln!(
                    "note: dropped the {dropped} oldest exchange(s) to fit the context of {ctx} tokens"
                );
            }
            return Ok(Some(ids));
        }
        // [system] user assistant ... user: the oldest user and answer go.
        if messages.len() < keep + 3 {
            return Ok(None);
        }
        messages.drain(keep..keep + 2);
        dropped += 1;
    }
}

/// Writes to two sinks: the terminal and the transcript.
struct Tee<'a, A: Write, B: Write> {
    a: &'a mut A,
    b: &'a mut B,
}

impl<A: Write, B: Write> Write for Tee<'_, A, B> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.a.write_all(buf)?;
        self.b.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.a.flush()?;
        self.b.flush()
    }
}
