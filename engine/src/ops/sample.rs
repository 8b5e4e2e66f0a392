//! Token sampling on the GPU: one row of logits in, one token id out, so a
//! decode step reads back 4 bytes.
//!
//! # The chain (llama.cpp's default order, `common/sampling.cpp`)
//! 1. Repetition penalty: each distinct token of the history, once:
//!    `l > 0 ? l / penalty : l * penalty` (the division as `l * (1/penalty)`
//!    with `1/penalty` rounded once on the host, so GPU and reference agree
//!    to the bit; within an ulp of llama.cpp's division). `penalty == 1` is
//!    off.
//! 2. Greedy when `temperature <= 0` (or top-k is 1): the largest logit,
//!    lowest id among equals.
//! 3. Top-k: the k best tokens; `top_k == 0` (or >= vocab) is off.
//! 4. Top-p on the probabilities of those k tokens at temperature 1: keep
//!    the shortest prefix whose cumulative probability is `>= top_p`;
//!    `top_p >= 1` is off.
//! 5. Temperature, then the draw: probabilities `softmax(l / T)` over the
//!    kept tokens, walked in rank order; the token is the first whose
//!    cumulative probability exceeds `uniform`.
//!
//! llama.cpp applies temperature after top-p (its `temperature` sampler is
//! last in the chain), so top-p's cut does not depend on T; Hugging Face
//! applies it first. Rank order is logit descending, then id ascending, and
//! defines both ties and the order of the inverse-CDF walk. NaN logits rank
//! last; infinite logits are clamped to the largest finite values.
//!
//! # Exactness
//! No cut is capped: top-k, top-p and the draw are exact for any vocab and
//! any settings. The pick pass sorts the best `min(top_k, CAP)` tokens in
//! workgroup memory ([`CAP`] = 1024; with top-k off, the best 1024) and
//! walks them for the nucleus and the draw. Finding them takes one pass
//! over the logits when top_k <= CAP / PER (= 64: the k-th best of the scan
//! partials' maxima bounds the k-th best logit from below and at most k *
//! PER tokens reach it), else an exact radix count select (8 bits of the
//! composite (logit key, id) per pass). When the nucleus or the draw reaches
//! past those tokens, an exact radix select over masses (4 bits per pass,
//! a handful of passes over the logits) finds the cut or the token. Those
//! passes run in one workgroup, so they cost most with top_k off and a flat
//! distribution (lavapipe, vocab 128256: ~1-3 ms for top_k 40, up to
//! ~20-50 ms for top_k 0 on near-uniform logits).
//!
//! # Buffers
//! - logits: `[vocab]` f32, one row.
//! - history: u32 words, `[count, id_0, id_1, ...]`, capacity `history_len`
//!   ids (count is clamped to it); ids >= vocab are ignored; repeats count
//!   once. The host writes it (llama.cpp's `penalty_last_n` window).
//! - scratch: [`scratch_bytes`]`(vocab)` bytes: words `[0, vocab)` the
//!   (penalized) logits, then 4 words per scan invocation, `256 *
//!   ceil(vocab / CHUNK)` of them (max, id at the max, sum exp(l - max),
//!   sum exp((l - max) / T)).
//! - out: u32, word 0 = the token id.
//!
//! Two calls: `sample_scan` (one invocation per [`PER`] logits, no
//! workgroup memory) and `sample_pick` (one workgroup: penalty, merge,
//! cuts, draw).

use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Sampling, Step, TensorId, TensorInfo, check_bytes,
    grid1, write_params,
};
use crate::pipeline::Kernel;
use crate::{Caps, Result, ensure_shape};

crate::shader!(SHADER, "sample", [], SampleParams);

/// Workgroup size, logits per scan invocation and per scan workgroup
/// (mirror sample.wgsl).
pub const WG: u32 = 256;
pub const PER: u32 = 16;
pub const CHUNK: u32 = WG * PER;
/// Best tokens sorted in workgroup memory by the pick pass (mirrors sample.wgsl).
pub const CAP: u32 = 1024;

crate::params_struct! {
    /// Mirrors `Params` in shaders/sample.wgsl; both calls get the same block.
    pub struct SampleParams {
        pub vocab: u32,
        /// Scan workgroups, ceil(vocab / CHUNK).
        pub n_wg: u32,
        /// History capacity in ids.
        pub hist_cap: u32,
        pub top_k: u32,
        pub temperature: f32,
        pub inv_temperature: f32,
        pub top_p: f32,
        pub uniform: f32,
        pub penalty: f32,
        pub inv_penalty: f32,
        /// Hex digits and bytes of `vocab - 1` (the id half of the radix
        /// selects' composite).
        pub id_digits: u32,
        pub id_bytes: u32,
        /// Scan invocations that own at least one logit.
        pub n_valid_part: u32,
        pub _pad: [u32; 3],
    }
}

crate::passes! {
    /// The sampler's passes, in dispatch order.
    enum Pass {
        /// Per-invocation partials over the logits (entry `sample_scan`).
        Scan,
        /// One workgroup: penalty, merge, cuts, draw (entry `sample_pick`).
        Pick,
    }
}

impl Pass {
    fn entry(self) -> &'static str {
        match self {
            Pass::Scan => "sample_scan",
            Pass::Pick => "sample_pick",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    /// [vocab] f32.
    pub logits: TensorId,
    /// u32 `[count, ids...]`, at least `4 * (1 + history_len)` bytes.
    pub history: TensorId,
    /// At least [`scratch_bytes`]`(vocab)` bytes.
    pub scratch: TensorId,
    /// u32, the sampled token id.
    pub out: TensorId,
    pub vocab: u32,
    /// Capacity of `history` in ids.
    pub history_len: u32,
}

/// Scan workgroups for `vocab` logits.
pub fn scan_workgroups(vocab: u32) -> u32 {
    vocab.div_ceil(CHUNK)
}

/// Bytes of the scratch tensor: `4 * (vocab + 4 * WG * ceil(vocab / CHUNK))`.
pub fn scratch_bytes(vocab: u32) -> u64 {
    4 * (u64::from(vocab) + 4 * u64::from(WG) * u64::from(scan_workgroups(vocab)))
}

/// Scan invocations owning at least one of `vocab` logits (invocation `j`
/// owns `(j / WG) * CHUNK + j % WG + k * WG`, k < PER).
fn valid_partials(vocab: u32) -> u32 {
    let full = scan_workgroups(vocab).saturating_sub(1);
    full * WG + (vocab - full * CHUNK).min(WG)
}

/// Bytes of the history tensor for `history_len` ids.
pub fn history_bytes(history_len: u32) -> u64 {
    4 * (1 + u64::from(history_len))
}

impl Sample {
    fn params(&self, s: &Sampling) -> SampleParams {
        let id_bits = 32 - self.vocab.saturating_sub(1).leading_zeros();
        SampleParams {
            vocab: self.vocab,
            n_wg: scan_workgroups(self.vocab),
            hist_cap: self.history_len,
            top_k: s.top_k,
            temperature: s.temperature,
            inv_temperature: if s.temperature > 0.0 {
                1.0 / s.temperature
            } else {
                0.0
            },
            top_p: s.top_p,
            uniform: s.uniform,
            penalty: s.repeat_penalty,
            inv_penalty: 1.0 / s.repeat_penalty,
            id_digits: id_bits.div_ceil(4),
            id_bytes: id_bits.div_ceil(8),
            n_valid_part: valid_partials(self.vocab),
            _pad: [0; 3],
        }
    }
}

impl OpDef for Sample {
    fn name(&self) -> &'static str {
        "sample"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        // Counts travel as f32 in the radix selects: exact below 2^24.
        ensure_shape!(
            self.vocab > 0 && self.vocab <= 1 << 24,
            "sample",
            "vocab {} must be in 1..=2^24",
            self.vocab
        );
        check_bytes(
            g,
            "sample",
            "logits",
            self.logits,
            4 * u64::from(self.vocab),
        )?;
        check_bytes(
            g,
            "sample",
            "history",
            self.history,
            history_bytes(self.history_len),
        )?;
        check_bytes(
            g,
            "sample",
            "scratch",
            self.scratch,
            scratch_bytes(self.vocab),
        )?;
        check_bytes(g, "sample", "out", self.out, 4)
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        let bindings = vec![
            Binding::read(self.logits),
            Binding::read(self.history),
            Binding::write(self.scratch),
            Binding::write(self.out),
        ];
        [Pass::Scan, Pass::Pick]
            .into_iter()
            .map(|pass| Call::new(Kernel::new(&SHADER, pass.entry()), bindings.clone()).pass(pass))
            .collect()
    }
    fn step(&self, tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        write_params(params, &self.params(&step.sampling));
        // A step without tokens (a sequence idle in a batched step) has
        // nothing to sample.
        if step.n_tokens == 0 {
            return [0, 0, 0];
        }
        match tag.pass() {
            Pass::Scan => grid1(scan_workgroups(self.vocab)),
            Pass::Pick => [1, 1, 1],
        }
    }
}

/// Penalized logits as the scan pass computes them.
pub fn penalized(logits: &[f32], history: &[u32], penalty: f32) -> Vec<f32> {
    let mut seen = vec![false; logits.len()];
    if penalty != 1.0 {
        for &id in history {
            if let Some(s) = seen.get_mut(id as usize) {
                *s = true;
            }
        }
    }
    let inv = 1.0 / penalty;
    logits
        .iter()
        .zip(&seen)
        .map(|(&l, &s)| {
            let mut x = if l.is_nan() { -f32::MAX } else { l };
            if s {
                x = if x > 0.0 { x * inv } else { x * penalty };
            }
            x.clamp(-f32::MAX, f32::MAX)
        })
        .collect()
}

/// What [`reference_detail`] decided and how close it came to deciding otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub token: u32,
    /// Smallest distance, relative to the mass compared against, between a
    /// cumulative mass and the threshold it was tested against at the
    /// top-p cut and the draw. Below float noise (~1e-5) the GPU may
    /// legitimately pick a neighbour.
    pub margin: f64,
}

/// CPU reference with identical semantics; `history` holds the ids only
/// (no count word).
pub fn reference(logits: &[f32], history: &[u32], s: &Sampling) -> u32 {
    reference_detail(logits, history, s).token
}

/// [`reference`] with the margin of its decisions (f64 sums in rank order).
pub fn reference_detail(logits: &[f32], history: &[u32], s: &Sampling) -> Decision {
    let exact = Decision {
        token: 0,
        margin: f64::INFINITY,
    };
    let v = logits.len();
    if v == 0 {
        return exact;
    }
    let pl = penalized(logits, history, s.repeat_penalty);
    // Rank order: logit descending (total order, as the GPU's keys), id ascending.
    let mut order: Vec<u32> = (0..v as u32).collect();
    order.sort_by(|&a, &b| pl[b as usize].total_cmp(&pl[a as usize]).then(a.cmp(&b)));
    let k = if s.top_k > 0 && (s.top_k as usize) < v {
        s.top_k as usize
    } else {
        v
    };
    if s.temperature <= 0.0 || k == 1 {
        return Decision {
            token: order[0],
            ..exact
        };
    }
    let m = f64::from(pl[order[0] as usize]);
    let w1 = |id: u32| (f64::from(pl[id as usize]) - m).exp();
    let inv_t = f64::from(1.0 / s.temperature);
    let wt = |id: u32| ((f64::from(pl[id as usize]) - m) * inv_t).exp();
    let mut margin = f64::INFINITY;
    let kept = &order[..k];
    let mut n = k;
    if s.top_p < 1.0 {
        let zk: f64 = kept.iter().map(|&i| w1(i)).sum();
        let target = f64::from(s.top_p) * zk;
        let mut cum = 0.0;
        for (j, &i) in kept.iter().enumerate() {
            let prev = cum;
            cum += w1(i);
            if cum >= target {
                n = j + 1;
                margin = margin
                    .min((cum - target).abs() / zk)
                    .min((target - prev).abs() / zk);
                break;
            }
        }
    }
    let kept = &kept[..n];
    let zm: f64 = kept.iter().map(|&i| wt(i)).sum();
    let target = f64::from(s.uniform) * zm;
    let mut cum = 0.0;
    let mut token = kept[0];
    for &i in kept {
        let w = wt(i);
        let prev = cum;
        cum += w;
        if w > 0.0 {
            token = i;
        }
        if cum > target {
            margin = margin
                .min((cum - target).abs() / zm)
                .min((target - prev).abs() / zm);
            break;
        }
    }
    Decision { token, margin }
}
