//! GPU sampling against the CPU reference (`ops::sample::reference`), and
//! the empirical distribution against softmax over the filtered tokens.

use lamina_engine::Executor;
use lamina_engine::graph::{Graph, Op, Sampling, Step};
use lamina_engine::ops::sample::{self, Sample};
use lamina_tests::{f32_bytes, gpu, rand_vec, u32_bytes};
use rand::{Rng, SeedableRng};

/// Decisions closer than this (relative cumulative mass) to flipping are
/// float noise: the GPU sums in f32 in another order than the reference's
/// f64 (tree sums over <= 2^17 terms: <= ~17 * 2^-24 ~ 1e-6 relative), and
/// its exp differs by an ulp or two. Such draws are not compared. (On
/// lavapipe none of them differed either, even below 1e-6.)
const MARGIN_EPS: f64 = 1e-5;

/// History capacity of the test graphs.
const HIST: u32 = 64;

/// A graph holding only the sample op.
struct Rig {
    ex: Executor,
    logits: usize,
    history: usize,
    out: usize,
    vocab: usize,
}

impl Rig {
    fn new(vocab: u32) -> Rig {
        let mut g = Graph::new();
        let logits = g.input("logits", 4 * u64::from(vocab));
        let history = g.input("history", sample::history_bytes(HIST));
        let scratch = g.intermediate("scratch", sample::scratch_bytes(vocab));
        let out = g.output("token", 4);
        let op = Sample {
            logits,
            history,
            scratch,
            out,
            vocab,
            history_len: HIST,
        };
        g.push("sample", Op::Sample(op)).unwrap();
        let ex = Executor::new(gpu(), g).unwrap();
        let r = Rig {
            ex,
            logits,
            history,
            out,
            vocab: vocab as usize,
        };
        r.set_history(&[]);
        r
    }
    fn set_logits(&self, l: &[f32]) {
        assert_eq!(l.len(), self.vocab);
        self.ex.write(self.logits, 0, &f32_bytes(l));
    }
    /// Writes `[count, ids...]`.
    fn set_history(&self, ids: &[u32]) {
        let mut words = vec![ids.len() as u32];
        words.extend_from_slice(ids);
        self.ex.write(self.history, 0, &u32_bytes(&words));
    }
    fn pick(&mut self, s: Sampling) -> u32 {
        let step = Step {
            sampling: s,
            ..Default::default()
        };
        let b = self.ex.run_read(&step, self.out, 4).unwrap();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

fn settings(temperature: f32, top_k: u32, top_p: f32, repeat_penalty: f32) -> Sampling {
    Sampling {
        temperature,
        top_k,
        top_p,
        repeat_penalty,
        uniform: 0.0,
    }
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    for (i, vocab) in [1u32, 7, 1000, 49152, 128256].into_iter().enumerate() {
        let mut rig = Rig::new(vocab);
        for trial in 0..3u64 {
            let mut l = rand_vec(vocab as usize, 1000 * i as u64 + trial, 8.0);
            if trial == 1 && vocab > 3 {
                // Three equal maxima: the lowest id wins.
                let ids = [vocab as usize / 2, vocab as usize - 1, 1];
                for &j in &ids {
                    l[j] = 9.5;
                }
            }
            if trial == 2 {
                // All negative.
                l.iter_mut().for_each(|x| *x = -x.abs() - 1.0);
            }
            rig.set_logits(&l);
            let want = argmax(&l);
            assert_eq!(
                rig.pick(settings(0.0, 0, 1.0, 1.0)),
                want,
                "greedy vocab {vocab} trial {trial}"
            );
            // top-k 1 is greedy at any temperature.
            let s = Sampling {
                uniform: 0.99,
                ..settings(1.0, 1, 1.0, 1.0)
            };
            assert_eq!(rig.pick(s), want, "top-k 1 vocab {vocab} trial {trial}");
        }
    }
}

/// Logits like a language model's: a few strong tokens over a long tail
/// (`spread` sets the tail's weight; small spread = flat, heavy tail).
fn lm_logits(vocab: usize, seed: u64, spread: f32) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..vocab)
        .map(|_| {
            let u: f32 = r.random_range(0.0..1.0);
            // Exponential-ish tail: most tokens low, a few high.
            spread * (-(1.0 - u).ln()) - 2.0 * spread
        })
        .collect()
}

/// A nucleus wider than the sorted cap: `wide` tokens (a tie group among
/// them) with logits from 5 down to 4 over a floor at -10, so the top-p cut
/// and most draws land past rank CAP with clear margins.
fn wide_logits(vocab: usize, wide: usize, seed: u64) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut l = vec![-10.0f32; vocab];
    for j in 0..wide.min(vocab) {
        let id = r.random_range(0..vocab);
        l[id] = if j % 50 == 7 {
            4.5
        } else {
            5.0 - j as f32 / wide as f32
        };
    }
    l
}

/// Rank of `token` in the rank order of the penalized logits.
fn rank_of(l: &[f32], history: &[u32], s: &Sampling, token: u32) -> usize {
    let pl = sample::penalized(l, history, s.repeat_penalty);
    let t = pl[token as usize];
    pl.iter()
        .enumerate()
        .filter(|&(i, &x)| x > t || (x == t && (i as u32) < token))
        .count()
}

#[test]
fn gpu_matches_reference_for_many_settings() {
    let configs = [
        // (temperature, top_k, top_p, penalty)
        (1.0, 0, 1.0, 1.0),    // the whole vocabulary
        (0.8, 40, 0.95, 1.1),  // llama.cpp's defaults
        (1.5, 0, 0.9, 1.0),    // nucleus only
        (0.7, 5, 1.0, 1.0),    // top-k only
        (1.0, 1000, 0.5, 1.3), // a wide top-k cut by top-p
        (2.0, 2000, 1.0, 1.0), // top-k above the sorted cap
        (1.2, 3000, 0.97, 0.8),
        (0.3, 0, 0.999, 1.0),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut compared, mut skipped, mut past_cap) = (0, 0, 0);
    for vocab in [7u32, 1000, 49152, 128256] {
        let mut rig = Rig::new(vocab);
        let sets = [
            ("flat", lm_logits(vocab as usize, 50, 0.5)),
            ("peaked", lm_logits(vocab as usize, 51, 3.0)),
            ("wide", wide_logits(vocab as usize, 3000, 52)),
        ];
        for (name, l) in &sets {
            rig.set_logits(l);
            let history: Vec<u32> = (0..20).map(|_| rng.random_range(0..vocab)).collect();
            rig.set_history(&history);
            for &(t, k, p, pen) in &configs {
                let draws = if vocab > 50_000 { 4 } else { 8 };
                for _ in 0..draws {
                    let s = Sampling {
                        uniform: rng.random_range(0.0..1.0),
                        ..settings(t, k, p, pen)
                    };
                    let want = sample::reference_detail(l, &history, &s);
                    let got = rig.pick(s);
                    if want.margin < MARGIN_EPS {
                        skipped += 1;
                        continue;
                    }
                    compared += 1;
                    assert_eq!(
                        got, want.token,
                        "vocab {vocab} {name} {s:?} (margin {:e})",
                        want.margin
                    );
                    if rank_of(l, &history, &s, got) >= sample::CAP as usize {
                        past_cap += 1;
                    }
                }
            }
        }
    }
    eprintln!(
        "sample: {compared} draws equal to the reference ({past_cap} past rank {}), \
         {skipped} skipped within {MARGIN_EPS:e}",
        sample::CAP
    );
    // Flat logits over a large vocabulary give every token a mass near
    // 1/vocab, within the noise margin, so some skips are expected.
    assert!(
        skipped * 5 < compared,
        "too many near-ties skipped: {skipped} of {}",
        compared + skipped
    );
    assert!(
        past_cap >= 15,
        "only {past_cap} compared draws exercised the whole-vocabulary selection"
    );
}

#[test]
fn repetition_penalty_changes_the_pick() {
    let mut rig = Rig::new(1000);
    let greedy = settings(0.0, 0, 1.0, 1.5);
    // Positive logits are divided: 5 (3.0 -> 2.0) falls below 9 (2.5).
    let mut l = vec![0.0f32; 1000];
    l[5] = 3.0;
    l[9] = 2.5;
    rig.set_logits(&l);
    rig.set_history(&[]);
    assert_eq!(rig.pick(greedy), 5);
    rig.set_history(&[5]);
    assert_eq!(rig.pick(greedy), 9);
    // A repeated id is penalized once: 5 at 3.0 / 1.5 = 2.0 still beats 7
    // at 1.5 (twice would give 1.33).
    l[9] = 0.0;
    l[7] = 1.5;
    rig.set_logits(&l);
    rig.set_history(&[5, 5, 5]);
    assert_eq!(rig.pick(greedy), 5);
    // Negative logits are multiplied: all negative, 3 (-0.5 -> -0.75) falls
    // below 4 (-0.6). Ids past the vocabulary are ignored.
    let mut l = vec![-5.0f32; 1000];
    l[3] = -0.5;
    l[4] = -0.6;
    rig.set_logits(&l);
    rig.set_history(&[3, 1000, u32::MAX]);
    assert_eq!(rig.pick(greedy), 4);
    // A penalty below 1 raises a negative logit... and lowers nothing else.
    rig.set_history(&[4]);
    assert_eq!(rig.pick(settings(0.0, 0, 1.0, 0.5)), 4);
    // Penalty 1 is off even with a history.
    rig.set_history(&[3]);
    assert_eq!(rig.pick(settings(0.0, 0, 1.0, 1.0)), 3);
    // A count word past the capacity is clamped to it (nothing past the
    // buffer is read).
    let mut words = vec![HIST + 100];
    words.extend(std::iter::repeat_n(999, HIST as usize));
    words.push(3);
    rig.ex
        .write(rig.history, 0, &u32_bytes(&words[..=HIST as usize]));
    assert_eq!(rig.pick(greedy), 3);
    for s in [
        greedy,
        Sampling {
            uniform: 0.3,
            ..settings(0.9, 10, 0.9, 1.5)
        },
    ] {
        let got = rig.pick(s);
        assert_eq!(
            got,
            sample::reference(&l, &vec![999; HIST as usize], &s),
            "{s:?}"
        );
    }
}

/// Expected probabilities of the chain, written out independently of the
/// reference: penalty, top-k, top-p at T = 1, softmax(l / T) over the rest.
fn filtered_softmax(l: &[f32], s: &Sampling) -> Vec<(u32, f64)> {
    let mut order: Vec<u32> = (0..l.len() as u32).collect();
    order.sort_by(|&a, &b| {
        l[b as usize]
            .partial_cmp(&l[a as usize])
            .unwrap()
            .then(a.cmp(&b))
    });
    if s.top_k > 0 {
        order.truncate(s.top_k as usize);
    }
    let m = f64::from(l[order[0] as usize]);
    let p1: Vec<f64> = order
        .iter()
        .map(|&i| (f64::from(l[i as usize]) - m).exp())
        .collect();
    let z: f64 = p1.iter().sum();
    let mut cum = 0.0;
    let mut keep = order.len();
    for (j, p) in p1.iter().enumerate() {
        cum += p / z;
        if cum >= f64::from(s.top_p) {
            keep = j + 1;
            break;
        }
    }
    order.truncate(keep);
    let t = f64::from(s.temperature);
    let w: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(l[i as usize]) - m) / t).exp())
        .collect();
    let zt: f64 = w.iter().sum();
    order
        .into_iter()
        .zip(w.into_iter().map(|x| x / zt))
        .collect()
}

/// Pearson's chi-square of `counts` against `probs` (bins with expected
/// count < 5 pooled), and its degrees of freedom.
fn chi_square(counts: &[u32], probs: &[f64], n: u32) -> (f64, usize) {
    let (mut chi, mut df) = (0.0, 0usize);
    let (mut pool_o, mut pool_e) = (0.0, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        let e = p * f64::from(n);
        if e < 5.0 {
            pool_o += f64::from(c);
            pool_e += e;
            continue;
        }
        chi += (f64::from(c) - e).powi(2) / e;
        df += 1;
    }
    if pool_e > 0.0 {
        chi += (pool_o - pool_e).powi(2) / pool_e.max(1.0);
        df += 1;
    }
    (chi, df.saturating_sub(1))
}

#[test]
fn draws_follow_the_filtered_softmax() {
    let vocab = 1000;
    let mut rig = Rig::new(vocab);
    let l = lm_logits(vocab as usize, 77, 1.0);
    rig.set_logits(&l);
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for base in [
        settings(0.8, 12, 1.0, 1.0),
        settings(1.3, 0, 0.6, 1.0),
        settings(1.0, 50, 0.9, 1.0),
    ] {
        let probs = filtered_softmax(&l, &base);
        let n = 800u32;
        let mut counts = vec![0u32; probs.len()];
        for _ in 0..n {
            let s = Sampling {
                uniform: rng.random_range(0.0..1.0),
                ..base
            };
            let tok = rig.pick(s);
            let Some(j) = probs.iter().position(|&(i, _)| i == tok) else {
                panic!(
                    "{base:?}: token {tok} is not among the {} kept",
                    probs.len()
                );
            };
            counts[j] += 1;
        }
        let p: Vec<f64> = probs.iter().map(|x| x.1).collect();
        let (chi, df) = chi_square(&counts, &p, n);
        // Mean df, sd sqrt(2 df): 5 sd is far outside chance, well inside a
        // wrong distribution at this n.
        let limit = df as f64 + 5.0 * (2.0 * df as f64).sqrt() + 5.0;
        eprintln!(
            "{base:?}: {} kept, chi^2 {chi:.1} on {df} df (limit {limit:.1})",
            probs.len()
        );
        assert!(
            chi < limit,
            "{base:?}: chi^2 {chi:.1} on {df} df exceeds {limit:.1}"
        );
    }
}
