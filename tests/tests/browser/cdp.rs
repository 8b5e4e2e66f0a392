//! Headless Chromium and a small client of its DevTools protocol: one
//! WebSocket to the browser, a tab attached with `flatten: true`, and
//! commands sent with the tab's `sessionId`, each answered by the message
//! with its `id` (events in between are skipped, the page's console output
//! and uncaught exceptions printed).
//!
//! Every call has a timeout, so a hung page fails a test instead of hanging it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// WebGPU on, on SwiftShader (Chromium's CPU Vulkan), so that it works
/// headless and without a GPU.
pub const WEBGPU_FLAGS: &[&str] = &[
    "--enable-unsafe-webgpu",
    "--use-angle=swiftshader",
    "--use-webgpu-adapter=swiftshader",
];

/// WebGPU off: no GPU process at all (no hardware GPU, no SwiftShader), so
/// `navigator.gpu.requestAdapter()` gives null. (`navigator.gpu` itself
/// stays: neither `--disable-features=WebGPU` nor
/// `--disable-blink-features=WebGPU` removes it in Chromium 156, nor do they
/// take the adapter away when the flags above are also given; these two do.)
pub const NO_WEBGPU_FLAGS: &[&str] = &["--disable-gpu", "--disable-software-rasterizer"];

/// How long one protocol command may take unless its caller says otherwise.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The Chromium binary: $LAMINA_CHROMIUM, else `chromium` on PATH.
pub fn find_chromium() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LAMINA_CHROMIUM") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("LAMINA_CHROMIUM={} is not a file", p.display());
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "chromium not found on PATH: install it (scripts/ensure-chromium.sh) \
                 or set LAMINA_CHROMIUM to the browser's binary"
            )
        })
}

/// A headless Chromium with its own temporary profile; closed (killed if
/// need be), and the profile removed, on drop.
pub struct Chromium {
    child: Child,
    ws_url: String,
    stderr: Arc<Mutex<VecDeque<String>>>,
    profile: PathBuf,
}

impl Chromium {
    /// Starts the browser with WebGPU on or off and waits for its DevTools
    /// address. Its stderr is kept (last lines, for error messages) and
    /// echoed when LAMINA_CHROMIUM_LOG is set.
    pub fn launch(webgpu: bool) -> Result<Chromium> {
        let bin = find_chromium()?;
        let profile = tempfile::Builder::new()
            .prefix("lamina-chromium-")
            .tempdir()
            .context("creating the browser's profile directory")?;
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--remote-debugging-port=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(if webgpu {
            WEBGPU_FLAGS
        } else {
            NO_WEBGPU_FLAGS
        })
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let kept = lines.clone();
        let echo = std::env::var_os("LAMINA_CHROMIUM_LOG").is_some();
        // Reads stderr to its end, so the browser never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("chromium: {line}");
                }
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                // D-Bus complaints (no session bus in a container) are noise.
                if !line.contains("dbus") {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() == 40 {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }
        });
        let mut browser = Chromium {
            child,
            ws_url: String::new(),
            stderr: lines,
            // Removed by `drop` from here on, once the browser has ended.
            profile: profile.keep(),
        };
        browser.ws_url = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            anyhow!(
                "{} did not print its DevTools address within 60 s; its stderr ends:\n{}",
                bin.display(),
                browser.stderr_tail()
            )
        })?;
        Ok(browser)
    }

    /// The last lines the browser wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// A new tab at `url`.
    pub fn open(&self, url: &str) -> Result<Page> {
        Page::open(&self.ws_url, url)
    }
}

impl Drop for Chromium {
    /// Asks the browser to close (so that it ends its own child processes),
    /// kills it if it has not exited within 5 s, then removes the profile
    /// (retried for a while: a killed browser's children may still write).
    fn drop(&mut self) {
        if let Ok(mut cdp) = Cdp::connect(&self.ws_url) {
            let _ = cdp.call(None, "Browser.close", json!({}), Duration::from_secs(5));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.profile.display());
    }
}

/// One WebSocket to the browser.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    fn connect(ws_url: &str) -> Result<Cdp> {
        let host = ws_url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .ok_or_else(|| anyhow!("unexpected DevTools address {ws_url}"))?;
        let stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (ws, _) = tungstenite::client(ws_url, stream)
            .map_err(|e| anyhow!("WebSocket handshake with {ws_url}: {e}"))?;
        // Short reads from here on: a call checks its deadline between them.
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Cdp { ws, next_id: 1 })
    }

    /// Sends `method` (to the tab `session`, or to the browser) and returns
    /// the answer's `result`, or its `error` as an error.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .with_context(|| format!("sending {method}"))?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let text = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue;
                }
                Err(e) => return Err(anyhow!("{method}: the DevTools connection failed: {e}")),
            };
            let v: Value = serde_json::from_str(text.as_str())
                .with_context(|| format!("{method}: a message that is not JSON"))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
            print_event(&v);
        }
        bail!("{method}: no answer within {:.0} s", timeout.as_secs_f64())
    }
}

/// Prints the page's console output and uncaught exceptions (shown by the
/// test harness when a test fails).
fn print_event(v: &Value) {
    let p = &v["params"];
    match v["method"].as_str() {
        Some("Runtime.consoleAPICalled") => {
            let args: Vec<String> = p["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| match &a["value"] {
                    Value::String(s) => s.clone(),
                    Value::Null => a["description"].as_str().unwrap_or("?").to_string(),
                    other => other.to_string(),
                })
                .collect();
            eprintln!(
                "page console.{}: {}",
                p["type"].as_str().unwrap_or("log"),
                args.join(" ")
            );
        }
        Some("Runtime.exceptionThrown") => {
            let d = &p["exceptionDetails"];
            let what = d["exception"]["description"]
                .as_str()
                .or(d["text"].as_str());
            eprintln!("page exception: {}", what.unwrap_or("?"));
        }
        _ => {}
    }
}

/// A tab.
pub struct Page {
    cdp: Cdp,
    session: String,
}

impl Page {
    /// Opens a blank tab, attaches to it, turns on the console events, then
    /// navigates (so that the page's first messages are seen).
    fn open(ws_url: &str, url: &str) -> Result<Page> {
        let mut cdp = Cdp::connect(ws_url)?;
        let target = cdp.call(
            None,
            "Target.createTarget",
            json!({ "url": "about:blank" }),
            CALL_TIMEOUT,
        )?;
        let target_id = target["targetId"]
            .as_str()
            .context("Target.createTarget: no targetId")?;
        let attached = cdp.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
            CALL_TIMEOUT,
        )?;
        let session = attached["sessionId"]
            .as_str()
            .context("Target.attachToTarget: no sessionId")?
            .to_string();
        let mut page = Page { cdp, session };
        page.call("Runtime.enable", json!({}))?;
        let nav = page.call("Page.navigate", json!({ "url": url }))?;
        if let Some(e) = nav["errorText"].as_str() {
            bail!("opening {url}: {e}");
        }
        Ok(page)
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.cdp
            .call(Some(&self.session), method, params, CALL_TIMEOUT)
    }

    /// The value of the expression `js` (awaited if it is a promise).
    pub fn eval(&mut self, js: &str) -> Result<Value> {
        self.eval_within(js, CALL_TIMEOUT)
    }

    /// [`Page::eval`] with its own timeout.
    pub fn eval_within(&mut self, js: &str, timeout: Duration) -> Result<Value> {
        let params = json!({
            "expression": js,
            "awaitPromise": true,
            "returnByValue": true,
        });
        let r = self
            .cdp
            .call(Some(&self.session), "Runtime.evaluate", params, timeout)?;
        if let Some(d) = r.get("exceptionDetails") {
            let what = d["exception"]["description"]
                .as_str()
                .or(d["text"].as_str());
            bail!("evaluating `{js}`: {}", what.unwrap_or("exception"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `condition` (a JS expression) until it is truthy. Fails after
    /// `timeout` with `window.lamina`'s state and message, and the last
    /// error from evaluating `condition` (errors are retried: the page may
    /// be between documents).
    pub fn wait_for(&mut self, condition: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let js = format!("Boolean({condition})");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last_err = match self.eval_within(&js, left.max(Duration::from_secs(1))) {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(_) => None,
                Err(e) => Some(e),
            };
            if Instant::now() >= deadline {
                let err = last_err.map_or(String::new(), |e| format!("; last error: {e:#}"));
                bail!(
                    "waited {} s for `{condition}`: {}{err}",
                    timeout.as_secs(),
                    self.lamina_status()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// `window.lamina`'s state and message, for error messages.
    pub fn lamina_status(&mut self) -> String {
        let js = "JSON.stringify(window.lamina ? \
                  { state: window.lamina.state, message: window.lamina.message } : null)";
        match self.eval_within(js, Duration::from_secs(10)) {
            Ok(Value::String(s)) if s != "null" => format!("window.lamina is {s}"),
            Ok(_) => "window.lamina is not defined".into(),
            Err(e) => format!("the page does not answer ({e:#})"),
        }
    }

    /// Chooses `file` in the `<input type=file>` that `selector` finds, as
    /// a user would (the input's change event fires).
    pub fn set_file(&mut self, selector: &str, file: &Path) -> Result<()> {
        let file = file
            .canonicalize()
            .with_context(|| format!("{}", file.display()))?;
        let doc = self.call("DOM.getDocument", json!({ "depth": 0 }))?;
        let found = self.call(
            "DOM.querySelector",
            json!({ "nodeId": doc["root"]["nodeId"], "selector": selector }),
        )?;
        match found["nodeId"].as_u64() {
            Some(id) if id != 0 => {
                // The page's change handler runs before this answers.
                self.call(
                    "DOM.setFileInputFiles",
                    json!({ "nodeId": id, "files": [file] }),
                )
                .with_context(|| format!("choosing {} in {selector}", file.display()))?;
                Ok(())
            }
            _ => bail!("no element matches {selector}"),
        }
    }
}
