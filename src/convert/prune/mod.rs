//! Structured pruning in the converter: whole FFN channels and whole blocks (layers).
//!
//! One calibration pass runs the (unpruned) model over a text and collects, per block:
//! - the Gram matrix of the ffn_down input, G = Σ_t h_t h_tᵀ (f64, n_ff × n_ff; only its
//!   diagonal when there is no re-fit), where h = act(gate·x) ⊙ (up·x);
//! - the mean cosine similarity between the block's input and its output (the residual
//!   stream before and after the block), over all calibration tokens.
//!
//! **FFN channels.** Channel c of a block adds W_down[:,c]·h_c to the residual stream, so its
//! expected contribution is ‖W_down[:,c]‖₂ · sqrt(E[h_c²]) — Wanda's |W|·‖X‖ score, taken over
//! the whole output column (gate and up rows enter through h_c, which they produce):
//!
//! ```text
//! score(c) = ‖W_down[:, c]‖₂ · sqrt(G[c, c] / tokens)
//! ```
//!
//! `layer` scope removes the lowest-scoring fraction F in every block (same n_ff everywhere);
//! `global` ranks all blocks' channels together (scores are in residual-stream units, so they
//! compare across blocks) and writes per-layer n_ff as the array `llama.feed_forward_length`.
//! Gate and up rows and down columns of a channel go together. Kept counts are rounded to the
//! nearest multiple of 32 (256 when the target type or recipe uses K-quants, whose blocks are
//! 256 wide: ffn_down's rows are n_ff long), at least one block.
//!
//! **Re-fit.** With kept set K, ffn_down is replaced by the least-squares solution that best
//! reproduces the unpruned layer output on the calibration activations:
//! `W'_K = (W · G[:, K] + λ·W_K) · (G[K, K] + λI)⁻¹`, λ = `ridge` × mean(diag G[K, K])
//! (Cholesky, f64): least squares with a ridge toward the unpruned weights W_K.
//!
//! **Layers.** `--drop-layers` removes the given blocks; `--prune-layers N` additionally drops
//! the N blocks whose output is most similar to their input (one shot: all similarities come
//! from the one pass over the unpruned model, as in ShortGPT's "block influence"). The block
//! input is recovered from the observed normed input of the next matmul: rmsnorm(x)·w divided
//! by the norm weight w is x up to a positive scale, which cosine ignores. Remaining blocks are
//! renumbered, per-layer metadata arrays filtered, and `block_count` updated.
//!
//! **Heads.** `--prune-heads N` removes the N weakest whole KV groups of every block (a KV
//! head with the query heads sharing it; scoring and layout in `heads.rs`), then re-fits
//! attn_output on the kept columns like ffn_down (unless `--no-refit`). The same N in every
//! block: llama.cpp's llama loader sizes every block's Q/K/V/O from layer 0's head counts,
//! so per-layer head counts would not load there. `attention.key_length`/`value_length` are
//! written, since n_embd / n_head no longer gives the head size.
//!
//! When FFN and layer pruning are combined, both use the statistics of the unpruned model.
//! The file records what was done in `ledge.prune.*` keys.

//! The stages, in order: `spec.rs` (what to prune, from the flags), `calibrate.rs` (the
//! statistics), `plan.rs` (which blocks, channels and KV groups go), `apply.rs` (the tensor
//! surgery and re-fits), `metadata.rs` (the GGUF keys); `heads.rs` knows the attention
//! layout. This file is the flow from one to the next.

mod apply;
mod calibrate;
pub mod heads;
mod metadata;
mod plan;
mod spec;

pub use apply::{reconstruction_error, refit_down};
pub use calibrate::{calibrate, calibrate_with, Calibration, GramMode};
pub use plan::{channel_block, channel_scores};
pub use spec::{PruneFlags, PruneScope, PruneSpec};

use super::{ConvertError, Result, Target};
use crate::gguf::GgufFile;
use crate::model::ModelConfig;

/// What pruning decided for one model.
#[derive(Clone, Debug)]
pub struct PrunePlan {
    arch: String,
    pub n_layer_in: usize,
    /// Original indices of the blocks kept, in order.
    pub kept_layers: Vec<usize>,
    /// Original indices of the blocks removed.
    pub dropped_layers: Vec<usize>,
    /// Per original layer: its n_ff.
    pub n_ff_in: Vec<usize>,
    /// Per original layer: the FFN channels kept (sorted), None when all are.
    pub ffn_kept: Vec<Option<Vec<usize>>>,
    /// Per original layer: the re-fit ffn_down (n_embd rows of |K|).
    refit_down: Vec<Option<Vec<f32>>>,
    /// Per original layer: calibration cosine similarity of block input and output.
    pub similarity: Vec<f64>,
    /// Per original layer: its query and KV head counts.
    pub n_head_in: Vec<usize>,
    pub n_kv_in: Vec<usize>,
    /// Key and value length per head (unchanged by head pruning).
    pub head_dim: (usize, usize),
    /// Per original layer: the KV groups removed (sorted), None when all stay.
    pub kv_removed: Vec<Option<Vec<usize>>>,
    /// Per original layer: the re-fit attn_output (n_embd rows of the kept columns).
    attn_refit: Vec<Option<Vec<f32>>>,
    spec: PruneSpec,
}

fn read_text(p: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(p).map_err(super::io_err(p))
}

impl PrunePlan {
    /// Checks `spec` against the model in `f`, calibrates if needed and decides what goes.
    pub fn new(
        f: &GgufFile,
        spec: &PruneSpec,
        target: Target,
        allow_requantize: bool,
        progress: bool,
    ) -> Result<PrunePlan> {
        spec.validate()?;
        let cfg = ModelConfig::from_gguf(f).map_err(|e| {
            ConvertError::Usage(format!("pruning needs a model ledge can run: {e}"))
        })?;
        let family = cfg.arch.name();
        if spec.ffn_fraction.is_some() && cfg.n_expert > 0 {
            return Err(ConvertError::Usage(format!(
                "--prune-ffn: {family} has mixture-of-experts FFNs, which cannot be pruned yet \
                 (--prune-layers and --prune-heads work)"
            )));
        }
        if cfg.spec.fused && (spec.ffn_fraction.is_some() || spec.prune_heads.is_some()) {
            return Err(ConvertError::Usage(format!(
                "--prune-ffn/--prune-heads: {family} stores Q/K/V and gate/up as fused matrices, \
                 which cannot be pruned yet (--prune-layers works)"
            )));
        }
        let n = cfg.n_layer;
        let mut dropped = plan::explicit_drops(spec, n)?;
        let n_ff_in: Vec<usize> = cfg.layers.iter().map(|l| l.n_ff).collect();
        plan::check_heads(spec, &cfg)?;
        let calib = if spec.needs_calibration() {
            let text = read_text(spec.calib_text.as_ref().expect("validated"))?;
            let mode = plan::gram_mode(spec);
            let attn = spec.prune_heads.is_some();
            Some(calibrate_with(
                f,
                &text,
                spec.calib_ctx,
                spec.calib_chunks,
                mode,
                attn,
                progress,
            )?)
        } else {
            None
        };
        let similarity = calib
            .as_ref()
            .map_or_else(|| vec![f64::NAN; n], |c| c.similarity.clone());
        if let Some(extra) = spec.prune_layers {
            plan::drop_similar(&mut dropped, &similarity, extra);
        }
        let kept_layers: Vec<usize> = (0..n).filter(|i| !dropped.contains(i)).collect();
        let (mut ffn_kept, mut refit) = (vec![None; n], vec![None; n]);
        let (mut kv_removed, mut attn_refit) = (vec![None; n], vec![None; n]);
        if let Some(cal) = &calib {
            let inputs = plan::Inputs {
                f,
                spec,
                cal,
                kept_layers: &kept_layers,
                allow_requantize,
                progress,
            };
            if spec.ffn_fraction.is_some() {
                (ffn_kept, refit) = plan::ffn_channels(&inputs, &n_ff_in, channel_block(target))?;
            }
            (kv_removed, attn_refit) = plan::kv_groups(&inputs, &cfg)?;
        }
        if progress && !dropped.is_empty() {
            eprintln!("prune: dropping blocks {dropped:?}");
        }
        Ok(PrunePlan {
            arch: f.architecture()?.to_string(),
            n_layer_in: n,
            kept_layers,
            dropped_layers: dropped,
            n_ff_in,
            ffn_kept,
            refit_down: refit,
            similarity,
            n_head_in: cfg.layers.iter().map(|l| l.n_head).collect(),
            n_kv_in: cfg.layers.iter().map(|l| l.n_head_kv).collect(),
            head_dim: (cfg.head_dim_k, cfg.head_dim_v),
            kv_removed,
            attn_refit,
            spec: spec.clone(),
        })
    }

    /// Per kept block (in output order), its n_ff.
    pub fn n_ff_out(&self) -> Vec<usize> {
        self.kept_layers
            .iter()
            .map(|&l| {
                self.ffn_kept[l]
                    .as_ref()
                    .map_or(self.n_ff_in[l], |k| k.len())
            })
            .collect()
    }

    /// Fraction of the kept blocks' FFN channels removed.
    pub fn ffn_fraction_removed(&self) -> f64 {
        let before: usize = self.kept_layers.iter().map(|&l| self.n_ff_in[l]).sum();
        let after: usize = self.n_ff_out().iter().sum();
        1.0 - after as f64 / before.max(1) as f64
    }

    /// Per kept block (in output order), its (query heads, KV heads).
    pub fn heads_out(&self) -> Vec<(usize, usize)> {
        self.kept_layers
            .iter()
            .map(|&l| {
                let (nh, nkv) = (self.n_head_in[l], self.n_kv_in[l]);
                let gone = self.kv_removed[l].as_ref().map_or(0, |r| r.len());
                (nh - gone * (nh / nkv), nkv - gone)
            })
            .collect()
    }
}
