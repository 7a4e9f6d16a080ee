//! Tensors in, GGUF out: each tensor's type from the plan, its rows converted and quantized in
//! parallel (rayon), the finished tensor handed to a writer thread that streams it into the
//! GGUF (temp file, renamed on success), while the next tensor is quantized.
//!
//! At most three tensors' output bytes exist at once (one being quantized, one queued, one
//! being written), plus one chunk of f32 rows per worker: peak memory is a small multiple of
//! the largest tensor, whatever the model's size.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use rayon::prelude::*;

use crate::gguf::{GgmlType, GgufBuilder};
use crate::progress::Progress;
use crate::quant;

use super::recipe::Plan;
pub use super::source::{SourceData, SourceTensor};
use super::{ConvertError, Result};

/// Source types that are not quantized: converting them loses nothing beyond the target's
/// own rounding.
fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub path: PathBuf,
    pub n_tensors: usize,
    pub file_bytes: u64,
    pub seconds: f64,
    /// Tensors per output type.
    pub types: BTreeMap<String, usize>,
    /// One line per tensor whose type fell back.
    pub fallbacks: Vec<String>,
    /// Tensors quantized with importance weights from the imatrix.
    pub weighted: usize,
    /// Quantized tensors the imatrix had no statistics or no weighted quantizer for.
    pub unweighted: Vec<String>,
    /// Tensors quantized with GPTQ.
    pub gptq: usize,
    /// Quantized tensors GPTQ was asked for but had no statistics or codec for.
    pub not_gptq: Vec<String>,
    /// Low-rank repairs: (tensor, weighted error before, after, exact, rank written).
    pub lowrank: Vec<(String, f64, f64, bool, usize)>,
    /// Quantized matrices the repair had no statistics for (or does not apply to).
    pub not_lowrank: Vec<String>,
    /// The adapter written, its rank and size in bytes.
    pub adapter: Option<(PathBuf, usize, u64)>,
}

/// What to do besides choosing types.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub allow_requantize: bool,
    /// Print progress to stderr.
    pub progress: bool,
    pub imatrix: Option<std::sync::Arc<super::imatrix::Imatrix>>,
    pub gptq: Option<std::sync::Arc<super::gptq::Gptq>>,
    /// Low-rank repairs of the quantization error, written as a LoRA adapter to the path.
    pub lowrank: Option<(std::sync::Arc<super::lowrank::LowRank>, PathBuf)>,
}

/// Declares `tensors` (typed by `plan`) in `builder`, then converts and streams them to `out`.
pub fn write_gguf(
    mut builder: GgufBuilder,
    tensors: Vec<SourceTensor<'_>>,
    plan: &Plan,
    opts: &WriteOptions,
    out: &Path,
) -> Result<Summary> {
    let start = Instant::now();
    let mut summary = Summary::default();
    let mut types = Vec::with_capacity(tensors.len());
    for t in &tensors {
        if t.dims.is_empty() {
            return Err(ConvertError::Usage(format!(
                "tensor {:?} has no dimensions",
                t.name
            )));
        }
        let choice = plan.choose(&t.name, &t.dims);
        let ty = match t.gguf_type() {
            // Same type: the bytes are copied, never re-rounded.
            Some(src) if src == choice.ty => src,
            Some(src) if !is_float(src) && !opts.allow_requantize => {
                return Err(ConvertError::Requantize {
                    name: t.name.clone(),
                    ty: src,
                })
            }
            _ => choice.ty,
        };
        if let Some(msg) = choice.fallback {
            summary.fallbacks.push(msg);
        }
        builder.add_tensor(&t.name, ty, &t.dims)?;
        *summary.types.entry(ty.to_string()).or_default() += 1;
        types.push(ty);
    }
    if opts.progress {
        for f in &summary.fallbacks {
            eprintln!("fallback: {f}");
        }
    }
    let total_bytes = builder.file_size();
    let arch = match builder.get("general.architecture") {
        Some(crate::gguf::MetaValue::String(a)) => a.clone(),
        _ => String::new(),
    };
    let mut pairs: Vec<(crate::model::lora::LoraPair, Vec<f64>)> = Vec::new();
    let mut stream = builder.create(out)?;
    let n = tensors.len();
    let mut progress = opts.progress.then(|| Progress::new("convert", "tensors"));
    if let Some(p) = &mut progress {
        p.update(0, n);
    }

    let result: Result<PathBuf> = std::thread::scope(|s| {
        // One finished tensor may wait while another is written and a third is quantized.
        let (tx, rx) = sync_channel::<Vec<u8>>(1);
        let writer = s.spawn(move || -> Result<PathBuf> {
            for bytes in rx {
                stream.write_tensor(&bytes)?;
            }
            Ok(stream.finish()?)
        });
        let mut written_in = 0usize;
        let (mut weighted, mut unweighted) = (0usize, Vec::new());
        for (i, (t, &ty)) in tensors.iter().zip(&types).enumerate() {
            let imp = opts.imatrix.as_ref().and_then(|im| {
                if is_float(ty) {
                    return None;
                }
                // One row of importance per matrix: 1, or each expert's of a 3-D stack.
                let n_mat = t.dims.iter().skip(2).product::<u64>() as usize;
                let v = im
                    .importance(&t.name)
                    .filter(|v| v.len() == t.row_len() * n_mat);
                if v.is_some() && super::weighted::supports(ty) {
                    v
                } else {
                    unweighted.push(format!("{} ({ty})", t.name));
                    None
                }
            });
            if imp.is_some() {
                weighted += 1;
            }
            let hessian = match &opts.gptq {
                Some(g) if !is_float(ty) && t.dims.len() >= 2 => {
                    // Not for a mixture's 3-D expert stacks: each expert sees only the
                    // tokens routed to it, whose Gram matrix calibration does not collect.
                    let h = if super::weighted::supports(ty) && t.dims.len() == 2 {
                        g.hessian(&t.name, plan.tied, t.row_len())?
                    } else {
                        None
                    };
                    if h.is_none() {
                        summary.not_gptq.push(format!("{} ({ty})", t.name));
                    }
                    h
                }
                _ => None,
            };
            if hessian.is_some() {
                summary.gptq += 1;
            }
            let bytes = convert_tensor(t, ty, imp.as_deref(), hessian.as_deref())?;
            if let Some((lr, _)) = &opts.lowrank {
                if let Some(pair) = repair_tensor(lr, t, ty, &bytes, plan.tied, &mut summary)? {
                    pairs.push(pair);
                }
            }
            if let Some((map, range)) = &t.pages {
                super::safetensors::release_pages(map, range.clone());
            }
            written_in += t.source_bytes();
            if tx.send(bytes).is_err() {
                break; // the writer failed; its error is reported below
            }
            if let Some(p) = &mut progress {
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                p.set_message(format!(
                    "{} {}, {:.1} MB read, {:.1} MB/s",
                    t.name,
                    ty,
                    written_in as f64 / 1e6,
                    written_in as f64 / 1e6 / secs
                ));
                p.update(i + 1, n);
            }
        }
        drop(tx);
        summary.weighted = weighted;
        summary.unweighted = unweighted;
        writer
            .join()
            .unwrap_or_else(|_| Err(ConvertError::Usage("the writer thread panicked".into())))
    });
    drop(progress);
    summary.path = result?;
    if let Some((lr, path)) = &opts.lowrank {
        let pairs = adapter_ranks(lr, pairs, total_bytes, &mut summary);
        let written =
            crate::model::lora::write_adapter(path, &arch, lr.rank as f32, &pairs, GgmlType::F16)?;
        let size = std::fs::metadata(&written).map(|m| m.len()).unwrap_or(0);
        summary.adapter = Some((written, lr.rank, size));
    }
    summary.n_tensors = n;
    summary.file_bytes = total_bytes;
    summary.seconds = start.elapsed().as_secs_f64();
    let _ = std::io::stderr().flush();
    Ok(summary)
}

/// The low-rank repair of one converted tensor, if it is a quantized block matrix (or the
/// untied output) the gram file has statistics for; recorded in `summary` either way.
fn repair_tensor(
    lr: &super::lowrank::LowRank,
    t: &SourceTensor<'_>,
    ty: GgmlType,
    bytes: &[u8],
    tied: bool,
    summary: &mut Summary,
) -> Result<Option<(crate::model::lora::LoraPair, Vec<f64>)>> {
    let matrix = t.dims.len() == 2 && (t.name.starts_with("blk.") || t.name == "output.weight");
    if is_float(ty) || !matrix {
        return Ok(None);
    }
    let (k, m) = (t.row_len(), t.n_rows());
    let Some(f) = lr.factor(&t.name, tied, k)? else {
        summary.not_lowrank.push(format!("{} ({ty})", t.name));
        return Ok(None);
    };
    let qerr = |source| ConvertError::Quant {
        name: t.name.clone(),
        source,
    };
    let mut e = vec![0f32; m * k];
    t.rows_f32(0, &mut e).map_err(qerr)?;
    let q = crate::tensor::TensorView::borrowed(&t.name, ty, vec![k, m], bytes)
        .to_f32()
        .map_err(qerr)?;
    e.iter_mut().zip(&q).for_each(|(w, q)| *w -= q);
    // The seed from the name: a tensor's repair does not depend on the others'.
    let seed = t.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let r = super::lowrank::repair(&e, m, k, &f, lr.rank, seed);
    summary
        .lowrank
        .push((t.name.clone(), r.err_before, r.err_after, r.exact, r.rank));
    Ok(Some((
        crate::model::lora::LoraPair {
            base: t.name.clone(),
            rank: r.rank,
            k,
            m,
            a: r.a,
            b: r.b,
        },
        r.gains,
    )))
}

/// The pairs as written, under one alpha = `lr.rank`. Without a budget every pair is
/// zero-padded to that rank (llama.cpp scales a pair by alpha / its rank). Under a budget each
/// matrix keeps the prefix of its components `allocate` gives it (none: no pair), with B
/// multiplied by r / alpha so that alpha / r scales it back to 1; `summary`'s errors after
/// follow the ranks kept.
fn adapter_ranks(
    lr: &super::lowrank::LowRank,
    pairs: Vec<(crate::model::lora::LoraPair, Vec<f64>)>,
    model_bytes: u64,
    summary: &mut Summary,
) -> Vec<crate::model::lora::LoraPair> {
    let alpha = lr.rank;
    let Some(frac) = lr.budget else {
        return pairs
            .into_iter()
            .map(|(mut p, _)| {
                let (r, k, m) = (p.rank, p.k, p.m);
                p.a.resize(alpha * k, 0.0);
                let mut b = vec![0f32; m * alpha];
                for i in 0..m {
                    b[i * alpha..i * alpha + r].copy_from_slice(&p.b[i * r..(i + 1) * r]);
                }
                p.b = b;
                p.rank = alpha;
                p
            })
            .collect();
    };
    // F16 pairs: r·(k + m) values of two bytes.
    let costs: Vec<usize> = pairs.iter().map(|(p, _)| 2 * (p.k + p.m)).collect();
    // Gains relative to each matrix's own weighted error: the raw ‖E·L‖² of matrices in
    // different places (keys, values, FFN, output) are in unlike units, and ranking by them
    // put most of the budget on two matrices and lost to uniform ranks on the test model.
    let gains: Vec<Vec<f64>> = pairs
        .iter()
        .map(|(p, g)| {
            let before = summary
                .lowrank
                .iter()
                .find(|s| s.0 == p.base)
                .map_or(0.0, |s| s.1);
            g.iter()
                .map(|v| if before > 0.0 { v / before } else { 0.0 })
                .collect()
        })
        .collect();
    // The file around the pairs: its header and metadata, and per pair two tensor records
    // (name, dims, type, offset: ~40 bytes beside the name) with up to 31 bytes of padding.
    let overhead = 512
        + pairs
            .iter()
            .map(|(p, _)| 2 * (p.base.len() + 7 + 40 + 31))
            .sum::<usize>();
    let budget = ((frac * model_bytes as f64) as usize).saturating_sub(overhead);
    let ranks = super::lowrank::allocate(&gains, &costs, budget);
    let mut out = Vec::new();
    for ((mut p, g), r) in pairs.into_iter().zip(ranks) {
        if let Some(s) = summary.lowrank.iter_mut().find(|s| s.0 == p.base) {
            s.2 = (s.1 - g[..r].iter().sum::<f64>()).max(0.0);
            s.4 = r;
        }
        if r == 0 {
            continue;
        }
        let (k, m, full) = (p.k, p.m, p.rank);
        p.a.truncate(r * k);
        let s = r as f32 / alpha as f32;
        p.b = (0..m)
            .flat_map(|i| {
                p.b[i * full..i * full + r]
                    .iter()
                    .map(move |v| v * s)
                    .collect::<Vec<_>>()
            })
            .collect();
        p.rank = r;
        out.push(p);
    }
    out
}

/// Rows per parallel work item: about 64 Ki values.
fn rows_per_chunk(row_len: usize) -> usize {
    (65_536 / row_len.max(1)).max(1)
}

/// The tensor's bytes in type `ty`.
fn convert_tensor(
    t: &SourceTensor<'_>,
    ty: GgmlType,
    imp: Option<&[f32]>,
    hessian: Option<&super::gptq::Hessian>,
) -> Result<Vec<u8>> {
    let qerr = |source| ConvertError::Quant {
        name: t.name.clone(),
        source,
    };
    if let SourceData::Gguf(v) = &t.data {
        if v.ty == ty {
            return Ok(v.data.to_vec());
        }
    }
    let row_len = t.row_len();
    let rows = t.n_rows();
    let row_bytes = ty
        .bytes_for(row_len as u64)
        .ok_or_else(|| ConvertError::Usage(format!("tensor {:?}: row too long", t.name)))?
        as usize;
    let mut out = vec![0u8; row_bytes * rows];
    // Rows of one matrix of a 3-D stack (an expert): chunks never straddle two, so each
    // takes its own importance.
    let n_mat = t.dims.iter().skip(2).product::<u64>().max(1) as usize;
    let mat_rows = rows / n_mat;
    let per = rows_per_chunk(row_len).min(mat_rows.max(1));
    let chunks_per_mat = mat_rows.div_ceil(per);
    let spans: Vec<(usize, usize)> = (0..n_mat)
        .flat_map(|m| {
            (0..chunks_per_mat).map(move |c| {
                let r0 = m * mat_rows + c * per;
                (r0, (r0 + per).min((m + 1) * mat_rows))
            })
        })
        .collect();
    let mut pieces: Vec<&mut [u8]> = Vec::with_capacity(spans.len());
    let mut rest = &mut out[..];
    for &(r0, r1) in &spans {
        let (head, tail) = rest.split_at_mut((r1 - r0) * row_bytes);
        pieces.push(head);
        rest = tail;
        debug_assert!(r0 < r1);
    }
    pieces
        .into_par_iter()
        .zip(spans.par_iter())
        .try_for_each(|(chunk, &(r0, r1))| {
            let mut f = vec![0f32; (r1 - r0) * row_len];
            t.rows_f32(r0, &mut f)?;
            let m = r0 / mat_rows.max(1);
            let w = imp.map(|w| {
                if w.len() == row_len {
                    w
                } else {
                    &w[m * row_len..(m + 1) * row_len]
                }
            });
            let q = match hessian.and_then(|h| super::gptq::quantize_rows(ty, &f, h)) {
                Some(q) => q,
                None => match w.and_then(|w| super::weighted::quantize_weighted(ty, &f, w)) {
                    Some(q) => q,
                    None => quant::quantize_to_vec(ty, &f)?,
                },
            };
            chunk.copy_from_slice(&q);
            Ok(())
        })
        .map_err(qerr)?;
    Ok(out)
}
