//! LoRA adapters in llama.cpp's GGUF format, applied at run time.
//!
//! An adapter file has `general.type = "adapter"`, `adapter.type = "lora"`,
//! `adapter.lora.alpha`, and for each adapted matrix W (ggml shape [k, m]) a pair
//! `<W's name>.lora_a` ([k, r]) and `<W's name>.lora_b` ([r, m]). A product then becomes
//! W·x + s·B·(A·x) with s = scale·alpha/r (scale alone where alpha is 0), as llama.cpp's
//! `build_lora_mm` computes it. The pairs stay low rank (r·(k + m) multiply-adds per token
//! and matrix) instead of being folded into W: folding would mean dequantizing and
//! re-quantizing every adapted matrix at load, and losing the packed layouts' mmap sharing.
//!
//! As llama.cpp, norm vectors in an adapter (`*_norm.weight`) are skipped with a notice.
//! A part of a fused matrix (Phi-3's `attn_qkv`) takes its rows of B; expert stacks and the
//! token embedding are refused by name.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::gguf::{GgufError, GgufFile};
use crate::quant::QuantError;

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("LoRA adapter {path}: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    #[error("{path} is not a LoRA adapter: general.type is {found:?}, expected \"adapter\"")]
    NotAdapter { path: PathBuf, found: String },
    #[error("{path} is an adapter of type {found:?}; ledge applies \"lora\" adapters")]
    NotLora { path: PathBuf, found: String },
    #[error("LoRA adapter {path} is for architecture {adapter:?}, the model is {model:?}")]
    ArchMismatch {
        path: PathBuf,
        adapter: String,
        model: String,
    },
    #[error("LoRA adapter {path}: {name} has no {missing} partner")]
    Unpaired {
        path: PathBuf,
        name: String,
        missing: &'static str,
    },
    #[error("LoRA adapter {path}: tensor {name:?} is neither a .lora_a/.lora_b matrix nor a norm")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error(
        "LoRA adapter {path}: the model has no matrix {name:?} (an adapter for another model?)"
    )]
    NoBaseTensor { path: PathBuf, name: String },
    #[error("LoRA adapter {path}: {name}: {what}")]
    BadShape {
        path: PathBuf,
        name: String,
        what: String,
    },
    #[error("LoRA adapter {path}: {name}: {why}")]
    Unsupported {
        path: PathBuf,
        name: String,
        why: &'static str,
    },
    #[error("LoRA adapter {path}: {source}")]
    Quant {
        path: PathBuf,
        #[source]
        source: QuantError,
    },
}

/// One adapted matrix: A (r × k) and B (m × r), row-major f32.
#[derive(Clone, Debug)]
pub struct LoraPair {
    /// The base matrix's tensor name, e.g. `blk.3.attn_q.weight`.
    pub base: String,
    pub rank: usize,
    pub k: usize,
    pub m: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// An adapter file's pairs and alpha.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub path: PathBuf,
    pub arch: String,
    pub alpha: f32,
    pub pairs: Vec<LoraPair>,
    /// Norm vectors the file holds, which are not applied (llama.cpp skips them too).
    pub skipped: Vec<String>,
}

impl LoraAdapter {
    /// Reads and checks an adapter file.
    pub fn open(path: &Path) -> Result<LoraAdapter, LoraError> {
        let f = GgufFile::open(path).map_err(|source| LoraError::Gguf {
            path: path.to_path_buf(),
            source,
        })?;
        LoraAdapter::from_file(&f, path)
    }

    /// Reads and checks an adapter from an open GGUF (`path` names it in errors).
    pub fn from_file(f: &GgufFile, path: &Path) -> Result<LoraAdapter, LoraError> {
        let p = || path.to_path_buf();
        let gguf = |source| LoraError::Gguf { path: p(), source };
        let ty = f.get_str("general.type").unwrap_or("").to_string();
        if ty != "adapter" {
            return Err(LoraError::NotAdapter {
                path: p(),
                found: ty,
            });
        }
        let aty = f.get_str("adapter.type").unwrap_or("").to_string();
        if aty != "lora" {
            return Err(LoraError::NotLora {
                path: p(),
                found: aty,
            });
        }
        let arch = f.architecture().map_err(gguf)?.to_string();
        // llama.cpp reads a missing alpha as 0: the scale alone, not divided by the rank.
        let alpha = f.get_f32("adapter.lora.alpha").unwrap_or(0.0);
        let mut a_of = std::collections::BTreeMap::new();
        let mut b_of = std::collections::BTreeMap::new();
        let mut skipped = Vec::new();
        for v in f.tensors() {
            let name = v.name.to_string();
            if let Some(base) = name.strip_suffix(".lora_a") {
                a_of.insert(base.to_string(), v);
            } else if let Some(base) = name.strip_suffix(".lora_b") {
                b_of.insert(base.to_string(), v);
            } else if name.ends_with("_norm.weight") {
                skipped.push(name);
            } else {
                return Err(LoraError::UnexpectedTensor { path: p(), name });
            }
        }
        let unpaired = b_of
            .keys()
            .filter(|b| !a_of.contains_key(*b))
            .map(|b| (b, ".lora_a"))
            .chain(
                a_of.keys()
                    .filter(|a| !b_of.contains_key(*a))
                    .map(|a| (a, ".lora_b")),
            )
            .next();
        if let Some((base, which)) = unpaired {
            return Err(LoraError::Unpaired {
                path: p(),
                name: base.clone(),
                missing: which,
            });
        }
        let mut pairs = Vec::with_capacity(a_of.len());
        for (base, a) in a_of {
            let b = &b_of[&base];
            let bad = |what: String| LoraError::BadShape {
                path: p(),
                name: base.clone(),
                what,
            };
            if a.shape.len() != 2 || b.shape.len() != 2 {
                return Err(LoraError::Unsupported {
                    path: p(),
                    name: base,
                    why: "only 2-D pairs are applied (not expert stacks)",
                });
            }
            let (k, rank, m) = (a.shape[0], a.shape[1], b.shape[1]);
            if b.shape[0] != rank {
                return Err(bad(format!(
                    "lora_a is [{k}, {rank}] and lora_b [{}, {m}]: the ranks differ \
                     (lora_a must be [k, r], lora_b [r, m])",
                    b.shape[0]
                )));
            }
            if rank == 0 {
                return Err(bad("rank 0".into()));
            }
            let quant = |source| LoraError::Quant { path: p(), source };
            let (av, bv) = (a.to_f32().map_err(quant)?, b.to_f32().map_err(quant)?);
            if av.iter().chain(&bv).any(|x| !x.is_finite()) {
                return Err(bad("holds a NaN or infinite value".into()));
            }
            pairs.push(LoraPair {
                base,
                rank,
                k,
                m,
                a: av,
                b: bv,
            });
        }
        Ok(LoraAdapter {
            path: path.to_path_buf(),
            arch,
            alpha,
            pairs,
            skipped,
        })
    }

    /// The factor the pairs' products take: scale·alpha/r, or scale where alpha is 0.
    pub fn effective_scale(&self, rank: usize, scale: f32) -> f32 {
        if self.alpha != 0.0 {
            scale * self.alpha / rank as f32
        } else {
            scale
        }
    }
}

/// A pair as a matmul applies it: out (n, m) += s · (x Aᵀ) Bᵀ, B cut to the rows of the
/// weight it is attached to.
#[derive(Clone, Debug)]
pub struct LoraDelta {
    rank: usize,
    k: usize,
    m: usize,
    scale: f32,
    a: std::sync::Arc<Vec<f32>>,
    /// Bᵀ (r × m): the up-projection as r rows, so that each token's delta is r long axpys.
    bt: Vec<f32>,
}

impl LoraDelta {
    /// `pair` scaled by `scale`, for the weight holding its B rows `rows`.
    pub fn new(
        pair: &LoraPair,
        a: std::sync::Arc<Vec<f32>>,
        rows: std::ops::Range<usize>,
        scale: f32,
    ) -> LoraDelta {
        let (r, m) = (pair.rank, rows.len());
        let mut bt = vec![0f32; r * m];
        for (i, row) in rows.clone().enumerate() {
            for j in 0..r {
                bt[j * m + i] = pair.b[row * r + j];
            }
        }
        LoraDelta {
            rank: r,
            k: pair.k,
            m,
            scale,
            a,
            bt,
        }
    }

    /// Bytes a product reads for this delta.
    pub fn bytes(&self) -> usize {
        (self.a.len() + self.bt.len()) * 4
    }

    /// out (n, m) += s · (x Aᵀ) Bᵀ for x (n, k).
    pub fn apply(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let (r, k, m) = (self.rank, self.k, self.m);
        assert_eq!(x.len(), n * k, "LoRA: x is not n×k");
        assert_eq!(out.len(), n * m, "LoRA: out is not n×m");
        let mut t = vec![0f32; n * r];
        let down = |(tr, xr): (&mut [f32], &[f32])| {
            for (j, v) in tr.iter_mut().enumerate() {
                *v = self.scale * dot(xr, &self.a[j * k..(j + 1) * k]);
            }
        };
        // o += Σ_j t_j · Bᵀ[j][row0 ..]: vectorized axpys.
        let up = |o: &mut [f32], tr: &[f32], row0: usize| {
            for (j, &tj) in tr.iter().enumerate() {
                let bj = &self.bt[j * m + row0..j * m + row0 + o.len()];
                o.iter_mut().zip(bj).for_each(|(v, &b)| *v += tj * b);
            }
        };
        // A decoded token's delta is a few thousand multiply-adds per matrix: a fork-join
        // would cost more than it saves (it took a third of SmolLM2's decode time).
        if n * r * (k + m) < PARALLEL_WORK {
            t.chunks_mut(r).zip(x.chunks(k)).for_each(down);
            for (o, tr) in out.chunks_mut(m).zip(t.chunks(r)) {
                up(o, tr, 0);
            }
            return;
        }
        t.par_chunks_mut(r).zip(x.par_chunks(k)).for_each(down);
        if n == 1 {
            // One token through a wide matrix (the output): rows in parallel.
            out.par_chunks_mut(ROWS_PER_TASK)
                .enumerate()
                .for_each(|(c, o)| up(o, &t, c * ROWS_PER_TASK));
        } else {
            out.par_chunks_mut(m)
                .zip(t.par_chunks(r))
                .for_each(|(o, tr)| up(o, tr, 0));
        }
    }
}

/// Multiply-adds below which a delta runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;
/// Output rows per task for one token.
const ROWS_PER_TASK: usize = 1024;

/// Σ a·b over eight lanes (vectorized by the compiler).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Where each base matrix of a model is: `(weight index, first row)` per part, in row order.
pub(crate) fn parts_of<'n>(
    names: impl Iterator<Item = (usize, &'n str, usize)>,
) -> std::collections::HashMap<String, Vec<(usize, usize, usize)>> {
    // (index, name, rows) → base name → [(index, part number, rows)], parts sorted.
    let mut map: std::collections::HashMap<String, Vec<(usize, usize, usize)>> =
        std::collections::HashMap::new();
    for (i, name, rows) in names {
        let (base, part) = match name.strip_suffix(']').and_then(|s| s.rsplit_once('[')) {
            Some((b, n)) => (b.to_string(), n.parse().unwrap_or(0)),
            None => (name.to_string(), 0),
        };
        map.entry(base).or_default().push((i, part, rows));
    }
    for v in map.values_mut() {
        v.sort_by_key(|&(_, part, _)| part);
    }
    map
}

/// Writes `pairs` as a llama.cpp LoRA adapter for `arch` (temporary file, renamed when
/// complete), the matrices in `ty` (F16 or BF16; F32 for any other); returns the path written.
pub fn write_adapter(
    path: &Path,
    arch: &str,
    alpha: f32,
    pairs: &[LoraPair],
    ty: crate::gguf::GgmlType,
) -> Result<PathBuf, GgufError> {
    use crate::gguf::{GgmlType, GgufBuilder, MetaValue};
    let ty = match ty {
        GgmlType::F16 | GgmlType::BF16 => ty,
        _ => GgmlType::F32,
    };
    let mut b = GgufBuilder::new();
    b.set("general.architecture", arch)?;
    b.set("general.type", "adapter")?;
    b.set("adapter.type", "lora")?;
    b.set("adapter.lora.alpha", MetaValue::F32(alpha))?;
    for p in pairs {
        b.add_tensor(
            &format!("{}.lora_a", p.base),
            ty,
            &[p.k as u64, p.rank as u64],
        )?;
        b.add_tensor(
            &format!("{}.lora_b", p.base),
            ty,
            &[p.rank as u64, p.m as u64],
        )?;
    }
    let encode = |v: &[f32]| -> Vec<u8> {
        match ty {
            GgmlType::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            GgmlType::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        }
    };
    let mut s = b.create(path)?;
    for p in pairs {
        s.write_tensor(&encode(&p.a))?;
        s.write_tensor(&encode(&p.b))?;
    }
    s.finish()
}
