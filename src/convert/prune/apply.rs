//! Tensor surgery: the kept blocks renumbered, the removed FFN channels and KV groups cut out
//! of their tensors (or replaced by the least-squares re-fits computed here), and an imatrix
//! of the unpruned model carried over to the pruned one.

use rayon::prelude::*;

use super::{heads, PrunePlan};
use crate::convert::imatrix::{Entry, Imatrix};
use crate::convert::source::{SourceData, SourceTensor};
use crate::convert::{ConvertError, Result};
use crate::gguf::GgufFile;
use crate::linalg::{dot_f64, ridge_solve_many};

/// Least-squares re-fit of ffn_down onto the kept channels `kept` (sorted):
/// W'_K = (W · G[:, K] + λ·W_K) · (G[K, K] + λI)⁻¹, λ = ridge · mean(diag G[K, K]): the
/// minimiser of Σ_t ‖W h_t − W' h_t[K]‖² + λ‖W' − W_K‖², so a large ridge gives back the plain
/// column selection and a small one the pure least-squares fit (which over-fits a few
/// thousand calibration tokens: on SmolLM2 it raised held-out KLD from 0.18 to 0.47 at 10%).
/// `w` is n_embd rows of n_ff, `g` the full n_ff × n_ff Gram; returns n_embd rows of |K|.
pub fn refit_down(
    w: &[f32],
    n_ff: usize,
    g: &[f64],
    kept: &[usize],
    ridge: f64,
) -> Result<Vec<f32>> {
    let k = kept.len();
    let mean_diag = kept.iter().map(|&c| g[c * n_ff + c]).sum::<f64>() / k.max(1) as f64;
    let lambda = ridge * mean_diag + 1e-12;
    let gkk: Vec<f64> = kept
        .iter()
        .flat_map(|&ci| kept.iter().map(move |&cj| g[ci * n_ff + cj]))
        .collect();
    // Rows of G[K, :] (k × n_ff), so b_e = G[K, :] · w_e is a sequence of contiguous dots.
    let gk: Vec<f64> = kept
        .iter()
        .flat_map(|&c| g[c * n_ff..(c + 1) * n_ff].iter().copied())
        .collect();
    let rows = w.len() / n_ff;
    ridge_solve_many(gkk, k, lambda, rows, |e| {
        let we64: Vec<f64> = w[e * n_ff..(e + 1) * n_ff]
            .iter()
            .map(|&v| v as f64)
            .collect();
        // Right-hand side G[K, :]·w_e + λ·w_e[K]: the ridge pulls toward the unpruned
        // weights (plain column selection), not toward zero.
        gk.chunks_exact(n_ff)
            .zip(kept)
            .map(|(row, &c)| dot_f64(row, &we64) + lambda * we64[c])
            .collect()
    })
    .map_err(|j| {
        ConvertError::Usage(format!(
            "re-fit: the calibration Gram matrix is not positive definite (pivot {j}); use more calibration text or --no-refit"
        ))
    })
}

/// Σ_t ‖W h_t − W' h_t[K]‖² from the Gram alone: the reconstruction error on the calibration
/// activations of replacing ffn_down `w` (n_embd rows of n_ff) by `w_k` (rows of |K|).
pub fn reconstruction_error(w: &[f32], n_ff: usize, g: &[f64], kept: &[usize], w_k: &[f32]) -> f64 {
    let k = kept.len();
    // ‖W h − W' h_K‖² = [W, −W'] G_ext [W, −W']ᵀ, expanded.
    w.par_chunks_exact(n_ff)
        .zip(w_k.par_chunks_exact(k))
        .map(|(a, b)| {
            let a: Vec<f64> = a.iter().map(|&v| v as f64).collect();
            let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
            let mut e = 0f64;
            for i in 0..n_ff {
                let gi = &g[i * n_ff..(i + 1) * n_ff];
                let ga = dot_f64(gi, &a);
                e += a[i] * ga;
            }
            for (p, &cp) in kept.iter().enumerate() {
                let gp = &g[cp * n_ff..(cp + 1) * n_ff];
                let ga = dot_f64(gp, &a);
                let gb: f64 = kept.iter().zip(&b).map(|(&cq, y)| gp[cq] * y).sum();
                e += -2.0 * b[p] * ga + b[p] * gb;
            }
            e
        })
        .sum()
}

impl PrunePlan {
    /// The output name of a tensor: (original layer, new name), or None if it is dropped.
    fn rename(&self, name: &str) -> Option<(Option<usize>, String)> {
        let Some(rest) = name.strip_prefix("blk.") else {
            return Some((None, name.to_string()));
        };
        let (idx, tail) = rest.split_once('.')?;
        let Ok(l) = idx.parse::<usize>() else {
            return Some((None, name.to_string()));
        };
        let new = self.kept_layers.iter().position(|&k| k == l)?;
        Some((Some(l), format!("blk.{new}.{tail}")))
    }

    /// The tensor stream with dropped blocks left out, blocks renumbered and FFN channels
    /// removed (those tensors become in-memory F32).
    pub fn apply<'a>(
        &self,
        f: &GgufFile,
        tensors: Vec<SourceTensor<'a>>,
    ) -> Result<Vec<SourceTensor<'a>>> {
        let mut out = Vec::with_capacity(tensors.len());
        for mut t in tensors {
            let Some((layer, new_name)) = self.rename(&t.name) else {
                continue;
            };
            let kept = layer.and_then(|l| self.ffn_kept[l].as_ref().map(|k| (l, k)));
            if let Some((l, kept)) = kept {
                let part = t.name.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
                let part = part.rsplit('.').next().unwrap_or("");
                let nf = self.n_ff_in[l];
                let values = |t: &SourceTensor<'_>| -> Result<Vec<f32>> {
                    let v = f
                        .tensor(&t.name)
                        .map_err(|_| ConvertError::MissingTensor(t.name.clone()))?;
                    v.to_f32().map_err(|source| ConvertError::Quant {
                        name: t.name.clone(),
                        source,
                    })
                };
                match part {
                    "ffn_gate" | "ffn_up" => {
                        // dims [n_embd, n_ff]: one row per channel.
                        let row = t.dims[0] as usize;
                        let v = values(&t)?;
                        let sel: Vec<f32> = kept
                            .iter()
                            .flat_map(|&c| v[c * row..(c + 1) * row].iter().copied())
                            .collect();
                        t.dims = vec![row as u64, kept.len() as u64];
                        t.data = SourceData::F32(sel);
                        t.pages = None;
                    }
                    "ffn_down" => {
                        // dims [n_ff, n_embd]: one column per channel.
                        let rows = t.dims[1] as usize;
                        let sel = match &self.refit_down[l] {
                            Some(w) => w.clone(),
                            None => values(&t)?
                                .chunks_exact(nf)
                                .flat_map(|r| kept.iter().map(move |&c| r[c]))
                                .collect(),
                        };
                        t.dims = vec![kept.len() as u64, rows as u64];
                        t.data = SourceData::F32(sel);
                        t.pages = None;
                    }
                    _ => {}
                }
            }
            if let Some(l) = layer {
                self.apply_heads(f, l, &mut t)?;
            }
            t.name = new_name;
            out.push(t);
        }
        Ok(out)
    }

    /// Removes the pruned KV groups from one attention tensor of original layer `l` (a no-op
    /// for other tensors and unpruned layers): rows of attn_q / attn_k / attn_v (and their
    /// biases), columns of attn_output (or its re-fit).
    fn apply_heads(&self, f: &GgufFile, l: usize, t: &mut SourceTensor<'_>) -> Result<()> {
        let Some(removed) = self.kv_removed[l].as_ref() else {
            return Ok(());
        };
        let (nh, nkv) = (self.n_head_in[l], self.n_kv_in[l]);
        let (hk, hv) = self.head_dim;
        let part = t.name.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        let part = part.rsplit('.').next().unwrap_or("");
        // Rows per group and expected row count (dims are [row length, rows]).
        let rows_per_group = match part {
            "attn_q" => (nh / nkv) * hk,
            "attn_k" => hk,
            "attn_v" => hv,
            "attn_output" if t.dims.len() == 2 => 0,
            _ => return Ok(()),
        };
        let bad = |t: &SourceTensor<'_>| {
            ConvertError::Usage(format!(
                "head pruning: tensor {} has dims {:?}, which do not match {nh} heads / {nkv} KV heads of {hk}/{hv}",
                t.name, t.dims
            ))
        };
        let v = f
            .tensor(&t.name)
            .map_err(|_| ConvertError::MissingTensor(t.name.clone()))?
            .to_f32()
            .map_err(|source| ConvertError::Quant {
                name: t.name.clone(),
                source,
            })?;
        if rows_per_group == 0 {
            // attn_output: dims [n_head·hd_v, n_embd], one column per attention output.
            let n_cols = nh * hv;
            if t.dims[0] as usize != n_cols {
                return Err(bad(t));
            }
            let kept = heads::kept_indices(removed, nkv, n_cols / nkv);
            let sel = match &self.attn_refit[l] {
                Some(w) => w.clone(),
                None => heads::select_cols(&v, n_cols, &kept),
            };
            t.dims = vec![kept.len() as u64, t.dims[1]];
            t.data = SourceData::F32(sel);
        } else {
            let (row_len, n_rows) = match t.dims[..] {
                [n] => (1, n as usize),
                [r, n] => (r as usize, n as usize),
                _ => return Err(bad(t)),
            };
            if n_rows != nkv * rows_per_group {
                return Err(bad(t));
            }
            let rows = heads::kept_indices(removed, nkv, rows_per_group);
            let sel = heads::select_rows(&v, row_len, &rows);
            t.dims = if t.dims.len() == 1 {
                vec![rows.len() as u64]
            } else {
                vec![row_len as u64, rows.len() as u64]
            };
            t.data = SourceData::F32(sel);
        }
        t.pages = None;
        Ok(())
    }

    /// An imatrix for the unpruned model rewritten for the pruned one: entries of dropped
    /// blocks left out, blocks renumbered, ffn_down statistics restricted to the kept channels.
    pub fn remap_imatrix(&self, im: &Imatrix) -> Imatrix {
        let mut out = Imatrix {
            entries: Default::default(),
            ..im.clone()
        };
        for (name, e) in &im.entries {
            let Some((layer, new_name)) = self.rename(name) else {
                continue;
            };
            let mut e: Entry = e.clone();
            if let Some(kept) = layer.and_then(|l| self.ffn_kept[l].as_ref()) {
                if name.ends_with(".ffn_down.weight") {
                    e.sum2 = kept
                        .iter()
                        .filter_map(|&c| e.sum2.get(c).copied())
                        .collect();
                }
            }
            if let Some((l, removed)) =
                layer.and_then(|l| self.kv_removed[l].as_ref().map(|r| (l, r)))
            {
                if name.ends_with(".attn_output.weight") {
                    let n_cols = self.n_head_in[l] * self.head_dim.1;
                    e.sum2 =
                        heads::kept_indices(removed, self.n_kv_in[l], n_cols / self.n_kv_in[l])
                            .into_iter()
                            .filter_map(|c| e.sum2.get(c).copied())
                            .collect();
                }
            }
            out.entries.insert(new_name, e);
        }
        out
    }
}
