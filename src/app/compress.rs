//! `ledge compress`: parses the targets, runs the search (crate::compress) and prints the
//! table of what it tried; fails (nothing written) when no candidate meets the target.

use std::path::PathBuf;

use crate::compress::{
    self, candidate, choose, parse_percent, parse_size, CompressError, CompressOptions, Optimize,
    QualityTarget,
};

pub struct CompressArgs {
    pub source: PathBuf,
    pub out: PathBuf,
    pub max_kld: Option<f64>,
    pub max_ppl_increase: Option<String>,
    pub max_size: Option<String>,
    pub calib: PathBuf,
    pub eval: PathBuf,
    pub optimize: String,
    pub allow_same_text: bool,
    pub work_dir: Option<PathBuf>,
    pub keep: bool,
    pub ctx: usize,
    pub chunks: usize,
    pub calib_chunks: usize,
    pub candidates: Option<String>,
    pub no_early_stop: bool,
    pub threads: Option<usize>,
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
    super::init_threads(a.threads);
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
