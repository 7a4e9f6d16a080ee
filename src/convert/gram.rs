//! Input Gram matrices for GPTQ (`ledge calibrate --gram OUT.gram.gguf`).
//!
//! GPTQ needs, per weight matrix W (out × in), the second moment of its inputs H = XᵀX/n
//! (in × in), not just its diagonal (the imatrix). Weights that read the same input share one
//! matrix, so the file holds one per input group of a layer:
//!
//! | group              | weights                     |
//! |--------------------|-----------------------------|
//! | `blk.L.attn_in`    | attn_q, attn_k, attn_v      |
//! | `blk.L.attn_out`   | attn_output                 |
//! | `blk.L.ffn_in`     | ffn_gate, ffn_up            |
//! | `blk.L.ffn_down`   | ffn_down                    |
//! | `output`           | output (or the tied token_embd) |
//!
//! Stored as a GGUF (`general.type = gram`): `GROUP.gram` (F32, in × in, the sum XᵀX over
//! all positions, accumulated in f64) and `GROUP.count` (F32, positions seen). It is a
//! separate file so the `.imatrix` stays exactly llama.cpp's format.

use std::collections::BTreeMap;
use std::path::Path;

use super::{ConvertError, Result};
use crate::gguf::{GgmlType, GgufBuilder, GgufFile, MetaValue};

/// The Gram group a weight reads its input from.
pub fn group_of(weight: &str, tied_output: bool) -> Option<String> {
    if weight == "output.weight" || (tied_output && weight == "token_embd.weight") {
        return Some("output".into());
    }
    let rest = weight.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let g = match part.strip_suffix(".weight")? {
        "attn_q" | "attn_k" | "attn_v" => "attn_in",
        "attn_output" => "attn_out",
        "ffn_gate" | "ffn_up" => "ffn_in",
        "ffn_down" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// One group's running sum of xᵀx (row-major, n × n, both triangles) and positions seen.
#[derive(Clone, Debug, Default)]
pub struct GramEntry {
    pub n: usize,
    pub sum: Vec<f64>,
    pub count: u64,
}

impl GramEntry {
    /// Adds the rows of `x` (positions × `width`, row-major).
    pub fn add(&mut self, x: &[f32], width: usize) {
        if width == 0 || !x.len().is_multiple_of(width) {
            return;
        }
        if self.sum.is_empty() {
            self.n = width;
            self.sum = vec![0.0; width * width];
        }
        if self.n != width {
            return;
        }
        crate::linalg::add_gram_upper(&mut self.sum, x, width);
        self.count += (x.len() / width) as u64;
    }

    /// Copies the upper triangle into the lower one.
    fn symmetrize(&mut self) {
        crate::linalg::mirror_upper(&mut self.sum, self.n);
    }
}

/// All groups of a model.
#[derive(Clone, Debug, Default)]
pub struct Gram {
    pub groups: BTreeMap<String, GramEntry>,
}

impl Gram {
    pub fn save(&mut self, path: &Path) -> Result<()> {
        let mut b = GgufBuilder::new();
        b.set("general.type", "gram")?;
        b.set("gram.groups", MetaValue::U32(self.groups.len() as u32))?;
        for (name, e) in self.groups.iter_mut() {
            e.symmetrize();
            b.add_tensor(
                &format!("{name}.gram"),
                GgmlType::F32,
                &[e.n as u64, e.n as u64],
            )?;
            b.add_tensor(&format!("{name}.count"), GgmlType::F32, &[1, 1])?;
        }
        let mut s = b.create(path)?;
        for e in self.groups.values() {
            let bytes: Vec<u8> = e
                .sum
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect();
            s.write_tensor(&bytes)?;
            s.write_tensor(&(e.count as f32).to_le_bytes())?;
        }
        s.finish()?;
        Ok(())
    }
}

/// A gram file opened for reading (mmapped; each group read when a weight needs it).
pub struct GramFile {
    f: GgufFile,
    path: std::path::PathBuf,
}

impl GramFile {
    pub fn open(path: &Path) -> Result<GramFile> {
        let f = GgufFile::open(path)?;
        if f.get_str("general.type").ok() != Some("gram") {
            return Err(ConvertError::Usage(format!(
                "{}: not a gram file (general.type is not \"gram\"; write one with `ledge calibrate --gram`)",
                path.display()
            )));
        }
        Ok(GramFile {
            f,
            path: path.to_path_buf(),
        })
    }

    /// The mean second moment E[xxᵀ] (n × n, row-major) of `group`, if present.
    pub fn moment(&self, group: &str) -> Result<Option<(usize, Vec<f32>)>> {
        let Ok(g) = self.f.tensor(&format!("{group}.gram")) else {
            return Ok(None);
        };
        let bad = |m: String| ConvertError::Usage(format!("{}: {group}: {m}", self.path.display()));
        let n = g.shape.first().copied().unwrap_or(0);
        let mut v = g.to_f32().map_err(|source| ConvertError::Quant {
            name: format!("{group}.gram"),
            source,
        })?;
        if n == 0 || v.len() != n * n {
            return Err(bad(format!("gram is not square ({} values)", v.len())));
        }
        let count = self
            .f
            .tensor(&format!("{group}.count"))
            .ok()
            .and_then(|c| c.to_f32().ok())
            .and_then(|c| c.first().copied())
            .ok_or_else(|| bad("count is missing".into()))?;
        if count <= 0.0 {
            return Ok(None);
        }
        for x in &mut v {
            *x /= count;
        }
        Ok(Some((n, v)))
    }
}
