//! Judging measured candidates against the target, and choosing one. Pure functions of the
//! measurements: the same numbers always give the same choice.

use std::cmp::Ordering;

use serde::Serialize;

use super::{Candidate, Optimize, QualityTarget};
use crate::eval::{Estimate, KldStats};

/// Quality measured on the evaluation text.
#[derive(Clone, Debug, Serialize)]
pub struct Quality {
    pub ppl: Estimate,
    /// (PPL / PPL(baseline) − 1) × 100.
    pub ppl_increase_pct: f64,
    pub kld: KldStats,
}

/// One candidate after it was made (and, unless over the size limit, measured).
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    #[serde(serialize_with = "as_string")]
    pub candidate: Candidate,
    pub size_bytes: u64,
    pub bits_per_weight: f64,
    /// The tensor types holding its bytes ("Q5_0 60% + Q8_0 30% + …").
    pub recipe: String,
    /// None when it was not evaluated (over --max-size).
    pub quality: Option<Quality>,
    pub pp_tokens_per_second: Option<f64>,
    pub tg_tokens_per_second: Option<f64>,
}

fn as_string<S: serde::Serializer>(c: &Candidate, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&c.to_string())
}

/// Why a candidate does not meet the target.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    OverSize { size: u64, max: u64 },
    Kld { kld: f64, max: f64 },
    Ppl { pct: f64, max: f64 },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Failure::OverSize { size, max } => write!(
                f,
                "over size {:.1} MB > {:.1} MB",
                size as f64 / 1e6,
                max as f64 / 1e6
            ),
            Failure::Kld { kld, max } => write!(f, "fails KLD {kld:.4} > {max}"),
            Failure::Ppl { pct, max } => write!(f, "fails PPL {pct:+.2}% > +{max}%"),
        }
    }
}

/// Every way `m` misses `t` (empty: it meets it). An unevaluated candidate can only fail on
/// size.
pub fn failures(m: &Measured, t: &QualityTarget) -> Vec<Failure> {
    let mut v = Vec::new();
    if let Some(max) = t.max_size.filter(|&max| m.size_bytes > max) {
        v.push(Failure::OverSize {
            size: m.size_bytes,
            max,
        });
    }
    if let Some(q) = &m.quality {
        v.extend(quality_failures(q, t));
    }
    v
}

/// The quality part of the target only (what the early-stop rule looks at).
pub fn quality_failures(q: &Quality, t: &QualityTarget) -> Vec<Failure> {
    let mut v = Vec::new();
    let kld = q.kld.kld_mean.value;
    if let Some(max) = t.max_kld.filter(|&max| kld > max || kld.is_nan()) {
        v.push(Failure::Kld { kld, max });
    }
    let pct = q.ppl_increase_pct;
    if let Some(max) = t.max_ppl_increase.filter(|&max| pct > max || pct.is_nan()) {
        v.push(Failure::Ppl { pct, max });
    }
    v
}

/// Evaluated and meeting every part of the target.
pub fn meets(m: &Measured, t: &QualityTarget) -> bool {
    m.quality.is_some() && failures(m, t).is_empty()
}

fn kld(m: &Measured) -> f64 {
    m.quality
        .as_ref()
        .map_or(f64::INFINITY, |q| q.kld.kld_mean.value)
}

/// The index of the chosen candidate: among those that meet the target, the smallest file
/// (`Size`) or the highest tg tokens/s (`Speed`, then the smallest); remaining ties go to
/// the lower KLD, then to the earlier (less aggressive) candidate.
pub fn choose(rows: &[Measured], t: &QualityTarget, optimize: Optimize) -> Option<usize> {
    let speed = |m: &Measured| m.tg_tokens_per_second.unwrap_or(0.0);
    rows.iter()
        .enumerate()
        .filter(|(_, m)| meets(m, t))
        .min_by(|(i, a), (j, b)| {
            let first = match optimize {
                Optimize::Size => Ordering::Equal,
                Optimize::Speed => speed(b).total_cmp(&speed(a)),
            };
            first
                .then(a.size_bytes.cmp(&b.size_bytes))
                .then(kld(a).total_cmp(&kld(b)))
                .then(i.cmp(j))
        })
        .map(|(i, _)| i)
}

/// The evaluated candidate closest to the target, for the message when none meets it: the
/// lowest KLD (PPL increase when only that was asked) among those within the size limit,
/// or among all when none is.
pub fn best_effort(rows: &[Measured], t: &QualityTarget) -> Option<usize> {
    let score = |m: &Measured| match (&m.quality, t.max_kld) {
        (Some(q), Some(_)) => q.kld.kld_mean.value,
        (Some(q), None) => q.ppl_increase_pct,
        (None, _) => f64::INFINITY,
    };
    let within = |m: &Measured| t.max_size.is_none_or(|max| m.size_bytes <= max);
    let pick = |only_within: bool| {
        rows.iter()
            .enumerate()
            .filter(|(_, m)| m.quality.is_some() && (!only_within || within(m)))
            .min_by(|(i, a), (j, b)| score(a).total_cmp(&score(b)).then(i.cmp(j)))
            .map(|(i, _)| i)
    };
    pick(true).or_else(|| pick(false))
}

/// One line about a measured candidate ("Q4_K_M: 98.1 MB, KLD 0.0412, PPL +3.10%").
pub fn describe(m: &Measured) -> String {
    match &m.quality {
        Some(q) => format!(
            "{}: {:.1} MB, KLD {:.4}, PPL {:+.2}%",
            m.candidate,
            m.size_bytes as f64 / 1e6,
            q.kld.kld_mean.value,
            q.ppl_increase_pct
        ),
        None => format!(
            "{}: {:.1} MB, not evaluated",
            m.candidate,
            m.size_bytes as f64 / 1e6
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::Target;
    use crate::ggml_type::GgmlType;

    fn est(v: f64) -> Estimate {
        Estimate {
            value: v,
            stderr: 0.0,
        }
    }

    fn row(ty: GgmlType, size: u64, kld: Option<f64>, tg: f64) -> Measured {
        Measured {
            candidate: Candidate::quant(Target::Plain(ty), false),
            size_bytes: size,
            bits_per_weight: 0.0,
            recipe: String::new(),
            quality: kld.map(|k| Quality {
                ppl: est(10.0),
                ppl_increase_pct: k * 100.0,
                kld: KldStats {
                    positions: 1,
                    ppl_base: est(10.0),
                    ln_ppl_ratio: est(0.0),
                    kld_mean: est(k),
                    kld_median: k,
                    kld_p99: k,
                    kld_max: k,
                    same_top: est(1.0),
                    rms_dp: est(0.0),
                    mean_dp: est(0.0),
                    max_abs_dp: 0.0,
                },
            }),
            pp_tokens_per_second: None,
            tg_tokens_per_second: Some(tg),
        }
    }

    #[test]
    fn chooses_the_smallest_meeting_file_deterministically() {
        let t = QualityTarget {
            max_kld: Some(0.05),
            ..Default::default()
        };
        let rows = vec![
            row(GgmlType::Q8_0, 300, Some(0.001), 10.0),
            row(GgmlType::Q6_K, 200, Some(0.01), 12.0),
            row(GgmlType::Q4_0, 100, Some(0.08), 20.0),
            // Same size as the Q6_K, same KLD: the earlier one wins.
            row(GgmlType::Q5_0, 200, Some(0.01), 30.0),
        ];
        assert_eq!(choose(&rows, &t, Optimize::Size), Some(1));
        assert_eq!(choose(&rows, &t, Optimize::Speed), Some(3));
        assert_eq!(
            failures(&rows[2], &t),
            vec![Failure::Kld {
                kld: 0.08,
                max: 0.05
            }]
        );
        assert_eq!(
            failures(&rows[2], &t)[0].to_string(),
            "fails KLD 0.0800 > 0.05"
        );
        let tight = QualityTarget {
            max_kld: Some(0.0001),
            max_size: Some(250),
            ..Default::default()
        };
        assert_eq!(choose(&rows, &tight, Optimize::Size), None);
        // Closest to the target within the size limit: the Q6_K (first of the two ties).
        assert_eq!(best_effort(&rows, &tight), Some(1));
        let ppl = QualityTarget {
            max_ppl_increase: Some(5.0),
            ..Default::default()
        };
        assert_eq!(choose(&rows, &ppl, Optimize::Size), Some(1));
        // Unevaluated (over size) rows never meet the target.
        let mut r = rows.clone();
        r[1].quality = None;
        r[3].quality = None;
        assert_eq!(choose(&r, &t, Optimize::Size), Some(0));
    }
}
