//! A plain CPU forward pass of a Llama-family model in f32, in the manner of
//! llama2.c's `run.c`: the oracle that GPU kernels, the graph builder and
//! synthetic-model benchmarks are checked against.
//!
//! It reads top to bottom like the paper. Per layer:
//!
//! ```text
//! xb  = rmsnorm(x) * attn_norm
//! q, k, v = Wq xb, Wk xb, Wv xb (+ biases, Qwen2);  rope(q, k)
//! x  += Wo attention(q, k_cache, v_cache)        causal, GQA
//! xb  = rmsnorm(x) * ffn_norm
//! x  += W_down (silu(W_gate xb) * W_up xb)       SwiGLU
//! ```
//!
//! then `logits = lm_head rmsnorm(x) * output_norm`.
//!
//! # Numerics
//! - All tensors are f32; weights are dequantized once in [`Reference::new`].
//! - Matmul and attention dot products accumulate in f32, in 8 interleaved
//!   partial sums (a fixed order: the result does not depend on batching or
//!   threads, so incremental decoding is bit-identical to a full forward).
//! - RMSNorm sums of squares and softmax denominators accumulate in f64: they
//!   are O(dim) / O(ctx) per row, so exactness there costs nothing.
//! - RoPE angles are computed in f32 exactly as Hugging Face transformers
//!   computes them (`inv_freq = 1 / theta^(2i/d)`, `angle = pos * inv_freq`),
//!   since that rounding is part of how the model was trained and evaluated.

use std::thread;

use lamina_engine::ops::hadamard;

use crate::checkpoint::{
    ActQuant, ActSite, HostTensor, KvStatic, LayerWeights, LlamaConfig, LlamaWeights,
};
use crate::{ModelError, Result};

/// Tokens processed together; `RunState` holds activations for this many.
/// Longer inputs run in chunks (results are identical, see the module doc).
const MAX_BATCH: usize = 64;

/// Below this many multiply-adds a matmul stays on the calling thread:
/// spawning threads would cost more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// One transformer block, dequantized.
struct Layer {
    attn_norm: Vec<f32>, // [dim]
    wq: Matrix,          // [n_heads * head_dim, dim]
    wk: Matrix,          // [n_kv_heads * head_dim, dim]
    wv: Matrix,          // [n_kv_heads * head_dim, dim]
    wo: Matrix,          // [dim, n_heads * head_dim]
    ffn_norm: Vec<f32>,  // [dim]
    w_gate: Matrix,      // [ffn_dim, dim]
    w_up: Matrix,        // [ffn_dim, dim]
    w_down: Matrix,      // [dim, ffn_dim]
    /// q, k, v biases (Qwen2), empty without.
    bq: Vec<f32>,
    bk: Vec<f32>,
    bv: Vec<f32>,
}

/// Adds `bias` to every row of `x` (nothing when the bias is empty).
fn add_bias(x: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Activations for up to `batch` tokens and the KV cache for `max_ctx`
/// positions, allocated once.
struct RunState {
    batch: usize,
    x: Vec<f32>,           // [batch, dim] residual stream
    xb: Vec<f32>,          // [batch, dim] normed residual (input of a projection)
    xb2: Vec<f32>,         // [batch, dim] output of wo / w_down
    q: Vec<f32>,           // [batch, n_heads * head_dim]
    att: Vec<f32>,         // [batch, n_heads * head_dim] attention output
    hb: Vec<f32>,          // [batch, ffn_dim] gate, then silu(gate) * up
    hb2: Vec<f32>,         // [batch, ffn_dim] up
    scores: Vec<f32>,      // [threads, max_ctx] attention scores, one row per thread
    key_cache: Vec<f32>,   // [n_layers, max_ctx, n_kv_heads * head_dim]
    value_cache: Vec<f32>, // [n_layers, max_ctx, n_kv_heads * head_dim]
}

/// Intermediate activations of one forward call, for finding the first layer
/// where an implementation diverges (compare with golden/hidden.npz).
#[derive(Debug, Clone, Default)]
pub struct HiddenStates {
    /// Token embeddings, the input of layer 0: `[n_tokens, dim]`.
    pub embeddings: Vec<f32>,
    /// Residual stream after each layer: `[n_layers][n_tokens, dim]` (empty
    /// with [`Reference::forward_attention`]).
    pub layer_out: Vec<Vec<f32>>,
    /// Final RMSNorm output, the input of lm_head: `[n_tokens, dim]`.
    pub final_norm: Vec<f32>,
    /// With [`Reference::forward_attention`]: each layer's queries (RoPE'd)
    /// and attention output before o_proj, `[n_layers][n_tokens, q_dim]`.
    pub q: Vec<Vec<f32>>,
    pub att: Vec<Vec<f32>>,
    /// With [`Reference::forward_site_max`]: per layer, per [`ActSite`]
    /// (`ActSite::ALL` order), each token's max |activation| before any
    /// activation quantization: `[n_layers][4][n_tokens]`.
    pub site_max: Vec<[Vec<f32>; 4]>,
    /// With [`Reference::forward_site_max`] and `sample_every > 0`: per layer
    /// and site, the rows (activations before quantization) of every
    /// `sample_every`-th token of the call, `[n_layers][4][rows * width]`.
    pub site_rows: Vec<[Vec<f32>; 4]>,
    pub sample_every: usize,
}

/// Which positions' logits a forward call returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    All,
    Last,
}

/// The CPU f32 reference model with its own KV cache.
pub struct Reference {
    cfg: LlamaConfig,
    max_ctx: usize,
    threads: usize,
    token_embd: Matrix, // [vocab, dim]
    layers: Vec<Layer>,
    output_norm: Vec<f32>,  // [dim]
    output: Option<Matrix>, // [vocab, dim]; None when tied to token_embd
    rope: RopeTable,
    state: RunState,
    /// Positions currently held in the KV cache.
    len: usize,
    /// Activation quantization simulated at the linear layers' inputs.
    act: Option<ActQuant>,
    /// Keys and values rounded to f16 as they enter the cache, as the GPU's
    /// f16 cache stores them.
    f16_cache: bool,
    /// Static KV-cache quantization simulated as keys and values enter the
    /// cache (after the f16 rounding the GPU's window does first).
    kv_static: Option<KvStatic>,
}

impl Reference {
    /// Dequantizes `w` to f32 and allocates state for up to `max_ctx` positions.
    pub fn new(cfg: &LlamaConfig, w: &LlamaWeights, max_ctx: usize) -> Result<Self> {
        cfg.validate()?;
        if max_ctx == 0 || max_ctx > cfg.max_seq_len {
            return Err(ModelError::Input(format!(
                "reference context {max_ctx} must be in 1..={} (the model's max positions)",
                cfg.max_seq_len
            )));
        }
        if w.layers.len() != cfg.n_layers {
            return Err(ModelError::Invalid(format!(
                "config has {} layers, weights have {}",
                cfg.n_layers,
                w.layers.len()
            )));
        }
        let threads = thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(16);
        let dim = cfg.dim;
        // Layers dequantize independently: spread them over the threads.
        let per_thread = cfg.n_layers.div_ceil(threads);
        let layers = thread::scope(|s| {
            let handles: Vec<_> = (w.layers.chunks(per_thread))
                .map(|chunk| {
                    s.spawn(move || chunk.iter().map(|l| Layer::new(l, cfg)).collect::<Vec<_>>())
                })
                .collect();
            let joined = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            joined.flatten().collect::<Result<Vec<Layer>>>()
        })?;
        Ok(Reference {
            token_embd: matrix(&w.token_embd, cfg.vocab_size, dim)?,
            layers,
            output_norm: vector(&w.output_norm, dim)?,
            output: w
                .output
                .as_ref()
                .map(|t| matrix(t, cfg.vocab_size, dim))
                .transpose()?,
            rope: RopeTable::new(cfg.head_dim, cfg.rope_theta, &cfg.rope_factors, max_ctx),
            state: RunState::new(cfg, MAX_BATCH.min(max_ctx), max_ctx, threads),
            cfg: cfg.clone(),
            max_ctx,
            threads,
            len: 0,
            act: None,
            f16_cache: false,
            kv_static: None,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }

    /// Positions currently held in the KV cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layer `l`'s cache, `[max_ctx, n_kv_heads * head_dim]` K (RoPE'd) and V;
    /// positions `0..len()` hold the sequence.
    pub fn layer_kv(&self, l: usize) -> (&[f32], &[f32]) {
        let n = self.max_ctx * self.cfg.kv_dim();
        (
            &self.state.key_cache[l * n..(l + 1) * n],
            &self.state.value_cache[l * n..(l + 1) * n],
        )
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Worker threads for matmuls and attention (default: available cores, at most 16).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.clamp(1, 64);
        self.state.scores.resize(self.threads * self.max_ctx, 0.0);
    }

    /// Runs `tokens` at positions `pos..pos + tokens.len()` and returns the
    /// logits of every token, `[n_tokens, vocab]`.
    ///
    /// The KV cache keeps positions `0..pos` and is then extended with these
    /// tokens: `pos == self.len()` continues a sequence, a smaller `pos`
    /// rewinds (drops the cache from `pos` on), `pos = 0` starts afresh.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        self.run(tokens, pos, Want::All, None)
    }

    /// Like [`Reference::forward`] but returns only the last token's logits,
    /// `[vocab]`, skipping lm_head for the others (prompt processing).
    pub fn forward_last(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        self.run(tokens, pos, Want::Last, None)
    }

    /// Like [`Reference::forward`], also returning the embeddings, every
    /// layer's residual output and the final norm.
    pub fn forward_hidden(
        &mut self,
        tokens: &[u32],
        pos: usize,
    ) -> Result<(Vec<f32>, HiddenStates)> {
        let mut hidden = HiddenStates {
            layer_out: vec![Vec::new(); self.cfg.n_layers],
            ..Default::default()
        };
        let logits = self.run(tokens, pos, Want::All, Some(&mut hidden))?;
        Ok((logits, hidden))
    }

    /// Like [`Reference::forward_hidden`], but keeping every layer's queries
    /// and attention output instead of its residual output (the IntactKV
    /// pivot calibration's data).
    pub fn forward_attention(&mut self, tokens: &[u32], pos: usize) -> Result<HiddenStates> {
        let n = self.cfg.n_layers;
        let mut hidden = HiddenStates {
            q: vec![Vec::new(); n],
            att: vec![Vec::new(); n],
            ..Default::default()
        };
        self.run(tokens, pos, Want::Last, Some(&mut hidden))?;
        Ok(hidden)
    }

    /// Like [`Reference::forward_last`], also keeping each token's max
    /// |activation| at every layer's [`ActSite`]s (PrefixQuant's outlier
    /// statistics and static scales' calibration maxima).
    /// With `sample_every > 0`, also every `sample_every`-th token's rows.
    pub fn forward_site_max(
        &mut self,
        tokens: &[u32],
        pos: usize,
        sample_every: usize,
    ) -> Result<HiddenStates> {
        let n = self.cfg.n_layers;
        let mut hidden = HiddenStates {
            site_max: vec![Default::default(); n],
            site_rows: vec![Default::default(); if sample_every > 0 { n } else { 0 }],
            sample_every,
            ..Default::default()
        };
        self.run(tokens, pos, Want::Last, Some(&mut hidden))?;
        Ok(hidden)
    }

    /// Simulates `act`'s activation quantization from now on (`None`: f32
    /// activations), exactly as the integer kernels quantize.
    pub fn set_act_quant(&mut self, act: Option<ActQuant>) -> Result<()> {
        if let Some(a) = &act {
            a.check(&self.cfg)?;
        }
        self.act = act;
        Ok(())
    }

    /// Rounds keys and values to f16 as they enter the cache from now on,
    /// as the GPU's f16 cache does: with quantized activations, the
    /// rounding decides codes downstream, so a test of the integer path
    /// needs the GPU's cache precision to compare exactly.
    pub fn set_f16_cache(&mut self, on: bool) {
        self.f16_cache = on;
    }

    /// Simulates `kv`'s static KV-cache quantization of every position run
    /// from now on (`None`: none). Positions [`Reference::load_prefix`]
    /// puts in stay as they are, as the GPU's pivot rows do.
    pub fn set_kv_static(&mut self, kv: Option<KvStatic>) -> Result<()> {
        if let Some(k) = &kv {
            k.check(&self.cfg)?;
        }
        self.kv_static = kv;
        Ok(())
    }

    /// Puts `pivot`'s K and V at positions `0..pivot.len()` of every layer's
    /// cache, as if its tokens had run, and empties the cache after them.
    pub fn load_prefix(&mut self, pivot: &crate::checkpoint::Pivot) -> Result<()> {
        let (p, kvd) = (pivot.len(), self.cfg.kv_dim());
        pivot.check(&self.cfg)?;
        if p >= self.max_ctx {
            return Err(ModelError::Input(format!(
                "a pivot of {p} tokens fills the reference context {}",
                self.max_ctx
            )));
        }
        let n = self.max_ctx * kvd;
        for l in 0..self.cfg.n_layers {
            self.state.key_cache[l * n..l * n + p * kvd].copy_from_slice(&pivot.k[l]);
            self.state.value_cache[l * n..l * n + p * kvd].copy_from_slice(&pivot.v[l]);
            if self.f16_cache {
                let r = l * n..l * n + p * kvd;
                round_f16(&mut self.state.key_cache[r.clone()]);
                round_f16(&mut self.state.value_cache[r]);
            }
        }
        self.len = p;
        Ok(())
    }

    /// Greedy decoding from an empty cache: `n_new` argmax tokens after `prompt`
    /// (not stopped at EOS).
    pub fn generate_greedy(&mut self, prompt: &[u32], n_new: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(n_new);
        if n_new == 0 {
            return Ok(out);
        }
        let mut logits = self.forward_last(prompt, 0)?;
        loop {
            let next = argmax(&logits) as u32;
            out.push(next);
            if out.len() == n_new {
                return Ok(out);
            }
            logits = self.forward_last(&[next], self.len)?;
        }
    }

    fn check_input(&self, tokens: &[u32], pos: usize) -> Result<()> {
        if tokens.is_empty() {
            return Err(ModelError::Input("no tokens to run".into()));
        }
        if pos > self.len {
            return Err(ModelError::Input(format!(
                "position {pos} is past the {} positions in the KV cache",
                self.len
            )));
        }
        if pos + tokens.len() > self.max_ctx {
            return Err(ModelError::Input(format!(
                "{} tokens at position {pos} exceed the reference context of {} positions",
                tokens.len(),
                self.max_ctx
            )));
        }
        if let Some((i, t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, t)| **t as usize >= self.cfg.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token {t} at index {i} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    fn run(
        &mut self,
        tokens: &[u32],
        pos: usize,
        want: Want,
        mut hidden: Option<&mut HiddenStates>,
    ) -> Result<Vec<f32>> {
        self.check_input(tokens, pos)?;
        self.len = pos;
        let (vocab, dim, batch) = (self.cfg.vocab_size, self.cfg.dim, self.state.batch);
        let n_chunks = tokens.len().div_ceil(batch);
        let mut logits = vec![0.0f32; if want == Want::All { tokens.len() } else { 1 } * vocab];
        for (c, chunk) in tokens.chunks(batch).enumerate() {
            let n = chunk.len();
            self.layers_forward(chunk, self.len, hidden.as_deref_mut());
            self.len += n;
            // logits = final_norm @ lm_head^T: [n, vocab]
            let lm_head = self.output.as_ref().unwrap_or(&self.token_embd);
            match want {
                Want::All => {
                    let out = &mut logits[c * batch * vocab..(c * batch + n) * vocab];
                    matmul(out, &self.state.xb[..n * dim], lm_head, self.threads);
                }
                Want::Last if c + 1 == n_chunks => {
                    matmul(
                        &mut logits,
                        &self.state.xb[(n - 1) * dim..n * dim],
                        lm_head,
                        self.threads,
                    );
                }
                Want::Last => {}
            }
        }
        Ok(logits)
    }

    /// The transformer on `tokens` at positions `pos..`: leaves the final
    /// normed hidden states `[n, dim]` in `state.xb` and appends K/V to the cache.
    fn layers_forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        mut hidden: Option<&mut HiddenStates>,
    ) {
        let cfg = &self.cfg;
        let (n, dim, qd, kvd, ffn) = (
            tokens.len(),
            cfg.dim,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.ffn_dim,
        );
        let (eps, threads, max_ctx) = (cfg.norm_eps, self.threads, self.max_ctx);
        let (hd, had) = (cfg.head_dim, cfg.hadamard);
        let (act, f16_cache, kv_static) = (self.act.as_ref(), self.f16_cache, &self.kv_static);
        let s = &mut self.state;
        let x = &mut s.x[..n * dim]; // [n, dim]
        let xb = &mut s.xb[..n * dim]; // [n, dim]
        let xb2 = &mut s.xb2[..n * dim]; // [n, dim]
        let q = &mut s.q[..n * qd]; // [n, n_heads * head_dim]
        let att = &mut s.att[..n * qd]; // [n, n_heads * head_dim]
        let hb = &mut s.hb[..n * ffn]; // [n, ffn_dim]
        let hb2 = &mut s.hb2[..n * ffn]; // [n, ffn_dim]

        // x = token_embd[tokens]: [n, dim]
        for (row, &t) in x.chunks_exact_mut(dim).zip(tokens) {
            row.copy_from_slice(self.token_embd.row(t as usize));
        }
        if let Some(h) = hidden.as_deref_mut() {
            h.embeddings.extend_from_slice(x);
        }

        // A linear layer's input: its token-wise maxima kept, then quantized.
        let site = |x: &mut [f32], l: usize, site: ActSite, hidden: Option<&mut HiddenStates>| {
            let w = site.width(cfg);
            if let Some(h) = hidden
                && !h.site_max.is_empty()
            {
                let m = x
                    .chunks_exact(w)
                    .map(|r| r.iter().fold(0.0f32, |m, v| m.max(v.abs())));
                h.site_max[l][site.index()].extend(m);
                if h.sample_every > 0 {
                    for r in x.chunks_exact(w).step_by(h.sample_every) {
                        h.site_rows[l][site.index()].extend_from_slice(r);
                    }
                }
            }
            if let Some(a) = act {
                a.fake_quant(x, w, l, site);
            }
        };
        for (l, layer) in self.layers.iter().enumerate() {
            // This layer's cache: [max_ctx, n_kv_heads * head_dim] each.
            let k_cache = &mut s.key_cache[l * max_ctx * kvd..(l + 1) * max_ctx * kvd];
            let v_cache = &mut s.value_cache[l * max_ctx * kvd..(l + 1) * max_ctx * kvd];

            // ---- attention ----
            rmsnorm(xb, x, &layer.attn_norm, eps); // [n, dim]
            site(xb, l, ActSite::QkvIn, hidden.as_deref_mut());
            // K and V of the new tokens go straight into the cache rows pos..pos+n.
            let k_new = &mut k_cache[pos * kvd..(pos + n) * kvd]; // [n, n_kv_heads * head_dim]
            let v_new = &mut v_cache[pos * kvd..(pos + n) * kvd]; // [n, n_kv_heads * head_dim]
            matmul(q, xb, &layer.wq, threads); // [n, n_heads * head_dim]
            matmul(k_new, xb, &layer.wk, threads);
            matmul(v_new, xb, &layer.wv, threads);
            add_bias(q, &layer.bq);
            add_bias(k_new, &layer.bk);
            add_bias(v_new, &layer.bv);
            self.rope.rotate(q, cfg.n_heads, pos, cfg.rope_style);
            self.rope.rotate(k_new, cfg.n_kv_heads, pos, cfg.rope_style);
            if had.qk {
                hadamard::transform(q, hd).expect("head_dim checked in Reference::new");
                hadamard::transform(k_new, hd).expect("head_dim checked in Reference::new");
            }
            if f16_cache {
                round_f16(k_new);
                round_f16(v_new);
            }
            if let Some(kv) = kv_static {
                kv.fake_quant(k_new, v_new, l, hd);
            }
            attention(
                att,
                q,
                &k_cache[..(pos + n) * kvd], // [pos + n, kv_dim]
                &v_cache[..(pos + n) * kvd], // [pos + n, kv_dim]
                pos,
                cfg,
                &mut s.scores,
                threads,
            ); // [n, n_heads * head_dim]
            if let Some(h) = hidden.as_deref_mut()
                && !h.att.is_empty()
            {
                h.q[l].extend_from_slice(q);
                h.att[l].extend_from_slice(att);
            }
            site(att, l, ActSite::OIn, hidden.as_deref_mut());
            matmul(xb2, att, &layer.wo, threads); // [n, dim]
            add(x, xb2); // residual

            // ---- SwiGLU feed-forward ----
            rmsnorm(xb, x, &layer.ffn_norm, eps); // [n, dim]
            site(xb, l, ActSite::FfnIn, hidden.as_deref_mut());
            matmul(hb, xb, &layer.w_gate, threads); // [n, ffn_dim]
            matmul(hb2, xb, &layer.w_up, threads); // [n, ffn_dim]
            for (g, u) in hb.iter_mut().zip(hb2.iter()) {
                *g = silu(*g) * u;
            }
            if had.down {
                hadamard::transform(hb, ffn).expect("ffn_dim checked in Reference::new");
            }
            site(hb, l, ActSite::DownIn, hidden.as_deref_mut());
            matmul(xb2, hb, &layer.w_down, threads); // [n, dim]
            add(x, xb2); // residual

            if let Some(h) = hidden.as_deref_mut()
                && !h.layer_out.is_empty()
            {
                h.layer_out[l].extend_from_slice(x);
            }
        }

        rmsnorm(xb, x, &self.output_norm, eps); // [n, dim]
        if let Some(h) = hidden {
            h.final_norm.extend_from_slice(xb);
        }
    }
}

impl Layer {
    fn new(l: &LayerWeights, cfg: &LlamaConfig) -> Result<Layer> {
        let (dim, qd, kvd, ffn) = (cfg.dim, cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim);
        let bias = |i: usize, n: usize| match &l.qkv_bias {
            Some(b) => vector(&b[i], n),
            None => Ok(Vec::new()),
        };
        Ok(Layer {
            attn_norm: vector(&l.attn_norm, dim)?,
            wq: matrix(&l.wq, qd, dim)?,
            wk: matrix(&l.wk, kvd, dim)?,
            wv: matrix(&l.wv, kvd, dim)?,
            wo: matrix(&l.wo, dim, qd)?,
            ffn_norm: vector(&l.ffn_norm, dim)?,
            w_gate: matrix(&l.w_gate, ffn, dim)?,
            w_up: matrix(&l.w_up, ffn, dim)?,
            w_down: matrix(&l.w_down, dim, ffn)?,
            bq: bias(0, qd)?,
            bk: bias(1, kvd)?,
            bv: bias(2, kvd)?,
        })
    }
}

impl RunState {
    fn new(cfg: &LlamaConfig, batch: usize, max_ctx: usize, threads: usize) -> RunState {
        let (dim, qd, ffn) = (cfg.dim, cfg.q_dim(), cfg.ffn_dim);
        let cache = cfg.n_layers * max_ctx * cfg.kv_dim();
        RunState {
            batch,
            x: vec![0.0; batch * dim],
            xb: vec![0.0; batch * dim],
            xb2: vec![0.0; batch * dim],
            q: vec![0.0; batch * qd],
            att: vec![0.0; batch * qd],
            hb: vec![0.0; batch * ffn],
            hb2: vec![0.0; batch * ffn],
            scores: vec![0.0; threads * max_ctx],
            key_cache: vec![0.0; cache],
            value_cache: vec![0.0; cache],
        }
    }
}

/// Index of the largest value (the first one on ties); 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

/// Dequantizes a `[rows, cols]` weight, checking its shape.
fn matrix(t: &HostTensor, rows: usize, cols: usize) -> Result<Matrix> {
    if t.shape != [rows, cols] {
        return Err(ModelError::Invalid(format!(
            "{}: shape {:?}, expected [{rows}, {cols}]",
            t.name, t.shape
        )));
    }
    Ok(Matrix {
        data: t.to_f32()?,
        rows,
        cols,
    })
}

/// Dequantizes a `[n]` weight (a norm), checking its size.
fn vector(t: &HostTensor, n: usize) -> Result<Vec<f32>> {
    if t.numel() != n {
        return Err(ModelError::Invalid(format!(
            "{}: shape {:?}, expected [{n}]",
            t.name, t.shape
        )));
    }
    t.to_f32()
}

mod math;
// For the quantizers' calibration, which the browser build leaves out.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use math::dot;

/// Rounds cache rows to f16 in place, as the GPU's f16 cache stores them.
fn round_f16(x: &mut [f32]) {
    for v in x {
        *v = lamina_engine::kv::round_f16(*v);
    }
}
use math::{Matrix, RopeTable, add, attention, matmul, rmsnorm, silu};

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
