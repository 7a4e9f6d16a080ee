//! `ledge bench`: load a model and print the llama-bench-style table (or JSON).

use clap::Args;

use super::{ModelArg, Threads};
use crate::eval::bench;
use crate::gguf::GgufFile;
use crate::model::Model;

/// Measure prompt processing (pp) and generation (tg) speed, like llama-bench.
///
/// Each test runs --repetitions times and reports the mean ± standard deviation of
/// tokens/s; a second table gives the load time and time to first token, cold and warm.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Prompt lengths to time (comma-separated; 0 skips).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub pp: Vec<usize>,
    /// Generation lengths to time (comma-separated; 0 skips).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub tg: Vec<usize>,
    /// Repetitions per test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    #[command(flatten)]
    pub threads: Threads,
    #[command(flatten)]
    pub lora: super::LoraArgs,
    /// Print JSON instead of the markdown tables.
    #[arg(long)]
    pub json: bool,
    /// Prompt tokens for the time-to-first-token and load timings (0 skips them).
    #[arg(long, default_value_t = 64)]
    pub ttft_prompt: usize,
    /// Also measure the memory read bandwidth (buffer of MIB MiB, default 2048) and print
    /// tg's weight bytes/token, GB/s and % of it; without -m, only the bandwidth.
    #[arg(long = "bandwidth", value_name = "MIB", num_args = 0..=1, default_missing_value = "2048")]
    pub bandwidth_mib: Option<usize>,
}

pub fn bench(args: BenchArgs) -> Result<String, Box<dyn std::error::Error>> {
    let threads = args.threads.init();
    // Measured before the model is loaded: the buffer is freed again before the weights
    // take their memory.
    let bandwidth = match args.bandwidth_mib {
        Some(mib) => {
            let mut counts = vec![1, super::threads::default_threads().threads, threads];
            counts.sort_unstable();
            counts.dedup();
            crate::eval::bandwidth::measure(mib << 20, &counts, 5)?
        }
        None => Vec::new(),
    };
    let path = match args.model.path {
        Some(p) => p,
        None if args.bandwidth_mib.is_some() => {
            if args.json {
                return Ok(serde_json::to_string_pretty(
                    &serde_json::json!({ "bandwidth": bandwidth }),
                )? + "\n");
            }
            return Ok(crate::eval::bandwidth::table(&bandwidth));
        }
        None => super::default_model()?,
    };
    let kernels = crate::quant::simd::init()?;
    // Before the model is mapped below: a mapped file's pages cannot be dropped for the
    // cold-cache timing.
    let startup = if args.ttft_prompt > 0 {
        Some(bench::startup(&path, args.ttft_prompt, args.reps.max(1))?)
    } else {
        None
    };
    let file = GgufFile::open(&path)?;
    let mut model = Model::load(&file)?;
    args.lora.apply(&mut model, false)?;
    let model = model;
    let results = bench::run(
        &model,
        &args.pp,
        &args.tg,
        args.reps.max(1),
        threads,
        kernels.name,
    )?;
    let peak = crate::eval::sys::peak_rss_bytes();
    let streaming = bench::streaming(&results, bench::weight_bytes_per_token(&model), &bandwidth);
    if args.json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "model": path.display().to_string(),
            "results": results,
            "streaming": streaming,
            "bandwidth": bandwidth,
            "packed_bytes": model.packed.size_bytes(),
            "startup": startup,
            "peak_rss_bytes": peak,
        }))? + "\n");
    }
    let tot = crate::inspect::totals(&file);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = bench::table(&name, tot.bytes, tot.elements, &results);
    if !streaming.is_empty() {
        out += "\n";
        out += &bench::streaming_table(&name, &streaming);
    }
    if !bandwidth.is_empty() {
        out += "\n";
        out += &crate::eval::bandwidth::table(&bandwidth);
    }
    if let Some(s) = &startup {
        out += "\n";
        out += &bench::startup_table(&name, s, peak);
    }
    Ok(out)
}
