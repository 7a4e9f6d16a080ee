//! What the command line does, as library functions: main.rs only parses arguments.

pub mod bench;
pub mod chat;
pub mod run;

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

/// Sizes the global rayon pool: `threads`, or one per available core.
pub fn init_threads(threads: Option<usize>) -> usize {
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // A second call (tests, a library user) keeps the first pool; that is fine.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    rayon::current_num_threads()
}
