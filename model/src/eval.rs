//! Perplexity as llama.cpp's `llama-perplexity` computes it: the text is
//! tokenized once, cut into non-overlapping chunks of `ctx` tokens, each
//! chunk is evaluated from an empty cache (its first token replaced by BOS
//! when the tokenizer adds BOS), and only the second half of each chunk is
//! scored (every scored token has at least ctx/2 tokens of context).

use lamina_engine::graph::Step;

use crate::llama::Head;
use crate::logits_file::{LogitsReader, LogitsShape, LogitsWriter, chunk_hash};
use crate::session::Compiled;
use crate::{ModelError, Result, llama::GpuModel};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerplexityResult {
    pub chunks: usize,
    pub tokens_scored: usize,
    pub ppl: f64,
    /// Standard error of the perplexity (delta method on the mean NLL, as llama.cpp).
    pub ppl_err: f64,
    pub mean_nll: f64,
    /// Against a base model: mean KL(base ‖ model) per scored token, its
    /// standard error, and how often both models' top-1 tokens agree.
    pub kl: Option<KlResult>,
}

/// One chunk's mean NLL, and the estimates over the chunks up to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkResult {
    pub mean_nll: f64,
    pub so_far: PerplexityResult,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlResult {
    pub mean: f64,
    pub err: f64,
    pub top1_agree: f64,
}

/// KL(p ‖ q) of the softmaxes of two logit rows, in f64, and whether their
/// argmaxes agree.
pub fn kl_row(p: &[f32], q: &[f32]) -> (f64, bool) {
    let lse = |r: &[f32]| {
        let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        m + r.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    let mut kl = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let la = a as f64 - lp;
        kl += la.exp() * (la - (b as f64 - lq));
    }
    let arg = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            )
            .0
    };
    (kl.max(0.0), arg(p) == arg(q))
}

/// Running sums for the estimate and its uncertainty.
#[derive(Debug, Clone, Default)]
pub struct NllStats {
    n: usize,
    sum: f64,
    sum_sq: f64,
}

impl NllStats {
    pub fn push(&mut self, nll: f64) {
        self.n += 1;
        self.sum += nll;
        self.sum_sq += nll * nll;
    }
    pub fn count(&self) -> usize {
        self.n
    }
    /// The mean of the values pushed and its standard error.
    pub fn mean_se(&self) -> (f64, f64) {
        let n = self.n.max(1) as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let se_mean = if self.n > 1 {
            (var / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        (mean, se_mean)
    }
    /// (ppl, its standard error, mean nll).
    pub fn estimate(&self) -> (f64, f64, f64) {
        let (mean, se_mean) = self.mean_se();
        let ppl = mean.exp();
        (ppl, ppl * se_mean, mean)
    }
}

/// log p(target | row) from one row of logits, in f64.
pub fn nll(row: &[f32], target: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    lse - row[target as usize] as f64
}

/// Evaluates perplexity over `tokens`. `progress(done, total, running_ppl)` is
/// called after each chunk.
pub fn perplexity(
    model: &GpuModel,
    tokens: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    progress: impl FnMut(usize, usize, f64),
) -> Result<(PerplexityResult, Vec<ChunkResult>)> {
    perplexity_kl(model, None, None, tokens, ctx, max_chunks, bos, progress)
}

/// Where the reference distributions of the KL divergence come from.
pub enum KlBase<'a> {
    /// A model run beside the evaluated one, chunk by chunk.
    Model(&'a GpuModel),
    /// The scored logits a previous run saved ([`LogitsWriter`]).
    Saved(&'a mut LogitsReader),
}

/// Logits `[chunk.len(), vocab]` of a chunk fed after the pivot in steps of
/// the graph's size.
fn run_chunk(c: &mut Compiled, chunk: &[u32], pivot: usize, vocab: usize) -> Result<Vec<f32>> {
    let rows = c.io.max_tokens as usize;
    let mut logits = Vec::with_capacity(chunk.len() * vocab);
    for (i, part) in chunk.chunks(rows).enumerate() {
        c.exec.write(c.io.ids, 0, bytemuck::cast_slice(part));
        let step = Step {
            n_tokens: part.len() as u32,
            pos: (pivot + i * rows) as u32,
            ..Default::default()
        };
        let bytes = c
            .exec
            .run_read(&step, c.io.logits, 4 * (part.len() * vocab) as u64)?;
        logits.extend_from_slice(bytemuck::cast_slice::<u8, f32>(&bytes));
    }
    Ok(logits)
}

/// [`perplexity`], and with `base` (e.g. the full-precision model) the KL
/// divergence of `model`'s next-token distributions from `base`'s at every
/// scored position. With `save`, the model's logits at the scored positions
/// are written out to serve later runs as a [`KlBase::Saved`].
/// Chunks run in steps of at most the cache's batch
/// ([`crate::kv_cache::KvFormat::batch`]).
#[allow(clippy::too_many_arguments)]
pub fn perplexity_kl(
    model: &GpuModel,
    mut base: Option<KlBase>,
    mut save: Option<&mut LogitsWriter>,
    tokens: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<(PerplexityResult, Vec<ChunkResult>)> {
    let vocab = model.config.vocab_size;
    let first = ctx / 2;
    let shape = LogitsShape { vocab, ctx, first };
    match &base {
        Some(KlBase::Model(b))
            if b.config.vocab_size != vocab
                || b.kv.pivot != model.kv.pivot
                || ctx + b.kv.pivot_len() > b.kv.max_ctx =>
        {
            return Err(ModelError::Input(
                "the KL base model needs the same vocabulary, the same pivot tokens and a KV cache \
                 of the context"
                    .into(),
            ));
        }
        Some(KlBase::Saved(r)) if r.shape != shape => {
            return Err(ModelError::Input(format!(
                "the saved base logits are for vocabulary {} and context {}, this run {vocab} and {ctx}",
                r.shape.vocab, r.shape.ctx
            )));
        }
        _ => {}
    }
    if ctx < 2 {
        return Err(ModelError::Input(
            "perplexity needs a context of at least 2".into(),
        ));
    }
    let pivot = model.kv.pivot_len();
    if ctx + pivot > model.kv.max_ctx {
        return Err(ModelError::Input(format!(
            "context {ctx} after a pivot of {pivot} exceeds the KV cache ({} positions)",
            model.kv.max_ctx
        )));
    }
    let available = tokens.len() / ctx;
    if available == 0 {
        return Err(ModelError::Input(format!(
            "the text has {} tokens, fewer than one chunk of {ctx}",
            tokens.len()
        )));
    }
    let chunks = max_chunks.map_or(available, |m| m.min(available));
    if let Some(KlBase::Saved(r)) = &base
        && r.chunks < chunks
    {
        return Err(ModelError::Input(format!(
            "the saved base logits hold {} chunks, this run needs {chunks}",
            r.chunks
        )));
    }
    // Chunks run in steps of at most the cache's batch (a quantized cache's
    // window is sized for them), each after the pivot.
    let step_rows = ctx.min(model.kv.format.batch.max(1) as usize);
    let mut c = Compiled::new(model, step_rows as u32, Head::AllLogits)?;
    let mut cb = match &base {
        Some(KlBase::Model(b)) => Some(Compiled::new(b, step_rows as u32, Head::AllLogits)?),
        _ => None,
    };
    let mut saved = Vec::new();
    let mut stats = NllStats::default();
    let (mut kl_stats, mut agree) = (NllStats::default(), 0usize);
    let mut per_chunk = Vec::with_capacity(chunks);
    for i in 0..chunks {
        let mut chunk = tokens[i * ctx..(i + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let logits = run_chunk(&mut c, &chunk, pivot, vocab)?;
        let scored = &logits[first * vocab..(ctx - 1) * vocab];
        let hash = chunk_hash(&[&model.kv.pivot[..], &chunk].concat());
        if let Some(w) = save.as_deref_mut() {
            w.push(hash, scored)?;
        }
        // The base's logits of the scored rows, from a run beside this one or from the file.
        let base_bytes;
        let base_rows: Option<&[f32]> = match (&mut base, cb.as_mut()) {
            (Some(KlBase::Model(_)), Some(cb)) => {
                base_bytes = run_chunk(cb, &chunk, pivot, vocab)?;
                Some(&base_bytes[first * vocab..(ctx - 1) * vocab])
            }
            (Some(KlBase::Saved(r)), _) => {
                r.next_chunk(hash, &mut saved)?;
                Some(&saved)
            }
            _ => None,
        };
        if let Some(b) = base_rows {
            for (p, q) in b.chunks_exact(vocab).zip(scored.chunks_exact(vocab)) {
                let (kl, same) = kl_row(p, q);
                kl_stats.push(kl);
                agree += usize::from(same);
            }
        }
        let mut chunk_sum = 0.0;
        for j in first..ctx - 1 {
            let target = tokens[i * ctx + j + 1];
            let l = nll(&logits[j * vocab..(j + 1) * vocab], target);
            chunk_sum += l;
            stats.push(l);
        }
        let (ppl, ppl_err, mean_nll) = stats.estimate();
        let kl = base.is_some().then(|| {
            let (mean, err) = kl_stats.mean_se();
            KlResult {
                mean,
                err,
                top1_agree: agree as f64 / kl_stats.count().max(1) as f64,
            }
        });
        per_chunk.push(ChunkResult {
            mean_nll: chunk_sum / (ctx - 1 - first) as f64,
            so_far: PerplexityResult {
                chunks: i + 1,
                tokens_scored: stats.count(),
                ppl,
                ppl_err,
                mean_nll,
                kl,
            },
        });
        progress(i + 1, chunks, ppl);
    }
    let last = per_chunk.last().expect("at least one chunk").so_far;
    Ok((last, per_chunk))
}
