//! What the search tries: a candidate is a quantization target, whether calibration
//! statistics (the imatrix) weight the rounding, and optionally a pruning step. The default
//! ladder runs from the least to the most aggressive.

use std::fmt;
use std::str::FromStr;

use crate::convert::recipe::Plan;
use crate::convert::{imatrix, Target};
use crate::gguf::GgufFile;

use super::CompressError;

/// Structural pruning applied before quantization, carried out by the converter's pruning
/// (`convert::prune`) on the calibration text: FFN channels ranked by their contribution,
/// blocks by how little they change the residual stream.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneSpec {
    /// Remove this fraction of every layer's FFN channels (0 < f < 1), with the
    /// least-squares re-fit of ffn_down.
    pub ffn_fraction: Option<f32>,
    /// Remove this many blocks, the most input-to-output similar ones.
    pub layers: Option<usize>,
}

impl fmt::Display for PruneSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(k) = self.ffn_fraction {
            parts.push(format!("ffn-{}%", (k * 100.0).round()));
        }
        if let Some(n) = self.layers {
            parts.push(format!("{n} layer{}", if n == 1 { "" } else { "s" }));
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

/// "Q4_K_M", "Q4_K_M+imatrix" (also "+im"), "Q4_K_M+imatrix+ffn10" (remove 10% of the FFN
/// channels) or "Q4_K_M+imatrix+layers2" (remove two blocks).
impl FromStr for Candidate {
    type Err = CompressError;
    fn from_str(s: &str) -> Result<Candidate, CompressError> {
        let s = s.trim();
        let bad = |why: &str| {
            CompressError::Usage(format!(
                "candidate {s:?}: {why} (expected TYPE[+imatrix][+ffnPCT][+layersN])"
            ))
        };
        let mut parts = s.split('+');
        let name = parts.next().unwrap_or_default();
        let quant: Target = name
            .parse()
            .map_err(|e| CompressError::Usage(format!("candidate {s:?}: {e}")))?;
        let mut c = Candidate::quant(quant, false);
        let mut prune = PruneSpec {
            ffn_fraction: None,
            layers: None,
        };
        for part in parts {
            if part.eq_ignore_ascii_case("imatrix") || part == "im" {
                c.imatrix = true;
            } else if let Some(pct) = part.strip_prefix("ffn") {
                let pct: f32 = pct.parse().map_err(|_| bad("bad FFN percentage"))?;
                if !(pct > 0.0 && pct < 100.0) {
                    return Err(bad("the FFN percentage must be between 0 and 100"));
                }
                prune.ffn_fraction = Some(pct / 100.0);
            } else if let Some(n) = part.strip_prefix("layers") {
                let n: usize = n.parse().map_err(|_| bad("bad layer count"))?;
                if n == 0 {
                    return Err(bad("the layer count must be at least 1"));
                }
                prune.layers = Some(n);
            } else {
                return Err(bad(&format!("unknown part {part:?}")));
            }
        }
        if prune.ffn_fraction.is_some() || prune.layers.is_some() {
            c.prune = Some(prune);
        }
        Ok(c)
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
/// Pruning comes last, on top of Q4_K_M with the imatrix: FFN channels (10%, 25%), then whole
/// blocks (1, 2) — structural cuts cost more quality per byte than rounding on most models,
/// so they are tried only when quantization alone cannot reach a size limit.
pub fn default_ladder() -> Vec<Candidate> {
    use crate::convert::Recipe::*;
    use crate::ggml_type::GgmlType;
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
    let prunes = [
        PruneSpec {
            ffn_fraction: Some(0.10),
            layers: None,
        },
        PruneSpec {
            ffn_fraction: Some(0.25),
            layers: None,
        },
        PruneSpec {
            ffn_fraction: None,
            layers: Some(1),
        },
        PruneSpec {
            ffn_fraction: None,
            layers: Some(2),
        },
    ];
    for p in prunes {
        v.push(Candidate {
            quant: Target::Mix(Q4_K_M),
            imatrix: true,
            prune: Some(p),
        });
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
        let p = parse_list("Q4_K_M+imatrix+ffn10,Q4_0+layers2").unwrap();
        assert_eq!(p[0].to_string(), "Q4_K_M+imatrix+prune(ffn-10%)");
        assert_eq!(p[0].prune.as_ref().unwrap().ffn_fraction, Some(0.1));
        assert_eq!(p[1].prune.as_ref().unwrap().layers, Some(2));
        assert!(!p[1].imatrix);
        assert!(!p[0].same_rung(&"Q4_K_M+imatrix".parse().unwrap()));
        for bad in ["Q4_0+ffn0", "Q4_0+ffn100", "Q4_0+ffnx", "Q4_0+layers0"] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ladder_runs_from_mild_to_aggressive() {
        let l = default_ladder();
        assert_eq!(l[0].to_string(), "Q8_0");
        let quant: Vec<&Candidate> = l.iter().filter(|c| c.prune.is_none()).collect();
        assert_eq!(quant.last().unwrap().to_string(), "Q2_K+imatrix");
        // Pruning rungs come after every quantization rung.
        let first_prune = l.iter().position(|c| c.prune.is_some()).unwrap();
        assert_eq!(first_prune, quant.len());
        assert_eq!(l.len() - first_prune, 4);
        let bpw: Vec<f64> = quant
            .iter()
            .map(|c| c.quant.base().bits_per_weight())
            .collect();
        assert!(bpw.windows(2).all(|w| w[0] >= w[1]), "{bpw:?}");
    }
}
