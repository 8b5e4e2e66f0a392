//! Bad input to the `lamina` binary: a clear message and a non-zero exit,
//! never a panic.

use std::path::PathBuf;
use std::process::{Command, Output};

use lamina_model::gguf::GgufValue;
use lamina_model::gguf::writer::GgufWriter;

fn lamina(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run lamina")
}

/// Asserts a clean failure whose stderr mentions `needle`.
fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "stderr should mention `{needle}`: {err}"
    );
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lamina-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn default_model() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("LAMINA_MODEL") {
        return Some(p.into());
    }
    let out = lamina(&["fetch", "--print-path"]);
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

#[test]
fn missing_model_file() {
    let out = lamina(&["generate", "-m", "/nonexistent/model.gguf", "-p", "hi"]);
    fails_with(&out, "/nonexistent/model.gguf");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the reason once: {err}"
    );
}

/// A reader that goes away (`lamina inspect | head`) ends the run quietly.
#[test]
fn closed_stdout_is_not_a_panic() {
    use std::process::Stdio;
    let Some(model) = fetched_model() else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["inspect", "--tensors", "--metadata", "-m"])
        .arg(&model)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lamina");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}

/// A chat longer than its context drops its oldest exchanges and goes on;
/// a message that cannot fit at all is refused without ending the session.
#[test]
fn chat_outgrows_its_context() {
    use std::io::Write as _;
    use std::process::Stdio;
    let Some(model) = fetched_model() else {
        return;
    };
    let long = "tell me more ".repeat(40);
    let input = format!(
        "Hi, I am Bob.\nWhat is the capital of France?\n{long}\nAnd of Spain?\nAnd of Italy?\n\
         And of Germany?\nAnd of Peru?\n"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["chat", "-v", "-c", "96", "-n", "12", "--temp", "0", "-m"])
        .arg(&model)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lamina chat");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("dropped the"), "no exchange dropped: {err}");
    assert!(err.contains("does not fit"), "the long message: {err}");
    // Six answers (one log line each at -v): the long message got none.
    let answers = err.lines().filter(|l| l.contains(" tokens in ")).count();
    assert_eq!(answers, 6, "{err}");
}

/// `-n 0` processes the prompt and generates nothing.
#[test]
fn generate_zero_tokens() {
    let Some(model) = fetched_model() else {
        return;
    };
    let m = model.to_str().expect("utf8");
    let out = lamina(&["generate", "-m", m, "-p", "Hello", "-n", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "{err}");
    assert!(err.contains("generated: 0 tokens"), "{err}");
}

#[test]
fn truncated_gguf() {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", GgufValue::String("llama".into()));
    w.tensor_f32("output_norm.weight", &[64], &[1.0; 64]);
    let bytes = w.to_bytes();
    let p = temp("truncated.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    let out = lamina(&["generate", "-m", p.to_str().expect("utf8"), "-p", "hi"]);
    fails_with(&out, "GGUF");
    let out = lamina(&["inspect", "-m", p.to_str().expect("utf8")]);
    fails_with(&out, "GGUF");
}

#[test]
fn not_a_gguf() {
    let p = temp("garbage.gguf");
    std::fs::write(&p, b"this is not a model file at all").expect("write");
    fails_with(
        &lamina(&["generate", "-m", p.to_str().expect("utf8"), "-p", "hi"]),
        "GGUF",
    );
}

#[test]
fn wrong_architecture() {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", GgufValue::String("gpt2".into()));
    w.tensor_f32("output_norm.weight", &[64], &[1.0; 64]);
    let p = temp("gpt2.gguf");
    w.write(&p).expect("write");
    fails_with(
        &lamina(&["generate", "-m", p.to_str().expect("utf8"), "-p", "hi"]),
        "gpt2",
    );
}

/// The default model, or None (a test then skips) where it is not fetched;
/// CI must have fetched it.
fn fetched_model() -> Option<PathBuf> {
    let m = default_model();
    if m.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fetch the model first"
        );
        eprintln!("default model not fetched; skipping");
    }
    m
}

#[test]
fn empty_prompt() {
    fails_with(&lamina(&["generate", "-p", ""]), "empty prompt");
}

#[test]
fn bench_batched_sequences() {
    // The tg test with several sequences decoded in one step per token,
    // each fork's cache first filled to depth 5 in a prompt step (rows of
    // 64 k/v values, so that each sequence's rows start at lavapipe's
    // 256-byte binding alignment).
    let out = lamina(&[
        "bench",
        "--synthetic",
        "L2-d128-h4-kv2-f256-v256",
        "-p",
        "0",
        "-n",
        "4",
        "-r",
        "1",
        "--seqs",
        "3",
        "-d",
        "5",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["seqs"], 3, "{j}");
    assert_eq!(j["tests"][0]["test"], "tg4 @ d5 x3", "{j}");
    assert_eq!(j["depth"], 5, "{j}");
    assert!(j["tests"][0]["avg_ts"].as_f64().unwrap() > 0.0, "{j}");
    fails_with(
        &lamina(&["bench", "--synthetic", "tiny", "--seqs", "0"]),
        "--seqs",
    );
}

#[test]
fn invalid_flags() {
    fails_with(&lamina(&["generate", "-p", "hi", "--temp", "-1"]), "--temp");
    fails_with(
        &lamina(&["generate", "-p", "hi", "--top-p", "0"]),
        "--top-p",
    );
    fails_with(
        &lamina(&["generate", "-p", "hi", "--repeat-penalty", "0"]),
        "--repeat-penalty",
    );
    fails_with(&lamina(&["generate", "--no-such-flag"]), "no-such-flag");
    fails_with(
        &lamina(&["bench", "-r", "0", "--synthetic", "tiny"]),
        "repetitions",
    );
    fails_with(
        &lamina(&["bench", "-b", "0", "--synthetic", "tiny"]),
        "batch-size",
    );
    fails_with(&lamina(&["generate", "-p", "hi", "-n", "-2"]), "n-predict");
    // Positions past u32 (and, in a browser, caches past usize) are refused
    // before any size product can wrap.
    fails_with(
        &lamina(&[
            "bench",
            "--synthetic",
            "tiny",
            "-c",
            "5000000000",
            "-n",
            "0",
        ]),
        "too large",
    );
    fails_with(
        &lamina(&["generate", "-p", "hi", "--weights", "f8"]),
        "weight mode",
    );
    fails_with(
        &lamina(&["generate", "-p", "hi", "--pivot-source", "half"]),
        "--pivot-source",
    );
    fails_with(
        &lamina(&["bench", "--synthetic", "tiny", "--kv-exact-prompt"]),
        "--kv-exact-prompt needs a quantized cache",
    );
    // Values outside a flag's choices: clap names the flag and lists them.
    for (args, choices) in [
        (
            &["generate", "-p", "hi", "--kv-keys", "foo"][..],
            "channel, token",
        ),
        (
            &["generate", "-p", "hi", "--pivot", "xx"],
            "none, bos, auto",
        ),
        (
            &["generate", "-p", "hi", "--weights", "q3"],
            "native, f16, f32",
        ),
        (
            &["generate", "-p", "hi", "--kv", "k=q4"],
            "name both k= and v=",
        ),
        (
            &["bench", "--synthetic", "tiny", "--synthetic-format", "q3"],
            "q4_0, q4_1, q8_0, q5_0, q5_1, iq4_nl, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_xs, f16, f32",
        ),
        (&["bench", "-o", "xml"], "md, json"),
        (
            &["quantize", "-o", "x", "--embed", "f32"],
            "q8_0, q4_1, q4_0, f16",
        ),
        (
            &["quantize", "-o", "x", "--method", "awq"],
            "rtn, gptq, slim",
        ),
    ] {
        let out = lamina(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: clap's usage error");
        fails_with(&out, args[args.len() - 2]);
        fails_with(&out, choices);
    }
}

#[test]
fn prompt_longer_than_context() {
    let Some(model) = fetched_model() else {
        return;
    };
    let prompt = "word ".repeat(100);
    let out = lamina(&[
        "generate",
        "-m",
        model.to_str().expect("utf8"),
        "-c",
        "32",
        "-p",
        &prompt,
    ]);
    fails_with(&out, "context");
}

#[test]
fn perplexity_missing_text_file() {
    fails_with(
        &lamina(&["perplexity", "-f", "/nonexistent/wiki.txt"]),
        "/nonexistent/wiki.txt",
    );
}

#[test]
fn perplexity_keeps_existing_saved_logits() {
    let text = temp("ppl.txt");
    std::fs::write(&text, b"some text").expect("write");
    let logits = temp("base.logits");
    std::fs::write(&logits, b"keep me").expect("write");
    let (t, l) = (text.to_str().unwrap(), logits.to_str().unwrap());
    fails_with(
        &lamina(&["perplexity", "-f", t, "--save-logits", l]),
        "exists",
    );
    assert_eq!(std::fs::read(&logits).expect("read"), b"keep me");
    // A --json or --save-logits path in a missing folder: refused first,
    // not after the whole run.
    for flag in ["--json", "--save-logits"] {
        fails_with(
            &lamina(&["perplexity", "-f", t, flag, "/nonexistent/dir/x"]),
            "does not exist",
        );
    }
}

#[test]
fn quantize_bad_input_keeps_existing_output() {
    // An existing output is kept unless --force.
    let out_path = temp("existing.lamina.safetensors");
    std::fs::write(&out_path, b"keep me").expect("write");
    let o = out_path.to_str().expect("utf-8 path");
    fails_with(
        &lamina(&["quantize", "--method", "rtn", "-o", o]),
        "--force",
    );
    assert_eq!(std::fs::read(&out_path).expect("read"), b"keep me");
    // Widths, group sizes and methods outside what the format holds.
    let fresh = temp("fresh.lamina.safetensors");
    let f = fresh.to_str().expect("utf-8 path");
    fails_with(&lamina(&["quantize", "--bits", "9", "-o", f]), "--bits");
    fails_with(&lamina(&["quantize", "--bits", "0.5", "-o", f]), "--bits");
    fails_with(&lamina(&["quantize", "--group", "48", "-o", f]), "--group");
    fails_with(&lamina(&["quantize", "--method", "awq", "-o", f]), "awq");
    // An output folder that does not exist is refused before any work.
    fails_with(
        &lamina(&[
            "quantize",
            "--method",
            "rtn",
            "-o",
            "/nonexistent/x.lamina.safetensors",
        ]),
        "does not exist",
    );
    // The test text is never calibration text.
    let test_text = temp("wiki.test.raw");
    std::fs::write(&test_text, b"some text").expect("write");
    let t = test_text.to_str().expect("utf-8 path");
    fails_with(&lamina(&["quantize", "--calib", t, "-o", f]), "test text");
    fails_with(
        &lamina(&[
            "quantize",
            "--calibrate-pivot",
            "--pivot-steps",
            "0",
            "-o",
            f,
        ]),
        "--pivot-steps 0",
    );
    assert!(!fresh.exists());
}

#[test]
fn pivot_only_needs_a_quantized_file() {
    let Some(model) = fetched_model() else {
        return;
    };
    let out = temp("pivot-only.lamina.safetensors");
    let (m, o) = (model.to_str().expect("utf8"), out.to_str().expect("utf8"));
    // A GGUF has no recipe naming a full-precision source.
    fails_with(
        &lamina(&["quantize", "-m", m, "--pivot-only", "-o", o]),
        "--pivot-only needs a .lamina.safetensors file",
    );
    assert!(!out.exists());
}

/// A small `.lamina.safetensors` file (synthetic weights) whose recipe
/// carries a two-token PrefixQuant prefix and no activation scales.
fn prefixed_file() -> PathBuf {
    use lamina_model::checkpoint::{HostDType, PrefixRecord};
    let mut m = lamina_model::synthetic::synthetic_model("tiny", HostDType::F32, 1).expect("model");
    m.pivot = Some(lamina_model::pivot::compute(&m.config, &m.weights, &[1, 2]).expect("pivot"));
    m.recipe = Some(lamina_model::checkpoint::Recipe {
        prefix: Some(PrefixRecord {
            tokens: vec![1, 2],
            ..Default::default()
        }),
        ..Default::default()
    });
    let path = temp("prefixed.lamina.safetensors");
    lamina_model::lamina_file::write(&path, &m).expect("write");
    path
}

/// A model with PrefixQuant's static KV4 scales runs its static cache by
/// default (every position past the prefix quantized), any other cache when
/// asked, and lists its scales; the dynamic cache's flags that do not apply
/// are refused.
#[test]
fn static_kv_cache_runs_by_default() {
    use lamina_model::checkpoint::{HostDType, KvStatic};
    let path = temp("static-kv.lamina.safetensors");
    let mut m = lamina_model::synthetic::synthetic_model("tiny", HostDType::F32, 1).expect("model");
    let (nl, nkv) = (m.config.n_layers, m.config.n_kv_heads);
    let kv = KvStatic {
        bits: 4,
        k_channel: false,
        k: vec![vec![0.05; nkv]; nl],
        k_min: Vec::new(),
        v: vec![vec![0.02; nkv]; nl],
        k_clip: vec![vec![0.9; nkv]; nl],
        v_clip: vec![vec![1.0; nkv]; nl],
    };
    m.recipe = Some(lamina_model::checkpoint::Recipe {
        kv: Some(kv),
        ..Default::default()
    });
    lamina_model::lamina_file::write(&path, &m).expect("write");
    let p = path.to_str().expect("utf8");
    for kv in [None, Some("f16"), Some("q4")] {
        let mut args = vec!["bench", "-m", p, "-p", "8", "-n", "4", "-r", "1", "-v"];
        if let Some(k) = kv {
            // (The tiny model's head_dim is 16: the dynamic q4 cache's
            // groups must divide it; the static cache has none.)
            args.extend(["--kv", k, "--kv-group", "16"]);
        }
        let out = lamina(&args);
        assert!(
            out.status.success(),
            "{kv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!("x {} =", kv.unwrap_or("q4, static scales"));
        assert!(err.contains(&want), "{kv:?}: {err}");
    }
    fails_with(
        &lamina(&[
            "bench",
            "-m",
            p,
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "1",
            "--kv-exact-prompt",
        ]),
        "--kv-exact-prompt",
    );
    let out = lamina(&["inspect", "-m", p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("KV cache: 4-bit, static per-head scales"),
        "{text}"
    );
    assert!(text.contains("  static "), "{text}");
    assert!(text.contains("K 5.000e-2"), "{text}");
}

#[test]
fn prefixquant_bad_input() {
    let f = prefixed_file();
    let m = f.to_str().expect("utf8");
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", "-m", m, "-p", "1", "-n", "1", "-r", "1"];
        args.extend_from_slice(extra);
        lamina(&args)
    };
    // The prefix is part of the model: a context it fills is an error.
    fails_with(&bench(&["-c", "2"]), "leaves no room");
    // Integer activations and a static cache need a model quantized with them.
    fails_with(&bench(&["--act-bits", "8"]), "no activation quantization");
    fails_with(&bench(&["--act-dynamic"]), "no activation quantization");
    fails_with(&bench(&["--kv", "static"]), "no static KV scales");
    if let Some(gguf) = fetched_model() {
        let g = gguf.to_str().expect("utf8");
        let out = lamina(&["generate", "-m", g, "--kv", "static", "-p", "hi", "-n", "1"]);
        fails_with(&out, "no static KV scales");
        let out = lamina(&[
            "generate",
            "-m",
            g,
            "--act-bits",
            "8",
            "-p",
            "hi",
            "-n",
            "1",
        ]);
        fails_with(&out, "no activation quantization");
    }
    // Widths the kernels do not take, at quantize time: nothing written.
    let out = temp("w4a3.lamina.safetensors");
    let o = out.to_str().expect("utf8");
    fails_with(
        &lamina(&["quantize", "--act-bits", "3", "-o", o]),
        "--act-bits 3",
    );
    fails_with(
        &lamina(&["quantize", "--kv-bits", "5", "-o", o]),
        "--kv-bits 5",
    );
    fails_with(
        &lamina(&["quantize", "--kv-keys", "channel", "-o", o]),
        "--kv-bits",
    );
    fails_with(
        &lamina(&["quantize", "--prefix", "lots", "-o", o]),
        "--prefix",
    );
    // Missing calibration text for the outlier search.
    fails_with(
        &lamina(&[
            "quantize",
            "--method",
            "rtn",
            "--prefix",
            "auto",
            "--calib",
            "/nonexistent/wiki.valid.tokens",
            "-o",
            o,
        ]),
        "/nonexistent/wiki.valid.tokens",
    );
    assert!(!out.exists());
}

/// ../shared/golden/archs/spm/NAME, or None (the test skips) outside CI.
fn spm_file(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/golden/archs/spm")
        .join(name);
    if !p.is_file() {
        assert!(std::env::var_os("CI").is_none(), "CI needs {}", p.display());
        return None;
    }
    Some(p)
}

#[test]
fn k_quant_gguf_generates_and_inspects() {
    let Some(p) = spm_file("spm-Q3_K_M.gguf") else {
        return;
    };
    let p = p.to_str().expect("utf8");
    let out = lamina(&["generate", "-m", p, "-p", "The", "-n", "4", "--temp", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lamina(&["inspect", "-m", p]);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "bits per weight (all tensors): 4.19",
    ] {
        assert!(text.contains(want), "inspect should list {want}: {text}");
    }
}

/// A tensor type Lamina cannot run names itself and the tensor.
#[test]
fn unsupported_tensor_type_names_itself() {
    use lamina_model::gguf::GgufFile;
    let Some(src) = spm_file("spm-IQ4_NL.gguf") else {
        return;
    };
    let g = GgufFile::open(&src).expect("open");
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.kv(k.clone(), v.clone());
    }
    for t in g.tensors() {
        let bytes = g.tensor_bytes(t).expect("bytes").to_vec();
        if t.name == "blk.1.ffn_up.weight" {
            // IQ2_XXS (ggml type 16): 66 bytes per 256 weights.
            let n = t.numel() as usize / 256 * 66;
            w.tensor(t.name.clone(), &t.shape(), 16, vec![0; n]);
        } else {
            w.tensor(t.name.clone(), &t.shape(), t.ggml_type, bytes);
        }
    }
    let p = temp("iq2_xxs.gguf");
    w.write(&p).expect("write");
    let out = lamina(&["generate", "-m", p.to_str().expect("utf8"), "-p", "hi"]);
    fails_with(&out, "IQ2_XXS");
    fails_with(&out, "blk.1.ffn_up.weight");
}
