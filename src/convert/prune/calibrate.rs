//! Pruning's statistics: one pass of the calibration loop (`convert::calibration`) over the
//! unpruned model, observing the ffn_down inputs (their Gram or its diagonal), optionally the
//! attn_output inputs (full Gram, for head pruning), and each block's input-to-output cosine
//! similarity (for layer pruning).

use crate::convert::calibration::{Calibrator, ChunkObserver};
use crate::convert::{ConvertError, Result};
use crate::gguf::GgufFile;
use crate::linalg::{add_gram_upper, mirror_upper};
use crate::model::MatmulInput;

/// What to collect of the ffn_down inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GramMode {
    None,
    Diagonal,
    Full,
}

/// Statistics of one calibration pass over the unpruned model.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// Per layer, the ffn_down input Gram Σ h hᵀ (row-major n_ff × n_ff; only the diagonal,
    /// n_ff values, in `Diagonal` mode; empty in `None`).
    pub gram: Vec<Vec<f64>>,
    /// Per layer, the attn_output input Gram Σ a aᵀ (row-major, n_head·hd_v square); empty
    /// unless asked for (`calibrate_with`).
    pub attn_gram: Vec<Vec<f64>>,
    /// Per layer, the mean cosine similarity between the block's input and output.
    pub similarity: Vec<f64>,
    /// Tokens seen.
    pub tokens: usize,
}

/// 1/w where |w| is usable, else 0 (that dimension is left out of the cosine).
fn inverse_weights(w: &[f32]) -> Vec<f32> {
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    w.iter()
        .map(|&v| {
            if v.abs() > 1e-6 * scale.max(1e-30) {
                1.0 / v
            } else {
                0.0
            }
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 || bb == 0.0 {
        1.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// The running sums of one pass.
struct Stats {
    n_layer: usize,
    n_embd: usize,
    n_pos: usize,
    mode: GramMode,
    attn_gram: bool,
    n_ff: Vec<usize>,
    n_att: Vec<usize>,
    /// inv[l]: undoes block l's attention norm weight; inv[n_layer]: the output norm's.
    inv: Vec<Vec<f32>>,
    grams: Vec<Vec<f64>>,
    attn: Vec<Vec<f64>>,
    sim: Vec<f64>,
    /// The residual stream entering the block seen last, up to a scale per position.
    prev: Option<(usize, Vec<f32>)>,
}

impl ChunkObserver for Stats {
    fn start_chunk(&mut self, n_pos: usize) {
        self.n_pos = n_pos;
        self.prev = None;
    }

    fn observe(&mut self, layer: Option<usize>, which: MatmulInput, x: &[f32]) {
        let n_pos = self.n_pos;
        let l = match (layer, which) {
            (Some(l), MatmulInput::Attn) => l,
            (None, _) | (_, MatmulInput::Output) => self.n_layer,
            (Some(l), MatmulInput::AttnOutput) => {
                let n = self.n_att[l];
                if self.attn_gram && x.len() == n * n_pos {
                    add_gram_upper(&mut self.attn[l], x, n);
                }
                return;
            }
            (Some(l), MatmulInput::FfnDown) => {
                self.ffn_down(l, x);
                return;
            }
            _ => return,
        };
        self.block_boundary(l, x);
    }
}

impl Stats {
    fn ffn_down(&mut self, l: usize, x: &[f32]) {
        let n = self.n_ff[l];
        if x.len() != n * self.n_pos {
            return;
        }
        match self.mode {
            GramMode::None => {}
            GramMode::Diagonal => {
                for row in x.chunks_exact(n) {
                    for (s, &v) in self.grams[l].iter_mut().zip(row) {
                        *s += v as f64 * v as f64;
                    }
                }
            }
            GramMode::Full => add_gram_upper(&mut self.grams[l], x, n),
        }
    }

    /// `x` is the normed input of block `l` (or of the output at n_layer): the residual
    /// stream leaving block l − 1, so it closes that block's similarity.
    fn block_boundary(&mut self, l: usize, x: &[f32]) {
        let d = self.n_embd;
        if x.len() != d * self.n_pos {
            return;
        }
        let cur: Vec<f32> = x
            .chunks_exact(d)
            .flat_map(|row| row.iter().zip(&self.inv[l]).map(|(v, w)| v * w))
            .collect();
        if let Some((pl, p)) = self.prev.take() {
            if pl + 1 == l {
                let s: f64 = p
                    .chunks_exact(d)
                    .zip(cur.chunks_exact(d))
                    .map(|(a, b)| cosine(a, b))
                    .sum();
                self.sim[pl] += s;
            }
        }
        self.prev = Some((l, cur));
    }
}

/// Runs the model over `text` (chunks of `ctx` tokens, at most `max_chunks`) and collects the
/// statistics pruning ranks by.
pub fn calibrate(
    f: &GgufFile,
    text: &str,
    ctx: usize,
    max_chunks: usize,
    gram: GramMode,
    progress: bool,
) -> Result<Calibration> {
    calibrate_with(f, text, ctx, max_chunks, gram, false, progress)
}

/// `calibrate`, also collecting the full Gram of every attn_output input when `attn_gram`.
pub fn calibrate_with(
    f: &GgufFile,
    text: &str,
    ctx: usize,
    max_chunks: usize,
    gram: GramMode,
    attn_gram: bool,
    progress: bool,
) -> Result<Calibration> {
    let cal = Calibrator::new(f)?;
    let mut stats = new_stats(f, &cal, gram, attn_gram)?;
    let label = progress.then_some("prune: calibration");
    let pass = cal.run(text, ctx, max_chunks, label, &mut stats)?;
    for (g, &n) in
        (stats.grams.iter_mut().zip(&stats.n_ff)).chain(stats.attn.iter_mut().zip(&stats.n_att))
    {
        if g.len() == n * n {
            mirror_upper(g, n);
        }
    }
    Ok(Calibration {
        gram: stats.grams,
        attn_gram: stats.attn,
        similarity: stats.sim.iter().map(|s| s / pass.tokens as f64).collect(),
        tokens: pass.tokens,
    })
}

fn new_stats(f: &GgufFile, cal: &Calibrator<'_>, mode: GramMode, attn_gram: bool) -> Result<Stats> {
    let c = &cal.model.config;
    let n_layer = c.n_layer;
    let vec_of = |name: &str| -> Result<Vec<f32>> {
        f.tensor(name)
            .map_err(|_| ConvertError::MissingTensor(name.to_string()))?
            .to_f32()
            .map_err(|source| ConvertError::Quant {
                name: name.to_string(),
                source,
            })
    };
    let mut inv = Vec::with_capacity(n_layer + 1);
    for l in 0..n_layer {
        inv.push(inverse_weights(&vec_of(&format!(
            "blk.{l}.attn_norm.weight"
        ))?));
    }
    inv.push(inverse_weights(&vec_of("output_norm.weight")?));
    let n_ff: Vec<usize> = c.layers.iter().map(|l| l.n_ff).collect();
    let n_att: Vec<usize> = c.layers.iter().map(|l| l.n_head * c.head_dim_v).collect();
    let grams = n_ff
        .iter()
        .map(|&n| match mode {
            GramMode::None => Vec::new(),
            GramMode::Diagonal => vec![0.0; n],
            GramMode::Full => vec![0.0; n * n],
        })
        .collect();
    let attn = n_att
        .iter()
        .map(|&n| {
            if attn_gram {
                vec![0.0; n * n]
            } else {
                Vec::new()
            }
        })
        .collect();
    Ok(Stats {
        n_layer,
        n_embd: c.n_embd,
        n_pos: 1,
        mode,
        attn_gram,
        n_ff,
        n_att,
        inv,
        grams,
        attn,
        sim: vec![0f64; n_layer],
        prev: None,
    })
}
