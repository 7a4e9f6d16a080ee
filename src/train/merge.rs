//! A distillation's outputs: the trained LoRA pairs as an adapter in llama.cpp's format, and
//! the merged model (each pair folded into its matrix, re-quantized to the type the student
//! file stored it in, and the trained norms written in place of the file's).

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::student::{Student, TARGETS};
use crate::gguf::{GgmlType, GgufBuilder, GgufError, GgufFile};
use crate::model::lora::{write_adapter, LoraPair};
use crate::quant;

/// The trained pairs, named after their base matrices.
pub fn pairs(st: &Student, params: &[f32]) -> Vec<LoraPair> {
    let mut out = Vec::new();
    for (il, slots) in st.layout.lora.iter().enumerate() {
        for (slot, at) in slots.iter().enumerate() {
            if let Some(at) = at {
                out.push(LoraPair {
                    base: format!("blk.{il}.{}.weight", TARGETS[slot]),
                    rank: at.rank,
                    k: at.k,
                    m: at.m,
                    a: params[at.a..at.a + at.rank * at.k].to_vec(),
                    b: params[at.b..at.b + at.m * at.rank].to_vec(),
                });
            }
        }
    }
    out
}

/// Writes the adapter (F32 pairs, alpha as trained).
pub fn write_lora(st: &Student, params: &[f32], path: &Path) -> Result<PathBuf, GgufError> {
    write_adapter(
        path,
        st.model.config.spec.name,
        st.spec.alpha,
        &pairs(st, params),
        GgmlType::F32,
    )
}

/// Trained norm vectors by tensor name.
fn norms(st: &Student, params: &[f32]) -> Vec<(String, Vec<f32>)> {
    let d = st.model.config.n_embd;
    let mut out = Vec::new();
    for (il, n) in st.layout.norms.iter().enumerate() {
        if let Some((a, f)) = *n {
            out.push((
                format!("blk.{il}.attn_norm.weight"),
                params[a..a + d].to_vec(),
            ));
            out.push((
                format!("blk.{il}.ffn_norm.weight"),
                params[f..f + d].to_vec(),
            ));
        }
    }
    if let Some(o) = st.layout.output_norm {
        out.push(("output_norm.weight".into(), params[o..o + d].to_vec()));
    }
    out
}

/// Writes the student with the pairs folded in and the trained norms; `progress(done, total)`
/// per tensor.
pub fn write_merged(
    st: &Student,
    file: &GgufFile,
    params: &[f32],
    path: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let pairs = pairs(st, params);
    let norms = norms(st, params);
    let s = st.layout.scale;
    let mut b = GgufBuilder::with_metadata_of(file)?;
    let views: Vec<_> = file.tensors().collect();
    for v in &views {
        let dims: Vec<u64> = v.shape.iter().map(|&d| d as u64).collect();
        let ty = if norms.iter().any(|(n, _)| n == &v.name) {
            GgmlType::F32
        } else {
            v.ty
        };
        b.add_tensor(&v.name, ty, &dims)?;
    }
    let mut out = b.create(path)?;
    for (i, v) in views.iter().enumerate() {
        if let Some((_, w)) = norms.iter().find(|(n, _)| n == &v.name) {
            let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            out.write_tensor(&bytes)?;
        } else if let Some(p) = pairs.iter().find(|p| p.base == v.name) {
            let mut w = v.to_f32()?;
            // W row i += s·Σ_j B[i, j]·A[j, :].
            w.par_chunks_mut(p.k).enumerate().for_each(|(row, wr)| {
                for j in 0..p.rank {
                    let bij = s * p.b[row * p.rank + j];
                    let aj = &p.a[j * p.k..(j + 1) * p.k];
                    wr.iter_mut().zip(aj).for_each(|(x, &y)| *x += bij * y);
                }
            });
            let bytes = match v.ty {
                GgmlType::F32 => w.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ty => {
                    // Rows quantize independently: in parallel, one row per task.
                    let rows: Vec<Vec<u8>> = w
                        .par_chunks(p.k)
                        .map(|r| quant::quantize_to_vec(ty, r))
                        .collect::<Result<_, _>>()?;
                    rows.concat()
                }
            };
            out.write_tensor(&bytes)?;
        } else {
            out.write_tensor(&v.data)?;
        }
        progress(i + 1, views.len());
    }
    Ok(out.finish()?)
}
