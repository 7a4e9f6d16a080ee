//! `ledge bench`: load a model and print the llama-bench-style table (or JSON).

use std::path::PathBuf;

use crate::eval::bench;
use crate::gguf::GgufFile;
use crate::model::Model;

pub struct BenchArgs {
    pub model: Option<PathBuf>,
    pub pp: Vec<usize>,
    pub tg: Vec<usize>,
    pub reps: usize,
    pub threads: Option<usize>,
    pub json: bool,
    /// Prompt length for the time-to-first-token measurement (0 skips start-up timings).
    pub ttft_prompt: usize,
    /// Also measure the memory read bandwidth (`eval::bandwidth`) with a buffer of this many
    /// MiB, and print the tg tests' streaming rate as a share of it; without a model, only
    /// the bandwidth is measured.
    pub bandwidth_mib: Option<usize>,
}

pub fn bench(args: BenchArgs) -> Result<String, Box<dyn std::error::Error>> {
    let threads = super::init_threads(args.threads);
    // Measured before the model is loaded: the buffer is freed again before the weights
    // take their memory.
    let bandwidth = match args.bandwidth_mib {
        Some(mib) => {
            let mut counts = vec![1, super::physical_cores(), threads];
            counts.sort_unstable();
            counts.dedup();
            crate::eval::bandwidth::measure(mib << 20, &counts, 5)?
        }
        None => Vec::new(),
    };
    let path = match args.model {
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
    let model = Model::load(&file)?;
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
