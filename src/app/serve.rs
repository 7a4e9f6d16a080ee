//! `ledge serve`: bind, load the model, serve the OpenAI-compatible API until SIGTERM or
//! Ctrl-C, then shut down gracefully.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::{ModelArg, Threads};
use crate::server::{serve as serve_http, ServeOptions};

/// Serve the OpenAI-compatible HTTP API.
///
/// Endpoints: /v1/chat/completions, /v1/completions (both also streamed), /v1/models,
/// /health and /metrics. Runs until SIGTERM or Ctrl-C, then lets running requests finish
/// for --shutdown-grace seconds.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests generating at once, each with its own KV cache.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Requests that may wait for a free slot; more are refused with 503.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Context size per slot in tokens (default: the model's, at most 4096).
    #[arg(short, long)]
    pub ctx: Option<usize>,
    /// Require `Authorization: Bearer KEY` (or set LEDGE_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub threads: Threads,
    #[command(flatten)]
    pub lora: super::LoraArgs,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Largest max_tokens a request may ask for (default: the context size).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Seconds running requests may go on after SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_grace: f64,
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!("shutting down: finishing running requests");
}

pub fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let model = args.model.resolve()?;
    if !model.exists() {
        return Err(format!("model file {} does not exist", model.display()).into());
    }
    let threads = args.threads.init();
    let kernels = crate::quant::simd::init()?;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (args.host.as_str(), args.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("cannot resolve host '{}'", args.host))
        })?;
    if !(0.0..=3600.0).contains(&args.shutdown_grace) {
        return Err("--shutdown-grace must be between 0 and 3600 seconds".into());
    }
    let opts = ServeOptions {
        model: model.clone(),
        parallel: args.parallel.max(1),
        queue: args.queue,
        ctx: args.ctx,
        // The environment keeps the key out of `ps` output.
        api_key: args
            .api_key
            .or_else(|| std::env::var("LEDGE_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        max_body: args.max_body,
        max_tokens: args.max_tokens,
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
        lora: args.lora.adapters.clone(),
        lora_scale: args.lora.scale,
    };
    // The async side only parses and relays; generation has its own slot threads and the
    // rayon pool, so two runtime threads are plenty.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        eprintln!(
            "listening on http://{bound} (loading {}; /health turns 200 when ready)",
            model.display()
        );
        let on_ready = move |l: &crate::server::engine::Loaded,
                             c: &crate::server::engine::EngineConfig| {
            eprintln!(
                "ready: model {} ({}), {} slot(s) × {} tokens of context, queue {}, {} threads, {} kernels",
                l.name,
                l.model.config.arch.name(),
                c.parallel,
                c.ctx,
                c.queue,
                threads,
                kernels.name
            );
        };
        serve_http(listener, opts, termination(), on_ready)
            .await
            .map_err(|e| -> Box<dyn std::error::Error> { e.to_string().into() })
    })?;
    eprintln!("stopped");
    Ok(())
}
