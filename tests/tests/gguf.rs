//! GGUF loading: the real SmolLM2 file against golden/config.json (metadata,
//! tensor table, weight statistics), and corrupt files, each of which must be
//! an error with a message, never a panic. Also the HF-directory tokenizer
//! spec, read from golden/'s tokenizer.json and tokenizer_config.json.
//!
//! The real-model test prints a notice and passes when the model is absent
//! (CI fetches it first; see `lamina_tests::model_path`).

use anyhow::{Context, Result, bail, ensure};
use lamina_model::checkpoint::HostTensor;
use lamina_model::gguf::writer::GgufWriter;
use lamina_model::gguf::{GgufArray, GgufFile, GgufValue};
use lamina_model::loader;
use serde_json::Value;

/// Relative tolerance on tensor statistics: both sides dequantize the same
/// bytes exactly, so only summation order differs.
const STATS_RTOL: f64 = 1e-4;

fn golden_config() -> Result<Value> {
    let path = lamina_tests::shared_dir().join("golden/config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Compares one GGUF metadata value with its golden JSON rendering (arrays of
/// tokens are recorded there as "<array len N>").
fn check_meta(key: &str, got: &GgufValue, want: &Value) -> Result<()> {
    let ok = match (got, want) {
        (GgufValue::Array(a), Value::String(s)) if s.starts_with("<array len ") => {
            *s == format!("<array len {}>", a.len())
        }
        (GgufValue::Array(GgufArray::String(a)), Value::Array(w)) => {
            a.len() == w.len() && a.iter().zip(w).all(|(x, y)| y.as_str() == Some(x.as_str()))
        }
        (GgufValue::String(s), Value::String(w)) => s == w,
        (GgufValue::Bool(b), Value::Bool(w)) => b == w,
        (v, Value::Number(n)) => match (v.as_f64(), n.as_f64()) {
            (Some(a), Some(b)) => a == b || (a - b).abs() <= 1e-7 * b.abs(),
            _ => false,
        },
        _ => false,
    };
    ensure!(ok, "metadata `{key}`: got {got}, golden {want}");
    Ok(())
}

/// (absmax, mean, sample std) in f64.
fn stats(x: &[f32]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let absmax = x.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    (absmax, mean, var.sqrt())
}

fn check_stats(t: &HostTensor, golden: &Value) -> Result<()> {
    let (absmax, mean, std) = stats(&t.to_f32()?);
    for (what, got) in [("absmax", absmax), ("mean", mean), ("std", std)] {
        let want = golden[what]
            .as_f64()
            .with_context(|| format!("golden {what} of {}", t.name))?;
        let rel = (got - want).abs() / want.abs();
        ensure!(
            rel <= STATS_RTOL,
            "{} ({:?}) {what}: got {got}, golden {want}, rel err {rel:e}",
            t.name,
            t.dtype
        );
        println!(
            "{} ({:?}) {what}: {got} vs {want} (rel {rel:.1e})",
            t.name, t.dtype
        );
    }
    let shape: Vec<usize> = serde_json::from_value(golden["shape"].clone())?;
    ensure!(
        t.shape == shape,
        "{}: shape {:?}, golden {shape:?}",
        t.name,
        t.shape
    );
    Ok(())
}

#[test]
fn real_model_matches_golden_config() -> Result<()> {
    let Some(path) = lamina_tests::model_path() else {
        eprintln!("NOTICE: SmolLM2-135M-Instruct.Q4_1.gguf not found (set LAMINA_MODEL); skipping");
        return Ok(());
    };
    let golden = golden_config()?;
    let g = GgufFile::open(&path)?;
    let meta = &golden["gguf_metadata"];

    // Header and metadata.
    ensure!(u64::from(g.version()) == meta["GGUF.version"].as_u64().unwrap_or(0));
    ensure!(g.tensors().len() as u64 == meta["GGUF.tensor_count"].as_u64().unwrap_or(0));
    ensure!(g.metadata().len() as u64 == meta["GGUF.kv_count"].as_u64().unwrap_or(0));
    for (key, want) in meta.as_object().context("gguf_metadata")? {
        if key.starts_with("GGUF.") {
            continue;
        }
        let got = g
            .get(key)
            .with_context(|| format!("metadata `{key}` missing"))?;
        check_meta(key, got, want)?;
    }

    // Tensor table: every tensor's ggml type and dims (ne order) as recorded.
    let tensors = golden["gguf_tensors"].as_object().context("gguf_tensors")?;
    ensure!(tensors.len() == g.tensors().len());
    let mut counts = std::collections::BTreeMap::new();
    for info in g.tensors() {
        let want = tensors
            .get(&info.name)
            .with_context(|| format!("tensor {} not in golden", info.name))?;
        ensure!(
            want["type"].as_str() == Some(info.type_name().as_str()),
            "{}: {}",
            info.name,
            info.type_name()
        );
        let ne: Vec<u64> = serde_json::from_value(want["gguf_shape"].clone())?;
        ensure!(
            ne == info.ne,
            "{}: dims {:?}, golden {ne:?}",
            info.name,
            info.ne
        );
        *counts.entry(info.type_name()).or_insert(0u64) += 1;
    }
    for (ty, n) in golden["gguf_tensor_types"].as_object().context("types")? {
        ensure!(
            counts.get(ty).copied() == n.as_u64(),
            "{ty}: {:?} tensors, golden {n}",
            counts.get(ty)
        );
    }

    // The loaded model.
    let m = loader::load(&path)?;
    let c = &m.config;
    ensure!(
        (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim) == (30, 576, 9, 3, 64),
        "{c:?}"
    );
    ensure!(
        (c.ffn_dim, c.vocab_size, c.max_seq_len) == (1536, 49152, 8192),
        "{c:?}"
    );
    ensure!(
        c.norm_eps == 1e-5 && c.rope_theta == 100000.0 && c.tied_embeddings,
        "{c:?}"
    );
    ensure!(c.rope_style == lamina_model::RopeStyle::Interleaved);
    ensure!(m.file_type == "Q4_1", "file type {}", m.file_type);
    ensure!(m.weights.output.is_none() && m.weights.layers.len() == 30);
    let s = &m.tokenizer_spec;
    ensure!(s.model == "gpt2" && s.pre.as_deref() == Some("smollm"));
    ensure!(s.tokens.len() == 49152 && s.token_types.len() == 49152 && s.merges.len() == 48900);
    ensure!((s.bos_id, s.eos_id, s.unk_id, s.pad_id) == (Some(1), Some(2), Some(0), Some(2)));
    ensure!(!s.add_bos && !s.add_eos);
    ensure!(s.tokens[1] == "<|im_start|>" && s.tokens[2] == "<|im_end|>");
    ensure!(s.chat_template.as_deref() == golden["chat_template"].as_str());

    // Dequantized weights against the statistics of the HF reload (q_proj's
    // rows are un-permuted there, which the statistics do not see).
    let hf = &golden["hf_weights"];
    check_stats(&m.weights.token_embd, &hf["model.embed_tokens.weight"])?;
    let l0 = &m.weights.layers[0];
    check_stats(&l0.w_down, &hf["model.layers.0.mlp.down_proj.weight"])?;
    check_stats(&l0.wq, &hf["model.layers.0.self_attn.q_proj.weight"])?;
    check_stats(
        &m.weights.layers[29].attn_norm,
        &hf["model.layers.29.input_layernorm.weight"],
    )?;
    Ok(())
}

#[test]
fn real_model_prefixes_are_errors() -> Result<()> {
    let Some(path) = lamina_tests::model_path() else {
        eprintln!("NOTICE: default model not found; skipping");
        return Ok(());
    };
    let bytes = std::fs::read(&path)?;
    let data_offset = GgufFile::from_bytes("full", &bytes)?.data_offset();
    for cut in [
        0,
        3,
        23,
        24,
        1000,
        100_000,
        data_offset - 1,
        data_offset + 100,
        bytes.len() - 1,
    ] {
        let err = expect_err(&format!("first {cut} bytes"), &bytes[..cut])?;
        ensure!(err.contains("not a valid GGUF"), "{err}");
    }
    Ok(())
}

/// A tiny two-layer Llama in f32, with a tokenizer, as GGUF bytes.
fn tiny_llama(arch: &str) -> Vec<u8> {
    let (dim, ffn, vocab) = (8usize, 16usize, 4usize);
    let mut w = GgufWriter::new();
    w.kv("general.architecture", arch.into())
        .kv("llama.block_count", GgufValue::U32(2))
        .kv("llama.context_length", GgufValue::U32(32))
        .kv("llama.embedding_length", GgufValue::U32(dim as u32))
        .kv("llama.feed_forward_length", GgufValue::U32(ffn as u32))
        .kv("llama.attention.head_count", GgufValue::U32(2))
        .kv("llama.attention.head_count_kv", GgufValue::U32(2))
        .kv(
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-6),
        )
        .kv("tokenizer.ggml.model", "gpt2".into())
        .kv(
            "tokenizer.ggml.tokens",
            vec!["a".to_string(), "b".into(), "c".into(), "d".into()].into(),
        )
        .kv("tokenizer.ggml.merges", vec!["a b".to_string()].into());
    let mut add = |name: String, shape: &[usize]| {
        let n = shape.iter().product();
        w.tensor_f32(name, shape, &lamina_tests::rand_vec(n, 1, 1.0));
    };
    add("token_embd.weight".into(), &[vocab, dim]);
    for l in 0..2 {
        for (n, s) in [
            ("attn_norm", vec![dim]),
            ("attn_q", vec![dim, dim]),
            ("attn_k", vec![dim, dim]),
            ("attn_v", vec![dim, dim]),
            ("attn_output", vec![dim, dim]),
            ("ffn_norm", vec![dim]),
            ("ffn_gate", vec![ffn, dim]),
            ("ffn_up", vec![ffn, dim]),
            ("ffn_down", vec![dim, ffn]),
        ] {
            add(format!("blk.{l}.{n}.weight"), &s);
        }
    }
    add("output_norm.weight".into(), &[dim]);
    w.to_bytes()
}

/// Parses `bytes` and loads a model from them; both must not panic, and
/// one of them must fail. Returns the message.
fn expect_err(what: &str, bytes: &[u8]) -> Result<String> {
    let err = match GgufFile::from_bytes(what, bytes) {
        Err(e) => e,
        Ok(g) => match loader::load_gguf(&g) {
            Err(e) => e,
            Ok(_) => bail!("{what}: loaded without error"),
        },
    };
    let msg = err.to_string();
    ensure!(!msg.is_empty(), "{what}: empty message");
    println!("{what}: {msg}");
    Ok(msg)
}

fn patched(bytes: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at..at + with.len()].copy_from_slice(with);
    v
}

#[test]
fn tiny_synthetic_model_loads() -> Result<()> {
    let g = GgufFile::from_bytes("tiny", &tiny_llama("llama"))?;
    let m = loader::load_gguf(&g)?;
    ensure!(m.config.n_layers == 2 && m.config.vocab_size == 4 && m.config.tied_embeddings);
    ensure!(m.config.rope_theta == 10000.0, "default theta");
    Ok(())
}

#[test]
fn corrupt_files_are_errors() -> Result<()> {
    let good = tiny_llama("llama");
    ensure!(expect_err("empty", &[])?.contains("shorter"));
    ensure!(expect_err("bad magic", &patched(&good, 0, b"GGML"))?.contains("magic"));
    ensure!(expect_err("version 7", &patched(&good, 4, &7u32.to_le_bytes()))?.contains("version"));
    ensure!(expect_err("truncated header", &good[..20])?.contains("shorter"));
    ensure!(expect_err("truncated metadata", &good[..300])?.contains("truncated"));
    let last_info = find(&good, b"output_norm.weight").context("last tensor info")?;
    ensure!(expect_err("truncated tensor table", &good[..last_info + 5])?.contains("truncated"));
    ensure!(expect_err("data past EOF", &good[..good.len() - 1])?.contains("past the end"));
    ensure!(
        expect_err(
            "absurd tensor count",
            &patched(&good, 8, &(u64::MAX / 2).to_le_bytes())
        )?
        .contains("cannot fit")
    );
    ensure!(
        expect_err(
            "absurd kv count",
            &patched(&good, 16, &(1u64 << 61).to_le_bytes())
        )?
        .contains("cannot fit")
    );
    // The first key's length field, then the first tensor's offset field.
    ensure!(
        expect_err(
            "absurd key length",
            &patched(&good, 24, &u64::MAX.to_le_bytes())
        )?
        .contains("remain")
    );
    let arch_err = expect_err("wrong architecture", &tiny_llama("gpt2"))?;
    ensure!(arch_err.contains("architecture `gpt2`"), "{arch_err}");

    // An array whose count claims more items than the file holds.
    let mut w = GgufWriter::new();
    w.kv("general.architecture", "llama".into())
        .kv("tokenizer.ggml.tokens", vec!["x".to_string(); 3].into());
    let bytes = w.to_bytes();
    let count_at = find(&bytes, b"tokenizer.ggml.tokens").context("key")? + 21 + 4 + 4;
    ensure!(
        expect_err(
            "absurd array count",
            &patched(&bytes, count_at, &(1u64 << 50).to_le_bytes())
        )?
        .contains("remain")
    );
    // A tensor whose offset points far past the end.
    let mut w = GgufWriter::new();
    w.kv("general.architecture", "llama".into())
        .tensor_f32("t", &[4], &[1.0; 4]);
    let bytes = w.to_bytes();
    let off_at = find(&bytes, b"t\x01\x00\x00\x00").context("tensor")? + 1 + 4 + 8 + 4;
    ensure!(
        expect_err(
            "tensor offset",
            &patched(&bytes, off_at, &(1u64 << 40).to_le_bytes())
        )?
        .contains("past the end")
    );

    // Real files on disk go through the same checks.
    let dir = std::env::temp_dir().join(format!("lamina-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"")?;
    let msg = loader::load(&empty)
        .err()
        .context("empty file loaded")?
        .to_string();
    ensure!(
        msg.contains("empty.gguf") && msg.contains("shorter"),
        "{msg}"
    );
    let missing = loader::load(&dir.join("missing.gguf"))
        .err()
        .context("missing file loaded")?
        .to_string();
    ensure!(missing.contains("missing.gguf"), "{missing}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Random byte flips anywhere in the header, metadata and tensor table must
/// never panic (they may happen to still parse).
#[test]
fn random_corruption_never_panics() -> Result<()> {
    use rand::{Rng, SeedableRng};
    let good = tiny_llama("llama");
    let data_offset = GgufFile::from_bytes("tiny", &good)?.data_offset();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut errors = 0;
    for _ in 0..3000 {
        let mut v = good.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..data_offset);
            v[at] = rng.random();
        }
        let cut = if rng.random_bool(0.2) {
            rng.random_range(0..v.len())
        } else {
            v.len()
        };
        if let Ok(g) = GgufFile::from_bytes("fuzz", &v[..cut]) {
            if loader::load_gguf(&g).is_err() {
                errors += 1;
            }
        } else {
            errors += 1;
        }
    }
    println!("{errors} of 3000 corrupted files rejected");
    ensure!(errors > 1000);
    Ok(())
}

/// golden/ holds an HF tokenizer.json + tokenizer_config.json for the same model.
#[test]
fn hf_tokenizer_spec_from_golden_files() -> Result<()> {
    let dir = lamina_tests::shared_dir().join("golden");
    let golden = golden_config()?;
    let s = lamina_model::hf::tokenizer_from_hf(&dir, &golden)?;
    ensure!(s.model == "hf-json" && s.hf_json.is_some());
    ensure!(
        s.tokens.len() == 49152 && s.merges.len() == 48900,
        "{} tokens, {} merges",
        s.tokens.len(),
        s.merges.len()
    );
    ensure!(s.merges[0] == "\u{120} t", "first merge {:?}", s.merges[0]);
    ensure!((s.bos_id, s.eos_id, s.unk_id, s.pad_id) == (Some(1), Some(2), Some(0), Some(2)));
    ensure!(!s.add_bos && !s.add_eos);
    ensure!(s.chat_template.as_deref() == golden["chat_template"].as_str());
    Ok(())
}

/// A block's byte size is written down twice, for the host formats
/// (lamina_model::checkpoint::ggml, from llama.cpp's type table) and for
/// the GPU formats (lamina_engine::weight::ggml_row_bytes), since the engine
/// cannot see the model; the two must agree.
#[test]
fn host_and_gpu_block_sizes_agree() {
    use lamina_engine::WeightFormat;
    use lamina_model::checkpoint::HostDType;
    // Every GPU format but Mixed has the host type of the same name.
    for w in WeightFormat::ALL
        .into_iter()
        .filter(|&w| w != WeightFormat::Mixed)
    {
        let h: HostDType = w.name().parse().unwrap();
        let m = lamina_engine::weight::col_multiple(w);
        for cols in [32u32, 96, 4096].map(|c| c.next_multiple_of(m)) {
            let host = h.byte_len(cols as usize);
            let gpu = lamina_engine::weight::ggml_row_bytes(w, cols);
            assert_eq!(host, Some(gpu), "{h} / {w:?}: a row of {cols}");
        }
    }
}

/// The tensor table names every tensor of a real checkpoint: walking it
/// reaches exactly the file's tensors (the model has no others), under the
/// table's roles and shapes.
#[test]
fn tensor_table_covers_the_real_model() -> Result<()> {
    use lamina_model::checkpoint::Role;
    let Some(path) = lamina_tests::model_path() else {
        return Ok(());
    };
    let g = GgufFile::open(&path)?;
    let m = loader::load_gguf(&g)?;
    let mut from_table: Vec<String> = m
        .weights
        .tensors()
        .into_iter()
        .map(|(role, t)| {
            assert_eq!(t.name, role.gguf_name());
            assert_eq!(t.shape, role.shape(&m.config), "{}", t.name);
            t.name.clone()
        })
        .collect();
    let mut in_file: Vec<String> = g.tensors().iter().map(|t| t.name.clone()).collect();
    from_table.sort();
    in_file.sort();
    ensure!(
        from_table == in_file,
        "table {from_table:?}\nfile {in_file:?}"
    );
    ensure!(matches!(m.weights.tensors()[0].0, Role::Model(_)));
    Ok(())
}
