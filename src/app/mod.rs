//! What the command line does, as library functions: main.rs only parses arguments.

pub mod bench;
pub mod chat;
pub mod compress;
pub mod convert;
pub mod eval;
pub mod report;
pub mod run;
pub mod serve;

use std::path::{Path, PathBuf};

/// The model `ledge run` uses without `-m`.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no model given and the default model {0} is not in models/: fetch it with scripts/fetch-models.sh, or pass -m MODEL.gguf")]
    NoDefaultModel(String),
    #[error("{0}")]
    Other(String),
}

/// Finds the default model: `$LEDGE_MODELS`, then ./models, then models/ beside the
/// repository the binary was built in (target/<profile>/ledge → ../../models).
pub fn default_model() -> Result<PathBuf, AppError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("LEDGE_MODELS") {
        dirs.push(d.into());
    }
    dirs.push(PathBuf::from("models"));
    if let Ok(exe) = std::env::current_exe() {
        if let Some(repo) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            dirs.push(repo.join("models"));
        }
    }
    dirs.iter()
        .map(|d| d.join(DEFAULT_MODEL))
        .find(|p| p.exists())
        .ok_or_else(|| AppError::NoDefaultModel(DEFAULT_MODEL.to_string()))
}

/// Physical cores (hyper-threads share a core's execution units, and memory-bound GEMV gains
/// nothing from a second thread per core), within the CPUs this process may use.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let (mut phys, mut core) = (None, None);
    for line in info.lines() {
        let mut kv = line.splitn(2, ':').map(str::trim);
        match (kv.next(), kv.next()) {
            (Some("physical id"), Some(v)) => phys = Some(v.to_string()),
            (Some("core id"), Some(v)) => core = Some(v.to_string()),
            (Some(""), None) | (None, _) => {
                if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                    cores.insert((p, c));
                }
            }
            _ => {}
        }
    }
    if let (Some(p), Some(c)) = (phys, core) {
        cores.insert((p, c));
    }
    match cores.len() {
        0 => logical,
        n => n.min(logical),
    }
}

/// Sizes the global rayon pool: `threads`, or one per physical core.
pub fn init_threads(threads: Option<usize>) -> usize {
    let n = threads.filter(|&n| n > 0).unwrap_or_else(physical_cores);
    // A second call (tests, a library user) keeps the first pool; that is fine.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    rayon::current_num_threads()
}

/// `ledge synth`: writes a random-weight model of a known shape, with a progress line.
pub fn synth(
    arch: &str,
    shape: &str,
    ty: &str,
    output: &std::path::Path,
    layers: Option<usize>,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use crate::model::synth;
    if arch != "llama" {
        return Err(format!("synth: unsupported architecture {arch:?} (llama)").into());
    }
    let shape = synth::shape(shape)
        .ok_or_else(|| synth::SynthError::UnknownShape(shape.to_string()))?
        .clone();
    let opts = synth::SynthOptions {
        shape,
        plan: synth::TypePlan::parse(ty)?,
        layers,
        seed,
    };
    let t0 = std::time::Instant::now();
    let path = synth::write(&opts, output, &mut |i, n, bytes| {
        let mb = bytes as f64 / 1e6;
        eprint!(
            "\rsynth: {i}/{n} tensors, {mb:.0} MB, {:.0} MB/s   ",
            mb / t0.elapsed().as_secs_f64().max(1e-3)
        );
    })?;
    eprintln!("\nsynth: wrote {}", path.display());
    Ok(())
}
