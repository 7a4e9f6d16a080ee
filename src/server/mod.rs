//! `ledge serve`: an OpenAI-compatible HTTP API over generate/. The server keeps no state
//! between requests (each slot's KV cache only speeds up a repeated prefix), so any number
//! of replicas can run behind a load balancer.
//!
//! Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models[/{id}],
//! GET /health, GET /metrics. Handlers only parse, tokenize (on the blocking pool) and relay;
//! generation runs on the engine's slot threads.

pub mod engine;
pub mod error;
pub mod metrics;
pub mod request;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use engine::{Engine, EngineConfig, Event, Finish, Job, Loaded};
use error::ApiError;
use request::{GenParams, Prompt};

use crate::generate::GenerateOptions;

/// How the server is set up (`ledge serve`'s flags).
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model: PathBuf,
    /// Requests generating at once, each with its own KV cache.
    pub parallel: usize,
    /// Requests that may wait for a slot; beyond that, 503.
    pub queue: usize,
    /// KV cache size per slot (default: the model's training context, at most 4096).
    pub ctx: Option<usize>,
    /// Requests must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Largest `max_tokens` a request may ask for (default: the context size).
    pub max_tokens: Option<usize>,
    /// At shutdown, how long running generations may go on before they are cancelled.
    pub shutdown_grace: Duration,
    /// LoRA adapters applied to the model, each scaled by `lora_scale`.
    pub lora: Vec<PathBuf>,
    pub lora_scale: f32,
}

impl ServeOptions {
    pub fn new(model: PathBuf) -> ServeOptions {
        ServeOptions {
            model,
            parallel: 1,
            queue: 16,
            ctx: None,
            api_key: None,
            max_body: 1 << 20,
            max_tokens: None,
            shutdown_grace: Duration::from_secs(10),
            lora: Vec::new(),
            lora_scale: 1.0,
        }
    }
}

struct AppState {
    opts: ServeOptions,
    /// Set once the model is loaded; until then /health says 503 and so does the API.
    engine: OnceLock<Arc<Engine>>,
    /// The context size and max_tokens cap, known after loading.
    limits: OnceLock<(usize, usize)>,
    started: Instant,
    next_id: AtomicU64,
}

impl AppState {
    fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading").with_retry(1))
    }

    fn id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        format!(
            "{prefix}-{:x}{n:04x}",
            t ^ (std::process::id() as u64) << 40
        )
    }

    /// Checks `Authorization: Bearer KEY` when the server has a key.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.opts.api_key else {
            return Ok(());
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return Err(ApiError::unauthorized("Incorrect API key provided."));
        }
        Ok(())
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guess
/// was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Turns a handler's result into a response, counting errors.
fn respond(st: &AppState, r: Result<Response, ApiError>) -> Response {
    match r {
        Ok(r) => r,
        Err(e) => {
            if let Some(engine) = st.engine.get() {
                engine.metrics.error(e.status.as_u16());
            }
            e.into_response()
        }
    }
}

/// Reads the body up to the size limit (413 beyond it). The Content-Type is not checked:
/// `curl -d` sends form-urlencoded, and llama-server accepts that too.
async fn read_body(st: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = st.opts.max_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut data = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))?;
        if data.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(data))
}

/// Builds the router. `pub` for tests that drive it without a socket.
fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(st)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!("no route for {}", uri.path())).into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::method_not_allowed(format!("{method} is not allowed on {}", uri.path()))
        .into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.engine.get() {
        Some(e) => {
            let g = e.gauges();
            json_response(
                StatusCode::OK,
                &json!({
                    "status": "ok",
                    "model": e.loaded.name,
                    "slots_idle": g.slots_total - g.slots_busy,
                    "slots_busy": g.slots_busy,
                    "queue_depth": g.queue_depth,
                }),
            )
        }
        None => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "loading model"}),
        ),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let r = st.engine().map(|e| {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            e.metrics.render(&e.gauges()),
        )
            .into_response()
    });
    respond(&st, r)
}

fn model_object(st: &AppState, name: &str) -> Value {
    json!({
        "id": name,
        "object": "model",
        "created": unix_now() - st.started.elapsed().as_secs(),
        "owned_by": "ledge",
    })
}

async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let r = (|| {
        st.authorize(&headers)?;
        let e = st.engine()?;
        e.metrics.requests_models.fetch_add(1, Ordering::Relaxed);
        Ok(json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [model_object(&st, &e.loaded.name)]}),
        ))
    })();
    respond(&st, r)
}

async fn model_by_id(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = (|| {
        st.authorize(&headers)?;
        let e = st.engine()?;
        e.metrics.requests_models.fetch_add(1, Ordering::Relaxed);
        if id != e.loaded.name {
            return Err(ApiError::not_found(format!(
                "The model '{id}' does not exist: this server has '{}'",
                e.loaded.name
            ))
            .with_param("model")
            .with_code("model_not_found"));
        }
        Ok(json_response(StatusCode::OK, &model_object(&st, &id)))
    })();
    respond(&st, r)
}

/// Sets the job's cancel flag when dropped: when the response (or the handler waiting for
/// it) goes away because the client disconnected, the slot stops generating.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

/// A generation the engine has accepted: its events, and what the response needs.
struct Pending {
    rx: mpsc::Receiver<Event>,
    /// Held, never read: dropping it cancels the job.
    _cancel: CancelOnDrop,
    id: String,
    model: String,
    kind: Kind,
    include_usage: bool,
}

/// Checks limits and queues the prompt.
fn start(
    st: &AppState,
    engine: &Arc<Engine>,
    ids: Vec<u32>,
    params: GenParams,
    kind: Kind,
    prompt_param: &str,
) -> Result<Pending, ApiError> {
    let &(ctx, cap) = st.limits.get().expect("limits are set with the engine");
    if ids.len() >= ctx {
        return Err(ApiError::invalid(
            prompt_param,
            format!(
                "This model's maximum context length is {ctx} tokens. However, your {} resulted in {} tokens, leaving no room to generate. Please reduce the length of the {}.",
                if kind == Kind::Chat { "messages" } else { "prompt" },
                ids.len(),
                if kind == Kind::Chat { "messages" } else { "prompt" },
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let max_tokens = match params.max_tokens {
        Some(n) if n > cap => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens is too large: {n}. This server allows at most {cap}."),
            )
            .with_code("invalid_value"))
        }
        Some(n) => n,
        None => cap,
    };
    let (tx, rx) = mpsc::channel(engine::CHANNEL);
    let cancel = Arc::new(AtomicBool::new(false));
    engine.submit(Job {
        prompt: ids,
        sampler: params.sampler,
        opts: GenerateOptions {
            max_tokens,
            stop: params.stop,
            truncate_prompt: false,
        },
        cancel: cancel.clone(),
        tx,
        submitted: Instant::now(),
    })?;
    Ok(Pending {
        rx,
        _cancel: CancelOnDrop(cancel),
        id: st.id(if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }),
        model: engine.loaded.name.clone(),
        kind,
        include_usage: params.include_usage,
    })
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

impl Pending {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": unix_now(),
            "model": self.model,
            "system_fingerprint": concat!("ledge-", env!("CARGO_PKG_VERSION")),
            "choices": choices,
        })
    }

    fn choice(&self, text: &str, finish: Option<&str>, chunk: bool, first: bool) -> Value {
        match self.kind {
            Kind::Completion => json!([{
                "index": 0, "text": text, "logprobs": null, "finish_reason": finish,
            }]),
            Kind::Chat if !chunk => json!([{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": finish,
            }]),
            Kind::Chat => {
                let delta = match (first, finish) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, Some(_)) => json!({}),
                    (false, None) => json!({"content": text}),
                };
                json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
            }
        }
    }

    /// Waits for the whole generation and answers with one object.
    async fn collect(mut self) -> Result<Response, ApiError> {
        let mut text = String::new();
        loop {
            match self.rx.recv().await {
                Some(Event::Piece(p)) => text.push_str(&p),
                Some(Event::Error(e)) => return Err(e),
                Some(Event::Done(f)) => {
                    let mut v = self.envelope(
                        false,
                        self.choice(&text, Some(f.reason.as_openai()), false, false),
                    );
                    v["usage"] = usage(&f);
                    return Ok(json_response(StatusCode::OK, &v));
                }
                None => {
                    return Err(ApiError::internal(
                        "the generation ended without a result (a bug): see the server log",
                    ))
                }
            }
        }
    }

    /// Answers with server-sent events in OpenAI's chunk format, ending with `[DONE]`. The
    /// first event is awaited before the response starts, so an error that comes before
    /// any text (the server shutting down while the request waited) is a plain HTTP error.
    fn sse(v: &Value) -> Bytes {
        Bytes::from(format!("data: {v}\n\n"))
    }

    async fn stream(mut self) -> Result<Response, ApiError> {
        let first = match self.rx.recv().await {
            Some(Event::Error(e)) => return Err(e),
            Some(ev) => ev,
            None => return Err(ApiError::internal("the generation ended without a result")),
        };
        let mut head = Vec::new();
        if self.kind == Kind::Chat {
            head.push(Self::sse(
                &self.envelope(true, self.choice("", None, true, true)),
            ));
        }
        let state = (self, Some(first), false);
        let body = futures_util::stream::iter(head.into_iter().map(Ok::<_, Infallible>)).chain(
            futures_util::stream::unfold(state, |(mut p, pending, done)| async move {
                if done {
                    return None;
                }
                let ev = match pending {
                    Some(ev) => Some(ev),
                    None => p.rx.recv().await,
                };
                let out = match ev {
                    Some(Event::Piece(text)) => {
                        let v = p.envelope(true, p.choice(&text, None, true, false));
                        return Some((Ok(Pending::sse(&v)), (p, None, false)));
                    }
                    Some(Event::Done(f)) => {
                        let mut s = format!(
                            "data: {}\n\n",
                            p.envelope(true, p.choice("", Some(f.reason.as_openai()), true, false))
                        );
                        if p.include_usage {
                            let mut u = p.envelope(true, json!([]));
                            u["usage"] = usage(&f);
                            s += &format!("data: {u}\n\n");
                        }
                        s += "data: [DONE]\n\n";
                        s
                    }
                    Some(Event::Error(e)) => format!("data: {}\n\n", e.body()),
                    None => format!(
                        "data: {}\n\n",
                        ApiError::internal("the generation ended without a result").body()
                    ),
                };
                Some((Ok(Bytes::from(out)), (p, None, true)))
            }),
        );
        Ok((
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(body),
        )
            .into_response())
    }

    async fn respond(self, stream: bool) -> Result<Response, ApiError> {
        if stream {
            self.stream().await
        } else {
            self.collect().await
        }
    }
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        st.authorize(&headers)?;
        let engine = st.engine()?.clone();
        engine.metrics.requests_chat.fetch_add(1, Ordering::Relaxed);
        let body = read_body(&st, &headers, body).await?;
        let req = request::chat_request(&body)?;
        let loaded = engine.loaded.clone();
        let messages = req.messages;
        // Rendering and tokenizing a long conversation is CPU work: off the async threads.
        let ids = tokio::task::spawn_blocking(move || {
            let text = loaded.template.render(&messages, true).map_err(|e| {
                ApiError::invalid("messages", e.to_string()).with_code("invalid_messages")
            })?;
            Ok::<_, ApiError>(loaded.chat_ids(&text))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        let stream = req.params.stream;
        let p = start(&st, &engine, ids, req.params, Kind::Chat, "messages")?;
        p.respond(stream).await
    }
    .await;
    respond(&st, r)
}

async fn completions(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        st.authorize(&headers)?;
        let engine = st.engine()?.clone();
        engine
            .metrics
            .requests_completions
            .fetch_add(1, Ordering::Relaxed);
        let body = read_body(&st, &headers, body).await?;
        let loaded = engine.loaded.clone();
        let req = request::completion_request(&body, loaded.tokenizer.n_vocab())?;
        let ids = match req.prompt {
            Prompt::Tokens(t) => t,
            // As `ledge run` tokenizes a prompt: specials added and parsed.
            Prompt::Text(text) => {
                tokio::task::spawn_blocking(move || loaded.tokenizer.encode(&text, true, true))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?
            }
        };
        if ids.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty").with_code("empty"));
        }
        let stream = req.params.stream;
        let p = start(&st, &engine, ids, req.params, Kind::Completion, "prompt")?;
        p.respond(stream).await
    }
    .await;
    respond(&st, r)
}

/// Serves on `listener` until `shutdown` resolves: loads the model in the background
/// (/health answers 503 until it is ready), then at shutdown stops accepting connections,
/// lets running generations finish within the grace period, cancels the rest, and returns
/// once every connection is closed. `on_ready` runs once the model is loaded.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Loaded, &EngineConfig) + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let st = Arc::new(AppState {
        opts: opts.clone(),
        engine: OnceLock::new(),
        limits: OnceLock::new(),
        started: Instant::now(),
        next_id: AtomicU64::new(0),
    });
    let load_state = st.clone();
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<String>();
    let load = tokio::task::spawn_blocking(move || {
        let o = &load_state.opts;
        let loaded = match Loaded::open(&o.model, &o.lora, o.lora_scale) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                let _ = fail_tx.send(format!("loading {}: {e}", o.model.display()));
                return;
            }
        };
        let ctx = o
            .ctx
            .unwrap_or(loaded.model.config.ctx_train.min(4096))
            .max(2);
        let cap = o.max_tokens.unwrap_or(ctx).max(1);
        let config = EngineConfig {
            parallel: o.parallel.max(1),
            queue: o.queue,
            ctx,
        };
        on_ready(&loaded, &config);
        let _ = load_state.limits.set((ctx, cap));
        let _ = load_state.engine.set(Engine::start(loaded, config));
    });
    let failed: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let failed2 = failed.clone();
    let engine_state = st.clone();
    let grace = opts.shutdown_grace;
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        tokio::select! {
            _ = shutdown => {}
            Ok(msg) = fail_rx => { let _ = failed2.set(msg); }
        }
        // Stopping the engine blocks (it waits for slots): on the blocking pool, and the
        // server waits for it below.
        tokio::task::spawn_blocking(move || {
            if let Some(e) = engine_state.engine.get() {
                e.shutdown(grace);
            }
            let _ = stopped_tx.send(());
        });
    };
    axum::serve(listener, router(st.clone()))
        .with_graceful_shutdown(signal)
        .await?;
    let _ = stopped_rx.await;
    let _ = load.await;
    if let Some(msg) = failed.get() {
        return Err(msg.clone().into());
    }
    Ok(())
}
