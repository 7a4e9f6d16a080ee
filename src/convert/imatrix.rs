//! Calibration statistics (`ledge calibrate`) and importance-weighted quantization
//! (`--imatrix`).
//!
//! For every weight matrix W (out × in), calibration runs the model over real text and sums,
//! per input column j, the squared activation x_j² over all positions. The quantization error
//! of a row then matters in proportion to E[x_j²]: the output error of W·x is Σ_j Δw_j·x_j, whose
//! expected square (for uncorrelated inputs) is Σ_j Δw_j²·E[x_j²]. So each block's scale is
//! chosen to minimise Σ_j E[x_j²]·(w_j − d·q_j)² instead of the plain squared error.
//!
//! The file is llama.cpp's imatrix GGUF: `general.type = imatrix`, `imatrix.datasets`,
//! `imatrix.chunk_count`, `imatrix.chunk_size`, and per weight `NAME.in_sum2` (F32, the sums,
//! one row) and `NAME.counts` (F32, positions seen), so llama-quantize reads ours and we read
//! its.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;

use super::{ConvertError, Result};
use crate::gguf::{GgmlType, GgufBuilder, GgufFile, MetaArray, MetaValue};
use crate::model::{Logits, MatmulInput, Model};
use crate::quant::{BlockQ4_0, BlockQ5_0};
use crate::tokenizer::Tokenizer;

/// Squared-activation sums of one weight's inputs.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub sum2: Vec<f64>,
    pub count: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    pub entries: BTreeMap<String, Entry>,
    pub datasets: Vec<String>,
    pub chunks: u32,
    pub chunk_size: u32,
}

impl Imatrix {
    /// Mean squared activation per input column of weight `name`.
    pub fn importance(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        if e.count == 0 {
            return None;
        }
        Some(
            e.sum2
                .iter()
                .map(|&s| (s / e.count as f64) as f32)
                .collect(),
        )
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut b = GgufBuilder::new();
        b.set("general.type", "imatrix")?;
        b.set(
            "imatrix.datasets",
            MetaValue::Array(MetaArray::strings(self.datasets.iter().cloned())),
        )?;
        b.set("imatrix.chunk_count", MetaValue::U32(self.chunks))?;
        b.set("imatrix.chunk_size", MetaValue::U32(self.chunk_size))?;
        let mut data: Vec<Vec<u8>> = Vec::new();
        for (name, e) in &self.entries {
            b.add_tensor(
                &format!("{name}.in_sum2"),
                GgmlType::F32,
                &[e.sum2.len() as u64, 1],
            )?;
            data.push(
                e.sum2
                    .iter()
                    .flat_map(|&v| (v as f32).to_le_bytes())
                    .collect(),
            );
            b.add_tensor(&format!("{name}.counts"), GgmlType::F32, &[1, 1])?;
            data.push((e.count as f32).to_le_bytes().to_vec());
        }
        let mut s = b.create(path)?;
        for d in &data {
            s.write_tensor(d)?;
        }
        s.finish()?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Imatrix> {
        let f = GgufFile::open(path)?;
        let bad = |m: String| ConvertError::Usage(format!("{}: {m}", path.display()));
        let mut im = Imatrix {
            chunks: f.get_u64("imatrix.chunk_count").unwrap_or(0) as u32,
            chunk_size: f.get_u64("imatrix.chunk_size").unwrap_or(0) as u32,
            ..Default::default()
        };
        for info in f.tensor_infos() {
            let tname = f.tensor_name(info);
            let Some(name) = tname.strip_suffix(".in_sum2") else {
                continue;
            };
            let sums = f
                .view(info)
                .to_f32()
                .map_err(|source| ConvertError::Quant {
                    name: tname.to_string(),
                    source,
                })?;
            let counts_name = format!("{name}.counts");
            let counts = f
                .tensor(&counts_name)
                .map_err(|_| bad(format!("{counts_name} is missing")))?
                .to_f32()
                .map_err(|source| ConvertError::Quant {
                    name: counts_name.clone(),
                    source,
                })?;
            if counts.len() != 1 {
                return Err(bad(format!(
                    "{name}: {} experts; only dense models are supported",
                    counts.len()
                )));
            }
            im.entries.insert(
                name.to_string(),
                Entry {
                    sum2: sums.iter().map(|&v| v as f64).collect(),
                    count: counts[0].max(0.0) as u64,
                },
            );
        }
        if im.entries.is_empty() {
            return Err(bad("no NAME.in_sum2 tensors: not an imatrix file".into()));
        }
        Ok(im)
    }
}

/// Runs `model` over `text` in chunks of `ctx` tokens (at most `max_chunks`) and collects the
/// squared activations entering every weight matrix.
pub fn calibrate(
    f: &GgufFile,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
    progress: bool,
) -> Result<Imatrix> {
    let model = Model::load(f).map_err(|e| ConvertError::Usage(e.to_string()))?;
    let tok = Tokenizer::from_gguf(f).map_err(|e| ConvertError::Tokenizer(e.to_string()))?;
    let ids = tok.encode(text, false, false);
    let bos = tok.bos().filter(|_| tok.add_bos());
    let body = ctx - usize::from(bos.is_some());
    let n_chunks = (ids.len() / body).min(max_chunks.unwrap_or(usize::MAX));
    if n_chunks == 0 {
        return Err(ConvertError::Usage(format!(
            "the text has {} tokens, fewer than one chunk of {ctx}",
            ids.len()
        )));
    }
    let n_layer = model.config.n_layer;
    let tied = f.tensor_info("output.weight").is_none();
    // (layer, input kind) → sums; index n_layer holds the output matrix's input.
    let kinds = [
        MatmulInput::Attn,
        MatmulInput::AttnOutput,
        MatmulInput::Ffn,
        MatmulInput::FfnDown,
    ];
    let mut acc: Vec<Vec<Entry>> = vec![vec![Entry::default(); kinds.len()]; n_layer + 1];
    let start = std::time::Instant::now();
    for c in 0..n_chunks {
        let mut chunk: Vec<u32> = bos.into_iter().collect();
        chunk.extend_from_slice(&ids[c * body..(c + 1) * body]);
        let mut cache = model.new_cache(ctx);
        let n_pos = chunk.len();
        let mut observe = |layer: Option<usize>, which: MatmulInput, x: &[f32]| {
            let (l, k) = match (layer, which) {
                (None, _) | (_, MatmulInput::Output) => (n_layer, 0),
                (Some(l), w) => (l, kinds.iter().position(|&k| k == w).unwrap_or(0)),
            };
            let e = &mut acc[l][k];
            // Every observed matrix holds one row per position of the chunk.
            let width = x.len() / n_pos;
            if width == 0 {
                return;
            }
            if e.sum2.is_empty() {
                e.sum2 = vec![0.0; width];
            }
            if e.sum2.len() != width {
                return;
            }
            for row in x.chunks_exact(width) {
                for (s, &v) in e.sum2.iter_mut().zip(row) {
                    *s += (v as f64) * (v as f64);
                }
                e.count += 1;
            }
        };
        model
            .forward_observed(&mut cache, &chunk, Logits::All, &mut observe)
            .map_err(|e| ConvertError::Usage(e.to_string()))?;
        if progress {
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "calibrate: chunk {}/{n_chunks}, {:.0} tokens/s",
                c + 1,
                ((c + 1) * ctx) as f64 / secs
            );
        }
    }
    let mut im = Imatrix {
        chunks: n_chunks as u32,
        chunk_size: ctx as u32,
        ..Default::default()
    };
    for (l, per) in acc.into_iter().enumerate() {
        for (k, e) in per.into_iter().enumerate() {
            if e.count == 0 {
                continue;
            }
            let names: Vec<String> = if l == n_layer {
                vec![if tied {
                    "token_embd.weight"
                } else {
                    "output.weight"
                }
                .to_string()]
            } else {
                let parts: &[&str] = match kinds[k] {
                    MatmulInput::Attn => &["attn_q", "attn_k", "attn_v"],
                    MatmulInput::AttnOutput => &["attn_output"],
                    MatmulInput::Ffn => &["ffn_gate", "ffn_up"],
                    _ => &["ffn_down"],
                };
                parts
                    .iter()
                    .map(|p| format!("blk.{l}.{p}.weight"))
                    .collect()
            };
            for n in names {
                im.entries.insert(n, e.clone());
            }
        }
    }
    Ok(im)
}

/// Types `quantize_weighted` implements.
pub fn supports(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0)
}

/// Quantizes `src` (whole rows of `imp.len()` values) to `ty` with each block's scale chosen
/// to minimise the importance-weighted squared error; None for a type it does not implement.
pub fn quantize_weighted(ty: GgmlType, src: &[f32], imp: &[f32]) -> Option<Vec<u8>> {
    let row = imp.len();
    if row == 0 || !src.len().is_multiple_of(row) || !row.is_multiple_of(32) {
        return None;
    }
    // A floor keeps columns never seen active from being ignored entirely.
    let mean = imp.iter().map(|&v| v as f64).sum::<f64>() / row as f64;
    let floor = (mean * 1e-3) as f32;
    let w: Vec<f32> = imp.iter().map(|&v| v.max(0.0) + floor.max(1e-12)).collect();
    let mut out = Vec::with_capacity(src.len() / 32 * ty.type_size());
    for (bi, x) in src.chunks_exact(32).enumerate() {
        let col = (bi * 32) % row;
        let wb = &w[col..col + 32];
        match ty {
            GgmlType::Q4_0 => {
                let (d, q) = search_symmetric(x, wb, 8);
                let mut b = BlockQ4_0 {
                    d: f16::from_f32(d),
                    qs: [0; 16],
                };
                for j in 0..16 {
                    b.qs[j] = ((q[j] + 8) as u8) | (((q[j + 16] + 8) as u8) << 4);
                }
                out.extend_from_slice(bytemuck::bytes_of(&b));
            }
            GgmlType::Q5_0 => {
                let (d, q) = search_symmetric(x, wb, 16);
                let mut u = [0u8; 32];
                for (uj, &qj) in u.iter_mut().zip(&q) {
                    *uj = (qj + 16) as u8;
                }
                let (qh, qs) = crate::quant::q5::pack5(&u);
                let b = BlockQ5_0 {
                    d: f16::from_f32(d),
                    qh,
                    qs,
                };
                out.extend_from_slice(bytemuck::bytes_of(&b));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The scale d (as stored: f16-rounded) and levels q ∈ [−half, half−1] minimising
/// Σ w·(x − d·q)². Candidates: the reference's d = m/−half (m the signed extreme) and nearby
/// divisors, each followed by a weighted least-squares refit of d and one re-rounding.
fn search_symmetric(x: &[f32], w: &[f32], half: i32) -> (f32, [i32; 32]) {
    let m = crate::quant::q4::signed_absmax(x);
    let mut best = (f32::INFINITY, 0.0f32, [0i32; 32]);
    if m == 0.0 {
        return (0.0, [0; 32]);
    }
    let quantize = |d: f32| -> [i32; 32] {
        let mut q = [0i32; 32];
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (qj, &v) in q.iter_mut().zip(x) {
            *qj = ((v * id).round() as i32).clamp(-half, half - 1);
        }
        q
    };
    let err = |d: f32, q: &[i32; 32]| -> f32 {
        x.iter()
            .zip(q)
            .zip(w)
            .map(|((&v, &qj), &wj)| {
                let e = v - d * qj as f32;
                wj * e * e
            })
            .sum()
    };
    let mut consider = |d: f32, q: [i32; 32]| {
        let d = f16::from_f32(d).to_f32();
        let e = err(d, &q);
        if e < best.0 {
            best = (e, d, q);
        }
    };
    for k in -12..=12 {
        let d0 = m / (-(half as f32) + 0.125 * k as f32);
        let q = quantize(d0);
        consider(d0, q);
        // Weighted least squares for d given q, then the levels again for that d.
        let (num, den) = x
            .iter()
            .zip(&q)
            .zip(w)
            .fold((0.0f32, 0.0f32), |(n, dd), ((&v, &qj), &wj)| {
                (n + wj * v * qj as f32, dd + wj * (qj * qj) as f32)
            });
        if den > 0.0 {
            let d1 = num / den;
            consider(d1, q);
            let q1 = quantize(f16::from_f32(d1).to_f32());
            consider(d1, q1);
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Weighted error of `bytes` (type `ty`) against `x`, decoded by ledge's own dequantizer.
    fn weighted_err(ty: GgmlType, bytes: &[u8], x: &[f32], imp: &[f32]) -> f64 {
        let mut y = vec![0f32; x.len()];
        crate::quant::dequantize_unaligned(ty, bytes, &mut y).unwrap();
        x.iter()
            .zip(&y)
            .enumerate()
            .map(|(i, (&a, &b))| imp[i % imp.len()] as f64 * ((a - b) as f64).powi(2))
            .sum()
    }

    #[test]
    fn weighted_search_beats_the_reference_on_its_metric() {
        let mut s = 7u64;
        let row = 256;
        // Importance spread over two orders of magnitude, as real activations are.
        let imp: Vec<f32> = (0..row)
            .map(|_| 10f32.powf(2.0 * (lcg(&mut s) + 0.5)))
            .collect();
        let x: Vec<f32> = (0..row * 16)
            .map(|_| lcg(&mut s) * (1.0 + lcg(&mut s)))
            .collect();
        for ty in [GgmlType::Q4_0, GgmlType::Q5_0] {
            let reference = crate::quant::quantize_to_vec(ty, &x).unwrap();
            let weighted = quantize_weighted(ty, &x, &imp).unwrap();
            assert_eq!(weighted.len(), reference.len());
            let (er, ew) = (
                weighted_err(ty, &reference, &x, &imp),
                weighted_err(ty, &weighted, &x, &imp),
            );
            assert!(ew < 0.9 * er, "{ty}: weighted {ew} vs reference {er}");
        }
    }
}
