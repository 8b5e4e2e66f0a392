//! `lamina serve`: an OpenAI-compatible HTTP server (chat and text
//! completions, streamed or whole) over `--parallel` sessions, each with
//! a KV cache of its own.
//!
//! Layers, imports pointing down: `http` (routes, auth, body checks,
//! streaming) -> `request` (a body to a checked job: template, pivot,
//! sampling, limits) and `api` (the wire format) -> `engine` (the thread
//! that owns the sessions: slots, queue, prefix reuse) -> `stop` (stop
//! strings over streamed text). The CLI loads the model and hands over
//! the sessions.

pub mod api;
pub mod engine;
pub mod http;
pub mod request;
pub mod stop;

use std::sync::Arc;

use anyhow::{Context, Result};
use lamina_model::session::Session;

pub use engine::{Engine, Event, Finish, Job, Status, SubmitError};
pub use request::ServedModel;

/// Where to listen and who may ask.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Jobs that may wait for a slot; beyond them requests get 503.
    pub queue: usize,
}

/// Serves `model` with one slot per session until SIGINT or SIGTERM; then
/// stops taking connections, ends the running jobs and returns.
pub fn serve(opts: &ServeOptions, model: ServedModel, sessions: Vec<Session>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let tokenizer = Arc::new(model.tokenizer.clone());
    let engine = Engine::start(sessions, tokenizer, opts.queue);
    let state = Arc::new(http::AppState::new(model, engine, opts.api_key.clone()));
    let result = rt.block_on(async {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("listening on http://{local} (model '{}')", state.model.name);
        let st = state.clone();
        axum::serve(listener, http::router(state.clone()))
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                eprintln!("shutting down");
                // Ends the running jobs so that their streams close.
                tokio::task::spawn_blocking(move || st.engine.shutdown())
                    .await
                    .ok();
            })
            .await
            .context("serving HTTP")
    });
    state.engine.shutdown();
    result
}

/// SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
