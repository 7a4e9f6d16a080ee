//! What the command line does, as library functions. Each command's module holds its
//! arguments (one clap `Args` struct, with the help text) next to the code that runs it;
//! main.rs only lists the commands. The groups several commands share are here.

pub mod bench;
pub mod calibrate;
pub mod chat;
pub mod compress;
pub mod convert;
pub mod distill;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod report;
pub mod run;
pub mod serve;
pub mod synth;
pub mod threads;

use std::path::{Path, PathBuf};

use clap::Args;

use crate::generate::sampler::Limits;
use crate::generate::SamplerConfig;

/// The model `ledge run` uses without `-m`.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no model given and the default model {0} is not in models/: fetch it with scripts/fetch-models.sh, or pass -m MODEL.gguf")]
    NoDefaultModel(String),
    #[error("{0}")]
    Other(String),
}

/// `-m/--model`, for the commands that fall back to the default model.
#[derive(Args, Clone, Debug, Default)]
pub struct ModelArg {
    /// The GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    pub path: Option<PathBuf>,
}

impl ModelArg {
    /// The path given, or the default model's.
    pub fn resolve(&self) -> Result<PathBuf, AppError> {
        self.path.clone().map_or_else(default_model, Ok)
    }
}

/// `--lora` / `--lora-scale`: LoRA adapters (llama.cpp's GGUF adapter format) applied at
/// run time.
#[derive(Args, Clone, Debug)]
pub struct LoraArgs {
    /// A LoRA adapter GGUF to apply to the model (repeat for several).
    #[arg(long = "lora", value_name = "ADAPTER")]
    pub adapters: Vec<PathBuf>,
    /// How much of the adapters' deltas to add (1 = as trained, 0 = none).
    #[arg(long = "lora-scale", value_name = "S", default_value_t = 1.0,
          allow_negative_numbers = true, value_parser = finite)]
    pub scale: f32,
}

impl Default for LoraArgs {
    fn default() -> Self {
        LoraArgs {
            adapters: Vec::new(),
            scale: 1.0,
        }
    }
}

impl LoraArgs {
    /// Reads each adapter and attaches it to `model`; says on stderr what was applied
    /// (and which norm vectors were skipped) where `verbose`.
    pub fn apply(
        &self,
        model: &mut crate::model::Model,
        verbose: bool,
    ) -> Result<(), crate::model::lora::LoraError> {
        for path in &self.adapters {
            let ad = crate::model::lora::LoraAdapter::open(path)?;
            let n = model.attach_lora(&ad, self.scale)?;
            if !ad.skipped.is_empty() {
                eprintln!(
                    "note: {}: {} norm vector(s) not applied ({}…), as llama.cpp",
                    path.display(),
                    ad.skipped.len(),
                    ad.skipped[0]
                );
            }
            if verbose {
                eprintln!(
                    "lora: {} on {n} matrices (alpha {}, scale {})",
                    path.display(),
                    ad.alpha,
                    self.scale
                );
            }
        }
        Ok(())
    }
}

fn finite(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a finite number")),
    }
}

/// `-t/--threads`.
#[derive(Args, Clone, Debug, Default)]
pub struct Threads {
    /// Worker threads (default: one per performance core; `-v` says what was chosen).
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub n: Option<usize>,
}

impl Threads {
    /// Sizes the global pool (see `init_threads`); returns its size.
    pub fn init(&self) -> usize {
        init_threads(self.n)
    }
}

/// What `ledge run` and `ledge chat` share: the model, threads, context and sampling.
#[derive(Args, Clone, Debug)]
pub struct Generation {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub threads: Threads,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short, long)]
    pub ctx: Option<usize>,
    #[command(flatten)]
    pub sampling: Sampling,
}

impl Generation {
    /// The context asked for, else the model's trained one capped at 4096: the KV cache is
    /// allocated whole, and a 128k-token one would take gigabytes few prompts need.
    pub fn ctx_for(&self, config: &crate::model::ModelConfig) -> usize {
        self.ctx.unwrap_or(config.ctx_train.min(4096)).max(1)
    }
}

/// The sampling flags of `ledge run` and `ledge chat`. Values outside a setting's `Limits`
/// are refused while parsing, with the flag and the range in the message.
#[derive(Args, Clone, Debug)]
pub struct Sampling {
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true,
          value_parser = |s: &str| within(s, Limits::TEMPERATURE))]
    pub temp: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40, allow_negative_numbers = true, value_parser = count)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true,
          value_parser = |s: &str| within(s, Limits::TOP_P))]
    pub top_p: f32,
    /// Drop tokens less likely than min-p × the most likely one.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true,
          value_parser = |s: &str| within(s, Limits::MIN_P))]
    pub min_p: f32,
    /// Penalize recently seen tokens (1 = off; above 1 discourages repeats).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true,
          value_parser = |s: &str| within(s, Limits::REPEAT_PENALTY))]
    pub repeat_penalty: f32,
    /// Subtracted from a token's logit per occurrence in the window.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true,
          value_parser = |s: &str| within(s, Limits::PENALTY))]
    pub frequency_penalty: f32,
    /// Subtracted from a token's logit once if it occurs in the window.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true,
          value_parser = |s: &str| within(s, Limits::PENALTY))]
    pub presence_penalty: f32,
    /// How many recent tokens the penalties consider.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true, value_parser = count)]
    pub penalty_last_n: usize,
    /// Random seed: the same seed and settings give the same text.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
}

/// A number within `limits`; clap puts the flag's name before the message.
fn within(s: &str, limits: Limits) -> Result<f32, String> {
    let x: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number, got {s}"))?;
    limits.check(x)
}

/// A count, with a range message for a negative one rather than "invalid digit".
fn count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("must be >= 0, got {n}")),
        _ => s
            .trim()
            .parse()
            .map_err(|_| format!("expected a whole number, got {s}")),
    }
}

impl From<Sampling> for SamplerConfig {
    fn from(s: Sampling) -> Self {
        SamplerConfig {
            temperature: s.temp,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            penalty_window: s.penalty_last_n,
            seed: s.seed,
        }
    }
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

/// Sizes the global rayon pool: `threads`, or one per performance core (`threads.rs`).
pub fn init_threads(threads: Option<usize>) -> usize {
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| threads::default_threads().threads);
    // A second call (tests, a library user) keeps the first pool; that is fine.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    rayon::current_num_threads()
}
