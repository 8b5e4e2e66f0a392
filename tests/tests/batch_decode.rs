//! Several sessions decoded in one step (`BatchDecoder`, the server's
//! batched step) give the tokens each session gives alone: sessions at
//! different positions, greedy and sampled, one of them idle for some
//! steps, over the f16 cache and a quantized one. The weights are Q4_1,
//! so the batched step's tiled matmul is checked against the mat-vec.

use std::sync::Arc;

use lamina_engine::Sampling;
use lamina_model::batch::BatchDecoder;
use lamina_model::checkpoint::HostDType;
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, WeightMode};
use lamina_model::session::{SamplerConfig, Session};
use lamina_model::synthetic;
use lamina_tests::gpu;
use rand::{Rng, SeedableRng};

const SPEC: &str = "L2-d128-h4-kv2-f256-v256";
const STEPS: usize = 10;

fn samplers() -> [SamplerConfig; 4] {
    let sampled = SamplerConfig {
        sampling: Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.1,
            uniform: 0.0,
        },
        seed: 7,
    };
    [
        SamplerConfig::greedy(),
        sampled,
        SamplerConfig::greedy(),
        SamplerConfig { seed: 9, ..sampled },
    ]
}

/// Four sessions over forks of one model, each fed its own prompt (of
/// different lengths); returns them and the token each sampled. `slots`:
/// forks whose f16 caches are slots of one buffer (`GpuModel::forks`, what
/// the server makes: one attention node for all), else one fork at a time
/// (attention per sequence).
fn sessions(base: &Arc<GpuModel>, slots: bool) -> (Vec<Session>, Vec<u32>) {
    let mut r = rand::rngs::StdRng::seed_from_u64(3);
    let mut out = Vec::new();
    let mut first = Vec::new();
    let mut forks = match slots {
        true => base.forks(4).unwrap(),
        false => (0..4).map(|_| base.fork().unwrap()).collect(),
    };
    for (i, sampler) in samplers().into_iter().enumerate() {
        let m = Arc::new(forks.remove(0));
        let mut s = Session::new(m, 16, sampler).unwrap();
        let prompt: Vec<u32> = (0..3 + 5 * i).map(|_| r.random_range(0..256)).collect();
        first.push(s.feed(&prompt).unwrap());
        out.push(s);
    }
    (out, first)
}

/// Session `i` sits out steps where `idle(i, step)`.
fn idle(i: usize, step: usize) -> bool {
    i == 2 && (3..6).contains(&step)
}

fn check(kv: &str, slots: bool) {
    let host = synthetic::synthetic_model(SPEC, HostDType::Q4_1, 11).unwrap();
    let f: KvFormat = kv.parse().unwrap();
    let base =
        Arc::new(GpuModel::new(gpu(), &host, WeightMode::Native, 128, f, |_, _| {}).unwrap());

    // Alone: each session decodes its tokens one step at a time.
    let (mut alone, first) = sessions(&base, false);
    let mut want = vec![Vec::new(); 4];
    for (i, s) in alone.iter_mut().enumerate() {
        let mut t = first[i];
        for step in 0..STEPS {
            if idle(i, step) {
                continue;
            }
            want[i].push(t);
            t = s.feed(&[t]).unwrap();
        }
        want[i].push(t);
    }

    // Together: one step for all, session 2 idle for three of them.
    let (mut together, first2) = sessions(&base, slots);
    assert_eq!(first, first2, "prompt steps differ between two runs");
    let refs: Vec<&Session> = together.iter().collect();
    let mut dec = BatchDecoder::new(&refs).unwrap();
    assert_eq!(dec.len(), 4);
    // Slots of one f16 buffer: one RoPE + cache write node and one attention
    // node for the four sequences (one call and two: decode, combine), where
    // each sequence alone has one and three (and prefill), so 13 calls
    // fewer in each of the two layers than over the separate caches of
    // `alone`.
    let apart = BatchDecoder::new(&alone.iter().collect::<Vec<_>>()).unwrap();
    let (calls, calls_apart) = (
        dec.executor().dispatch_count(),
        apart.executor().dispatch_count(),
    );
    let fewer = if slots && kv == "f16" { 2 * 13 } else { 0 };
    assert_eq!(calls + fewer, calls_apart, "kv {kv}, slots {slots}: calls");
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); 4];
    let mut next: Vec<u32> = first.clone();
    for step in 0..STEPS {
        let tokens: Vec<Option<u32>> = (0..4)
            .map(|i| (!idle(i, step)).then_some(next[i]))
            .collect();
        for (i, t) in tokens.iter().enumerate() {
            if let Some(t) = t {
                got[i].push(*t);
            }
        }
        let mut sess: Vec<&mut Session> = together.iter_mut().collect();
        let out = dec.step(&mut sess, &tokens).unwrap();
        for i in 0..4 {
            match (tokens[i], out[i]) {
                (Some(_), Some(t)) => next[i] = t,
                (None, None) => {}
                other => panic!("session {i} step {step}: {other:?}"),
            }
        }
    }
    for i in 0..4 {
        got[i].push(next[i]);
        assert_eq!(got[i], want[i], "kv {kv}, session {i}: batched vs alone");
        assert_eq!(together[i].pos(), alone[i].pos(), "session {i}'s position");
    }
}

#[test]
fn batched_step_matches_each_session_alone_f16() {
    check("f16", false);
}

#[test]
fn batched_step_matches_each_session_alone_f16_slots() {
    check("f16", true);
}

#[test]
fn batched_step_matches_each_session_alone_q8() {
    // (Quantized caches get buffers of their own: attention per sequence.)
    check("q8", true);
}

#[test]
fn a_batch_needs_shared_weights() {
    let host = synthetic::synthetic_model(SPEC, HostDType::Q4_1, 11).unwrap();
    let model = || {
        let m = GpuModel::new(
            gpu(),
            &host,
            WeightMode::Native,
            64,
            KvFormat::F16,
            |_, _| {},
        );
        Arc::new(m.unwrap())
    };
    let (a, b) = (model(), model());
    let sa = Session::new(a, 8, SamplerConfig::greedy()).unwrap();
    let sb = Session::new(b, 8, SamplerConfig::greedy()).unwrap();
    let err = BatchDecoder::new(&[&sa, &sb])
        .err()
        .expect("two models' sessions");
    assert!(err.to_string().contains("share"), "{err}");
}
