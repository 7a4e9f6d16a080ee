//! The table `ledge compress` prints: the baseline, then every candidate in the order tried,
//! with a "why" column saying what became of it.

use super::choose::{failures, Measured};
use super::{Candidate, Optimize, QualityTarget};
use crate::eval::Estimate;

/// The baseline's line of the table.
pub struct BaselineRow {
    pub name: String,
    pub size_bytes: u64,
    pub bits_per_weight: f64,
    pub ppl: Estimate,
    pub tg_tokens_per_second: Option<f64>,
    pub pp_tokens_per_second: Option<f64>,
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1e6)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.1}"))
}

/// The markdown table. `chosen` is the index of the chosen row; `not_tried` the candidates
/// the early stop left out.
pub fn markdown(
    base: &BaselineRow,
    rows: &[Measured],
    not_tried: &[Candidate],
    chosen: Option<usize>,
    t: &QualityTarget,
    optimize: Optimize,
) -> String {
    let speed = optimize == Optimize::Speed;
    let mut s = String::from(
        "| # | candidate | size MB | bits/weight | PPL | ΔPPL | KLD mean | KLD p99 | top-1 |",
    );
    s += if speed {
        " pp t/s | tg t/s | why |\n"
    } else {
        " why |\n"
    };
    s += "|---:|---|---:|---:|---:|---:|---:|---:|---:|";
    s += if speed { "---:|---:|---|\n" } else { "---|\n" };
    s += &format!(
        "| 0 | {} (baseline) | {} | {:.2} | {:.3} ± {:.3} | – | 0 | 0 | 100% |{} baseline |\n",
        base.name,
        mb(base.size_bytes),
        base.bits_per_weight,
        base.ppl.value,
        base.ppl.stderr,
        if speed {
            format!(
                " {} | {} |",
                opt(base.pp_tokens_per_second),
                opt(base.tg_tokens_per_second)
            )
        } else {
            String::new()
        }
    );
    for (i, m) in rows.iter().enumerate() {
        let (ppl, dppl, kld, p99, top1) = match &m.quality {
            Some(q) => (
                format!("{:.3} ± {:.3}", q.ppl.value, q.ppl.stderr),
                format!("{:+.2}%", q.ppl_increase_pct),
                format!("{:.4}", q.kld.kld_mean.value),
                format!("{:.3}", q.kld.kld_p99),
                format!("{:.2}%", 100.0 * q.kld.same_top.value),
            ),
            None => ("–".into(), "–".into(), "–".into(), "–".into(), "–".into()),
        };
        let f = failures(m, t);
        let why = if Some(i) == chosen {
            match optimize {
                Optimize::Size => "**chosen** (smallest that meets the target)".to_string(),
                Optimize::Speed => "**chosen** (fastest that meets the target)".to_string(),
            }
        } else if m.quality.is_none() {
            format!(
                "{} (not evaluated)",
                f.iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        } else if f.is_empty() {
            "meets".to_string()
        } else {
            f.iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        s += &format!(
            "| {} | {} | {} | {:.2} | {ppl} | {dppl} | {kld} | {p99} | {top1} |{} {why} |\n",
            i + 1,
            m.candidate,
            mb(m.size_bytes),
            m.bits_per_weight,
            if speed {
                format!(
                    " {} | {} |",
                    opt(m.pp_tokens_per_second),
                    opt(m.tg_tokens_per_second)
                )
            } else {
                String::new()
            }
        );
    }
    for c in not_tried {
        s += &format!(
            "| – | {c} | – | – | – | – | – | – | – |{} not tried (early stop: two failing rungs in a row) |\n",
            if speed { " – | – |" } else { "" }
        );
    }
    s
}
