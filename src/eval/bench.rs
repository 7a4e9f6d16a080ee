//! `ledge bench`: prompt-processing and generation throughput, measured the way llama-bench
//! measures them so the two tables can sit side by side: `pp N` runs one batch of N tokens
//! through an empty cache, `tg N` generates N tokens one at a time; each test is repeated and
//! reported as mean ± standard deviation of tokens/s.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::sys;
use crate::gguf::GgufFile;
use crate::model::{Logits, Model, ModelError};
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// "pp512", "tg128".
    pub test: String,
    pub n_tokens: usize,
    pub threads: usize,
    pub kernels: &'static str,
    pub tokens_per_second_mean: f64,
    pub tokens_per_second_sd: f64,
    pub samples: Vec<f64>,
    /// tg only: the fastest single token's time. On a shared machine the fastest token is
    /// the one least disturbed, comparable with the bandwidth bench's best pass.
    pub best_token_ms: Option<f64>,
}

/// Deterministic token ids spread over the vocabulary (llama-bench uses random ones too).
fn tokens(n: usize, n_vocab: usize) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n_vocab as u64) as u32
        })
        .collect()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Prompt processing: `n` tokens in one batch.
pub fn bench_pp(model: &Model, n: usize, reps: usize) -> Result<Vec<f64>, ModelError> {
    let toks = tokens(n, model.config.n_vocab);
    let mut cache = model.new_cache(n.max(1));
    // One untimed run warms caches and page-faults the weights in.
    model.forward(&mut cache, &toks, Logits::Last)?;
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        cache.clear();
        let t = Instant::now();
        model.forward(&mut cache, &toks, Logits::Last)?;
        out.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// Text generation: `n` tokens one at a time after a 1-token start.
pub fn bench_tg(model: &Model, n: usize, reps: usize) -> Result<Vec<f64>, ModelError> {
    Ok(bench_tg_timed(model, n, reps)?.0)
}

/// As `bench_tg`, also returning the fastest single token's time in seconds.
pub fn bench_tg_timed(model: &Model, n: usize, reps: usize) -> Result<(Vec<f64>, f64), ModelError> {
    let mut best = f64::INFINITY;
    let toks = tokens(n + 1, model.config.n_vocab);
    let mut cache = model.new_cache(n + 1);
    model.forward(&mut cache, &toks[..1], Logits::Last)?;
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        cache.clear();
        let t = Instant::now();
        for &tok in &toks[..n] {
            let t1 = Instant::now();
            model.forward(&mut cache, &[tok], Logits::Last)?;
            best = best.min(t1.elapsed().as_secs_f64());
        }
        out.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok((out, best))
}

pub fn run(
    model: &Model,
    pp: &[usize],
    tg: &[usize],
    reps: usize,
    threads: usize,
    kernels: &'static str,
) -> Result<Vec<BenchResult>, ModelError> {
    let mut results = Vec::new();
    let mut push = |test: String, n: usize, samples: Vec<f64>, best: Option<f64>| {
        let (m, sd) = mean_sd(&samples);
        results.push(BenchResult {
            test,
            n_tokens: n,
            threads,
            kernels,
            tokens_per_second_mean: m,
            tokens_per_second_sd: sd,
            samples,
            best_token_ms: best.map(|s| s * 1e3),
        });
    };
    for &n in pp.iter().filter(|&&n| n > 0) {
        push(format!("pp{n}"), n, bench_pp(model, n, reps)?, None);
    }
    for &n in tg.iter().filter(|&&n| n > 0) {
        let (samples, best) = bench_tg_timed(model, n, reps)?;
        push(format!("tg{n}"), n, samples, Some(best));
    }
    Ok(results)
}

/// Start-up latency: how long until a model can answer, with the file's pages cold (dropped
/// from the page cache first) and warm.
#[derive(Clone, Debug, Serialize)]
pub struct Startup {
    /// open + Model::load + tokenizer with a cold page cache (None: the cache could not be
    /// dropped, e.g. not Linux).
    pub load_cold_ms: Option<f64>,
    /// Share of the file still cached when the cold measurement began (0 when the drop
    /// worked; pages another process has mapped stay).
    pub cold_cached_fraction: Option<f64>,
    /// From nothing to the first token's logits with a cold cache: load plus the prompt's
    /// prefill, which faults in every weight from disk.
    pub first_token_cold_ms: Option<f64>,
    pub load_warm_ms: f64,
    /// Time to first token of a loaded model: prefill of `prompt_tokens` tokens, mean of
    /// the repetitions (weights warm).
    pub ttft_ms: f64,
    pub ttft_ms_sd: f64,
    pub prompt_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}

fn load_and_first_token(path: &Path, prompt: usize) -> Result<(f64, f64), StartupError> {
    let t0 = Instant::now();
    let f = GgufFile::open(path)?;
    let model = Model::load(&f)?;
    let _tok = Tokenizer::from_gguf(&f)?;
    let load = t0.elapsed().as_secs_f64() * 1e3;
    let toks = tokens(prompt.max(1), model.config.n_vocab);
    let mut cache = model.new_cache(toks.len());
    model.forward(&mut cache, &toks, Logits::Last)?;
    Ok((load, t0.elapsed().as_secs_f64() * 1e3))
}

/// Measures start-up. Call it before this process maps `path` otherwise: mapped pages
/// cannot be dropped from the cache.
pub fn startup(path: &Path, prompt: usize, reps: usize) -> Result<Startup, StartupError> {
    let (mut load_cold_ms, mut first_token_cold_ms, mut cold_cached_fraction) = (None, None, None);
    if sys::drop_from_page_cache(path).is_ok() {
        cold_cached_fraction = sys::cached_fraction(path).ok();
        let (l, t) = load_and_first_token(path, prompt)?;
        load_cold_ms = Some(l);
        first_token_cold_ms = Some(t);
    }
    let t0 = Instant::now();
    let f = GgufFile::open(path)?;
    let model = Model::load(&f)?;
    let _tok = Tokenizer::from_gguf(&f)?;
    let load_warm_ms = t0.elapsed().as_secs_f64() * 1e3;
    let toks = tokens(prompt.max(1), model.config.n_vocab);
    let mut cache = model.new_cache(toks.len());
    // Untimed: the warm numbers are for weights already in memory.
    model.forward(&mut cache, &toks, Logits::Last)?;
    let mut samples = Vec::new();
    for _ in 0..reps.max(1) {
        cache.clear();
        let t = Instant::now();
        model.forward(&mut cache, &toks, Logits::Last)?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (ttft_ms, ttft_ms_sd) = mean_sd(&samples);
    Ok(Startup {
        load_cold_ms,
        cold_cached_fraction,
        first_token_cold_ms,
        load_warm_ms,
        ttft_ms,
        ttft_ms_sd,
        prompt_tokens: toks.len(),
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1} ms"))
}

/// The start-up and memory table printed under the throughput table.
pub fn startup_table(model_name: &str, s: &Startup, peak_rss: Option<u64>) -> String {
    format!(
        "| model | load (cold) | load (warm) | first token (cold) | TTFT p{} (warm) | peak RSS |\n\
         |---|---:|---:|---:|---:|---:|\n\
         | {model_name} | {} | {:.1} ms | {} | {:.1} ± {:.1} ms | {} |\n",
        s.prompt_tokens,
        ms(s.load_cold_ms),
        s.load_warm_ms,
        ms(s.first_token_cold_ms),
        s.ttft_ms,
        s.ttft_ms_sd,
        peak_rss.map_or_else(
            || "n/a".to_string(),
            |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
        ),
    )
}

/// Weight bytes one generated token streams: every matmul weight of every layer (of a
/// mixture of experts, the router and the experts a token uses) and the output matrix once,
/// as the matmul reads it (the packed copy's size where the model has one, else the GGUF
/// blocks). The embedding row (a few KB) and the KV cache are left out.
pub fn weight_bytes_per_token(model: &Model) -> u64 {
    model.read_bytes_per_token() as u64
}

/// How fast generation streams the weights: bytes per token × tokens per second.
#[derive(Clone, Debug, Serialize)]
pub struct Streaming {
    pub test: String,
    pub threads: usize,
    pub weight_bytes_per_token: u64,
    pub ms_per_token: f64,
    pub gb_s: f64,
    /// The read bandwidth it is compared with (best pass, same thread count), if measured.
    pub read_bandwidth_gb_s: Option<f64>,
    pub percent_of_bandwidth: Option<f64>,
    /// The same for the fastest token (`BenchResult::best_token_ms`) against the bandwidth's
    /// best pass: the less noisy pair on a busy machine.
    pub best_token_gb_s: Option<f64>,
    pub best_token_percent_of_bandwidth: Option<f64>,
}

/// The streaming rate of each tg result; `bandwidth` (GB/s per thread count) if measured.
pub fn streaming(
    results: &[BenchResult],
    bytes_per_token: u64,
    bandwidth: &[super::bandwidth::Bandwidth],
) -> Vec<Streaming> {
    results
        .iter()
        .filter(|r| r.test.starts_with("tg"))
        .map(|r| {
            let gb_s = bytes_per_token as f64 * r.tokens_per_second_mean / 1e9;
            let bw = bandwidth
                .iter()
                .find(|b| b.threads == r.threads)
                .map(|b| b.best_gb_s);
            let best_gb_s = r
                .best_token_ms
                .map(|ms| bytes_per_token as f64 / (ms / 1e3) / 1e9);
            Streaming {
                best_token_gb_s: best_gb_s,
                best_token_percent_of_bandwidth: best_gb_s.zip(bw).map(|(g, b)| 100.0 * g / b),
                test: r.test.clone(),
                threads: r.threads,
                weight_bytes_per_token: bytes_per_token,
                ms_per_token: 1e3 / r.tokens_per_second_mean,
                gb_s,
                read_bandwidth_gb_s: bw,
                percent_of_bandwidth: bw.map(|b| 100.0 * gb_s / b),
            }
        })
        .collect()
}

/// The table printed under the throughput table for the tg tests.
pub fn streaming_table(model_name: &str, s: &[Streaming]) -> String {
    let mut out = String::from(
        "| model | threads | test | weight MB/token | ms/token | GB/s | read bandwidth GB/s | % of bandwidth | best token GB/s | % (best token) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in s {
        let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".into(), |v| format!("{v:.1}{unit}"));
        out += &format!(
            "| {model_name} | {} | {} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            r.threads,
            r.test,
            r.weight_bytes_per_token as f64 / 1e6,
            r.ms_per_token,
            r.gb_s,
            opt(r.read_bandwidth_gb_s, ""),
            opt(r.percent_of_bandwidth, "%"),
            opt(r.best_token_gb_s, ""),
            opt(r.best_token_percent_of_bandwidth, "%"),
        );
    }
    out
}

/// A markdown table in llama-bench's layout.
pub fn table(model_name: &str, size_bytes: u64, params: u64, results: &[BenchResult]) -> String {
    let mut s = String::from(
        "| model | size | params | kernels | threads | test | t/s |\n|---|---:|---:|---|---:|---:|---:|\n",
    );
    for r in results {
        s += &format!(
            "| {model_name} | {:.2} MiB | {:.2} M | {} | {} | {} | {:.2} ± {:.2} |\n",
            size_bytes as f64 / (1 << 20) as f64,
            params as f64 / 1e6,
            r.kernels,
            r.threads,
            r.test,
            r.tokens_per_second_mean,
            r.tokens_per_second_sd
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd() {
        let (m, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        assert!((sd - 2.138).abs() < 1e-3);
        assert_eq!(mean_sd(&[3.0]), (3.0, 0.0));
    }

    #[test]
    fn bench_tokens_cover_the_vocabulary_deterministically() {
        let a = tokens(1000, 50);
        assert_eq!(a, tokens(1000, 50));
        assert!(a.iter().all(|&t| t < 50));
        assert!((0..50).all(|t| a.contains(&t)));
    }
}
