//! `ledge compress`: parses the targets, runs the search (crate::compress) and prints the
//! table of what it tried; fails (nothing written) when no candidate meets the target.

use std::path::PathBuf;

use clap::Args;

use super::Threads;
use crate::compress::{
    self, candidate, choose, parse_percent, parse_size, CompressError, CompressOptions, Optimize,
    QualityTarget,
};

/// Find the smallest (or fastest) quantized file that meets a quality target.
///
/// The baseline's logits on --eval are computed once, calibration on --calib once, then
/// candidates are tried from the least to the most aggressive (Q8_0, Q6_K, Q5_K_M, Q4_K_M,
/// Q4_K_S, Q4_0, Q3_K_M, Q2_K; each without and with the imatrix where it weights any
/// tensor), each measured (size, PPL, KLD, top-1); prints the table of every candidate and
/// why it was chosen or not. Early stop: after a rung (one recipe, with and without the
/// imatrix) that misses the quality target, one more rung is tried; two failing rungs in a
/// row end the search. Exits non-zero and writes nothing when no candidate meets the target.
#[derive(Args, Debug)]
pub struct CompressArgs {
    /// A Hugging Face model folder (converted once to an F16 baseline) or a GGUF (the
    /// baseline itself; a quantized one is re-quantized).
    pub source: PathBuf,
    /// The GGUF to write.
    #[arg(short = 'o', long = "output")]
    pub out: PathBuf,
    /// Largest mean KL divergence from the baseline (nats/token).
    #[arg(long, required_unless_present = "max_ppl_increase")]
    pub max_kld: Option<f64>,
    /// Largest perplexity increase over the baseline, e.g. 5%.
    #[arg(long)]
    pub max_ppl_increase: Option<String>,
    /// Largest file size, e.g. 80MB (MB = 10^6 bytes, MiB = 2^20).
    #[arg(long)]
    pub max_size: Option<String>,
    /// Calibration text (for the imatrix); must differ from --eval.
    #[arg(long)]
    pub calib: PathBuf,
    /// Held-out evaluation text.
    #[arg(long)]
    pub eval: PathBuf,
    /// What to minimize among the files meeting the target: size or speed.
    ///
    /// speed is tg tokens/s, measured per candidate; noisy, so close calls may differ
    /// between runs.
    #[arg(long, default_value = "size")]
    pub optimize: String,
    /// Allow --calib and --eval to be the same text.
    #[arg(long)]
    pub allow_same_text: bool,
    /// Where the baseline and candidates are written (default: OUT.work, removed after).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work files (baseline, imatrix, every candidate).
    #[arg(long)]
    pub keep: bool,
    /// Tokens per chunk.
    #[arg(short, long, default_value_t = 512)]
    pub ctx: usize,
    /// Evaluation chunks (0 = all the text holds).
    ///
    /// The default is a sample (4 × 255 scored tokens) because every candidate costs
    /// chunks × ctx tokens of inference.
    #[arg(long, default_value_t = 4)]
    pub chunks: usize,
    /// Calibration chunks (0 = all the text holds).
    #[arg(long, default_value_t = 4)]
    pub calib_chunks: usize,
    /// Candidates to try instead of the default ladder, in order.
    ///
    /// TYPE[+imatrix][+ffnPCT][+layersN], e.g.
    /// Q8_0,Q4_0+imatrix,Q4_K_M+imatrix+ffn10,Q4_K_M+imatrix+layers1.
    #[arg(long)]
    pub candidates: Option<String>,
    /// Try every candidate instead of stopping after two failing rungs.
    #[arg(long)]
    pub no_early_stop: bool,
    #[command(flatten)]
    pub threads: Threads,
}

/// 0 means "all the text holds".
fn all_if_zero(n: usize) -> Option<usize> {
    (n > 0).then_some(n)
}

pub fn options(a: CompressArgs) -> Result<CompressOptions, CompressError> {
    if let Some(k) = a.max_kld {
        if !(k.is_finite() && k >= 0.0) {
            return Err(CompressError::Usage(format!(
                "--max-kld {k}: must be a number ≥ 0"
            )));
        }
    }
    let optimize = match a.optimize.to_ascii_lowercase().as_str() {
        "size" => Optimize::Size,
        "speed" => Optimize::Speed,
        o => {
            return Err(CompressError::Usage(format!(
                "--optimize {o:?}: expected size or speed"
            )))
        }
    };
    Ok(CompressOptions {
        source: a.source,
        out: a.out,
        target: QualityTarget {
            max_kld: a.max_kld,
            max_ppl_increase: a
                .max_ppl_increase
                .as_deref()
                .map(parse_percent)
                .transpose()?,
            max_size: a.max_size.as_deref().map(parse_size).transpose()?,
        },
        calib: a.calib,
        eval: a.eval,
        optimize,
        allow_same_text: a.allow_same_text,
        work_dir: a.work_dir,
        keep: a.keep,
        ctx: a.ctx,
        chunks: all_if_zero(a.chunks),
        calib_chunks: all_if_zero(a.calib_chunks),
        candidates: a
            .candidates
            .as_deref()
            .map(candidate::parse_list)
            .transpose()?,
        early_stop: !a.no_early_stop,
    })
}

fn target_text(t: &QualityTarget) -> String {
    let mut v = Vec::new();
    if let Some(k) = t.max_kld {
        v.push(format!("KLD ≤ {k}"));
    }
    if let Some(p) = t.max_ppl_increase {
        v.push(format!("PPL increase ≤ {p}%"));
    }
    if let Some(s) = t.max_size {
        v.push(format!("size ≤ {:.1} MB", s as f64 / 1e6));
    }
    v.join(", ")
}

/// Runs `ledge compress`; returns what to print on stdout (the table and the choice).
pub fn compress(a: CompressArgs) -> Result<String, Box<dyn std::error::Error>> {
    a.threads.init();
    crate::quant::simd::init()?;
    let o = options(a)?;
    let r = compress::compress(&o)?;
    let mut s = format!(
        "Target: {}. Measured on {} ({} chunks of {} tokens, second half scored); KLD is \
         exact, against the baseline; size in MB (10^6 bytes).{}\n\n{}",
        target_text(&o.target),
        o.eval.display(),
        r.n_chunks,
        o.ctx,
        if r.requantized {
            " The baseline was already quantized: candidates were re-quantized from it."
        } else {
            ""
        },
        r.table
    );
    match r.chosen {
        Some(i) => {
            s += &format!(
                "\nchose {} → {}\n",
                choose::describe(&r.rows[i]),
                o.out.display()
            );
            Ok(s)
        }
        None => {
            print!("{s}");
            let best = choose::best_effort(&r.rows, &o.target).map_or_else(
                || "nothing was evaluated".into(),
                |i| choose::describe(&r.rows[i]),
            );
            Err(CompressError::Unmeetable {
                target: target_text(&o.target),
                best,
                out: o.out,
            }
            .into())
        }
    }
}
