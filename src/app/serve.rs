//! `ledge serve`: bind, load the model, serve the OpenAI-compatible API until SIGTERM or
//! Ctrl-C, then shut down gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::server::{serve as serve_http, ServeOptions};

pub struct ServeArgs {
    pub model: Option<PathBuf>,
    pub host: String,
    pub port: u16,
    pub parallel: usize,
    pub queue: usize,
    pub ctx: Option<usize>,
    pub api_key: Option<String>,
    pub threads: Option<usize>,
    pub max_body: usize,
    pub max_tokens: Option<usize>,
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
    let model = match args.model {
        Some(p) => p,
        None => super::default_model()?,
    };
    if !model.exists() {
        return Err(format!("model file {} does not exist", model.display()).into());
    }
    let threads = super::init_threads(args.threads);
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
