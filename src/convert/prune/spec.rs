//! What to prune: the pruning flags as given, parsed and checked into a `PruneSpec` before
//! anything is read from the model.

use std::path::PathBuf;
use std::str::FromStr;

use crate::convert::{ConvertError, Result};

/// Where FFN channels are ranked against each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PruneScope {
    /// The same fraction removed in every block (uniform n_ff).
    #[default]
    Layer,
    /// All blocks ranked together (per-layer n_ff; llama.cpp's llama loader rejects it).
    Global,
}

impl FromStr for PruneScope {
    type Err = ConvertError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "layer" => Ok(PruneScope::Layer),
            "global" => Ok(PruneScope::Global),
            other => Err(ConvertError::Usage(format!(
                "--prune-scope {other:?}: expected layer or global"
            ))),
        }
    }
}

impl PruneScope {
    pub(super) fn name(self) -> &'static str {
        match self {
            PruneScope::Layer => "layer",
            PruneScope::Global => "global",
        }
    }
}

/// What to prune.
#[derive(Clone, Debug)]
pub struct PruneSpec {
    /// Fraction of FFN channels to remove (0 < F < 1).
    pub ffn_fraction: Option<f32>,
    pub scope: PruneScope,
    /// Re-fit ffn_down by least squares after removing channels.
    pub refit: bool,
    /// Blocks to remove (original indices).
    pub drop_layers: Vec<usize>,
    /// Also remove this many blocks, the most input-to-output similar ones.
    pub prune_layers: Option<usize>,
    /// Remove this many whole KV groups (a KV head and the query heads sharing it) from
    /// every block (`heads.rs`).
    pub prune_heads: Option<usize>,
    /// Calibration text (needed for ffn_fraction, prune_layers and prune_heads).
    pub calib_text: Option<PathBuf>,
    /// Tokens per calibration chunk.
    pub calib_ctx: usize,
    /// Most calibration chunks.
    pub calib_chunks: usize,
    /// Ridge of the re-fit, relative to the mean diagonal of G[K, K].
    pub ridge: f64,
}

impl Default for PruneSpec {
    fn default() -> Self {
        PruneSpec {
            ffn_fraction: None,
            scope: PruneScope::Layer,
            refit: true,
            drop_layers: Vec::new(),
            prune_layers: None,
            prune_heads: None,
            calib_text: None,
            calib_ctx: 256,
            calib_chunks: 16,
            ridge: 0.1,
        }
    }
}

/// The pruning flags of `ledge convert` / `ledge quantize`, as given.
#[derive(Clone, Debug, Default)]
pub struct PruneFlags {
    pub ffn: Option<f32>,
    pub scope: Option<String>,
    pub no_refit: bool,
    pub prune_layers: Option<usize>,
    pub drop_layers: Vec<usize>,
    pub calib: Option<PathBuf>,
    pub calib_chunks: Option<usize>,
    pub refit_ridge: Option<f64>,
    pub heads: Option<usize>,
}

impl PruneFlags {
    /// The spec the flags ask for (None: no pruning), checked.
    pub fn spec(&self) -> Result<Option<PruneSpec>> {
        if self.scope.is_some() && self.ffn.is_none() {
            return Err(ConvertError::Usage(
                "--prune-scope, --no-refit and --refit-ridge only apply with --prune-ffn (the latter two also with --prune-heads)"
                    .into(),
            ));
        }
        if self.ffn.is_none()
            && self.heads.is_none()
            && self.prune_layers.is_none()
            && self.drop_layers.is_empty()
        {
            if self.no_refit || self.refit_ridge.is_some() {
                return Err(ConvertError::Usage(
                    "--prune-scope, --no-refit and --refit-ridge only apply with --prune-ffn (the latter two also with --prune-heads)"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let d = PruneSpec::default();
        let spec = PruneSpec {
            ffn_fraction: self.ffn,
            scope: match &self.scope {
                Some(s) => s.parse()?,
                None => PruneScope::Layer,
            },
            refit: !self.no_refit,
            drop_layers: self.drop_layers.clone(),
            prune_layers: self.prune_layers,
            prune_heads: self.heads,
            calib_text: self.calib.clone(),
            calib_chunks: self.calib_chunks.unwrap_or(d.calib_chunks),
            ridge: self.refit_ridge.unwrap_or(d.ridge),
            ..d
        };
        spec.validate()?;
        Ok(Some(spec))
    }
}

impl PruneSpec {
    pub(super) fn needs_calibration(&self) -> bool {
        self.ffn_fraction.is_some() || self.prune_layers.is_some() || self.prune_heads.is_some()
    }

    /// Checks what can be checked without the model.
    pub fn validate(&self) -> Result<()> {
        let usage = |m: String| Err(ConvertError::Usage(m));
        if let Some(f) = self.ffn_fraction {
            if !(f > 0.0 && f < 1.0) {
                return usage(format!(
                    "--prune-ffn {f}: the fraction of FFN channels to remove must be between 0 and 1 (exclusive)"
                ));
            }
        }
        if self.prune_heads == Some(0) {
            return usage("--prune-heads 0 removes nothing; give at least 1 KV group".into());
        }
        if self.prune_layers == Some(0) {
            return usage("--prune-layers 0 removes nothing; give at least 1".into());
        }
        if self.needs_calibration() && self.calib_text.is_none() {
            return usage(
                "--prune-ffn, --prune-layers and --prune-heads rank channels, layers and heads on calibration text: pass --calib FILE"
                    .into(),
            );
        }
        if self.calib_ctx < 8 || self.calib_chunks == 0 {
            return usage(
                "calibration needs chunks of at least 8 tokens and at least 1 chunk".into(),
            );
        }
        if self.ridge.is_nan() || self.ridge < 0.0 {
            return usage(format!("ridge {}: must be ≥ 0", self.ridge));
        }
        Ok(())
    }
}
