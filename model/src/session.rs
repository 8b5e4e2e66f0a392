//! Running a model: prompt processing and token-by-token decoding over one
//! KV cache, with sampling on the GPU (only the token id comes back).

use std::collections::VecDeque;
use std::sync::Arc;

use lamina_engine::Executor;
use lamina_engine::graph::{Sampling, Step, TensorId};
use lamina_engine::kv::GROUP;
use rand::{Rng, SeedableRng};

use crate::llama::{GpuModel, GraphIo, Head, REPEAT_LAST_N, build_graph};
use crate::{ModelError, Result};

/// What a session samples with: the sample op's settings, built once by the
/// caller and handed to the op unchanged at every step but for
/// [`Sampling::uniform`], which each step draws from a generator seeded
/// with `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    pub sampling: Sampling,
    pub seed: u64,
}

/// `seed`, or a fresh one (from the clock) when there is none.
pub fn seed_or_fresh(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        // web_time: std's clock panics in a browser.
        web_time::SystemTime::now()
            .duration_since(web_time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

impl SamplerConfig {
    /// The most likely token at every step.
    pub fn greedy() -> Self {
        SamplerConfig {
            sampling: Sampling::default(),
            seed: 0,
        }
    }
}

/// A graph compiled for execution and the ids to drive it.
pub struct Compiled {
    pub exec: Executor,
    pub io: GraphIo,
}

impl Compiled {
    pub fn new(model: &GpuModel, max_tokens: u32, head: Head) -> Result<Self> {
        let (g, io) = build_graph(model, max_tokens, head)?;
        Ok(Compiled {
            exec: Executor::new(model.gpu.clone(), g)?,
            io,
        })
    }
}

/// One conversation's state over the model's KV cache.
pub struct Session {
    pub model: Arc<GpuModel>,
    prefill: Option<Compiled>,
    decode: Option<Compiled>,
    batch: u32,
    pos: usize,
    history: VecDeque<u32>,
    rng: rand::rngs::StdRng,
    sampler: SamplerConfig,
}

impl Session {
    /// `batch`: most tokens one prompt step processes (llama.cpp's -ub); a
    /// quantized cache takes at most the steps its window was sized for
    /// ([`crate::kv_cache::KvFormat::batch`]).
    pub fn new(model: Arc<GpuModel>, batch: u32, sampler: SamplerConfig) -> Result<Self> {
        let mut batch = batch.clamp(1, model.kv.max_ctx as u32);
        if model.kv.layout.is_some() {
            batch = batch.min(model.kv.format.batch.max(1));
        }
        let pos = model.kv.pivot_len();
        Ok(Session {
            model,
            prefill: None,
            decode: None,
            batch,
            pos,
            history: VecDeque::new(),
            rng: rand::rngs::StdRng::seed_from_u64(sampler.seed),
            sampler,
        })
    }

    /// Positions used so far (the pivot's included: a session starts after it).
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn max_ctx(&self) -> usize {
        self.model.kv.max_ctx
    }
    /// Most tokens one prompt step processes.
    pub fn batch(&self) -> usize {
        self.batch as usize
    }
    pub fn reset(&mut self) {
        self.pos = self.model.kv.pivot_len();
        self.history.clear();
    }
    /// Forgets the positions from `pos` on (at least the pivot's end, at most
    /// the current position), so the cache below `pos` is reused. A quantized
    /// cache can go back only as far as its f16 window still holds the
    /// tokens its next flush needs.
    pub fn truncate(&mut self, pos: usize) -> Result<()> {
        let pivot = self.model.kv.pivot_len();
        if pos < pivot || pos > self.pos {
            return Err(ModelError::Input(format!(
                "cannot truncate to position {pos}: the session holds {pivot}..{}",
                self.pos
            )));
        }
        if let Some(l) = &self.model.kv.layout {
            let wraps = l.ring < l.max_ctx - l.pivot;
            let reach = l.ring.saturating_sub(l.recent + GROUP) as usize;
            if wraps && self.pos - pos > reach {
                return Err(ModelError::Input(format!(
                    "a quantized KV cache goes back at most {reach} positions (asked {})",
                    self.pos - pos
                )));
            }
        }
        self.pos = pos;
        self.history.clear();
        Ok(())
    }
    /// Goes back to the end of `held`, the tokens the cache holds from
    /// position 0 (the pivot's first): [`Session::truncate`] to its length,
    /// with the repetition penalty's window refilled from its tail, as if
    /// the session had just fed it.
    pub fn rewind(&mut self, held: &[u32]) -> Result<()> {
        self.truncate(held.len())?;
        self.remember(&held[self.model.kv.pivot_len().min(held.len())..]);
        Ok(())
    }
    /// Compiles both graphs now rather than at the first prompt and token.
    pub fn prepare(&mut self) -> Result<()> {
        self.compiled(true)?;
        self.compiled(false)?;
        Ok(())
    }
    pub fn set_sampler(&mut self, s: SamplerConfig) {
        self.rng = rand::rngs::StdRng::seed_from_u64(s.seed);
        self.sampler = s;
    }
    /// Turns per-op GPU timing on for both graphs (compiling them if needed).
    pub fn enable_profiling(&mut self) -> Result<bool> {
        let prefill = self.compiled(true)?.exec.enable_profiling();
        let decode = self.compiled(false)?.exec.enable_profiling();
        Ok(prefill && decode)
    }
    pub fn executors(&self) -> impl Iterator<Item = (&'static str, &Executor)> {
        [
            ("prefill", self.prefill.as_ref()),
            ("decode", self.decode.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, c)| c.map(|c| (n, &c.exec)))
    }
    pub fn executors_mut(&mut self) -> impl Iterator<Item = &mut Executor> {
        [self.prefill.as_mut(), self.decode.as_mut()]
            .into_iter()
            .flatten()
            .map(|c| &mut c.exec)
    }

    fn compiled(&mut self, prefill: bool) -> Result<&mut Compiled> {
        let (slot, n) = if prefill {
            (&mut self.prefill, self.batch)
        } else {
            (&mut self.decode, 1)
        };
        if slot.is_none() {
            *slot = Some(Compiled::new(&self.model, n, Head::Sample)?);
        }
        Ok(slot.as_mut().expect("just compiled"))
    }

    /// This step's settings: the caller's, with a fresh uniform draw.
    fn sampling(&mut self) -> Sampling {
        Sampling {
            uniform: self.rng.random::<f32>(),
            ..self.sampler.sampling
        }
    }

    fn check_ids(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.model.config.vocab_size as u32;
        if let Some(t) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {t} is outside the vocabulary ({vocab})"
            )));
        }
        if self.pos + tokens.len() > self.max_ctx() {
            return Err(ModelError::Input(format!(
                "{} tokens do not fit in the context: {} of {} positions are used (raise -c/--ctx-size)",
                tokens.len(),
                self.pos,
                self.max_ctx()
            )));
        }
        Ok(())
    }

    /// Feeds `tokens` (a prompt or a continuation of it) and returns the
    /// token sampled after the last of them. A prompt that starts with the
    /// pivot's tokens, fed to a fresh session, reuses the pivot's KV.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<u32> {
        self.extend(self.after_pivot(tokens))
    }

    /// [`Session::feed`] as a future, for the web, where a step's token
    /// comes back when the browser has mapped it (natively it is ready
    /// when first polled).
    pub async fn feed_async(&mut self, tokens: &[u32]) -> Result<u32> {
        self.extend_async(self.after_pivot(tokens)).await
    }

    /// `tokens` without the pivot's when a fresh session is fed a prompt
    /// that starts with them.
    fn after_pivot<'a>(&self, tokens: &'a [u32]) -> &'a [u32] {
        if self.pos == self.model.kv.pivot_len() {
            self.past_pivot(tokens)
        } else {
            tokens
        }
    }

    /// `tokens` less the pivot's, where they start with them.
    fn past_pivot<'a>(&self, tokens: &'a [u32]) -> &'a [u32] {
        let pivot = &self.model.kv.pivot;
        match tokens.strip_prefix(pivot.as_slice()) {
            Some(rest) if !pivot.is_empty() => rest,
            _ => tokens,
        }
    }

    /// Positions of the cache a prompt of `tokens` fills when fed from the
    /// start (the pivot's included, once).
    pub fn positions_for(&self, tokens: &[u32]) -> usize {
        self.model.kv.pivot_len() + self.past_pivot(tokens).len()
    }

    /// Feeds `tokens` at the current position as they are (no pivot test:
    /// the caller knows what the cache holds) and returns the token sampled
    /// after the last of them.
    pub fn extend(&mut self, tokens: &[u32]) -> Result<u32> {
        self.check_feed(tokens)?;
        let mut next = 0;
        for chunk in tokens.chunks(self.batch as usize) {
            let (step, token) = self.stage(chunk)?;
            let out = self
                .compiled(chunk.len() > 1)?
                .exec
                .run_read(&step, token, 4)?;
            next = self.advance_past(chunk, &out);
        }
        Ok(next)
    }

    /// [`Session::extend`] as a future (see [`Session::feed_async`]).
    pub async fn extend_async(&mut self, tokens: &[u32]) -> Result<u32> {
        self.check_feed(tokens)?;
        let mut next = 0;
        for chunk in tokens.chunks(self.batch as usize) {
            let (step, token) = self.stage(chunk)?;
            let exec = &mut self.compiled(chunk.len() > 1)?.exec;
            let out = exec.run_read_async(&step, token, 4).await?;
            next = self.advance_past(chunk, &out);
        }
        Ok(next)
    }

    fn check_feed(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(ModelError::Input(
                "empty prompt: nothing to feed the model after the pivot".into(),
            ));
        }
        self.check_ids(tokens)
    }

    /// Readies the step that feeds `chunk` (a prompt step when it has more
    /// than one token): its ids and the repetition window written, its
    /// settings and the sampled token's tensor returned for the run.
    fn stage(&mut self, chunk: &[u32]) -> Result<(Step, TensorId)> {
        let (step, words) = self.begin_step(chunk);
        let c = self.compiled(chunk.len() > 1)?;
        c.exec.write(c.io.ids, 0, bytemuck::cast_slice(chunk));
        if let Some(h) = c.io.history {
            c.exec.write(h, 0, bytemuck::cast_slice(&words));
        }
        let token = c.io.token.expect("sampling graph has a token output");
        Ok((step, token))
    }

    /// Moves past the fed `chunk`; returns the token id its step read back.
    fn advance_past(&mut self, chunk: &[u32], out: &[u8]) -> u32 {
        self.advance(chunk.len());
        u32::from_le_bytes([out[0], out[1], out[2], out[3]])
    }

    /// The step that feeds `chunk` next, and the sample op's history words
    /// (`[count, ids...]`) after it: `chunk` enters the repetition
    /// penalty's window and the step gets a fresh uniform draw. The caller
    /// runs the step, then [`Session::advance`]s.
    fn begin_step(&mut self, chunk: &[u32]) -> (Step, Vec<u32>) {
        self.remember(chunk);
        let step = Step {
            n_tokens: chunk.len() as u32,
            pos: self.pos as u32,
            sampling: self.sampling(),
        };
        let mut words = Vec::with_capacity(self.history.len() + 1);
        words.push(self.history.len() as u32);
        words.extend(&self.history);
        (step, words)
    }

    /// `tokens` enter the repetition penalty's window (the last
    /// [`REPEAT_LAST_N`] fed tokens).
    fn remember(&mut self, tokens: &[u32]) {
        for &t in tokens {
            if self.history.len() == REPEAT_LAST_N as usize {
                self.history.pop_front();
            }
            self.history.push_back(t);
        }
    }

    /// [`Session::begin_step`] for one decoded token that another graph
    /// runs (a step of several sessions: `batch::BatchDecoder`).
    pub(crate) fn begin_token(&mut self, token: u32) -> Result<(Step, Vec<u32>)> {
        self.check_ids(&[token])?;
        Ok(self.begin_step(&[token]))
    }

    /// Moves past `n` tokens that a step has fed.
    pub(crate) fn advance(&mut self, n: usize) {
        self.pos += n;
    }
}
