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

use super::calibration::{Calibrator, ChunkObserver};
use super::gram::{Gram, GramEntry};
use super::{ConvertError, Result};
use crate::gguf::{GgmlType, GgufBuilder, GgufFile, MetaArray, MetaValue};
use crate::model::MatmulInput;

/// Squared-activation sums of one weight's inputs. A mixture's 3-D expert tensor has one
/// row of sums and one count per expert (the tokens routed to it), as llama.cpp stores them.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// (counts.len(), width) row-major.
    pub sum2: Vec<f64>,
    pub counts: Vec<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    pub entries: BTreeMap<String, Entry>,
    pub datasets: Vec<String>,
    pub chunks: u32,
    pub chunk_size: u32,
}

impl Imatrix {
    /// Mean squared activation per input column of weight `name` (per expert, one after
    /// another, for an expert tensor; an expert no token reached gets equal weights).
    pub fn importance(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        if e.counts.iter().all(|&c| c == 0) || e.counts.is_empty() {
            return None;
        }
        let width = e.sum2.len() / e.counts.len();
        Some(
            e.sum2
                .chunks_exact(width)
                .zip(&e.counts)
                .flat_map(|(row, &c)| {
                    row.iter()
                        .map(move |&s| if c == 0 { 1.0 } else { (s / c as f64) as f32 })
                })
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
            let n_mat = e.counts.len().max(1) as u64;
            b.add_tensor(
                &format!("{name}.in_sum2"),
                GgmlType::F32,
                &[e.sum2.len() as u64 / n_mat, n_mat],
            )?;
            data.push(
                e.sum2
                    .iter()
                    .flat_map(|&v| (v as f32).to_le_bytes())
                    .collect(),
            );
            b.add_tensor(&format!("{name}.counts"), GgmlType::F32, &[1, n_mat])?;
            data.push(
                e.counts
                    .iter()
                    .flat_map(|&c| (c as f32).to_le_bytes())
                    .collect(),
            );
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
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                return Err(bad(format!(
                    "{name}: {} sums do not split into {} experts' rows",
                    sums.len(),
                    counts.len()
                )));
            }
            im.entries.insert(
                name.to_string(),
                Entry {
                    sum2: sums.iter().map(|&v| v as f64).collect(),
                    counts: counts.iter().map(|&c| c.max(0.0) as u64).collect(),
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
    Ok(calibrate_with_gram(f, text, ctx, max_chunks, progress, false)?.0)
}

/// The matmul inputs an imatrix tells apart within a block; the output matrix's input is
/// kept at layer index n_layer, kind 0.
const KINDS: [MatmulInput; 4] = [
    MatmulInput::Attn,
    MatmulInput::AttnOutput,
    MatmulInput::Ffn,
    MatmulInput::FfnDown,
];

/// Per (layer, input kind): the squared-activation sums and, if asked, the Gram; per
/// (layer, expert input or down input): each expert's sums.
struct Sums {
    n_layer: usize,
    n_pos: usize,
    n_expert: usize,
    acc: Vec<Vec<Entry>>,
    grams: Vec<Vec<GramEntry>>,
    experts: BTreeMap<(usize, bool), Entry>,
}

impl ChunkObserver for Sums {
    fn start_chunk(&mut self, n_pos: usize) {
        self.n_pos = n_pos;
    }

    fn observe(&mut self, layer: Option<usize>, which: MatmulInput, x: &[f32]) {
        let (l, k) = match (layer, which) {
            (Some(l), MatmulInput::ExpertIn { expert, rows }) => {
                return self.expert(l, false, expert, rows, x)
            }
            (Some(l), MatmulInput::ExpertDown { expert, rows }) => {
                return self.expert(l, true, expert, rows, x)
            }
            (None, _) | (_, MatmulInput::Output) => (self.n_layer, 0),
            (Some(l), w) => match KINDS.iter().position(|&k| k == w) {
                Some(k) => (l, k),
                None => return,
            },
        };
        let e = &mut self.acc[l][k];
        // Every observed matrix holds one row per position of the chunk.
        let width = x.len() / self.n_pos;
        if width == 0 {
            return;
        }
        if e.sum2.is_empty() {
            e.sum2 = vec![0.0; width];
            e.counts = vec![0];
        }
        if e.sum2.len() != width {
            return;
        }
        if let Some(g) = self.grams.get_mut(l).and_then(|v| v.get_mut(k)) {
            g.add(x, width);
        }
        for row in x.chunks_exact(width) {
            for (s, &v) in e.sum2.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
            e.counts[0] += 1;
        }
    }
}

impl Sums {
    /// `rows` rows of expert `expert`'s input (or down input) in block `l`.
    fn expert(&mut self, l: usize, down: bool, expert: usize, rows: usize, x: &[f32]) {
        if rows == 0 || expert >= self.n_expert {
            return;
        }
        let width = x.len() / rows;
        let n_expert = self.n_expert;
        let e = self.experts.entry((l, down)).or_insert_with(|| Entry {
            sum2: vec![0.0; n_expert * width],
            counts: vec![0; n_expert],
        });
        if e.sum2.len() != n_expert * width {
            return;
        }
        let sums = &mut e.sum2[expert * width..(expert + 1) * width];
        for row in x.chunks_exact(width) {
            for (s, &v) in sums.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
        }
        e.counts[expert] += rows as u64;
    }
}

/// `calibrate`, also collecting each input group's Gram matrix XᵀX (for GPTQ) if `gram`.
pub fn calibrate_with_gram(
    f: &GgufFile,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
    progress: bool,
    gram: bool,
) -> Result<(Imatrix, Option<Gram>)> {
    let cal = Calibrator::new(f)?;
    let n_layer = cal.model.config.n_layer;
    let tied = f.tensor_info("output.weight").is_none();
    let mut sums = Sums {
        n_layer,
        n_pos: 1,
        n_expert: cal.model.config.n_expert,
        experts: BTreeMap::new(),
        acc: vec![vec![Entry::default(); KINDS.len()]; n_layer + 1],
        grams: if gram {
            vec![vec![GramEntry::default(); KINDS.len()]; n_layer + 1]
        } else {
            Vec::new()
        },
    };
    let label = progress.then_some("calibrate");
    let pass = cal.run(
        text,
        ctx,
        max_chunks.unwrap_or(usize::MAX),
        label,
        &mut sums,
    )?;
    let gram = (!sums.grams.is_empty()).then(|| gram_groups(sums.grams, n_layer));
    let mut im = Imatrix {
        chunks: pass.chunks as u32,
        chunk_size: ctx as u32,
        ..Default::default()
    };
    for ((l, down), e) in std::mem::take(&mut sums.experts) {
        let parts: &[&str] = if down {
            &["ffn_down_exps"]
        } else {
            &["ffn_gate_exps", "ffn_up_exps"]
        };
        for p in parts {
            let n = format!("blk.{l}.{p}.weight");
            if f.tensor_info(&n).is_some() {
                im.entries.insert(n, e.clone());
            }
        }
    }
    for (l, per) in sums.acc.into_iter().enumerate() {
        for (k, e) in per.into_iter().enumerate() {
            if e.counts.iter().all(|&c| c == 0) {
                continue;
            }
            // Only the weights this file has (fused or separate Q/K/V, a router or not).
            for n in weights_reading(l, k, n_layer, tied) {
                if f.tensor_info(&n).is_some() {
                    im.entries.insert(n, e.clone());
                }
            }
        }
    }
    Ok((im, gram))
}

/// The weights whose input is (layer `l`, kind `k`).
fn weights_reading(l: usize, k: usize, n_layer: usize, tied: bool) -> Vec<String> {
    if l == n_layer {
        let name = if tied {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        return vec![name.to_string()];
    }
    let parts: &[&str] = match KINDS[k] {
        MatmulInput::Attn => &["attn_q", "attn_k", "attn_v", "attn_qkv"],
        MatmulInput::AttnOutput => &["attn_output"],
        // A mixture of experts' router reads the FFN input too (the experts' own inputs are
        // collected per expert, in `Sums::expert`).
        MatmulInput::Ffn => &["ffn_gate", "ffn_up", "ffn_gate_inp"],
        _ => &["ffn_down"],
    };
    parts
        .iter()
        .map(|p| format!("blk.{l}.{p}.weight"))
        .collect()
}

/// The Gram entries under their group names (`gram.rs`).
fn gram_groups(grams: Vec<Vec<GramEntry>>, n_layer: usize) -> Gram {
    let mut g = Gram::default();
    for (l, per) in grams.into_iter().enumerate() {
        for (k, e) in per.into_iter().enumerate() {
            if e.count == 0 {
                continue;
            }
            let name = if l == n_layer {
                "output".to_string()
            } else {
                let part = match KINDS[k] {
                    MatmulInput::Attn => "attn_in",
                    MatmulInput::AttnOutput => "attn_out",
                    MatmulInput::Ffn => "ffn_in",
                    _ => "ffn_down",
                };
                format!("blk.{l}.{part}")
            };
            g.groups.insert(name, e);
        }
    }
    g
}

/// Types `quantize_weighted` implements (all the converter writes but F16/BF16/F32).
pub fn supports(ty: GgmlType) -> bool {
    super::weighted::supports(ty)
}
