//! Qwen2 from a GGUF file: q/k/v biases, rotate-half RoPE on rows as
//! Hugging Face stores them, an untied output. No fixture of llama.cpp's
//! exists for it here, so a synthetic model is written by Lamina's own GGUF
//! writer with llama.cpp's `qwen2` keys and tensor names, loaded back, and
//! run on the GPU against the CPU reference (which the Llama goldens check).

use lamina_engine::graph::Step;
use lamina_model::checkpoint::{HostDType, LayerTensor};
use lamina_model::gguf::GgufValue;
use lamina_model::gguf::writer::GgufWriter;
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, Head, WeightMode};
use lamina_model::reference::Reference;
use lamina_model::session::Compiled;
use lamina_model::{RopeStyle, loader, synthetic};
use lamina_tests::gpu;

/// The GPU's logits against the reference's: f16 KV cache rounding
/// (2^-11 relative) on logits of magnitude ~5; worst seen on lavapipe is
/// printed by the test.
const LOGIT_TOL: f32 = 0.02;

/// Writes a synthetic Qwen2 (Q8_0 matrices, f32 norms and biases) as GGUF.
fn qwen2_gguf(path: &std::path::Path) -> lamina_model::LlamaConfig {
    let cfg = lamina_model::LlamaConfig {
        arch: "qwen2".into(),
        qkv_bias: true,
        rope_style: RopeStyle::Neox,
        tied_embeddings: false,
        rope_theta: 1_000_000.0,
        ..synthetic::synthetic_config("L2-d128-h4-kv2-f256-v300").unwrap()
    };
    let w = synthetic::synthetic_weights(&cfg, HostDType::Q8_0, 7).unwrap();
    let mut g = GgufWriter::new();
    let u = |v: usize| GgufValue::U32(v as u32);
    g.kv("general.architecture", "qwen2".into())
        .kv("general.file_type", GgufValue::U32(7))
        .kv("qwen2.block_count", u(cfg.n_layers))
        .kv("qwen2.context_length", u(cfg.max_seq_len))
        .kv("qwen2.embedding_length", u(cfg.dim))
        .kv("qwen2.feed_forward_length", u(cfg.ffn_dim))
        .kv("qwen2.attention.head_count", u(cfg.n_heads))
        .kv("qwen2.attention.head_count_kv", u(cfg.n_kv_heads))
        .kv(
            "qwen2.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-6),
        )
        .kv("qwen2.rope.freq_base", GgufValue::F32(cfg.rope_theta))
        .kv("tokenizer.ggml.model", "gpt2".into())
        .kv("tokenizer.ggml.pre", "qwen2".into())
        .kv(
            "tokenizer.ggml.tokens",
            (0..cfg.vocab_size)
                .map(|i| format!("t{i}"))
                .collect::<Vec<_>>()
                .into(),
        )
        .kv("tokenizer.ggml.merges", vec!["t 1".to_string()].into())
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(2));
    for (role, t) in w.tensors() {
        g.host_tensor(role.gguf_name(), t);
    }
    g.write(path).unwrap();
    cfg
}

#[test]
fn qwen2_gguf_runs_like_the_reference() {
    let dir = std::env::temp_dir().join(format!("lamina-qwen2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("qwen2-q8_0.gguf");
    let want = qwen2_gguf(&path);
    let m = loader::load(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let c = &m.config;
    assert_eq!(
        (c.arch.as_str(), c.qkv_bias, c.rope_style, c.tied_embeddings),
        ("qwen2", true, RopeStyle::Neox, false)
    );
    assert_eq!(
        (c.dim, c.n_kv_heads, c.vocab_size),
        (want.dim, want.n_kv_heads, want.vocab_size)
    );
    let b = m.weights.layers[1].get(LayerTensor::Bv).expect("v bias");
    assert_eq!(b.shape, vec![c.kv_dim()]);

    let toks: Vec<u32> = (0..37).map(|i| (i * 37 + 11) % 300).collect();
    let mut r = Reference::new(c, &m.weights, 64).unwrap();
    let want = r.forward(&toks, 0).unwrap();
    // Without the biases the logits move far more than the tolerance, so
    // the comparison below sees them.
    let mut nobias = m.weights.clone();
    for l in &mut nobias.layers {
        l.qkv_bias = None;
    }
    let cfg_nobias = lamina_model::LlamaConfig {
        qkv_bias: false,
        ..c.clone()
    };
    let plain = Reference::new(&cfg_nobias, &nobias, 64)
        .unwrap()
        .forward(&toks, 0)
        .unwrap();
    let moved = want
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        moved > 20.0 * LOGIT_TOL,
        "biases move the logits by only {moved}"
    );

    let gm = GpuModel::new(gpu(), &m, WeightMode::Native, 64, KvFormat::F16, |_, _| {}).unwrap();
    let mut comp = Compiled::new(&gm, 64, Head::AllLogits).unwrap();
    let bytes: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
    comp.exec.write(comp.io.ids, 0, &bytes);
    comp.exec
        .run(&Step {
            n_tokens: toks.len() as u32,
            pos: 0,
            ..Default::default()
        })
        .unwrap();
    let got = comp.exec.read_f32(comp.io.logits, want.len()).unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    eprintln!("qwen2: worst |GPU - reference| {worst:.5}, biases move logits by {moved:.3}");
    assert!(worst <= LOGIT_TOL, "GPU vs reference: {worst}");
}

/// Writes `tensors` (name, shape, f32 values) as a safetensors file: an
/// 8-byte header length, the JSON header, the data.
fn write_safetensors(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, v) in tensors {
        let start = data.len();
        data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::Value::Object(header).to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// A Hugging Face Qwen2 directory (config.json, safetensors with the q/k/v
/// biases under their transformers names, tokenizer.json) loads with the
/// biases in place and computes what the same weights do.
#[test]
fn qwen2_hf_directory_loads_its_biases() {
    let cfg = lamina_model::LlamaConfig {
        arch: "qwen2".into(),
        qkv_bias: true,
        rope_style: RopeStyle::Neox,
        tied_embeddings: true,
        ..synthetic::synthetic_config("L2-d64-h4-kv2-f128-v6").unwrap()
    };
    let w = synthetic::synthetic_weights(&cfg, HostDType::F32, 3).unwrap();
    let dir = std::env::temp_dir().join(format!("lamina-qwen2-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tensors: Vec<_> = w
        .tensors()
        .into_iter()
        .map(|(role, t)| (role.hf_name(), t.shape.clone(), t.to_f32().unwrap()))
        .collect();
    assert!(
        tensors
            .iter()
            .any(|(n, ..)| n == "model.layers.0.self_attn.q_proj.bias")
    );
    write_safetensors(&dir.join("model.safetensors"), &tensors);
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "num_hidden_layers": cfg.n_layers, "hidden_size": cfg.dim,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "intermediate_size": cfg.ffn_dim, "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": 128, "tie_word_embeddings": true, "hidden_act": "silu",
        "sliding_window": 128, "use_sliding_window": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tok = serde_json::json!({
        "version": "1.0",
        "added_tokens": [{"id": 2, "content": "<|endoftext|>", "special": true}],
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "<|endoftext|>": 2, "ab": 3, "c": 4, "d": 5},
            "merges": [["a", "b"]]}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let m = loader::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(m.config.qkv_bias && m.config.rope_style == RopeStyle::Neox);
    let toks = [0u32, 3, 1, 5, 4, 2, 0];
    let got = Reference::new(&m.config, &m.weights, 16)
        .unwrap()
        .forward(&toks, 0)
        .unwrap();
    let want = Reference::new(&cfg, &w, 16)
        .unwrap()
        .forward(&toks, 0)
        .unwrap();
    assert_eq!(got, want);
}
