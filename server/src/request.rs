//! From a request body to an engine job: the model name, the prompt
//! (through the chat template for chat), the pivot, sampling and limits,
//! each checked with an OpenAI-style error naming the bad parameter.

use lamina_engine::Sampling;
use lamina_model::chat::{ChatMessage, ChatTemplate};
use lamina_model::session::{SamplerConfig, seed_or_fresh};
use lamina_model::tokenizer::Tokenizer;

use crate::api::{ApiError, ChatRequest, Common, CompletionRequest, Content, Prompt, Stop};

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
/// Longest stop string, in bytes: each is searched for at every token.
pub const MAX_STOP_BYTES: usize = 1024;

/// The served model: what requests are checked against and rendered with.
pub struct ServedModel {
    /// The id clients name (`/v1/models`).
    pub name: String,
    pub tokenizer: Tokenizer,
    /// `None`: the model has no chat template (chat requests fail).
    pub template: Option<ChatTemplate>,
    /// Positions in each slot's KV cache, the pivot's included.
    pub ctx: usize,
    /// The pivot's tokens, which lead every sequence (empty: none).
    pub pivot: Vec<u32>,
    /// The system prompt the pivot holds (`--pivot-prompt` with a chat
    /// template): the system message of every conversation.
    pub system: Option<String>,
    /// Sampling when a request says nothing (the command line's).
    pub defaults: Sampling,
    /// Seed when a request gives none (`None`: a fresh one each request).
    pub default_seed: Option<u64>,
}

/// What the engine needs of one checked request.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
}

impl ServedModel {
    pub fn chat(&self, r: &ChatRequest) -> Result<Prepared, ApiError> {
        self.check_model(&r.common)?;
        let Some(template) = &self.template else {
            return Err(ApiError::invalid(
                None,
                format!(
                    "{} has no chat template: use /v1/completions with a plain prompt",
                    self.name
                ),
            ));
        };
        let Some(messages) = &r.messages else {
            return Err(ApiError::invalid(
                Some("messages"),
                "you must provide a 'messages' parameter",
            ));
        };
        if messages.is_empty() {
            return Err(ApiError::invalid(
                Some("messages"),
                "'messages' must hold at least one message",
            ));
        }
        let mut turns = Vec::with_capacity(messages.len() + 1);
        for (i, m) in messages.iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        Some("messages"),
                        format!(
                            "messages[{i}].role '{other}' is not one of 'system', 'developer', 'user', 'assistant'"
                        ),
                    ));
                }
            };
            turns.push(ChatMessage::new(role, content_text(i, m.content.as_ref())?));
        }
        if let Some(sys) = &self.system {
            match turns.first() {
                Some(t) if t.role == "system" && &t.content != sys => {
                    return Err(ApiError::invalid(
                        Some("messages"),
                        "this server's system prompt is fixed (lamina serve --pivot-prompt): \
                         leave the system message out or send that one",
                    ));
                }
                Some(t) if t.role == "system" => {}
                _ => turns.insert(0, ChatMessage::system(sys.clone())),
            }
        }
        let text = template
            .render_for(&self.tokenizer, &turns, true)
            .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
        let prompt = self.tokens(&text)?;
        self.prepare(prompt, "messages", &r.common)
    }

    pub fn completion(&self, r: &CompletionRequest) -> Result<Prepared, ApiError> {
        self.check_model(&r.common)?;
        if r.echo {
            return Err(ApiError::invalid(Some("echo"), "echo is not supported"));
        }
        if r.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(Some("suffix"), "suffix is not supported"));
        }
        if r.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid(Some("best_of"), "best_of must be 1"));
        }
        let one = || {
            ApiError::invalid(
                Some("prompt"),
                "give one prompt (a string, or a list of one string or one token list)",
            )
        };
        let prompt = match &r.prompt {
            None => {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    "you must provide a 'prompt' parameter",
                ));
            }
            Some(Prompt::Text(t)) => self.tokens(t)?,
            Some(Prompt::Texts(v)) if v.len() == 1 => self.tokens(&v[0])?,
            Some(Prompt::Tokens(ids)) => self.ids(ids.clone())?,
            Some(Prompt::TokenLists(v)) if v.len() == 1 => self.ids(v[0].clone())?,
            Some(_) => return Err(one()),
        };
        self.prepare(prompt, "prompt", &r.common)
    }

    fn check_model(&self, c: &Common) -> Result<(), ApiError> {
        match c.model.as_deref() {
            None => Err(ApiError::invalid(
                Some("model"),
                "you must provide a 'model' parameter",
            )),
            Some(m) if m == self.name => Ok(()),
            Some(m) => Err(ApiError::invalid(
                Some("model"),
                format!(
                    "the model '{m}' does not exist: this server has '{}'",
                    self.name
                ),
            )
            .with_code("model_not_found")
            .with_status(axum::http::StatusCode::NOT_FOUND)),
        }
    }

    /// `text` as the model's tokens, the pivot leading.
    fn tokens(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        let ids = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))?;
        self.ids(ids)
    }

    /// The pivot leads every sequence: a prompt that does not start with
    /// it gets it in front (as `lamina generate` does).
    fn ids(&self, mut ids: Vec<u32>) -> Result<Vec<u32>, ApiError> {
        let vocab = self.tokenizer.vocab_size() as u32;
        if let Some(t) = ids.iter().find(|&&t| t >= vocab) {
            return Err(ApiError::invalid(
                Some("prompt"),
                format!("token id {t} is outside the vocabulary ({vocab})"),
            ));
        }
        if !ids.starts_with(&self.pivot) {
            ids.splice(0..0, self.pivot.iter().copied());
        }
        if ids.len() <= self.pivot.len() {
            return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
        }
        Ok(ids)
    }

    /// Checks the settings `c` of a request whose tokens are `prompt`
    /// (from its field `prompt_field`, named in errors).
    fn prepare(
        &self,
        prompt: Vec<u32>,
        prompt_field: &'static str,
        c: &Common,
    ) -> Result<Prepared, ApiError> {
        if c.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(Some("n"), "only n = 1 is supported"));
        }
        if c.logprobs
            .as_ref()
            .is_some_and(|v| !v.is_null() && v != false)
        {
            return Err(ApiError::invalid(
                Some("logprobs"),
                "logprobs are not supported",
            ));
        }
        if c.logit_bias
            .as_ref()
            .is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
        {
            return Err(ApiError::invalid(
                Some("logit_bias"),
                "logit_bias is not supported",
            ));
        }
        for (name, v) in [
            ("presence_penalty", c.presence_penalty),
            ("frequency_penalty", c.frequency_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(
                    Some(name),
                    format!("{name} is not supported (the GPU sampler has repeat_penalty instead)"),
                ));
            }
        }
        let room = self.ctx.saturating_sub(prompt.len());
        if room == 0 {
            return Err(ApiError::invalid(
                Some(prompt_field),
                format!(
                    "this model's maximum context length is {} tokens, and the prompt takes {}",
                    self.ctx,
                    prompt.len()
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let max_field = match c.max_completion_tokens {
            Some(_) => "max_completion_tokens",
            None => "max_tokens",
        };
        let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
            None => room,
            Some(n) if n < 1 => {
                return Err(ApiError::invalid(
                    Some(max_field),
                    format!("{max_field} must be at least 1, got {n}"),
                ));
            }
            Some(n) if n as u64 > room as u64 => {
                return Err(ApiError::invalid(
                    Some(max_field),
                    format!(
                        "this model's maximum context length is {} tokens; you requested {} \
                         ({} in the prompt, {n} to generate)",
                        self.ctx,
                        prompt.len() as u64 + n as u64,
                        prompt.len()
                    ),
                )
                .with_code("context_length_exceeded"));
            }
            Some(n) => n as usize,
        };
        let d = self.defaults;
        let temperature = c.temperature.unwrap_or(d.temperature);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("temperature must be in [0, 2], got {temperature}"),
            ));
        }
        let top_p = c.top_p.unwrap_or(d.top_p);
        let top_k = match c.top_k {
            None => d.top_k,
            Some(k) => u32::try_from(k).map_err(|_| {
                ApiError::invalid(Some("top_k"), format!("top_k must be >= 0, got {k}"))
            })?,
        };
        let repeat_penalty = c.repeat_penalty.unwrap_or(d.repeat_penalty);
        let sampling = Sampling::checked(temperature, top_k, top_p, repeat_penalty)
            .map_err(|(field, msg)| ApiError::invalid(Some(field), format!("{field} {msg}")))?;
        let stop = match &c.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) if v.len() <= MAX_STOPS => v.clone(),
            Some(Stop::Many(v)) => {
                return Err(ApiError::invalid(
                    Some("stop"),
                    format!("at most {MAX_STOPS} stop strings, got {}", v.len()),
                ));
            }
        };
        if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                Some("stop"),
                format!(
                    "a stop string may be at most {MAX_STOP_BYTES} bytes, got {}",
                    long.len()
                ),
            ));
        }
        Ok(Prepared {
            prompt,
            max_tokens,
            sampler: SamplerConfig {
                sampling,
                seed: seed_or_fresh(c.seed.map(|s| s as u64).or(self.default_seed)),
            },
            stop,
            ignore_eos: c.ignore_eos,
            stream: c.stream,
            include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        })
    }
}

/// A message's text: a string, or its text parts joined.
fn content_text(i: usize, c: Option<&Content>) -> Result<String, ApiError> {
    match c {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            Some("messages"),
                            format!(
                                "messages[{i}]: content parts of type '{kind}' are not supported (text only)"
                            ),
                        ));
                    }
                }
            }
            Ok(s)
        }
    }
}
