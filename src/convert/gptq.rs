//! GPTQ (`--method gptq`): quantization with second-order error feedback.
//!
//! For a weight row w (one output) and inputs x with second moment H = E[xxᵀ], the output
//! error of a quantized row ŵ is (w − ŵ)ᵀH(w − ŵ). GPTQ quantizes the columns in order and,
//! after each one, moves the remaining (not yet quantized) columns to cancel the error just
//! made, as far as the inputs' correlations allow: with U the upper Cholesky factor of H⁻¹,
//! after column i
//!
//! ```text
//! e = (w_i − q_i) / U_ii;   w_j −= e · U_ij   for j > i
//! ```
//!
//! (Frantar et al. 2022, "GPTQ"). GGML blocks share parameters, so a block's parameters
//! (scale, min, K-quant sub-scales) are chosen when its first column is reached, from the
//! error-updated weights, weighted by diag(H); its columns are then rounded to that fixed
//! grid one by one. The output is plain GGML blocks.
//!
//! H is damped (H + damp·mean(diag H)·I) and U is computed without forming H⁻¹: with J the
//! order-reversing permutation and C the Cholesky factor of JHJ, U = J·C⁻¹·J.
//! Rows are independent given U: they run in parallel (the pipeline's row chunks), and each
//! chunk walks the columns with a tile of rows so every row of U is read once per tile.

use std::sync::{Arc, Mutex};

use super::gram::{group_of, GramFile};
use super::weighted::{column_weights, format, Params};
use super::{ConvertError, Result};
use crate::ggml_type::GgmlType;
use crate::linalg::{cholesky_in_place, invert_lower};

/// A weight group's factored Hessian.
pub struct Hessian {
    pub n: usize,
    /// Upper Cholesky factor of H⁻¹ (row-major n × n; the lower triangle is zero).
    pub u: Vec<f32>,
    /// diag(H) before damping: the per-column importance for block parameters.
    pub diag: Vec<f32>,
}

impl Hessian {
    /// Factors the second moment `h` (n × n, row-major) with relative damping `damp`.
    pub fn new(n: usize, h: &[f32], damp: f64) -> std::result::Result<Hessian, String> {
        if h.len() != n * n || n == 0 {
            return Err(format!("expected {n}×{n} values, got {}", h.len()));
        }
        let diag: Vec<f32> = (0..n).map(|i| h[i * n + i].max(0.0)).collect();
        let mean = diag.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let mean = if mean > 0.0 { mean } else { 1.0 };
        let mut damp = damp.max(1e-6);
        for _ in 0..6 {
            // M = J·H·J + damping, in f64.
            let mut m = vec![0f64; n * n];
            for a in 0..n {
                for b in 0..n {
                    m[a * n + b] = h[(n - 1 - a) * n + (n - 1 - b)] as f64;
                }
                let i = n - 1 - a;
                if diag[i] <= 0.0 {
                    // A column never active: decouple it.
                    for b in 0..n {
                        m[a * n + b] = 0.0;
                        m[b * n + a] = 0.0;
                    }
                    m[a * n + a] = mean;
                }
                m[a * n + a] += damp * mean;
            }
            if cholesky_in_place(&mut m, n).is_ok() {
                let x = invert_lower(&m, n);
                let mut u = vec![0f32; n * n];
                for i in 0..n {
                    for j in i..n {
                        u[i * n + j] = x[(n - 1 - i) * n + (n - 1 - j)] as f32;
                    }
                }
                return Ok(Hessian { n, u, diag });
            }
            damp *= 10.0;
        }
        Err("the Gram matrix is not positive definite even with heavy damping".into())
    }
}

/// Rows quantized together: each row of U is read once per tile.
const TILE: usize = 8;

/// GPTQ-quantizes `src` (whole rows of `h.n` values) to `ty`; None if the codec does not
/// handle `ty` or the row is not a whole number of its blocks.
pub fn quantize_rows(ty: GgmlType, src: &[f32], h: &Hessian) -> Option<Vec<u8>> {
    let f = format(ty)?;
    let n = h.n;
    if n == 0 || !src.len().is_multiple_of(n) || !n.is_multiple_of(f.block) {
        return None;
    }
    let imp = column_weights(&h.diag);
    let rows = src.len() / n;
    let mut out = Vec::with_capacity(src.len() / f.block * ty.type_size());
    let mut w = vec![0f32; TILE * n];
    let mut lv = vec![0u8; TILE * n];
    let mut params = vec![Params::default(); TILE * (n / f.block)];
    let nb = n / f.block;
    let mut err = [0f32; TILE];
    for r0 in (0..rows).step_by(TILE) {
        let nr = TILE.min(rows - r0);
        w[..nr * n].copy_from_slice(&src[r0 * n..(r0 + nr) * n]);
        for c in 0..n {
            let b = c / f.block;
            if c % f.block == 0 {
                for r in 0..nr {
                    let x = &w[r * n + c..r * n + c + f.block];
                    params[r * nb + b] = f.choose(x, &imp[c..c + f.block]);
                }
            }
            let j = (c % f.block) / f.sub;
            let uc = &h.u[c * n..(c + 1) * n];
            let ucc = uc[c];
            for r in 0..nr {
                let (s, o) = f.grid(&params[r * nb + b], j);
                let v = w[r * n + c];
                let l = f.level(s, o, v);
                lv[r * n + c] = l;
                err[r] = (v - f.value(s, o, l)) / ucc;
            }
            let tail = &uc[c + 1..];
            for r in 0..nr {
                let e = err[r];
                if e != 0.0 {
                    for (wk, &uk) in w[r * n + c + 1..(r + 1) * n].iter_mut().zip(tail) {
                        *wk -= e * uk;
                    }
                }
            }
        }
        for r in 0..nr {
            for b in 0..nb {
                f.pack(
                    &params[r * nb + b],
                    &lv[r * n + b * f.block..r * n + (b + 1) * f.block],
                    &mut out,
                );
            }
        }
    }
    Some(out)
}

/// GPTQ's inputs for a conversion: the gram file, the damping, and the last few factored
/// groups (q, k, v share one; gate and up share one).
pub struct Gptq {
    gram: GramFile,
    pub damp: f64,
    cache: Mutex<Vec<(String, Arc<Hessian>)>>,
}

impl std::fmt::Debug for Gptq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gptq {{ damp: {} }}", self.damp)
    }
}

impl Gptq {
    pub fn new(gram: GramFile, damp: f64) -> Gptq {
        Gptq {
            gram,
            damp,
            cache: Mutex::new(Vec::new()),
        }
    }

    /// The factored Hessian of the group weight `name` reads from; None when the gram file
    /// has no statistics for it or its width is not `row_len`.
    pub fn hessian(&self, name: &str, tied: bool, row_len: usize) -> Result<Option<Arc<Hessian>>> {
        let Some(group) = group_of(name, tied) else {
            return Ok(None);
        };
        if let Ok(c) = self.cache.lock() {
            if let Some((_, h)) = c.iter().find(|(g, _)| *g == group) {
                return Ok(Some(h.clone()).filter(|h| h.n == row_len));
            }
        }
        let Some((n, m)) = self.gram.moment(&group)? else {
            return Ok(None);
        };
        if n != row_len {
            return Ok(None);
        }
        let h = Hessian::new(n, &m, self.damp)
            .map_err(|e| ConvertError::Usage(format!("gram group {group}: {e}")))?;
        let h = Arc::new(h);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= 4 {
                c.remove(0);
            }
            c.push((group, h.clone()));
        }
        Ok(Some(h))
    }
}
