//! The browser's path through a session gives the native path's tokens:
//! `Session::feed_async` (each step's token read back through a future,
//! as WebGPU must) against `Session::feed` (a blocking read), greedy and
//! sampled, with a prompt longer than one prompt step. Natively the future
//! is ready when first polled (the device is polled inside it), so
//! `pollster` drives it here; in the browser the event loop does.

use std::sync::Arc;

use lamina_engine::Sampling;
use lamina_model::checkpoint::HostDType;
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, WeightMode};
use lamina_model::session::{SamplerConfig, Session};
use lamina_model::synthetic;
use lamina_tests::gpu;

const SPEC: &str = "L2-d128-h4-kv2-f256-v256";

/// A small random Q4_1 model with an f16 cache of `ctx` positions.
fn model(ctx: usize) -> Arc<GpuModel> {
    let host = synthetic::synthetic_model(SPEC, HostDType::Q4_1, 5).unwrap();
    let m = GpuModel::new(
        gpu(),
        &host,
        WeightMode::Native,
        ctx,
        KvFormat::F16,
        |_, _| {},
    );
    Arc::new(m.unwrap())
}

/// The prompt's sampled token, then `steps` more, each fed back; `run`
/// feeds the session (blocking or through the future).
fn tokens(
    model: &Arc<GpuModel>,
    sampler: SamplerConfig,
    steps: usize,
    mut run: impl FnMut(&mut Session, &[u32]) -> u32,
) -> Vec<u32> {
    // Batch 8 with a 19-token prompt: three prompt steps, the last of 3.
    let mut s = Session::new(model.clone(), 8, sampler).unwrap();
    let prompt: Vec<u32> = (0..19).map(|i| (i * 37 + 5) % 256).collect();
    let mut out = vec![run(&mut s, &prompt)];
    for _ in 0..steps {
        let last = *out.last().unwrap();
        out.push(run(&mut s, &[last]));
    }
    assert_eq!(s.pos(), prompt.len() + steps);
    out
}

#[test]
fn async_feed_gives_the_blocking_feeds_tokens() {
    let model = model(64);
    let sampled = SamplerConfig {
        sampling: Sampling {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.9,
            repeat_penalty: 1.1,
            uniform: 0.0,
        },
        seed: 3,
    };
    // Greedy with a repetition penalty: this random model's plain greedy
    // choice repeats one token.
    let greedy = SamplerConfig {
        sampling: Sampling {
            repeat_penalty: 1.5,
            ..Sampling::default()
        },
        seed: 0,
    };
    for sampler in [greedy, sampled] {
        let blocking = tokens(&model, sampler, 12, |s, t| s.feed(t).unwrap());
        let awaited = tokens(&model, sampler, 12, |s, t| {
            pollster::block_on(s.feed_async(t)).unwrap()
        });
        assert_eq!(blocking, awaited, "{sampler:?}");
        // Not one token over and over: the comparison has something to compare.
        let distinct: std::collections::BTreeSet<_> = blocking.iter().collect();
        assert!(distinct.len() > 1, "{sampler:?}: {blocking:?}");
    }
}

#[test]
fn async_feed_refuses_what_feed_refuses() {
    let model = model(16);
    let mut s = Session::new(model, 8, SamplerConfig::greedy()).unwrap();
    let empty = pollster::block_on(s.feed_async(&[])).unwrap_err();
    assert!(empty.to_string().contains("empty prompt"), "{empty}");
    let outside = pollster::block_on(s.feed_async(&[300])).unwrap_err();
    assert!(
        outside.to_string().contains("outside the vocabulary"),
        "{outside}"
    );
    let long: Vec<u32> = (0..17).collect();
    let full = pollster::block_on(s.feed_async(&long)).unwrap_err();
    assert!(
        full.to_string().contains("do not fit in the context"),
        "{full}"
    );
    assert_eq!(s.pos(), 0);
}
