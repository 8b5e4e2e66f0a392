//! The whole model on the GPU against ../shared/golden (Hugging Face
//! transformers, f32, CPU, on the dequantized Q4_1 weights): top-10 logits
//! per position, greedy continuations, WikiText-2 perplexity.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use lamina_engine::graph::Step;
use lamina_model::eval;
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, Head, WeightMode};
use lamina_model::loader;
use lamina_model::session::{Compiled, SamplerConfig, Session};
use lamina_model::tokenizer::Tokenizer;
use lamina_tests::{gpu, model_path, shared_dir};
use serde_json::Value;

/// Largest |logit - golden logit| allowed over the top-10 of every position.
/// The golden run keeps K and V in f32; Lamina's cache stores them in f16
/// (rounding 2^-11 relative), which dominates the difference: the CPU f32
/// reference (model/src/reference.rs) agrees with golden to 7.6e-5, and the
/// GPU with an f32-exact single-token attention to 5e-4. Measured on lavapipe
/// over all 6 prompts (up to 234 tokens): worst 0.026.
const LOGIT_TOL: f32 = 0.04;

struct Loaded {
    model: Arc<GpuModel>,
    tok: Tokenizer,
}

/// The default model on the test GPU, once per test binary; tests take the
/// lock because they share its KV cache.
fn model() -> Option<MutexGuard<'static, Loaded>> {
    static M: OnceLock<Option<Mutex<Loaded>>> = OnceLock::new();
    M.get_or_init(|| {
        let Some(path) = model_path() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must fetch the model first (scripts/test.sh)"
            );
            eprintln!("default model not fetched (run `lamina fetch`); skipping");
            return None;
        };
        let host = loader::load(&path).expect("load model");
        let tok = Tokenizer::from_spec(&host.tokenizer_spec).expect("tokenizer");
        let model = GpuModel::new(
            gpu(),
            &host,
            WeightMode::Native,
            512,
            KvFormat::F16,
            |_, _| {},
        )
        .expect("upload model");
        Some(Mutex::new(Loaded {
            model: Arc::new(model),
            tok,
        }))
    })
    .as_ref()
    .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
}

fn golden(name: &str) -> Value {
    let p = shared_dir().join("golden").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).expect("golden file")).expect("golden json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn top10_logits_match_golden() {
    let Some(m) = model() else { return };
    let g = golden("logits.json");
    let mut c = Compiled::new(&m.model, 256, Head::AllLogits).expect("graph");
    let vocab = m.model.config.vocab_size;
    let mut worst = 0.0f32;
    for p in g["prompts"].as_array().expect("prompts") {
        let name = p["name"].as_str().unwrap_or("?");
        let input = ids(&p["input_ids"]);
        c.exec.write(c.io.ids, 0, bytemuck_u32(&input).as_slice());
        let step = Step {
            n_tokens: input.len() as u32,
            pos: 0,
            ..Default::default()
        };
        c.exec.run(&step).expect("run");
        let logits = c
            .exec
            .read_f32(c.io.logits, input.len() * vocab)
            .expect("read");
        for pos in p["positions"].as_array().expect("positions") {
            let i = pos["pos"].as_u64().expect("pos") as usize;
            let row = &logits[i * vocab..(i + 1) * vocab];
            let want_ids = ids(&pos["top10_ids"]);
            let want: Vec<f32> = pos["top10_logits"]
                .as_array()
                .expect("logits")
                .iter()
                .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                .collect();
            for (rank, (&id, &w)) in want_ids.iter().zip(&want).enumerate() {
                let got = row[id as usize];
                let err = (got - w).abs();
                worst = worst.max(err);
                assert!(
                    err <= LOGIT_TOL,
                    "{name} pos {i} rank {rank} id {id}: got {got} want {w} (err {err})"
                );
            }
            // The top-1 id must match unless golden's top two are within tolerance.
            let top = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(j, _)| j as u32)
                .unwrap_or(0);
            if top != want_ids[0] {
                assert!(
                    want[0] - want[1] <= 2.0 * LOGIT_TOL,
                    "{name} pos {i}: top-1 {top} vs golden {} (margin {})",
                    want_ids[0],
                    want[0] - want[1]
                );
            }
        }
    }
    eprintln!("top-10 logits: worst |diff| {worst:.5} (tolerance {LOGIT_TOL})");
}

fn bytemuck_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn greedy_continuations_match_golden() {
    let Some(m) = model() else { return };
    let g = golden("greedy.json");
    let mut s = Session::new(m.model.clone(), 512, SamplerConfig::greedy()).expect("session");
    for p in g["prompts"].as_array().expect("prompts") {
        let name = p["name"].as_str().unwrap_or("?");
        let prompt = ids(&p["prompt_ids"]);
        let want = ids(&p["new_ids"]);
        let steps = p["steps"].as_array().expect("steps");
        s.reset();
        let mut next = s.feed(&prompt).expect("prompt");
        for (i, &w) in want.iter().take(16).enumerate() {
            if next != w {
                let margin = steps[i]["margin"].as_f64().unwrap_or(f64::MAX) as f32;
                assert!(
                    margin <= 2.0 * LOGIT_TOL,
                    "{name} step {i}: got {next} ({:?}) want {w} ({:?}), golden margin {margin}",
                    m.tok.token_str(next),
                    m.tok.token_str(w)
                );
                eprintln!("{name}: step {i} flipped at golden margin {margin} (allowed)");
                break;
            }
            next = s.feed(&[next]).expect("decode");
        }
    }
}

#[test]
fn perplexity_first_4_chunks_within_1_percent() {
    let Some(m) = model() else { return };
    let text = std::fs::read_to_string(shared_dir().join("data/wikitext-2-raw/wiki.test.raw"))
        .expect("wiki.test.raw");
    // llama.cpp's -f drops one trailing newline.
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let tokens = m.tok.encode(text, false).expect("encode");
    let g = golden("ppl/ppl_nobos_ctx512_20.json");
    let chunks = g["chunks"].as_array().expect("chunks");
    let (sum, n) = chunks[..4].iter().fold((0.0, 0.0), |(s, n), c| {
        (
            s + c["nll_sum"].as_f64().unwrap_or(0.0),
            n + c["n_scored"].as_f64().unwrap_or(0.0),
        )
    });
    let want = (sum / n).exp();
    let (r, _) =
        eval::perplexity(&m.model, &tokens, 512, Some(4), None, |_, _, _| {}).expect("perplexity");
    let rel = (r.ppl - want).abs() / want;
    eprintln!(
        "ppl 4 chunks: {:.4} vs golden {want:.4} ({:.3}%)",
        r.ppl,
        100.0 * rel
    );
    assert!(
        rel < 0.01,
        "ppl {} vs golden {want}: {:.3}% off",
        r.ppl,
        100.0 * rel
    );
}
