//! The engine thread: `--parallel` slots, each a [`Session`] over a KV cache
//! of its own, fed by a bounded queue of jobs.
//!
//! Between rounds, waiting jobs take the free slots (continuous batching:
//! a job joins while others are halfway through theirs). A round gives
//! every busy slot one step: the next chunk of its prompt (at most the
//! session's prompt batch), fed alone, so a long prompt delays the others
//! by one chunk at a time; then the generated tokens of all decoding slots
//! in one batched step (`BatchDecoder`: one matmul per weight for all of
//! them, attention per slot over its own cache). A slot keeps
//! its cache after its job; a new job goes to the free slot that already
//! holds the longest prefix of its tokens (the same system prompt and
//! earlier turns) and feeds only the rest. A job whose client went away
//! (its event receiver dropped) frees its slot at its next step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lamina_model::batch::BatchDecoder;
use lamina_model::session::{SamplerConfig, Session};
use lamina_model::tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::stop::StopScan;

/// One request, tokenized and checked, waiting for a slot.
pub struct Job {
    /// Every token of the sequence, the pivot's first (when there is one).
    pub prompt: Vec<u32>,
    /// Most tokens to generate (at least 1).
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    /// End-of-generation tokens are text like any other.
    pub ignore_eos: bool,
    /// Where the job's text goes; dropping the receiver cancels the job.
    pub events: UnboundedSender<Event>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a job's receiver gets: text as it is generated, then one `Done`
/// (or one `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        /// Prompt tokens the slot's cache held already (not computed again).
        cached_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// Every slot is busy and the queue is full.
    Busy,
    /// The engine has stopped (shutting down, or it failed).
    Stopped,
}

/// Slot and queue counts, for /health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub slots: usize,
    pub busy: usize,
    pub waiting: usize,
}

struct Shared {
    slots: usize,
    /// Jobs held at once, running and waiting: `--parallel` + `--queue`.
    limit: usize,
    busy: AtomicUsize,
    waiting: AtomicUsize,
    stop: AtomicBool,
}

/// The handle the HTTP side holds.
pub struct Engine {
    queue: SyncSender<Job>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the engine thread over `sessions` (one per slot) with room
    /// for `queue` jobs waiting beyond them.
    pub fn start(sessions: Vec<Session>, tokenizer: Arc<Tokenizer>, queue: usize) -> Engine {
        let limit = sessions.len() + queue;
        // As deep as the count allows: `submit` bounds what waits, not
        // the channel (the engine empties it every round).
        let (tx, rx) = std::sync::mpsc::sync_channel(limit);
        let shared = Arc::new(Shared {
            slots: sessions.len(),
            limit,
            busy: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let mut slots: Vec<Slot> = sessions
            .into_iter()
            .map(|session| Slot {
                held: session.model.kv.pivot.clone(),
                session,
                job: None,
            })
            .collect();
        // The batched steps are compiled here, and every graph run once,
        // before the server listens.
        let mut batches = Batches::new(&slots);
        warm_up(&mut slots, &mut batches);
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lamina-engine".into())
            .spawn(move || run(slots, batches, rx, &tokenizer, &sh))
            .expect("spawn the engine thread");
        Engine {
            queue: tx,
            shared,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Queues `job`, or says why not (the caller answers 503).
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        if self.shared.stop.load(Ordering::Relaxed) {
            return Err(SubmitError::Stopped);
        }
        // Counted first: the engine may take the job before try_send
        // returns. Running and waiting jobs stay within slots + queue, so
        // a job finds a free slot even while others wait for the engine's
        // next round.
        let waiting = self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        if waiting + self.shared.busy.load(Ordering::Relaxed) >= self.shared.limit {
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::Busy);
        }
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Busy,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    pub fn status(&self) -> Status {
        Status {
            slots: self.shared.slots,
            busy: self.shared.busy.load(Ordering::Relaxed),
            waiting: self.shared.waiting.load(Ordering::Relaxed),
        }
    }

    /// Ends every job (they get `Failed`), stops the thread and waits for it.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread
            && t.join().is_err()
        {
            log::error!("the engine thread panicked");
        }
    }
}

/// A job in a slot.
struct Active {
    job: Job,
    /// Prompt tokens not fed yet.
    todo: Vec<u32>,
    /// The token sampled last, not yet sent or fed.
    next: Option<u32>,
    generated: usize,
    /// Prompt tokens the cache held when the job started.
    cached: usize,
    decoder: StreamDecoder,
    stop: StopScan,
}

struct Slot {
    session: Session,
    /// The tokens the cache holds, from position 0 (the pivot's first).
    held: Vec<u32>,
    job: Option<Active>,
}

const SHUTTING_DOWN: &str = "the server is shutting down";

fn run(
    mut slots: Vec<Slot>,
    mut batches: Batches,
    rx: Receiver<Job>,
    tok: &Tokenizer,
    shared: &Shared,
) {
    // Jobs taken off the channel, in arrival order, waiting for a slot.
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            for s in slots.iter_mut().filter(|s| s.job.is_some()) {
                s.fail(shared, SHUTTING_DOWN);
            }
            waiting.extend(rx.try_iter());
            for job in waiting.drain(..) {
                shared.waiting.fetch_sub(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Failed(SHUTTING_DOWN.into()));
            }
            log::info!("decode steps: {}", batches.describe());
            return;
        }
        // Every round takes what arrived and drops the jobs whose clients
        // left while they waited, so those hold no place.
        waiting.extend(rx.try_iter());
        if waiting.is_empty() && slots.iter().all(|s| s.job.is_none()) {
            // Nothing to do: block, briefly, to notice a shutdown.
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(j) => waiting.push_back(j),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        waiting.retain(|j| {
            let open = !j.events.is_closed();
            if !open {
                shared.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            open
        });
        // Waiting jobs take the free slots (continuous batching). A job
        // stops counting as waiting once it counts as busy.
        while slots.iter().any(|s| s.job.is_none()) {
            let Some(job) = waiting.pop_front() else {
                break;
            };
            let i = pick_slot(&slots, &job.prompt);
            slots[i].start(job, tok, shared);
            shared.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        round(&mut slots, &mut batches, tok, shared);
    }
}

/// Runs each graph once (a prompt step and a token step of the first
/// slot, a step of each batched decoder; the pipelines are shared by all
/// slots), then resets the sessions: drivers may compile a pipeline at its
/// first dispatch (llvmpipe does, seconds each when its cache is cold),
/// and that belongs before the first request, not in its time to first
/// token. A failure here only logs: the first request then says it.
fn warm_up(slots: &mut [Slot], batches: &mut Batches) {
    let t0 = Instant::now();
    let room = slots
        .first()
        .map_or(0, |s| s.session.max_ctx() - s.session.pos());
    if room < 4 {
        return;
    }
    let mut run = || -> lamina_model::Result<()> {
        slots[0].session.extend(&[0, 0])?;
        slots[0].session.extend(&[0])?;
        for dec in &mut batches.decoders {
            let n = dec.len();
            let mut sessions: Vec<&mut Session> =
                slots[..n].iter_mut().map(|s| &mut s.session).collect();
            dec.step(&mut sessions, &vec![Some(0); n])?;
        }
        Ok(())
    };
    if let Err(e) = run() {
        log::warn!("warming up the graphs: {e}");
    }
    for s in slots.iter_mut() {
        s.session.reset();
    }
    log::info!("graphs warmed up in {:.2} s", t0.elapsed().as_secs_f64());
}

/// Tokens `a` and `b` share from their start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The free slot holding the longest prefix of `prompt`, the first among
/// equals (busy slots stay packed at the front, where the smaller batched
/// steps reach).
fn pick_slot(slots: &[Slot], prompt: &[u32]) -> usize {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.job.is_none())
        .max_by_key(|&(i, s)| (common_prefix(&s.held, prompt), std::cmp::Reverse(i)))
        .map(|(i, _)| i)
        .expect("called with a free slot")
}

impl Slot {
    fn start(&mut self, job: Job, tok: &Tokenizer, shared: &Shared) {
        // Keep what the cache shares with the prompt, less at least one
        // token: the last prompt token must be fed to sample the first.
        let pivot = self.session.model.kv.pivot_len();
        let keep = common_prefix(&self.held, &job.prompt).min(job.prompt.len() - 1);
        // (A failed step may have left the session past what `held` says.)
        if keep < self.held.len() || self.session.pos() != self.held.len() {
            let back = self.held[..keep].to_vec();
            if keep < pivot || self.session.rewind(&back).is_err() {
                // Past what the cache can go back to: from the pivot.
                self.session.reset();
                self.held.truncate(pivot);
            } else {
                self.held = back;
            }
        }
        log::debug!(
            "slot job: {} prompt tokens, {} in the cache already",
            job.prompt.len(),
            self.held.len()
        );
        self.session.set_sampler(job.sampler);
        shared.busy.fetch_add(1, Ordering::Relaxed);
        self.job = Some(Active {
            todo: job.prompt[self.held.len()..].to_vec(),
            stop: StopScan::new(job.stop.clone()),
            job,
            next: None,
            generated: 0,
            cached: self.held.len(),
            decoder: tok.stream_decoder(),
        });
    }

    /// Ends the job with `event` and frees the slot.
    fn end(&mut self, shared: &Shared, event: Option<Event>) {
        if let Some(a) = self.job.take() {
            if let Some(e) = event {
                let _ = a.job.events.send(e);
            }
            shared.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn fail(&mut self, shared: &Shared, msg: &str) {
        self.end(shared, Some(Event::Failed(msg.to_string())));
    }

    /// This round's work before the decode step: the next prompt chunk
    /// (fed here), or the last sampled token sent out and, unless that
    /// ended the job, returned to be fed.
    fn advance(&mut self, tok: &Tokenizer, shared: &Shared) -> Option<u32> {
        let a = self.job.as_mut()?;
        if a.job.events.is_closed() {
            log::debug!("client gone: slot freed");
            self.end(shared, None);
            return None;
        }
        if !a.todo.is_empty() {
            let n = a.todo.len().min(self.session.batch());
            let chunk: Vec<u32> = a.todo.drain(..n).collect();
            if a.todo.is_empty() {
                // Each step draws once; seeded again here, the first token
                // gets the seed's first draw however many chunks the
                // cache spared (the same seed, the same answer).
                self.session.set_sampler(a.job.sampler);
            }
            match self.session.extend(&chunk) {
                Ok(t) => {
                    self.held.extend(&chunk);
                    if a.todo.is_empty() {
                        a.next = Some(t);
                    }
                }
                Err(e) => self.fail(shared, &e.to_string()),
            }
            return None;
        }
        let Some(t) = a.next.take() else {
            self.fail(shared, "internal error: no token to continue from");
            return None;
        };
        // A stop string cuts the text: nothing held back goes out after it.
        let mut cut = false;
        let finish = if tok.is_eog(t) && !a.job.ignore_eos {
            Some(Finish::Stop)
        } else {
            let text = match a.decoder.push(t) {
                Ok(text) => text,
                Err(e) => {
                    self.fail(shared, &e.to_string());
                    return None;
                }
            };
            a.generated += 1;
            let (out, stopped) = a.stop.push(&text);
            send_text(a, out);
            cut = stopped;
            if stopped {
                Some(Finish::Stop)
            } else if a.generated >= a.job.max_tokens
                || self.session.pos() >= self.session.max_ctx()
            {
                Some(Finish::Length)
            } else {
                None
            }
        };
        let Some(finish) = finish else {
            return Some(t);
        };
        if !cut {
            let rest = a.decoder.flush();
            let (mut out, _) = a.stop.push(&rest);
            out.push_str(&a.stop.finish());
            send_text(a, out);
        }
        let done = Event::Done {
            finish,
            prompt_tokens: a.job.prompt.len(),
            cached_tokens: a.cached,
            completion_tokens: a.generated,
        };
        self.end(shared, Some(done));
        None
    }

    /// `t` is in the cache now and `next` was sampled after it.
    fn fed(&mut self, t: u32, next: u32) {
        self.held.push(t);
        if let Some(a) = self.job.as_mut() {
            a.next = Some(next);
        }
    }
}

/// The batched decode steps: one per size (2, 4, 8, ... and all slots),
/// each over the first `size` slots, and what a step of each has cost, to
/// pick per round between one batched step and a step per slot (on
/// lavapipe a batched step of few tokens costs more than their single
/// steps; see docs/benchmarks.md).
struct Batches {
    decoders: Vec<BatchDecoder>,
    /// Seconds a step of each decoder took (a moving average).
    cost: Vec<Option<f64>>,
    /// Seconds a single-token step took.
    single: Option<f64>,
}

fn average(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| 0.8 * o + 0.2 * new))
}

impl Batches {
    /// Decoders for `slots`, where the model allows a batched step (else
    /// none: `lamina_model::llama::build_batch_graph` says why).
    fn new(slots: &[Slot]) -> Batches {
        let n = slots.len();
        let mut sizes: Vec<usize> = (1..).map(|e| 1 << e).take_while(|&s| s < n).collect();
        if n > 1 {
            sizes.push(n);
        }
        let mut decoders = Vec::new();
        for size in sizes {
            let sessions: Vec<&Session> = slots[..size].iter().map(|s| &s.session).collect();
            match BatchDecoder::new(&sessions) {
                Ok(d) => decoders.push(d),
                Err(e) => {
                    log::warn!("slots decode one at a time: {e}");
                    decoders.clear();
                    break;
                }
            }
        }
        Batches {
            cost: vec![None; decoders.len()],
            decoders,
            single: None,
        }
    }

    /// What the steps cost so far, for the log: "one token 41.0 ms, 4
    /// slots 120.5 ms, ...".
    fn describe(&self) -> String {
        let ms = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{:.1} ms", 1e3 * c));
        let mut parts = vec![format!("one token {}", ms(self.single))];
        for (d, c) in self.decoders.iter().zip(&self.cost) {
            parts.push(format!("{} slots batched {}", d.len(), ms(*c)));
        }
        parts.join(", ")
    }

    /// The decoder to feed `feed` with, or `None` for a step per slot: the
    /// smallest decoder that holds every fed slot, when its step costs less
    /// than the single steps (each way is tried once to learn its cost).
    fn choose(&self, feed: &[Option<u32>]) -> Option<usize> {
        let k = feed.iter().flatten().count();
        if k < 2 {
            return None;
        }
        let hi = feed.iter().rposition(Option::is_some)? + 1;
        let d = self.decoders.iter().position(|d| d.len() >= hi)?;
        match (self.cost[d], self.single) {
            (None, _) => Some(d),
            (Some(_), None) => None,
            (Some(b), Some(s)) => (b < k as f64 * s).then_some(d),
        }
    }
}

/// One round: every busy slot's prompt chunk or sent token, then the
/// tokens to feed, in one batched step or a step per slot.
fn round(slots: &mut [Slot], batches: &mut Batches, tok: &Tokenizer, shared: &Shared) {
    let feed: Vec<Option<u32>> = slots.iter_mut().map(|s| s.advance(tok, shared)).collect();
    if let Some(d) = batches.choose(&feed) {
        let t0 = Instant::now();
        let dec = &mut batches.decoders[d];
        let size = dec.len();
        let mut sessions: Vec<&mut Session> =
            slots[..size].iter_mut().map(|s| &mut s.session).collect();
        match dec.step(&mut sessions, &feed[..size]) {
            Ok(next) => {
                for ((s, t), nx) in slots.iter_mut().zip(&feed).zip(next) {
                    if let (Some(t), Some(nx)) = (t, nx) {
                        s.fed(*t, nx);
                    }
                }
                batches.cost[d] = average(batches.cost[d], t0.elapsed().as_secs_f64());
            }
            Err(e) => {
                for (s, t) in slots.iter_mut().zip(&feed) {
                    if t.is_some() {
                        s.fail(shared, &e.to_string());
                    }
                }
            }
        }
        return;
    }
    for (s, t) in slots.iter_mut().zip(&feed) {
        if let Some(t) = *t {
            let t0 = Instant::now();
            match s.session.extend(&[t]) {
                Ok(next) => {
                    s.fed(t, next);
                    batches.single = average(batches.single, t0.elapsed().as_secs_f64());
                }
                Err(e) => s.fail(shared, &e.to_string()),
            }
        }
    }
}

fn send_text(a: &Active, text: String) {
    if !text.is_empty() {
        let _ = a.job.events.send(Event::Text(text));
    }
}
