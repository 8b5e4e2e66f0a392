//! The HTTP side: routes, the API key, body checks, and the answer to a
//! request, whole or as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::api::{ApiError, ChatRequest, CompletionRequest, Head, Kind, Usage};
use crate::engine::{Engine, Event, Job, SubmitError};
use crate::request::{Prepared, ServedModel};

/// Largest request body accepted.
pub const MAX_BODY: usize = 8 << 20;

pub struct AppState {
    pub model: ServedModel,
    pub engine: Engine,
    /// `Authorization: Bearer KEY` required on every route but /health.
    pub api_key: Option<String>,
    /// When the server started (the model's `created`).
    pub started: u64,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(model: ServedModel, engine: Engine, api_key: Option<String>) -> Self {
        AppState {
            model,
            engine,
            api_key,
            started: unix_now(),
            next_id: AtomicU64::new(1),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = &st.api_key else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110).
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(key)
        });
    if given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), key.as_bytes())) {
        return next.run(req).await;
    }
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "missing or incorrect API key: send 'Authorization: Bearer KEY'".into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    }
    .into_response()
}

/// Equality that takes as long for every wrong key of a length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let s = st.engine.status();
    Json(json!({
        "status": "ok",
        "slots": s.slots,
        "slots_busy": s.busy,
        "queued": s.waiting,
    }))
}

async fn models(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.model.name,
            "object": "model",
            "created": st.started,
            "owned_by": "lamina",
            "context_length": st.model.ctx,
        }],
    }))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::invalid(
        None,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
    .with_status(StatusCode::NOT_FOUND)
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::invalid(
        None,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// The body as `T`: JSON by content type and by syntax, else a 415 / 400
/// with OpenAI's error body (axum's own rejections are plain text).
fn parse<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::invalid(
            None,
            format!("the body must be JSON with 'Content-Type: application/json' (got '{ct}')"),
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    let body = body.map_err(|e| ApiError::invalid(None, e.body_text()).with_status(e.status()))?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            None,
            format!("we could not parse the JSON body of your request: {e}"),
        )
    })
}

async fn chat(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s = st.clone();
    let prepared =
        off_runtime(move || parse::<ChatRequest>(&headers, body).and_then(|r| s.model.chat(&r)))
            .await;
    answer(&st, Kind::Chat, prepared).await
}

/// Parsing, templating and tokenizing a body (up to the body limit's
/// megabytes) on a blocking thread, not on the runtime's few workers,
/// where it would stall every other request and stream meanwhile.
async fn off_runtime(
    f: impl FnOnce() -> Result<Prepared, ApiError> + Send + 'static,
) -> Result<Prepared, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError::server(format!(
            "preparing the request failed: {e}"
        )))
    })
}

async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s = st.clone();
    let prepared = off_runtime(move || {
        parse::<CompletionRequest>(&headers, body).and_then(|r| s.model.completion(&r))
    })
    .await;
    answer(&st, Kind::Text, prepared).await
}

async fn answer(st: &AppState, kind: Kind, prepared: Result<Prepared, ApiError>) -> Response {
    let p = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let head = Head {
        kind,
        id: format!(
            "{}-{:x}{n:06x}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            st.started
        ),
        created: unix_now(),
        model: st.model.name.clone(),
    };
    let (tx, rx) = unbounded_channel();
    let (stream, include_usage) = (p.stream, p.include_usage);
    let job = Job {
        prompt: p.prompt,
        max_tokens: p.max_tokens,
        sampler: p.sampler,
        stop: p.stop,
        ignore_eos: p.ignore_eos,
        events: tx,
    };
    if let Err(e) = st.engine.submit(job) {
        let (msg, code) = match e {
            SubmitError::Busy => (
                "the server is busy: every slot and the queue are full; retry later",
                "server_busy",
            ),
            SubmitError::Stopped => ("the server is shutting down", "server_stopping"),
        };
        return ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: msg.into(),
            kind: "server_error",
            param: None,
            code: Some(code),
        }
        .into_response();
    }
    if stream {
        Sse::new(events(head, rx, include_usage))
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        whole(head, rx).await
    }
}

/// Waits for the whole answer. Dropping this future (the client left)
/// drops the receiver, which cancels the job.
async fn whole(head: Head, mut rx: UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                finish,
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            } => {
                let usage = Usage::new(prompt_tokens, cached_tokens, completion_tokens);
                return Json(head.response(&text, finish.as_str(), usage)).into_response();
            }
            Event::Failed(msg) => return ApiError::server(msg).into_response(),
        }
    }
    ApiError::server("the engine stopped before the answer was complete").into_response()
}

/// Where a stream is: before its first chunk, sending, or past its end.
enum Phase {
    Start,
    Body,
    Usage(Usage),
    Done,
    Over,
}

/// The answer as OpenAI's chunks, then `data: [DONE]`. Dropping the stream
/// (the client left) drops the receiver, which cancels the job.
fn events(
    head: Head,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let data = |v: serde_json::Value| SseEvent::default().data(v.to_string());
    // The role comes first (chat), as OpenAI sends it.
    let start = if head.kind == Kind::Chat {
        Phase::Start
    } else {
        Phase::Body
    };
    stream::unfold((rx, start), move |(mut rx, phase)| {
        let head = head.clone();
        async move {
            let ev = match phase {
                Phase::Start => {
                    let first = head.chunk(Some(""), true, None);
                    return Some((Ok(data(first)), (rx, Phase::Body)));
                }
                Phase::Usage(u) => {
                    return Some((Ok(data(head.usage_chunk(u))), (rx, Phase::Done)));
                }
                Phase::Done => {
                    return Some((Ok(SseEvent::default().data("[DONE]")), (rx, Phase::Over)));
                }
                Phase::Over => return None,
                Phase::Body => rx.recv().await,
            };
            match ev {
                Some(Event::Text(t)) => Some((
                    Ok(data(head.chunk(Some(&t), false, None))),
                    (rx, Phase::Body),
                )),
                Some(Event::Done {
                    finish,
                    prompt_tokens,
                    cached_tokens,
                    completion_tokens,
                }) => {
                    let next = if include_usage {
                        Phase::Usage(Usage::new(prompt_tokens, cached_tokens, completion_tokens))
                    } else {
                        Phase::Done
                    };
                    let last = head.chunk(None, false, Some(finish.as_str()));
                    Some((Ok(data(last)), (rx, next)))
                }
                Some(Event::Failed(msg)) => {
                    Some((Ok(data(ApiError::server(msg).body())), (rx, Phase::Done)))
                }
                None => {
                    let e = ApiError::server("the engine stopped before the answer was complete");
                    Some((Ok(data(e.body())), (rx, Phase::Done)))
                }
            }
        }
    })
}
