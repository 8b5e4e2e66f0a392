//! Perplexity as llama.cpp's `llama-perplexity` computes it: the text is
//! tokenized once, cut into non-overlapping chunks of `ctx` tokens, each
//! chunk is evaluated from an empty cache (its first token replaced by BOS
//! when the tokenizer adds BOS), and only the second half of each chunk is
//! scored (every scored token has at least ctx/2 tokens of context).

use lamina_engine::graph::Step;

use crate::llama::Head;
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
    /// (ppl, its standard error, mean nll).
    pub fn estimate(&self) -> (f64, f64, f64) {
        let n = self.n.max(1) as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let se_mean = if self.n > 1 {
            (var / (n - 1.0)).sqrt()
        } else {
            0.0
        };
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
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<(PerplexityResult, Vec<f64>)> {
    if ctx < 2 {
        return Err(ModelError::Input(
            "perplexity needs a context of at least 2".into(),
        ));
    }
    if ctx > model.kv.max_ctx {
        return Err(ModelError::Input(format!(
            "context {ctx} exceeds the KV cache ({} positions)",
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
    let mut c = Compiled::new(model, ctx as u32, Head::AllLogits)?;
    let vocab = model.config.vocab_size;
    let first = ctx / 2;
    let mut stats = NllStats::default();
    let mut per_chunk = Vec::with_capacity(chunks);
    for i in 0..chunks {
        let mut chunk = tokens[i * ctx..(i + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        c.exec.write(c.io.ids, 0, bytemuck::cast_slice(&chunk));
        let step = Step {
            n_tokens: ctx as u32,
            pos: 0,
            ..Default::default()
        };
        let bytes = c
            .exec
            .run_read(&step, c.io.logits, 4 * (ctx * vocab) as u64)?;
        let logits: &[f32] = bytemuck::cast_slice(&bytes);
        let mut chunk_sum = 0.0;
        for j in first..ctx - 1 {
            let target = tokens[i * ctx + j + 1];
            let l = nll(&logits[j * vocab..(j + 1) * vocab], target);
            chunk_sum += l;
            stats.push(l);
        }
        per_chunk.push(chunk_sum / (ctx - 1 - first) as f64);
        progress(i + 1, chunks, stats.estimate().0);
    }
    let (ppl, ppl_err, mean_nll) = stats.estimate();
    Ok((
        PerplexityResult {
            chunks,
            tokens_scored: stats.count(),
            ppl,
            ppl_err,
            mean_nll,
        },
        per_chunk,
    ))
}
