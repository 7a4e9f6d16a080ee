//! What the search tries: a candidate is a quantization target, whether calibration
//! statistics (the imatrix) weight the rounding, and optionally a pruning step. The default
//! ladder runs from the least to the most aggressive.

use std::fmt;
use std::str::FromStr;

use crate::convert::recipe::Plan;
use crate::convert::{imatrix, Target};
use crate::gguf::GgufFile;

use super::CompressError;

/// Structural pruning applied before quantization. The converter's pruning
/// (`--prune-ffn`, `--drop-layers`) is built separately; `build::make_candidate` is the one
/// place a candidate's file is made, and it refuses a spec it cannot carry out.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneSpec {
    /// Keep this fraction of each layer's FFN channels (0 < f ≤ 1); None keeps all.
    pub ffn_keep: Option<f32>,
    /// Layers to remove entirely (ascending, no repeats).
    pub drop_layers: Vec<usize>,
}

impl fmt::Display for PruneSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(k) = self.ffn_keep {
            parts.push(format!("ffn×{k}"));
        }
        if !self.drop_layers.is_empty() {
            let l: Vec<String> = self.drop_layers.iter().map(|l| l.to_string()).collect();
            parts.push(format!("drop {}", l.join(",")));
        }
        f.write_str(&parts.join(" "))
    }
}

/// One rung of the search.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The type or mixed recipe every tensor is quantized by.
    pub quant: Target,
    /// Weight the rounding by the calibration statistics (only types with a weighted
    /// quantizer use them: `convert::imatrix::supports`).
    pub imatrix: bool,
    pub prune: Option<PruneSpec>,
}

impl Candidate {
    pub const fn quant(quant: Target, imatrix: bool) -> Candidate {
        Candidate {
            quant,
            imatrix,
            prune: None,
        }
    }

    /// Candidates that differ only in `imatrix` form one rung: the early-stop rule counts
    /// rungs, and the table shows the imatrix effect side by side.
    pub fn same_rung(&self, other: &Candidate) -> bool {
        self.quant == other.quant && self.prune == other.prune
    }

    /// A file-name-safe label ("Q4_K_M-imatrix").
    pub fn slug(&self) -> String {
        self.to_string()
            .replace('+', "-")
            .replace([' ', ',', '×'], "_")
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.quant)?;
        if self.imatrix {
            f.write_str("+imatrix")?;
        }
        if let Some(p) = &self.prune {
            write!(f, "+prune({p})")?;
        }
        Ok(())
    }
}

/// "Q4_K_M" or "Q4_K_M+imatrix" (also "+im"); pruning rungs are not parsed from text.
impl FromStr for Candidate {
    type Err = CompressError;
    fn from_str(s: &str) -> Result<Candidate, CompressError> {
        let s = s.trim();
        let (name, im) = match s.split_once('+') {
            Some((n, rest)) if rest.eq_ignore_ascii_case("imatrix") || rest == "im" => (n, true),
            Some(_) => {
                return Err(CompressError::Usage(format!(
                    "candidate {s:?}: expected TYPE or TYPE+imatrix"
                )))
            }
            None => (s, false),
        };
        let quant: Target = name
            .parse()
            .map_err(|e| CompressError::Usage(format!("candidate {s:?}: {e}")))?;
        Ok(Candidate::quant(quant, im))
    }
}

/// Parses a comma-separated candidate list, in the order given.
pub fn parse_list(s: &str) -> Result<Vec<Candidate>, CompressError> {
    let v = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<Candidate>, _>>()?;
    if v.is_empty() {
        return Err(CompressError::Usage(
            "--candidates: the list is empty".into(),
        ));
    }
    Ok(v)
}

/// The default ladder, least to most aggressive (llama.cpp's usual choices). Each recipe
/// appears without the imatrix and, right after, with it; `drop_useless_imatrix` removes the
/// second where no tensor of this model would be weighted (the file would be identical).
///
/// Pruning rungs go after the quantization rungs: append
/// `Candidate { quant, imatrix: true, prune: Some(PruneSpec { .. }) }` entries here once
/// `build::make_candidate` can make them.
pub fn default_ladder() -> Vec<Candidate> {
    use crate::convert::Recipe::*;
    use crate::gguf::GgmlType;
    let mut v = Vec::new();
    for t in [
        Target::Plain(GgmlType::Q8_0),
        Target::Plain(GgmlType::Q6_K),
        Target::Mix(Q5_K_M),
        Target::Mix(Q4_K_M),
        Target::Mix(Q4_K_S),
        Target::Plain(GgmlType::Q4_0),
        Target::Mix(Q3_K_M),
        Target::Mix(Q2_K),
    ] {
        v.push(Candidate::quant(t, false));
        v.push(Candidate::quant(t, true));
    }
    v
}

/// How many tensors of `base` the imatrix would weight under `quant`: those whose chosen
/// type (after fallbacks) has a weighted quantizer.
pub fn weighted_tensors(base: &GgufFile, quant: Target) -> usize {
    let (n_layer, n_gqa) = match crate::model::ModelConfig::from_gguf(base) {
        Ok(c) => (
            c.n_layer,
            c.layers
                .first()
                .map_or(1, |l| l.n_head / l.n_head_kv.max(1)),
        ),
        Err(_) => (0, 1),
    };
    let plan = Plan {
        target: quant,
        n_layer,
        tied: base.tensor_info("output.weight").is_none(),
        n_gqa,
        overrides: Vec::new(),
    };
    base.tensor_infos()
        .iter()
        .filter(|info| {
            let ty = plan.choose(base.tensor_name(info), &info.dims).ty;
            info.dims.len() >= 2 && imatrix::supports(ty)
        })
        .count()
}

/// Drops the imatrix variants that would write the same file as their plain twin, saying
/// which on stderr.
pub fn drop_useless_imatrix(base: &GgufFile, ladder: Vec<Candidate>) -> Vec<Candidate> {
    ladder
        .into_iter()
        .filter(|c| {
            if !c.imatrix || c.prune.is_some() || weighted_tensors(base, c.quant) > 0 {
                return true;
            }
            eprintln!(
                "compress: skipping {c}: none of its tensor types has an importance-weighted \
                 quantizer, so it would equal {}",
                c.quant
            );
            false
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_candidates() {
        let v = parse_list("Q8_0, Q4_K_M+imatrix,q4_0+im").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].to_string(), "Q8_0");
        assert_eq!(v[1].to_string(), "Q4_K_M+imatrix");
        assert_eq!(v[1].slug(), "Q4_K_M-imatrix");
        assert!(v[2].imatrix);
        assert!(v[1].same_rung(&"Q4_K_M".parse().unwrap()));
        assert!(parse_list("Q9_9").is_err());
        assert!(parse_list("Q4_0+foo").is_err());
        assert!(parse_list(" , ").is_err());
    }

    #[test]
    fn ladder_runs_from_mild_to_aggressive() {
        let l = default_ladder();
        assert_eq!(l[0].to_string(), "Q8_0");
        assert_eq!(l.last().unwrap().to_string(), "Q2_K+imatrix");
        let bpw: Vec<f64> = l.iter().map(|c| c.quant.base().bits_per_weight()).collect();
        assert!(bpw.windows(2).all(|w| w[0] >= w[1]), "{bpw:?}");
    }
}
