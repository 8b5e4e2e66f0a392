//! GGUF files other than the default model against ../shared/golden/archs
//! (tiny random-weight models quantized by llama.cpp's own tools, logits
//! from Hugging Face transformers in f32 on the same dequantized weights):
//! tokenization, top-10 logits at every position, greedy tokens. See that
//! folder's README for how each file was made.
//!
//! - spm/: a SentencePiece vocabulary (byte fallback, add_bos), untied
//!   output, in Q2_K, Q3_K_M, Q4_K_S, Q5_K_S, IQ4_XS, IQ4_NL, Q5_0, Q5_1.
//! - llama3/: Llama 3.x shape (GQA, tied embeddings, llama3 RoPE scaling
//!   stored as rope_freqs), SmolLM2's vocabulary, in Q4_K_M, Q6_K, Q8_0.

use std::path::PathBuf;

use lamina_engine::graph::Step;
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, Head, WeightMode};
use lamina_model::loader;
use lamina_model::session::Compiled;
use lamina_model::tokenizer::Tokenizer;
use lamina_tests::{gpu, shared_dir};
use serde_json::Value;

/// Largest |logit - golden logit| over each position's golden top-10. The
/// goldens keep K and V in f32 and Lamina's cache holds f16 (2^-11
/// relative); logits here have a standard deviation of about 4. Worst seen
/// on lavapipe: see the eprintln of each run (docs/testing.md records it).
const LOGIT_TOL: f32 = 0.02;

fn dir(model: &str) -> Option<PathBuf> {
    let d = shared_dir().join("golden").join("archs").join(model);
    if d.join("goldens.json").exists() {
        Some(d)
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs ../shared/golden/archs/{model}"
        );
        eprintln!("SKIPPED: {} not found", d.display());
        None
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Checks every file of `model`'s goldens; returns the worst logit error.
fn check_model(model: &str) -> f32 {
    let Some(d) = dir(model) else { return 0.0 };
    let g: Value = serde_json::from_str(&std::fs::read_to_string(d.join("goldens.json")).unwrap())
        .expect("goldens.json");
    let prompts: std::collections::HashMap<&str, &Value> = g["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| (p["name"].as_str().expect("name"), p))
        .collect();
    let mut worst = 0.0f32;
    for (file, f) in g["files"].as_object().expect("files") {
        let host = loader::load(&d.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let tok = Tokenizer::from_spec(&host.tokenizer_spec).expect("tokenizer");
        let model = GpuModel::new(
            gpu(),
            &host,
            WeightMode::Native,
            512,
            KvFormat::F16,
            |_, _| {},
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        let vocab = model.config.vocab_size;
        let mut c = Compiled::new(&model, 512, Head::AllLogits).expect("graph");
        let mut file_worst = 0.0f32;
        for (name, out) in f["outputs"].as_object().expect("outputs") {
            let p = prompts[name.as_str()];
            let input = ids(&p["ids"]);
            let text = p["text"].as_str().expect("text");
            assert_eq!(
                tok.encode(text, true).expect("encode"),
                input,
                "{file} {name}: tokenization"
            );
            let bytes: Vec<u8> = input.iter().flat_map(|x| x.to_le_bytes()).collect();
            c.exec.write(c.io.ids, 0, &bytes);
            c.exec
                .run(&Step {
                    n_tokens: input.len() as u32,
                    pos: 0,
                    ..Default::default()
                })
                .expect("run");
            let logits = c.exec.read_f32(c.io.logits, input.len() * vocab).unwrap();
            for (i, pos) in out["positions"]
                .as_array()
                .expect("positions")
                .iter()
                .enumerate()
            {
                let row = &logits[i * vocab..(i + 1) * vocab];
                let (want_ids, want) = (ids(&pos["top_ids"]), floats(&pos["top_logits"]));
                for (rank, (&id, &w)) in want_ids.iter().zip(&want).enumerate() {
                    let err = (row[id as usize] - w).abs();
                    file_worst = file_worst.max(err);
                    assert!(
                        err <= LOGIT_TOL,
                        "{file} {name} pos {i} rank {rank} id {id}: got {} want {w}",
                        row[id as usize]
                    );
                }
                let top = (0..vocab)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap();
                assert!(
                    top as u32 == want_ids[0] || want[0] - want[1] <= 2.0 * LOGIT_TOL,
                    "{file} {name} pos {i}: top-1 {top}, golden {} by {}",
                    want_ids[0],
                    want[0] - want[1]
                );
            }
            // Greedy steps, decoded one token at a time through the KV cache
            // (the golden recomputes each step without one). Each step feeds
            // the golden's own token, so a near-tie flips only that step.
            let greedy = out["greedy"].as_array().expect("greedy");
            let last = input.len() - 1;
            let mut row = logits[last * vocab..(last + 1) * vocab].to_vec();
            for (k, s) in greedy.iter().enumerate() {
                let want = s["token"].as_u64().unwrap() as u32;
                let top = (0..vocab)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap() as u32;
                let margin = s["margin"].as_f64().unwrap() as f32;
                assert!(
                    top == want || margin <= 2.0 * LOGIT_TOL,
                    "{file} {name} greedy step {k}: {top}, golden {want} by {margin}"
                );
                c.exec.write(c.io.ids, 0, &want.to_le_bytes());
                c.exec
                    .run(&Step {
                        n_tokens: 1,
                        pos: (input.len() + k) as u32,
                        ..Default::default()
                    })
                    .expect("run");
                row = c.exec.read_f32(c.io.logits, vocab).unwrap();
            }
        }
        eprintln!("{file}: worst top-10 logit error {file_worst:.5}");
        worst = worst.max(file_worst);
    }
    worst
}

#[test]
fn spm_k_quants_match_transformers() {
    let w = check_model("spm");
    eprintln!("spm: worst {w:.5} (tolerance {LOGIT_TOL})");
}

#[test]
fn llama3_rope_scaling_and_k_quants_match_transformers() {
    let w = check_model("llama3");
    eprintln!("llama3: worst {w:.5} (tolerance {LOGIT_TOL})");
}

/// The llama3 file's `rope_freqs` are the factors config.json's
/// `rope_scaling` gives (the converter computes them the same way), and the
/// HF loader derives them from config.json.
#[test]
fn llama3_rope_factors_from_gguf_and_config_agree() {
    let Some(d) = dir("llama3") else { return };
    let gguf = loader::load(&d.join("llama3-Q8_0.gguf")).expect("gguf");
    let c = &gguf.config;
    assert_eq!(c.rope_factors.len(), c.head_dim / 2);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    // transformers 5 writes `rope_parameters`, older versions `rope_scaling`.
    let rs = if cfg["rope_parameters"].is_object() {
        &cfg["rope_parameters"]
    } else {
        &cfg["rope_scaling"]
    };
    let num = |k: &str| rs[k].as_f64().expect(k);
    let from_config = lamina_model::checkpoint::config::llama3_rope_factors(
        c.head_dim,
        c.rope_theta,
        num("factor"),
        num("low_freq_factor"),
        num("high_freq_factor"),
        num("original_max_position_embeddings"),
    );
    for (j, (a, b)) in c.rope_factors.iter().zip(&from_config).enumerate() {
        assert!(
            (a - b).abs() <= 2e-6 * b,
            "pair {j}: rope_freqs {a}, from config.json {b}"
        );
    }
    assert!(c.rope_factors.iter().any(|&f| f > 1.0) && c.rope_factors[0] == 1.0);
}
