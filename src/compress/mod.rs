//! `ledge compress`: find the smallest (or fastest) file that meets a quality target.
//!
//! A layer above convert/ (which makes the candidate files) and eval/ (which measures
//! them). The pipeline (search.rs):
//! 1. baseline: an HF folder is converted once to an F16 GGUF in the work folder; a GGUF
//!    source is the baseline itself (a quantized one is allowed: candidates are then
//!    re-quantized from it, and say so);
//! 2. the baseline's logits on the evaluation text, computed once and reused for every
//!    candidate (exact KL divergence over the whole vocabulary);
//! 3. calibration statistics (imatrix) from the calibration text, once;
//! 4. candidates (candidate.rs) from the least to the most aggressive, each quantized into
//!    the work folder and measured: size, bits per weight, PPL and its change, KLD mean and
//!    99th percentile, top-1 agreement, and with `--optimize speed` tokens/s;
//! 5. the choice (choose.rs): the smallest (or fastest) candidate meeting every target,
//!    ties broken by size, then KLD, then ladder order — the same inputs give the same
//!    choice; it is renamed (or copied, then renamed) to the output path.
//!
//! Early stop: candidates come in rungs (one recipe, with and without the imatrix). After a
//! rung where no candidate meets the quality target, one more rung is tried; a second
//! failing rung in a row ends the search (`--no-early-stop` tries them all). Files over
//! `--max-size` are not evaluated and do not count as failures.

pub mod candidate;
pub mod choose;
pub mod search;
pub mod table;

pub use candidate::{Candidate, PruneSpec};
pub use search::{compress, CompressOptions, Outcome};

use std::path::PathBuf;

/// What "good enough" means.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QualityTarget {
    /// Largest mean KL divergence from the baseline (nats per token).
    pub max_kld: Option<f64>,
    /// Largest perplexity increase over the baseline, in percent.
    pub max_ppl_increase: Option<f64>,
    /// Largest file size in bytes.
    pub max_size: Option<u64>,
}

/// What the choice optimizes among the candidates that meet the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Optimize {
    #[default]
    Size,
    /// Highest generation speed (tg tokens/s, measured per candidate: timings are noisy, so
    /// unlike `Size` the choice may differ between runs when two candidates are close).
    Speed,
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("{0}")]
    Usage(String),
    #[error("--calib and --eval are the same text ({0}): calibrating on the evaluation text overstates the quality; give a different held-out text, or pass --allow-same-text")]
    SameText(String),
    #[error("{}: {why}", path.display())]
    BadText { path: PathBuf, why: String },
    #[error("{}: not a Hugging Face model folder or a GGUF file: {why}", path.display())]
    BadSource { path: PathBuf, why: String },
    #[error("no candidate meets the target ({target}); the best found: {best}. Nothing was written to {}", out.display())]
    Unmeetable {
        target: String,
        best: String,
        out: PathBuf,
    },
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Convert(#[from] crate::convert::ConvertError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
}

/// Parses "80MB", "80 MiB", "1.5G", "123456" (bytes). MB/GB are powers of ten, MiB/GiB of
/// two; a bare K/M/G means the power of ten.
pub fn parse_size(s: &str) -> Result<u64, CompressError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| CompressError::Usage(format!("--max-size {s:?}: expected e.g. 80MB")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(CompressError::Usage(format!(
                "--max-size {s:?}: unknown unit {u:?} (B, KB, MB, GB, KiB, MiB, GiB)"
            )))
        }
    };
    let v = n * mult;
    if !(v.is_finite() && v >= 1.0) {
        return Err(CompressError::Usage(format!(
            "--max-size {s:?}: must be positive"
        )));
    }
    Ok(v.round() as u64)
}

/// Parses "5%", "5" (percent) for `--max-ppl-increase`.
pub fn parse_percent(s: &str) -> Result<f64, CompressError> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| CompressError::Usage(format!("{s:?}: expected a percentage, e.g. 5%")))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(CompressError::Usage(format!("{s:?}: must be ≥ 0")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_percents() {
        assert_eq!(parse_size("80MB").unwrap(), 80_000_000);
        assert_eq!(parse_size("80 MiB").unwrap(), 80 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("80XB").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(parse_percent("5%").unwrap(), 5.0);
        assert_eq!(parse_percent("2.5").unwrap(), 2.5);
        assert!(parse_percent("-1%").is_err());
    }
}
