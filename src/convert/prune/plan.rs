//! Which blocks, FFN channels and KV groups go: the checks against the model's shape, the
//! channel scores and kept counts, and the layer and head choices from the calibration
//! statistics. The re-fits of what stays are in `apply.rs`.

use super::calibrate::{Calibration, GramMode};
use super::spec::{PruneScope, PruneSpec};
use super::{apply, heads};
use crate::convert::{ConvertError, Result, Target};
use crate::gguf::GgufFile;
use crate::model::ModelConfig;

/// The diagonal of a Gram stored full (n × n) or as its diagonal (n).
pub(super) fn diagonal(g: &[f64], n: usize) -> Vec<f64> {
    if g.len() == n * n {
        (0..n).map(|i| g[i * n + i]).collect()
    } else {
        g.to_vec()
    }
}

/// Channel scores ‖W_down[:, c]‖₂ · sqrt(G[c, c] / tokens); `down` is n_embd rows of n_ff.
pub fn channel_scores(down: &[f32], n_ff: usize, gram_diag: &[f64], tokens: usize) -> Vec<f64> {
    let mut col2 = vec![0f64; n_ff];
    for row in down.chunks_exact(n_ff) {
        for (s, &v) in col2.iter_mut().zip(row) {
            *s += v as f64 * v as f64;
        }
    }
    col2.iter()
        .zip(gram_diag)
        .map(|(&c2, &g)| (c2 * g.max(0.0) / tokens.max(1) as f64).sqrt())
        .collect()
}

/// `x` rounded to the nearest multiple of `block`, within [block, max] (max itself if smaller).
fn round_to_block(x: f64, block: usize, max: usize) -> usize {
    if max <= block {
        return max;
    }
    let r = ((x / block as f64).round() as usize).max(1) * block;
    r.min(max)
}

/// The width kept channel counts are rounded to for `target`: ffn_down rows are n_ff long, so
/// K-quant targets (256-blocks) need multiples of 256, the others 32.
pub fn channel_block(target: Target) -> usize {
    match target {
        Target::Mix(_) => 256,
        Target::Plain(t) if t.block_size() >= 256 => 256,
        Target::Plain(_) => 32,
    }
}

/// The Gram pruning's FFN ranking (and re-fit) needs.
pub(super) fn gram_mode(spec: &PruneSpec) -> GramMode {
    match (spec.ffn_fraction, spec.refit) {
        (None, _) => GramMode::None,
        (Some(_), false) => GramMode::Diagonal,
        (Some(_), true) => GramMode::Full,
    }
}

/// The `--drop-layers` blocks, sorted and checked against the model's `n` layers (with
/// `--prune-layers`, at least one must stay).
pub(super) fn explicit_drops(spec: &PruneSpec, n: usize) -> Result<Vec<usize>> {
    let mut dropped: Vec<usize> = spec.drop_layers.clone();
    dropped.sort_unstable();
    dropped.dedup();
    if let Some(&bad) = dropped.iter().find(|&&i| i >= n) {
        return Err(ConvertError::Usage(format!(
            "--drop-layers {bad}: the model has {n} layers (0..={})",
            n - 1
        )));
    }
    let n_drop = dropped.len() + spec.prune_layers.unwrap_or(0);
    if n_drop >= n {
        return Err(ConvertError::Usage(format!(
            "removing {n_drop} of the model's {n} layers would leave none"
        )));
    }
    Ok(dropped)
}

/// `--prune-heads N` must leave every block at least one KV group.
pub(super) fn check_heads(spec: &PruneSpec, cfg: &ModelConfig) -> Result<()> {
    let Some(nh) = spec.prune_heads else {
        return Ok(());
    };
    let Some((l, lc)) = cfg
        .layers
        .iter()
        .enumerate()
        .find(|(_, lc)| nh >= lc.n_head_kv)
    else {
        return Ok(());
    };
    Err(ConvertError::Usage(format!(
        "--prune-heads {nh}: block {l} has {} KV head(s) for {} query heads, so removing {nh} KV group(s) would leave none{}",
        lc.n_head_kv,
        lc.n_head,
        if lc.n_head_kv == 1 {
            " (the model has no GQA groups to remove)"
        } else {
            ""
        }
    )))
}

/// Adds the `extra` not yet dropped blocks of highest input-to-output similarity.
pub(super) fn drop_similar(dropped: &mut Vec<usize>, similarity: &[f64], extra: usize) {
    let n = similarity.len();
    let mut order: Vec<usize> = (0..n).filter(|i| !dropped.contains(i)).collect();
    order.sort_by(|&a, &b| similarity[b].total_cmp(&similarity[a]));
    dropped.extend(order.into_iter().take(extra));
    dropped.sort_unstable();
}

/// Fails on a quantized `name` unless re-quantizing is allowed (absent tensors pass).
fn check_float(f: &GgufFile, name: String, allow_requantize: bool) -> Result<()> {
    match f.tensor_info(&name) {
        Some(info) if !allow_requantize && info.ty.is_quantized() => {
            Err(ConvertError::Requantize { name, ty: info.ty })
        }
        _ => Ok(()),
    }
}

/// The values of weight `name` as f32, refusing a quantized one unless allowed.
pub(super) fn weight_f32(f: &GgufFile, name: String, allow_requantize: bool) -> Result<Vec<f32>> {
    let t = f
        .tensor(&name)
        .map_err(|_| ConvertError::MissingTensor(name.clone()))?;
    if !allow_requantize && t.ty.is_quantized() {
        return Err(ConvertError::Requantize { name, ty: t.ty });
    }
    t.to_f32()
        .map_err(|source| ConvertError::Quant { name, source })
}

/// Per original layer: the FFN channels kept and the re-fit ffn_down.
pub(super) type FfnChoice = (Vec<Option<Vec<usize>>>, Vec<Option<Vec<f32>>>);

/// What the FFN and head choices read.
pub(super) struct Inputs<'a> {
    pub f: &'a GgufFile,
    pub spec: &'a PruneSpec,
    pub cal: &'a Calibration,
    /// Original indices of the blocks that stay.
    pub kept_layers: &'a [usize],
    pub allow_requantize: bool,
    pub progress: bool,
}

/// Ranks the kept blocks' FFN channels and keeps the best `1 − frac` (per block or
/// globally, rounded to `block`), re-fitting ffn_down when the spec asks.
pub(super) fn ffn_channels(inp: &Inputs<'_>, n_ff_in: &[usize], block: usize) -> Result<FfnChoice> {
    let Inputs {
        f,
        spec,
        cal,
        kept_layers,
        allow_requantize,
        progress,
    } = *inp;
    let n = n_ff_in.len();
    let frac = spec.ffn_fraction.unwrap_or(0.0) as f64;
    let down_of = |l: usize| weight_f32(f, format!("blk.{l}.ffn_down.weight"), allow_requantize);
    let mut scores: Vec<Vec<f64>> = vec![Vec::new(); n];
    for &l in kept_layers {
        for part in ["ffn_gate", "ffn_up"] {
            check_float(f, format!("blk.{l}.{part}.weight"), allow_requantize)?;
        }
        let diag = diagonal(&cal.gram[l], n_ff_in[l]);
        scores[l] = channel_scores(&down_of(l)?, n_ff_in[l], &diag, cal.tokens);
    }
    let keep_count = keep_counts(spec.scope, frac, &scores, n_ff_in, kept_layers, block);
    let (mut ffn_kept, mut refit) = (vec![None; n], vec![None; n]);
    for &l in kept_layers {
        let nf = n_ff_in[l];
        if keep_count[l] >= nf {
            continue;
        }
        let kept = best(&scores[l], keep_count[l]);
        if progress {
            eprintln!(
                "prune: blk.{l}: {nf} → {} FFN channels{}",
                kept.len(),
                if spec.refit { ", ffn_down re-fit" } else { "" }
            );
        }
        if spec.refit {
            let w = down_of(l)?;
            refit[l] = Some(apply::refit_down(&w, nf, &cal.gram[l], &kept, spec.ridge)?);
        }
        ffn_kept[l] = Some(kept);
    }
    Ok((ffn_kept, refit))
}

/// The indices of the `keep` highest scores, sorted.
fn best(scores: &[f64], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut kept: Vec<usize> = order[..keep].to_vec();
    kept.sort_unstable();
    kept
}

/// Per original layer, how many FFN channels stay.
fn keep_counts(
    scope: PruneScope,
    frac: f64,
    scores: &[Vec<f64>],
    n_ff_in: &[usize],
    kept_layers: &[usize],
    block: usize,
) -> Vec<usize> {
    let n = n_ff_in.len();
    match scope {
        PruneScope::Layer => (0..n)
            .map(|l| round_to_block(n_ff_in[l] as f64 * (1.0 - frac), block, n_ff_in[l]))
            .collect(),
        PruneScope::Global => {
            // Scores are in residual-stream units, so they compare across blocks.
            let mut all: Vec<(f64, usize)> = kept_layers
                .iter()
                .flat_map(|&l| scores[l].iter().map(move |&s| (s, l)))
                .collect();
            let total: usize = kept_layers.iter().map(|&l| n_ff_in[l]).sum();
            let keep = (total as f64 * (1.0 - frac)).round() as usize;
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut count = vec![0usize; n];
            for &(_, l) in all.iter().take(keep) {
                count[l] += 1;
            }
            (0..n)
                .map(|l| round_to_block(count[l] as f64, block, n_ff_in[l]))
                .collect()
        }
    }
}

/// Per original layer: the KV groups removed and the re-fit attn_output.
pub(super) type HeadChoice = (Vec<Option<Vec<usize>>>, Vec<Option<Vec<f32>>>);

/// The `--prune-heads` weakest KV groups of every kept block, re-fitting attn_output when
/// the spec asks.
pub(super) fn kv_groups(inp: &Inputs<'_>, cfg: &ModelConfig) -> Result<HeadChoice> {
    let Inputs {
        f,
        spec,
        cal,
        kept_layers,
        allow_requantize,
        progress,
    } = *inp;
    let n = cfg.n_layer;
    let (mut kv_removed, mut attn_refit) = (vec![None; n], vec![None; n]);
    let Some(nh) = spec.prune_heads else {
        return Ok((kv_removed, attn_refit));
    };
    for &l in kept_layers {
        let lc = &cfg.layers[l];
        for part in ["attn_q", "attn_k", "attn_v"] {
            check_float(f, format!("blk.{l}.{part}.weight"), allow_requantize)?;
        }
        let wo = weight_f32(f, format!("blk.{l}.attn_output.weight"), allow_requantize)?;
        let n_cols = lc.n_head * cfg.head_dim_v;
        let g = &cal.attn_gram[l];
        let scores = heads::group_scores(&wo, n_cols, g, cal.tokens, lc.n_head_kv);
        let removed = heads::weakest_groups(&scores, nh);
        if progress {
            eprintln!(
                "prune: blk.{l}: KV group scores {scores:.3?}, removing {removed:?}{}",
                if spec.refit {
                    ", attn_output re-fit"
                } else {
                    ""
                }
            );
        }
        if spec.refit {
            let kept = heads::kept_indices(&removed, lc.n_head_kv, n_cols / lc.n_head_kv);
            attn_refit[l] = Some(apply::refit_down(&wo, n_cols, g, &kept, spec.ridge)?);
        }
        kv_removed[l] = Some(removed);
    }
    Ok((kv_removed, attn_refit))
}
