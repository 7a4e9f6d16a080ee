//! `ledge convert` and `ledge quantize`.

use std::path::PathBuf;

use clap::Args;

use crate::convert::gptq::Gptq;
use crate::convert::gram::GramFile;
use crate::convert::imatrix::Imatrix;
use crate::convert::pipeline::Summary;
use crate::convert::prune::PruneFlags;
use crate::convert::recipe::Override;
use crate::convert::{self, ConvertError, ConvertOptions, Target};

/// Convert a Hugging Face model folder (or a GGUF) to a GGUF of the given type.
///
/// A folder needs config.json, *.safetensors and tokenizer.json. A recipe (Q4_K_M, …)
/// gives different tensors different types. The pruning flags remove FFN channels, KV
/// groups or whole blocks on the way, guided by calibration text.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The HF folder (config.json, *.safetensors, tokenizer.json) or a GGUF file.
    pub input: PathBuf,
    /// The GGUF to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q5_1, Q5_0, Q4_K, Q4_1, Q4_0, Q3_K, IQ4_NL, or
    /// a recipe: Q5_K_M, Q4_K_M, Q4_K_S, Q3_K_M, Q2_K.
    #[arg(short = 't', long = "type", value_name = "TYPE", default_value = "F16")]
    pub target: String,
    #[command(flatten)]
    pub quant: QuantArgs,
}

/// Re-quantize a GGUF (from F32/F16/BF16; a quantized one with --allow-requantize).
///
/// Takes the same per-tensor, imatrix, GPTQ and pruning flags as `ledge convert`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The GGUF to re-quantize.
    pub input: PathBuf,
    /// The GGUF to write.
    pub output: PathBuf,
    /// The type or recipe (see `ledge convert --help`).
    #[arg(value_name = "TYPE")]
    pub target: String,
    #[command(flatten)]
    pub quant: QuantArgs,
}

/// The quantization and pruning flags `ledge convert` and `ledge quantize` share.
#[derive(Args, Debug)]
pub struct QuantArgs {
    /// Give tensors whose name matches REGEX this type (repeatable; first match wins).
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
    pub tensor_types: Vec<String>,
    /// Allow re-quantizing tensors that are already quantized.
    #[arg(long)]
    pub allow_requantize: bool,
    /// Calibration statistics (from `ledge calibrate` or llama-imatrix) for
    /// importance-weighted quantization.
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// rtn (round to nearest, importance-weighted with --imatrix) or gptq (needs --gram).
    #[arg(long, default_value = "rtn")]
    pub method: String,
    /// Input Gram matrices from `ledge calibrate --gram` (for --method gptq).
    #[arg(long)]
    pub gram: Option<PathBuf>,
    /// Write a rank-R correction of each block matrix's quantization error as a LoRA
    /// adapter (needs --gram and --adapter-out; apply it with `--lora`).
    ///
    /// The correction B·A minimizes the error's effect on the calibration inputs,
    /// ‖(W − Q(W) − B·A)·H^½‖ with H from --gram: a truncated SVD, no training.
    #[arg(long, value_name = "R")]
    pub lowrank_repair: Option<usize>,
    /// Fit the repair into this many percent of the model's bytes (e.g. 5): each matrix gets
    /// the rank, up to --lowrank-repair R (default 32), that removes the most weighted
    /// error per byte, instead of R everywhere.
    #[arg(long, value_name = "PCT")]
    pub lowrank_budget: Option<f64>,
    /// The adapter --lowrank-repair writes (llama.cpp's LoRA GGUF format).
    #[arg(long, value_name = "FILE")]
    pub adapter_out: Option<PathBuf>,
    /// GPTQ damping, relative to the mean of diag(H) (also the low-rank repair's).
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// Worker threads (default: one per performance core).
    // Long only: -t is --type here.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Remove this fraction (0 < F < 1) of FFN channels (needs --calib).
    ///
    /// Channels are ranked by calibration importance ‖W_down[:,c]‖·rms(h_c); kept counts
    /// round to 32 (256 for K-quants).
    #[arg(long, value_name = "F")]
    pub prune_ffn: Option<f32>,
    /// layer: the same fraction in every block (default); global: ranked across blocks.
    ///
    /// global gives per-layer n_ff, which ledge runs but llama.cpp's llama loader does not
    /// accept.
    #[arg(long, value_name = "layer|global")]
    pub prune_scope: Option<String>,
    /// Skip the least-squares re-fit of ffn_down after --prune-ffn.
    #[arg(long)]
    pub no_refit: bool,
    /// Drop the N blocks whose output is most similar to their input (needs --calib).
    #[arg(long, value_name = "N")]
    pub prune_layers: Option<usize>,
    /// Drop these blocks (original indices, comma-separated); the rest are renumbered.
    #[arg(long, value_name = "I,J", value_delimiter = ',')]
    pub drop_layers: Vec<usize>,
    /// Calibration text for --prune-ffn / --prune-layers (plain UTF-8).
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Most calibration chunks of 256 tokens for pruning (default 16).
    #[arg(long, value_name = "N")]
    pub calib_chunks: Option<usize>,
    /// Ridge of the ffn_down re-fit, toward the unpruned weights (default 0.1).
    ///
    /// Relative to the mean diagonal of the kept channels' Gram matrix; a large one means
    /// no re-fit.
    #[arg(long, value_name = "R")]
    pub refit_ridge: Option<f64>,
    /// Remove N whole KV groups (a KV head and the query heads sharing it) from every block.
    ///
    /// The N with the least calibration contribution through attn_output (needs --calib);
    /// attn_output is re-fit unless --no-refit.
    #[arg(long, value_name = "N")]
    pub prune_heads: Option<usize>,
}

impl QuantArgs {
    /// The pipeline's options for `target`, checked.
    fn options(&self, target: &str) -> Result<ConvertOptions, ConvertError> {
        let target: Target = target.parse()?;
        let overrides = self
            .tensor_types
            .iter()
            .map(|s| s.parse::<Override>())
            .collect::<Result<Vec<_>, _>>()?;
        super::init_threads(self.threads);
        Ok(ConvertOptions {
            target,
            overrides,
            allow_requantize: self.allow_requantize,
            progress: true,
            imatrix: match &self.imatrix {
                Some(p) => Some(std::sync::Arc::new(Imatrix::load(p)?)),
                None => None,
            },
            gptq: self.gptq()?,
            prune: self.prune_flags().spec()?,
            lowrank: self.lowrank()?,
        })
    }

    fn lowrank(
        &self,
    ) -> Result<Option<(std::sync::Arc<crate::convert::lowrank::LowRank>, PathBuf)>, ConvertError>
    {
        let usage = |m: &str| Err(ConvertError::Usage(m.into()));
        let rank = match (self.lowrank_repair, self.lowrank_budget) {
            (None, Some(_)) => Some(32),
            (r, _) => r,
        };
        let budget = match self.lowrank_budget {
            Some(p) if !(p.is_finite() && p > 0.0 && p <= 100.0) => {
                return usage("--lowrank-budget PCT: expected a percentage above 0 (e.g. 5)");
            }
            p => p.map(|p| p / 100.0),
        };
        match (rank, &self.adapter_out, &self.gram) {
            (None, None, _) => Ok(None),
            (None, Some(_), _) => usage("--adapter-out is written by --lowrank-repair R"),
            (Some(_), None, _) => {
                usage("--lowrank-repair needs --adapter-out FILE (the LoRA adapter it writes)")
            }
            (Some(_), Some(_), None) => usage(
                "--lowrank-repair needs --gram FILE (input Gram matrices: `ledge calibrate -m MODEL --text FILE -o X.imatrix --gram X.gram.gguf`)",
            ),
            (Some(r), Some(out), Some(g)) => {
                if !(1..=1024).contains(&r) {
                    return usage("--lowrank-repair R: expected a rank from 1 to 1024");
                }
                if !(self.damp.is_finite() && self.damp > 0.0) {
                    return Err(ConvertError::Usage(format!(
                        "--damp {}: expected a positive number (e.g. 0.01)",
                        self.damp
                    )));
                }
                Ok(Some((
                    std::sync::Arc::new(crate::convert::lowrank::LowRank::new(
                        GramFile::open(g)?,
                        r,
                        self.damp,
                        budget,
                    )),
                    out.clone(),
                )))
            }
        }
    }

    // PruneFlags is convert's own (clap-free) type; this is the one place flags map onto it.
    fn prune_flags(&self) -> PruneFlags {
        PruneFlags {
            ffn: self.prune_ffn,
            scope: self.prune_scope.clone(),
            no_refit: self.no_refit,
            prune_layers: self.prune_layers,
            drop_layers: self.drop_layers.clone(),
            calib: self.calib.clone(),
            calib_chunks: self.calib_chunks,
            refit_ridge: self.refit_ridge,
            heads: self.prune_heads,
        }
    }

    fn gptq(&self) -> Result<Option<std::sync::Arc<Gptq>>, ConvertError> {
        match (self.method.to_ascii_lowercase().as_str(), &self.gram) {
        ("rtn", None) => Ok(None),
        ("rtn", Some(_)) if self.lowrank_repair.is_some() || self.lowrank_budget.is_some() => {
            Ok(None)
        }
        ("rtn", Some(_)) => Err(ConvertError::Usage(
            "--gram is only used by --method gptq and --lowrank-repair".into(),
        )),
        ("gptq", None) => Err(ConvertError::Usage(
            "--method gptq needs --gram FILE (input Gram matrices: `ledge calibrate -m MODEL --text FILE -o X.imatrix --gram X.gram.gguf`)".into(),
        )),
        ("gptq", Some(p)) => {
            if !(self.damp.is_finite() && self.damp > 0.0) {
                return Err(ConvertError::Usage(format!(
                    "--damp {}: expected a positive number (e.g. 0.01)",
                    self.damp
                )));
            }
            Ok(Some(std::sync::Arc::new(Gptq::new(
                GramFile::open(p)?,
                self.damp,
            ))))
        }
        (m, _) => Err(ConvertError::Usage(format!(
            "--method {m:?}: expected rtn or gptq"
        ))),
    }
    }
}

fn report(s: &Summary) -> String {
    let types: Vec<String> = s.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let mut out = format!(
        "wrote {} ({} tensors: {}; {:.2} MiB) in {:.1} s",
        s.path.display(),
        s.n_tensors,
        types.join(", "),
        s.file_bytes as f64 / (1 << 20) as f64,
        s.seconds,
    );
    if !s.fallbacks.is_empty() {
        out += &format!("; {} tensors fell back to another type", s.fallbacks.len());
    }
    out += "\n";
    out += &coverage(
        "imatrix",
        "importance-weighted",
        s.weighted,
        "not weighted",
        "no statistics, or a type without a weighted quantizer yet",
        &s.unweighted,
    );
    out += &coverage(
        "gptq",
        "",
        s.gptq,
        "not gptq",
        "no Gram statistics or no codec",
        &s.not_gptq,
    );
    if let Some((path, rank, bytes)) = &s.adapter {
        let (before, after) = s
            .lowrank
            .iter()
            .fold((0.0, 0.0), |(b, a), (_, eb, ea, _, _)| (b + eb, a + ea));
        let removed = |b: f64, a: f64| if b > 0.0 { 100.0 * (1.0 - a / b) } else { 0.0 };
        let (lo, hi) = s
            .lowrank
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), (_, b, a, _, _)| {
                let r = removed(*b, *a);
                (lo.min(r), hi.max(r))
            });
        out += &format!(
            "lowrank: {} matrices repaired {}, weighted error removed {:.1} % (per matrix {:.1}-{:.1} %){}; adapter {} ({:.2} MiB, {:.1} % of the model; apply with --lora)\n",
            s.lowrank.len(),
            rank_words(s, *rank),
            removed(before, after),
            lo.min(hi),
            hi,
            if s.lowrank.iter().all(|l| l.3) { "" } else { ", estimated on sampled rows for large matrices" },
            path.display(),
            *bytes as f64 / (1 << 20) as f64,
            100.0 * *bytes as f64 / s.file_bytes.max(1) as f64,
        );
        if !s.not_lowrank.is_empty() {
            out += &format!(
                "lowrank: not repaired (no Gram statistics, {} tensors): {}\n",
                s.not_lowrank.len(),
                s.not_lowrank.join(", ")
            );
        }
    }
    out
}

/// "at rank 16", or under a budget "at ranks 0-32 (mean 7.4; 12 matrices none)".
fn rank_words(s: &Summary, max: usize) -> String {
    let ranks: Vec<usize> = s.lowrank.iter().map(|l| l.4).collect();
    let (lo, hi) = (
        ranks.iter().copied().min().unwrap_or(0),
        ranks.iter().copied().max().unwrap_or(0),
    );
    if lo == hi && hi == max {
        return format!("at rank {max}");
    }
    let mean = ranks.iter().sum::<usize>() as f64 / ranks.len().max(1) as f64;
    let none = ranks.iter().filter(|&&r| r == 0).count();
    format!(
        "at ranks {lo}-{hi} of at most {max} (mean {mean:.1}{}) to fit the budget",
        if none > 0 {
            format!("; {none} matrices none")
        } else {
            String::new()
        }
    )
}

/// "imatrix: 30 tensors importance-weighted; not weighted (2 tensors: why): a, b", or
/// nothing when the method was not used.
fn coverage(
    method: &str,
    done_as: &str,
    done: usize,
    not: &str,
    why: &str,
    missed: &[String],
) -> String {
    if done + missed.len() == 0 {
        return String::new();
    }
    let mut m = format!("{method}: {done} tensors");
    if !done_as.is_empty() {
        m += &format!(" {done_as}");
    }
    if !missed.is_empty() {
        m += &format!(
            "; {not} ({} tensors: {why}): {}",
            missed.len(),
            missed.join(", ")
        );
    }
    m + "\n"
}

/// `ledge convert HF_DIR|MODEL.gguf -o OUT.gguf --type T`.
pub fn convert(a: ConvertArgs) -> Result<String, ConvertError> {
    let opts = a.quant.options(&a.target)?;
    let s = if a.input.is_dir() {
        convert::convert_hf(&a.input, &a.output, &opts)?
    } else {
        convert::quantize_gguf(&a.input, &a.output, &opts)?
    };
    Ok(report(&s))
}

/// `ledge quantize IN.gguf OUT.gguf T`.
pub fn quantize(a: QuantizeArgs) -> Result<String, ConvertError> {
    let opts = a.quant.options(&a.target)?;
    Ok(report(&convert::quantize_gguf(&a.input, &a.output, &opts)?))
}
