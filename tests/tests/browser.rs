//! The browser build in headless Chromium (issue 17): the web bundle is
//! served from a thread of this test and driven over the DevTools protocol.
//!
//! - `greedy_tokens_match_native`: SmolLM2 loaded through the page's file
//!   input, "The capital of France is", 16 greedy tokens, chat template off:
//!   the page's token ids equal the native build's (computed here on the
//!   test GPU, lavapipe on CI); then 8 with the chat template on, against
//!   the native build's over the same template; and WebGPU reported no
//!   uncaptured errors.
//!   Prints the page's and the native build's t/s on lines starting
//!   `browser-figures:`.
//! - `shaders_compile`: `window.lamina.checkShaders()` finds no shader that
//!   this browser's WebGPU rejects.
//! - `truncated_model_is_an_error`: the model's first 8 MiB end in state
//!   "error" with a message.
//! - `model_too_big_for_the_gpu_is_an_error`: a KV cache past the
//!   device's largest buffer ends in state "error" saying the model does
//!   not fit.
//! - `no_webgpu_message`: in a browser without WebGPU the page says so.
//!
//! The page's side of the contract: the elements `#model` (file input,
//! loads on change), `#prompt`, `#n-predict`, `#temperature`, `#chat`,
//! `#generate`, `#output`, `#stats`, `#message`, and `window.lamina` with
//! `state` ("starting", "no-webgpu", "idle", "loading", "ready",
//! "generating", "done", "error"), `message`, `tokens`, `prefill_tps`,
//! `decode_tps`, `gpu_errors`, `adapter` and `checkShaders()`.
//!
//! Run: `scripts/web.sh --build`, then
//! `cargo test --workspace --test browser -- --ignored`
//! (scripts/test.sh does both). Needs:
//! - the bundle: $LAMINA_WEB_DIR, else $CARGO_TARGET_DIR/web, else
//!   `<workspace>/target/web` (index.html, main.js, pkg/);
//! - Chromium: $LAMINA_CHROMIUM, else `chromium` on PATH
//!   (scripts/ensure-chromium.sh installs it); WebGPU runs on its
//!   SwiftShader, so no GPU is needed;
//! - the default model (`lamina fetch`, or $LAMINA_MODEL) for the model tests.
//!
//! Add `--nocapture` to see the figures and the native tokens when the
//! tests pass; LAMINA_CHROMIUM_LOG=1 shows the browser's stderr. The tests
//! take turns, one browser at a time: SwiftShader is slow enough on two
//! cores without company. `server_serves_the_bundle_only` needs none of
//! this and runs with the rest of `cargo test`.

#[path = "browser/cdp.rs"]
mod cdp;
#[path = "browser/serve.rs"]
mod serve;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lamina_model::chat::{ChatMessage, ChatTemplate};
use lamina_model::checkpoint::LoadedModel;
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, WeightMode};
use lamina_model::session::{SamplerConfig, Session};
use lamina_model::tokenizer::Tokenizer;
use serde_json::Value;

use cdp::{Chromium, Page};
use serve::Server;

const PROMPT: &str = "The capital of France is";
const N_PREDICT: usize = 16;
/// Tokens of the run with the chat template (the page applies it).
const N_CHAT: usize = 8;
/// Context and prompt batch of the native run.
const CTX: usize = 512;

/// From opening the page to "idle" (the wasm compiled, the GPU opened).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Loading the model from its file to "ready".
const LOAD_TIMEOUT: Duration = Duration::from_secs(180);
/// 16 tokens on SwiftShader on two cores, shaders compiled on the way.
const GENERATE_TIMEOUT: Duration = Duration::from_secs(300);
const SHADERS_TIMEOUT: Duration = Duration::from_secs(300);
const ERROR_TIMEOUT: Duration = Duration::from_secs(60);

/// The web bundle's directory, checked for the files the page needs.
fn web_dir() -> Result<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("LAMINA_WEB_DIR") {
        PathBuf::from(d)
    } else {
        // A relative CARGO_TARGET_DIR is taken from the workspace root.
        let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(target)
            .join("web")
    };
    for f in ["index.html", "pkg/lamina_web_bg.wasm"] {
        if !dir.join(f).is_file() {
            bail!(
                "the web bundle has no {} (in {}): build it with `scripts/web.sh --build`, \
                 or set LAMINA_WEB_DIR",
                f,
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// The default model: $LAMINA_MODEL, else the cache's copy; `None` (the
/// test skips, as the other model tests do) when it was not fetched, except
/// in CI, where scripts/test.sh fetches it.
fn model_file() -> Result<Option<PathBuf>> {
    let Some(path) = lamina_tests::model_path() else {
        if std::env::var_os("CI").is_some() {
            bail!("CI must fetch the model first (scripts/test.sh)");
        }
        eprintln!("default model not fetched (run `lamina fetch`); skipping");
        return Ok(None);
    };
    if !path.is_file() {
        bail!("LAMINA_MODEL={} is not a file", path.display());
    }
    Ok(Some(path))
}

/// One browser at a time (held for a whole test).
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A browser with the bundle's page open in a tab. Field order: the tab's
/// connection closes before the browser is killed, then the server stops.
struct App {
    page: Page,
    browser: Chromium,
    _server: Server,
}

impl App {
    fn open(webgpu: bool) -> Result<App> {
        let dir = web_dir()?;
        let server = Server::start(&dir).with_context(|| format!("serving {}", dir.display()))?;
        let browser = Chromium::launch(webgpu)?;
        let page = browser.open(&server.url("index.html"))?;
        Ok(App {
            page,
            browser,
            _server: server,
        })
    }

    /// [`App::open`] with WebGPU, once the page is "idle" (its wasm
    /// compiled, the GPU open).
    fn started() -> Result<App> {
        let mut app = App::open(true)?;
        app.expect_state("idle", START_TIMEOUT)?;
        Ok(app)
    }

    /// Waits until `window.lamina.state` is `want`; fails at once on a
    /// state the page does not leave by itself ("error", "no-webgpu", or a
    /// success where an error is expected), with the page's message, and
    /// after `timeout` with the page's state and the browser's last stderr
    /// lines.
    fn expect_state(&mut self, want: &str, timeout: Duration) -> Result<()> {
        // States the page stays in. Not "idle" or "ready" in general: the
        // page may leave them a moment after a file is chosen or a click.
        let mut ends = vec![want, "error", "no-webgpu"];
        ends.push(match want {
            "error" => "ready",
            "no-webgpu" => "idle",
            _ => want,
        });
        let cond = format!("window.lamina && {ends:?}.includes(window.lamina.state)");
        let t = Instant::now();
        if let Err(e) = self.page.wait_for(&cond, timeout) {
            bail!(
                "expected state {want:?}: {e:#}\nthe browser's stderr ends:\n{}",
                self.browser.stderr_tail()
            );
        }
        if self.page.eval("window.lamina.state")? != want {
            bail!("expected state {want:?}: {}", self.page.lamina_status());
        }
        eprintln!("state {want} after {:.1} s", t.elapsed().as_secs_f64());
        Ok(())
    }

    fn lamina(&mut self, field: &str) -> Result<Value> {
        self.page.eval(&format!("window.lamina.{field}"))
    }
}

/// What the native build generates, and how fast.
struct Native {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    prefill_tps: f64,
    decode_tps: f64,
}

/// The prompt's ids as the page makes them: the text, or with `chat` the
/// chat template's rendering of it as the user's message, with BOS where
/// the tokenizer adds one.
fn prompt_ids(tok: &Tokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    let text = match chat {
        true => ChatTemplate::from_tokenizer(tok)?.render_for(
            tok,
            &[ChatMessage::user(prompt)],
            true,
        )?,
        false => prompt.to_string(),
    };
    Ok(tok.encode(&text, true)?)
}

/// A session over `m` on the test GPU, as the page makes one (f16 KV
/// cache, the weights as stored), its graphs compiled; and the GPU's name.
fn native_session(m: &LoadedModel) -> Result<(Session, String)> {
    let gpu = lamina_tests::gpu();
    let device = gpu.describe();
    let model = GpuModel::new(gpu, m, WeightMode::default(), CTX, KvFormat::F16, |_, _| {})?;
    let mut session = Session::new(Arc::new(model), CTX as u32, SamplerConfig::greedy())?;
    session.prepare()?;
    Ok((session, device))
}

/// Greedy generation with the public model API, as the CLI and the page
/// do it: the prompt fed in one step, then each sampled token fed back,
/// up to `n` tokens or the end of generation (not counted, as the page
/// does not show it). Graphs are compiled before the clock starts.
fn native_greedy(
    session: &mut Session,
    tok: &Tokenizer,
    prompt: &str,
    chat: bool,
    n: usize,
) -> Result<Native> {
    let prompt = prompt_ids(tok, prompt, chat)?;
    session.reset();
    session.set_sampler(SamplerConfig::greedy());
    let t = Instant::now();
    let mut next = session.feed(&prompt)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tokens = Vec::new();
    while !tok.is_eog(next) {
        tokens.push(next);
        if tokens.len() == n {
            break;
        }
        next = session.feed(&[next])?;
    }
    let decode = t.elapsed().as_secs_f64();
    Ok(Native {
        prefill_tps: prompt.len() as f64 / prefill,
        decode_tps: (tokens.len().max(2) - 1) as f64 / decode,
        prompt,
        tokens,
    })
}

fn ids(v: &Value) -> Result<Vec<u32>> {
    v.as_array()
        .and_then(|a| {
            a.iter()
                .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect()
        })
        .with_context(|| format!("window.lamina.tokens is not an array of token ids: {v}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
        .collect()
}

impl App {
    /// Fills the form (the prompt, greedy, `n` tokens, the chat template
    /// on or off) and clicks Generate.
    fn click_generate(&mut self, prompt: &str, chat: bool, n: usize) -> Result<()> {
        self.page.eval(&format!(
            "(() => {{
                const set = (id, v) => {{
                    const e = document.getElementById(id);
                    if (e.type === 'checkbox') e.checked = v; else e.value = v;
                    e.dispatchEvent(new Event('input', {{ bubbles: true }}));
                    e.dispatchEvent(new Event('change', {{ bubbles: true }}));
                }};
                set('prompt', {prompt:?});
                set('n-predict', '{n}');
                set('temperature', '0');
                set('chat', {chat});
                document.getElementById('generate').click();
            }})()"
        ))?;
        Ok(())
    }

    /// [`App::click_generate`], then the tokens the page shows when done.
    fn generate(&mut self, prompt: &str, chat: bool, n: usize) -> Result<Vec<u32>> {
        self.click_generate(prompt, chat, n)?;
        self.expect_state("done", GENERATE_TIMEOUT)?;
        ids(&self.lamina("tokens")?)
    }
}

#[test]
#[ignore = "needs chromium and the web bundle: scripts/test.sh builds both"]
fn greedy_tokens_match_native() -> Result<()> {
    let _turn = turn();
    let Some(path) = model_file()? else {
        return Ok(());
    };
    let m = lamina_model::loader::load(&path)?;
    let tok = Tokenizer::from_spec(&m.tokenizer_spec)?;
    let gpu = lamina_tests::gpu();
    let device = gpu.describe();
    let model = GpuModel::new(
        gpu,
        &m,
        WeightMode::default(),
        CTX,
        KvFormat::F16,
        |_, _| {},
    )?;
    drop(m);
    let mut session = Session::new(Arc::new(model), CTX as u32, SamplerConfig::greedy())?;
    session.prepare()?;
    let native = native_greedy(&mut session, &tok, PROMPT, false, N_PREDICT)?;
    let native_chat = native_greedy(&mut session, &tok, PROMPT, true, N_CHAT)?;
    let text = |ids: &[u32]| tok.decode(ids).unwrap_or_else(|e| format!("(decode: {e})"));
    eprintln!(
        "native ({device}): prompt {:?} -> {:?} {:?}; with the chat template -> {:?}",
        native.prompt,
        native.tokens,
        text(&native.tokens),
        text(&native_chat.tokens)
    );
    assert_eq!(
        native.tokens.len(),
        N_PREDICT,
        "the raw prompt's run ends early"
    );

    let mut app = App::started()?;
    eprintln!("adapter: {}", app.lamina("adapter")?);
    app.page.set_file("#model", &path)?;
    app.expect_state("ready", LOAD_TIMEOUT)?;
    // A prompt of no tokens is an error that leaves the model loaded.
    app.click_generate("", false, 4)?;
    app.expect_state("error", ERROR_TIMEOUT)?;
    let message = app.lamina("message")?;
    assert!(
        message.as_str().is_some_and(|m| m.contains("no tokens")),
        "an empty prompt's message: {message}"
    );
    let page_tokens = app.generate(PROMPT, false, N_PREDICT)?;
    let (prefill, decode) = (app.lamina("prefill_tps")?, app.lamina("decode_tps")?);
    let page_chat = app.generate(PROMPT, true, N_CHAT)?;
    let gpu_errors = strings(&app.lamina("gpu_errors")?);
    let adapter = app.lamina("adapter")?;
    let tps = |v: &Value| {
        v.as_f64()
            .map_or_else(|| v.to_string(), |x| format!("{x:.1}"))
    };
    println!(
        "browser-figures: browser (Chromium, WebGPU on {}): prompt {} tokens at {} t/s, decode {} t/s",
        adapter.as_str().unwrap_or("?"),
        native.prompt.len(),
        tps(&prefill),
        tps(&decode)
    );
    println!(
        "browser-figures: native ({device}): prompt {} tokens at {:.1} t/s, decode {:.1} t/s",
        native.prompt.len(),
        native.prefill_tps,
        native.decode_tps
    );
    assert_eq!(
        page_tokens,
        native.tokens,
        "greedy tokens after {PROMPT:?}: the page's (left) differ from the native build's (right)\n\
         page:   {:?}\nnative: {:?}",
        text(&page_tokens),
        text(&native.tokens)
    );
    assert_eq!(
        page_chat,
        native_chat.tokens,
        "greedy tokens of the chat template's prompt: the page's (left) differ from the native \
         build's (right)\npage:   {:?}\nnative: {:?}",
        text(&page_chat),
        text(&native_chat.tokens)
    );
    assert!(
        gpu_errors.is_empty(),
        "uncaptured WebGPU errors:\n{}",
        gpu_errors.join("\n")
    );
    Ok(())
}

#[test]
#[ignore = "needs chromium and the web bundle: scripts/test.sh builds both"]
fn shaders_compile() -> Result<()> {
    let _turn = turn();
    let mut app = App::started()?;
    let t = Instant::now();
    let errors = app
        .page
        .eval_within("window.lamina.checkShaders()", SHADERS_TIMEOUT)?;
    eprintln!("checkShaders: {:.1} s", t.elapsed().as_secs_f64());
    if !errors.is_array() {
        bail!("checkShaders() gave {errors}, not an array");
    }
    let errors = strings(&errors);
    assert!(
        errors.is_empty(),
        "{} shader(s) do not compile in Chromium:\n{}",
        errors.len(),
        errors.join("\n")
    );
    Ok(())
}

#[test]
#[ignore = "needs chromium and the web bundle: scripts/test.sh builds both"]
fn truncated_model_is_an_error() -> Result<()> {
    let _turn = turn();
    let Some(path) = model_file()? else {
        return Ok(());
    };
    let mut cut = tempfile::Builder::new()
        .prefix("truncated-")
        .suffix(".gguf")
        .tempfile()?;
    let file = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
    std::io::copy(&mut std::io::Read::take(file, 8 << 20), cut.as_file_mut())?;
    let mut app = App::started()?;
    app.page.set_file("#model", cut.path())?;
    app.expect_state("error", ERROR_TIMEOUT)?;
    let message = app.lamina("message")?;
    let shown = app
        .page
        .eval("document.getElementById('message').textContent")?;
    eprintln!("truncated model: window.lamina.message = {message}; #message = {shown}");
    assert!(
        message.as_str().is_some_and(|m| !m.trim().is_empty()),
        "state \"error\" without a message: {message}"
    );
    assert!(
        shown.as_str().is_some_and(|m| !m.trim().is_empty()),
        "#message is empty after the error {message}"
    );
    Ok(())
}

#[test]
#[ignore = "needs chromium and the web bundle: scripts/test.sh builds both"]
fn model_too_big_for_the_gpu_is_an_error() -> Result<()> {
    let _turn = turn();
    let Some(path) = model_file()? else {
        return Ok(());
    };
    let mut app = App::started()?;
    // 4M positions: each layer's KV cache alone is far past any device's
    // largest buffer.
    app.page
        .eval("document.getElementById('ctx').value = '4000000'")?;
    app.page.set_file("#model", &path)?;
    app.expect_state("error", LOAD_TIMEOUT)?;
    let message = app.lamina("message")?;
    eprintln!("too big: {message}");
    assert!(
        message.as_str().is_some_and(|m| m.contains("does not fit")),
        "the message should say the model does not fit: {message}"
    );
    // As the message suggests: a smaller context, the same file again.
    app.page
        .eval("document.getElementById('ctx').value = '256'")?;
    app.page.set_file("#model", &path)?;
    app.expect_state("ready", LOAD_TIMEOUT)?;
    Ok(())
}

/// A panic in the engine settles no promise; the page must not wait on it
/// forever but say so and take no more input (a rejection nobody handles
/// stands in for the panic here).
#[test]
#[ignore = "needs chromium and the web bundle: scripts/test.sh builds both"]
fn engine_panic_stops_the_page() -> Result<()> {
    let _turn = turn();
    let mut app = App::started()?;
    app.page
        .eval("Promise.reject(new Error('RuntimeError: unreachable')); 0")?;
    app.expect_state("error", ERROR_TIMEOUT)?;
    let page = app.page.eval(
        "(() => ({
            message: document.getElementById('message').textContent,
            model: document.getElementById('model').disabled,
            generate: document.getElementById('generate').disabled,
        }))()",
    )?;
    eprintln!("after a panic: {page}");
    let message = page["message"].as_str().unwrap_or("");
    assert!(
        message.contains("reload the page") && message.contains("unreachable"),
        "the message should name the failure and say to reload: {message:?}"
    );
    assert_eq!(
        page["model"], true,
        "the file input still takes files: {page}"
    );
    assert_eq!(page["generate"], true, "Generate is still enabled: {page}");
    Ok(())
}

#[test]
#[ignore = "needs chromium and the web bundle: scripts/test.sh builds both"]
fn no_webgpu_message() -> Result<()> {
    let _turn = turn();
    let mut app = App::open(false)?;
    app.expect_state("no-webgpu", START_TIMEOUT)?;
    let shown = app.page.eval(
        "(() => {
            const e = document.getElementById('message');
            const s = getComputedStyle(e);
            const visible = e.getClientRects().length > 0 && s.visibility !== 'hidden' && s.opacity !== '0';
            return { visible, text: e.textContent };
        })()",
    )?;
    eprintln!("no WebGPU: #message = {shown}");
    let text = shown["text"].as_str().unwrap_or("");
    assert_eq!(shown["visible"], true, "#message is not visible: {shown}");
    assert!(
        text.to_lowercase().contains("webgpu"),
        "#message does not mention WebGPU: {text:?}"
    );
    Ok(())
}

/// The static server, without a browser.
#[test]
fn server_serves_the_bundle_only() -> Result<()> {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("pkg"))?;
    std::fs::write(dir.path().join("index.html"), "<p>hi</p>")?;
    std::fs::write(dir.path().join("pkg/x_bg.wasm"), b"\0asm")?;
    std::fs::write(dir.path().join(".hidden"), "no")?;
    let server = Server::start(dir.path())?;
    let get = |path: &str| -> Result<String> {
        let addr = server.url("");
        let host = addr.trim_start_matches("http://").trim_end_matches('/');
        let mut s = std::net::TcpStream::connect(host)?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r)
    };
    for (path, status, kind) in [
        ("/", "200", Some("text/html")),
        ("/index.html?x=1", "200", Some("text/html")),
        ("/pkg/x_bg.wasm", "200", Some("application/wasm")),
        ("/pkg/", "404", None),
        ("/missing.js", "404", None),
        ("/.hidden", "404", None),
        ("/../index.html", "404", None),
        ("/pkg/../index.html", "404", None),
        ("/pkg/%2e%2e/index.html", "404", None),
        ("index.html", "404", None),
    ] {
        let r = get(path)?;
        let head = r.lines().next().unwrap_or("");
        assert!(head.contains(status), "GET {path}: {head}");
        if let Some(kind) = kind {
            assert!(
                r.contains(&format!("Content-Type: {kind}")),
                "GET {path}: {r}"
            );
        }
    }
    Ok(())
}

/// The text `bench_against_native` prompts with (about 100 tokens).
const BENCH_PROMPT: &str = "The history of the city begins in the early medieval period, when a \
    small settlement grew up around a river crossing. Over the following centuries, merchants and \
    craftsmen arrived, a market was established, and the town received its first charter. By the \
    fourteenth century it had become an important center of the wool trade, with a large church, \
    several guild halls and a stone bridge that replaced the older wooden one. The population grew \
    steadily until the plague years, when nearly a third of the inhabitants died. Recovery was \
    slow, but by the sixteenth century";

/// Not a check but the figures of docs/benchmarks.md: the page against
/// the native build on this machine's test GPU, a 100-token prompt and 64
/// greedy tokens, three rounds alternating (native, then the page), each
/// printed with the ratio. Run it alone:
/// `cargo test --workspace --test browser bench_against_native -- --ignored --nocapture`
/// (scripts/test.sh skips it).
#[test]
#[ignore = "a benchmark, run by hand (see its doc)"]
fn bench_against_native() -> Result<()> {
    const N: usize = 64;
    let _turn = turn();
    let Some(path) = model_file()? else {
        return Ok(());
    };
    let m = lamina_model::loader::load(&path)?;
    let tok = Tokenizer::from_spec(&m.tokenizer_spec)?;
    let (mut session, device) = native_session(&m)?;
    drop(m);
    let mut app = App::started()?;
    let adapter = app.lamina("adapter")?;
    app.page.set_file("#model", &path)?;
    app.expect_state("ready", LOAD_TIMEOUT)?;
    // A first page run warms what the load left cold.
    app.generate(BENCH_PROMPT, false, 4)?;
    for round in 1..=3 {
        let native = native_greedy(&mut session, &tok, BENCH_PROMPT, false, N)?;
        let tokens = app.generate(BENCH_PROMPT, false, N)?;
        let pp = app.lamina("prefill_tps")?.as_f64().unwrap_or(f64::NAN);
        let tg = app.lamina("decode_tps")?.as_f64().unwrap_or(f64::NAN);
        println!(
            "browser-bench round {round}: prompt {} tokens, {} generated; native ({device}) \
             {:.1} / {:.1} t/s; page (Chromium, WebGPU on {}) {pp:.1} / {tg:.1} t/s; \
             page / native {:.3} / {:.3}",
            native.prompt.len(),
            tokens.len(),
            native.prefill_tps,
            native.decode_tps,
            adapter.as_str().unwrap_or("?"),
            pp / native.prefill_tps,
            tg / native.decode_tps
        );
        assert_eq!(
            tokens, native.tokens,
            "round {round}: the page's tokens differ"
        );
    }
    Ok(())
}
