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
}

pub fn bench(args: BenchArgs) -> Result<String, Box<dyn std::error::Error>> {
    let path = match args.model {
        Some(p) => p,
        None => super::default_model()?,
    };
    let threads = super::init_threads(args.threads);
    let kernels = crate::quant::simd::init()?;
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
    if args.json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "model": path.display().to_string(),
            "results": results,
        }))?);
    }
    let tot = crate::inspect::totals(&file);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(bench::table(&name, tot.bytes, tot.elements, &results))
}
