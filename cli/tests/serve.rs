//! `lamina serve` end to end: the binary on a free port, driven with raw
//! HTTP (every bad input gets its status and an OpenAI-style error body;
//! a client that leaves mid-stream frees its slot; a full queue answers
//! 503; SIGTERM ends the server cleanly) and with the official `openai`
//! Python client (cli/tests/serve_openai.py, in the virtual environment
//! scripts/py-openai.sh makes).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

fn default_model() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("LAMINA_MODEL") {
        return Some(p.into());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["fetch", "--print-path"])
        .output()
        .expect("run lamina fetch");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

/// A running `lamina serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts the server on a free port with the default model, a context
    /// of 512 and `extra` flags; waits until it listens.
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lamina"))
            .args(["serve", "--port", "0", "-c", "512", "--alias", MODEL, "-m"])
            .arg(model)
            .args(extra)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lamina serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                assert!(!line.contains("panicked"), "the server panicked: {line}");
                if let Some(rest) = line.strip_prefix("listening on http://") {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(600))
            .expect("the server did not start listening");
        Server { child, addr }
    }

    fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "the server exited with {status} on SIGTERM"
                );
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the server did not exit within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange on a fresh connection: (status, body text).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn post_json(addr: &str, path: &str, body: &str) -> (u16, String) {
    http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

/// Asserts `status` and an OpenAI-style error body whose message
/// mentions `needle` (and whose code is `code`, when given).
fn error_is(got: &(u16, String), status: u16, needle: &str, code: Option<&str>) {
    let (s, body) = got;
    assert_eq!(*s, status, "status for: {body}");
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "error message should mention `{needle}`: {body}"
    );
    assert!(v["error"]["type"].is_string(), "error type: {body}");
    if let Some(c) = code {
        assert_eq!(v["error"]["code"], c, "error code: {body}");
    }
}

fn health(addr: &str) -> serde_json::Value {
    let (s, body) = http(addr, "GET", "/health", &[], "");
    assert_eq!(s, 200, "{body}");
    serde_json::from_str(&body).expect("health JSON")
}

fn chat_body(extra: &str) -> String {
    format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"Hi!"}}]{extra}}}"#)
}

#[test]
fn serve_end_to_end() {
    let Some(model) = default_model() else {
        eprintln!("skipped: the default model is not in the cache (lamina fetch)");
        return;
    };
    let srv = Server::start(&model, &[]);
    let a = srv.addr.clone();
    assert_eq!(health(&a)["status"], "ok");

    // Bad input: each its status and an error body; the server goes on.
    let chat = "/v1/chat/completions";
    error_is(
        &post_json(&a, chat, "{not json"),
        400,
        "parse the JSON",
        None,
    );
    error_is(
        &http(
            &a,
            "POST",
            chat,
            &[("Content-Type", "text/plain")],
            &chat_body(""),
        ),
        415,
        "application/json",
        None,
    );
    error_is(
        &post_json(
            &a,
            chat,
            r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
        ),
        404,
        "does not exist",
        Some("model_not_found"),
    );
    error_is(
        &post_json(&a, chat, &format!(r#"{{"model":"{MODEL}"}}"#)),
        400,
        "messages",
        None,
    );
    let long = "word ".repeat(700);
    error_is(
        &post_json(
            &a,
            chat,
            &format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{long}"}}]}}"#),
        ),
        400,
        "maximum context length",
        Some("context_length_exceeded"),
    );
    error_is(
        &post_json(&a, chat, &chat_body(r#","max_tokens":0"#)),
        400,
        "max_tokens",
        None,
    );
    error_is(
        &post_json(&a, chat, &chat_body(r#","max_tokens":99999999999"#)),
        400,
        "maximum context length",
        Some("context_length_exceeded"),
    );
    error_is(
        &post_json(
            &a,
            chat,
            &format!(r#"{{"model":"{MODEL}","messages":[{{"role":"wizard","content":"x"}}]}}"#),
        ),
        400,
        "wizard",
        None,
    );
    error_is(
        &post_json(&a, chat, &chat_body(r#","temperature":"hot""#)),
        400,
        "parse",
        None,
    );
    for (field, body) in [
        ("temperature", r#","temperature":2.5"#),
        ("top_p", r#","top_p":0"#),
        ("repeat_penalty", r#","repeat_penalty":0"#),
    ] {
        error_is(&post_json(&a, chat, &chat_body(body)), 400, field, None);
    }
    error_is(
        &post_json(&a, "/v1/completions", &format!(r#"{{"model":"{MODEL}"}}"#)),
        400,
        "prompt",
        None,
    );
    error_is(
        &http(&a, "GET", "/v1/nothing", &[], ""),
        404,
        "no route",
        None,
    );

    // A whole answer, greedy.
    let (s, body) = post_json(&a, chat, &chat_body(r#","max_tokens":8,"temperature":0"#));
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().map(|n| n <= 8),
        Some(true),
        "{body}"
    );
    // The same prompt again: its slot holds all of it but the last token.
    let (s, body) = post_json(&a, chat, &chat_body(r#","max_tokens":8,"temperature":0"#));
    assert_eq!(s, 200, "{body}");
    let w: serde_json::Value = serde_json::from_str(&body).unwrap();
    let prompt = w["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        w["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(prompt - 1),
        "prefix reuse: {body}"
    );

    // A client that leaves mid-stream frees its slot within a step or so.
    {
        let mut s = TcpStream::connect(&a).unwrap();
        let body = format!(
            r#"{{"model":"{MODEL}","prompt":"1, 2, 3, 4, 5,","max_tokens":400,"temperature":0,"stream":true}}"#
        );
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while !line.starts_with("data: {") {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        }
        assert!(
            health(&a)["slots_busy"].as_u64() >= Some(1),
            "the stream's slot is busy"
        );
    }
    let t0 = Instant::now();
    while health(&a)["slots_busy"] != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the slot of a client that left is still busy after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The official client: chat and completions, whole and streamed, stop
    // strings, 8 concurrent streams, errors.
    let py = std::env::var("LAMINA_TEST_PYTHON").unwrap_or_else(|_| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new("bash")
            .arg(root.join("scripts/py-openai.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/py-openai.sh");
        assert!(out.status.success(), "scripts/py-openai.sh failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_openai.py");
    let status = Command::new(&py)
        .arg(script)
        .args([&srv.base(), MODEL])
        .status()
        .expect("run the openai client test");
    assert!(status.success(), "serve_openai.py failed");
    assert_eq!(health(&a)["slots_busy"], 0);

    srv.terminate();
}

#[test]
fn serve_api_key_and_full_queue() {
    let Some(model) = default_model() else {
        eprintln!("skipped: the default model is not in the cache (lamina fetch)");
        return;
    };
    let srv = Server::start(
        &model,
        &["--api-key", "sesame", "--parallel", "1", "--queue", "1"],
    );
    let a = srv.addr.clone();
    assert_eq!(health(&a)["slots"], 1, "/health needs no key");
    error_is(
        &http(&a, "GET", "/v1/models", &[], ""),
        401,
        "api key",
        Some("invalid_api_key"),
    );
    error_is(
        &http(
            &a,
            "GET",
            "/v1/models",
            &[("Authorization", "Bearer wrong")],
            "",
        ),
        401,
        "api key",
        Some("invalid_api_key"),
    );
    let auth = [
        ("Authorization", "Bearer sesame"),
        ("Content-Type", "application/json"),
    ];
    let (s, body) = http(&a, "GET", "/v1/models", &auth, "");
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(MODEL), "{body}");
    // The scheme's case does not matter.
    let lower = [("Authorization", "bearer sesame")];
    assert_eq!(http(&a, "GET", "/v1/models", &lower, "").0, 200);

    // One slot, one place in the queue: of four at once, some get 503.
    let body = chat_body(r#","max_tokens":48,"temperature":0"#);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (a, body) = (a.clone(), body.clone());
            std::thread::spawn(move || {
                http(
                    &a,
                    "POST",
                    "/v1/chat/completions",
                    &[
                        ("Authorization", "Bearer sesame"),
                        ("Content-Type", "application/json"),
                    ],
                    &body,
                )
            })
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(results.iter().any(|r| r.0 == 200), "{results:?}");
    assert!(
        !busy.is_empty(),
        "no 503 with one slot and a queue of one: {results:?}"
    );
    for r in busy {
        error_is(r, 503, "busy", Some("server_busy"));
    }
    assert!(
        results.iter().all(|r| r.0 == 200 || r.0 == 503),
        "{results:?}"
    );
    srv.terminate();
}

#[test]
fn serve_pivot_prompt_is_the_system_prompt() {
    let Some(model) = default_model() else {
        eprintln!("skipped: the default model is not in the cache (lamina fetch)");
        return;
    };
    let system = "You are a terse assistant.";
    let srv = Server::start(&model, &["--parallel", "2", "--pivot-prompt", system]);
    let a = srv.addr.clone();
    let ask = |a: &str, sys: Option<&str>| {
        let sys = sys.map_or(String::new(), |s| {
            format!(r#"{{"role":"system","content":"{s}"}},"#)
        });
        let body = format!(
            r#"{{"model":"{MODEL}","max_tokens":4,"temperature":0,"messages":[{sys}{{"role":"user","content":"Hi"}}]}}"#
        );
        post_json(a, "/v1/chat/completions", &body)
    };
    // Without a system message the pivot's is used, its tokens in every
    // slot's cache from the start (two requests at once: both slots).
    let both: Vec<_> = (0..2)
        .map(|_| {
            let a = a.clone();
            std::thread::spawn(move || ask(&a, None))
        })
        .collect();
    for h in both {
        let (s, body) = h.join().unwrap();
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
        assert!(
            cached.is_some_and(|c| c >= 5),
            "the pivot's tokens are cached: {body}"
        );
    }
    let (s, body) = ask(&a, Some(system));
    assert_eq!(s, 200, "the pivot's own system message: {body}");
    error_is(
        &ask(&a, Some("Be verbose.")),
        400,
        "system prompt is fixed",
        None,
    );
    srv.terminate();
}

/// With `--queue 0` as many requests as slots run at once (the queue is
/// what waits beyond them); a seed gives the same answer whether the slot
/// held the prompt already or fed it in several chunks; bad stop strings
/// and prompts name their own fields.
#[test]
fn serve_slots_without_queue_and_seeds() {
    let Some(model) = default_model() else {
        eprintln!("skipped: the default model is not in the cache (lamina fetch)");
        return;
    };
    let srv = Server::start(&model, &["--parallel", "2", "--queue", "0", "-b", "4"]);
    let a = srv.addr.clone();
    let completions = "/v1/completions";
    let body = |extra: &str| {
        format!(
            r#"{{"model":"{MODEL}","prompt":"The quick brown fox jumps over the lazy dog, and then"{extra}}}"#
        )
    };
    let both: Vec<_> = (0..2)
        .map(|_| {
            let (a, b) = (a.clone(), body(r#","max_tokens":24,"temperature":0"#));
            std::thread::spawn(move || post_json(&a, completions, &b))
        })
        .collect();
    for h in both {
        let (s, text) = h.join().unwrap();
        assert_eq!(s, 200, "two slots, two requests at once: {text}");
    }
    // Fed in 4-token chunks the first time, one token the second (the
    // slot holds the rest); the same seed must sample the same tokens.
    let seeded = format!(
        r#"{{"model":"{MODEL}","prompt":"Once upon a time, in a small village by the sea,","max_tokens":12,"temperature":1.0,"top_k":0,"seed":7}}"#
    );
    let mut texts = Vec::new();
    for _ in 0..2 {
        let (s, text) = post_json(&a, completions, &seeded);
        assert_eq!(s, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        texts.push(
            v["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let cached = &v["usage"]["prompt_tokens_details"]["cached_tokens"];
        eprintln!("seed 7: {:?} (cached tokens {cached})", texts.last());
    }
    assert_eq!(texts[0], texts[1], "seed 7 answered differently");
    error_is(
        &post_json(
            &a,
            completions,
            &body(&format!(r#","stop":"{}""#, "x".repeat(2000))),
        ),
        400,
        "stop string",
        None,
    );
    let long = "word ".repeat(700);
    let (s, text) = post_json(
        &a,
        completions,
        &format!(r#"{{"model":"{MODEL}","prompt":"{long}"}}"#),
    );
    error_is(
        &(s, text.clone()),
        400,
        "maximum context length",
        Some("context_length_exceeded"),
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["param"], "prompt", "{text}");
    srv.terminate();
}
