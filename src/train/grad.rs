//! Hand-written backward passes of the operations a distillation step goes through, in the
//! spirit of llm.c: each op's forward (as the model computes it) beside its backward, and each
//! backward tested against central finite differences of its forward on random data.
//!
//! Shapes are row-major, one row per position. The base matrices are frozen in their stored
//! type: a gradient through W·x needs Wᵀ·dy, which `linear_backward` takes from W's rows
//! dequantized a tile at a time (never the whole matrix), so a quantized 7B student trains in
//! about the memory it runs in. Trainable: norm weights and LoRA pairs.

use rayon::prelude::*;

use crate::quant::QuantError;
use crate::tensor::TensorView;

/// y = x / rms(x) ⊙ w per row of n, as `ops::norm::rms_norm` (the sum in f64).
pub fn rms_norm_forward(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let s = inv_rms(xr, eps);
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * s * g;
        }
    }
    y
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt()
}

/// The backward of `rms_norm_forward`: dx, and dw accumulated into `dw`.
///
/// With s = 1/rms(x) and y = s·x ⊙ w: dx = s·(g − x·(Σ g·x)·s²/n), g = dy ⊙ w; dw += Σ_rows
/// dy ⊙ x·s.
pub fn rms_norm_backward(x: &[f32], w: &[f32], eps: f32, dy: &[f32], dw: &mut [f32]) -> Vec<f32> {
    let n = w.len();
    let mut dx = vec![0f32; x.len()];
    for ((xr, dyr), dxr) in x
        .chunks_exact(n)
        .zip(dy.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        let s = inv_rms(xr, eps);
        let gx: f64 = xr
            .iter()
            .zip(dyr)
            .zip(w)
            .map(|((&xv, &d), &g)| (d * g) as f64 * xv as f64)
            .sum();
        let c = (gx as f32) * s * s / n as f32;
        for i in 0..n {
            dxr[i] = s * (dyr[i] * w[i] - xr[i] * c);
            dw[i] += dyr[i] * xr[i] * s;
        }
    }
    dx
}

/// h = silu(g) ⊙ u.
pub fn swiglu_forward(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(&a, &b)| crate::ops::activation::silu(a) * b)
        .collect()
}

/// The backward of `swiglu_forward`: (dg, du).
pub fn swiglu_backward(g: &[f32], u: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0f32; g.len()];
    let mut du = vec![0f32; g.len()];
    for i in 0..g.len() {
        let sig = 1.0 / (1.0 + (-g[i]).exp());
        let silu = g[i] * sig;
        du[i] = dh[i] * silu;
        // d silu / dg = σ(g)·(1 + g·(1 − σ(g))).
        dg[i] = dh[i] * u[i] * sig * (1.0 + g[i] * (1.0 - sig));
    }
    (dg, du)
}

/// A LoRA pair being trained on a frozen matrix: A (r × k), B (m × r), y += s·B·A·x.
#[derive(Clone, Debug)]
pub struct LoraParams {
    pub rank: usize,
    pub k: usize,
    pub m: usize,
    pub scale: f32,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// Gradients of a `LoraParams`.
#[derive(Clone, Debug)]
pub struct LoraGrads {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// y (n, m) = x (n, k)·Wᵀ + s·(x·Aᵀ)·Bᵀ, W from its stored rows (`w`, any type ledge
/// dequantizes). Returns y and t = x·Aᵀ (n, r), which the backward reuses.
pub fn linear_forward(
    w: &TensorView,
    lora: Option<&LoraParams>,
    x: &[f32],
    n: usize,
) -> Result<(Vec<f32>, Vec<f32>), QuantError> {
    let (k, m) = (w.row_len(), w.n_rows());
    let mut y = vec![0f32; n * m];
    for_row_tiles(w, |r0, rows| {
        let nr = rows.len() / k;
        for t in 0..n {
            let xt = &x[t * k..(t + 1) * k];
            for i in 0..nr {
                y[t * m + r0 + i] = dot(xt, &rows[i * k..(i + 1) * k]);
            }
        }
    })?;
    let mut tv = Vec::new();
    if let Some(l) = lora {
        let r = l.rank;
        tv = vec![0f32; n * r];
        for t in 0..n {
            for j in 0..r {
                tv[t * r + j] = dot(&x[t * k..(t + 1) * k], &l.a[j * k..(j + 1) * k]);
            }
            for i in 0..m {
                y[t * m + i] += l.scale * dot(&tv[t * r..(t + 1) * r], &l.b[i * r..(i + 1) * r]);
            }
        }
    }
    Ok((y, tv))
}

/// The backward of `linear_forward`: dx (n, k) = dy·W + s·(dy·B)·A, and into `grads` dA +=
/// s·(dy·B)ᵀ·x, dB += s·dyᵀ·t. W is read one tile of rows at a time.
pub fn linear_backward(
    w: &TensorView,
    lora: Option<(&LoraParams, &[f32], &mut LoraGrads)>,
    x: &[f32],
    dy: &[f32],
    n: usize,
) -> Result<Vec<f32>, QuantError> {
    let (k, m) = (w.row_len(), w.n_rows());
    let mut dx = vec![0f32; n * k];
    for_row_tiles(w, |r0, rows| {
        let nr = rows.len() / k;
        dx.par_chunks_mut(k).enumerate().for_each(|(t, dxt)| {
            for i in 0..nr {
                let g = dy[t * m + r0 + i];
                if g != 0.0 {
                    dxt.iter_mut()
                        .zip(&rows[i * k..(i + 1) * k])
                        .for_each(|(d, &wv)| *d += g * wv);
                }
            }
        });
    })?;
    if let Some((l, tv, grads)) = lora {
        let r = l.rank;
        for t in 0..n {
            let dyt = &dy[t * m..(t + 1) * m];
            // u = s·Bᵀ·dy_t (r).
            let mut u = vec![0f32; r];
            for (&g, bi) in dyt.iter().zip(l.b.chunks_exact(r)) {
                u.iter_mut().zip(bi).for_each(|(uj, &b)| *uj += g * b);
            }
            u.iter_mut().for_each(|v| *v *= l.scale);
            let xt = &x[t * k..(t + 1) * k];
            let dxt = &mut dx[t * k..(t + 1) * k];
            for ((&uj, aj), ga) in u
                .iter()
                .zip(l.a.chunks_exact(k))
                .zip(grads.a.chunks_exact_mut(k))
            {
                for c in 0..k {
                    dxt[c] += uj * aj[c];
                    ga[c] += uj * xt[c];
                }
            }
            let tt = &tv[t * r..(t + 1) * r];
            for (&g, gb) in dyt.iter().zip(grads.b.chunks_exact_mut(r)) {
                gb.iter_mut()
                    .zip(tt)
                    .for_each(|(d, &tj)| *d += l.scale * g * tj);
            }
        }
    }
    Ok(dx)
}

/// Rows of W dequantized a tile at a time: `f(first row, rows as f32)`.
fn for_row_tiles(w: &TensorView, mut f: impl FnMut(usize, &[f32])) -> Result<(), QuantError> {
    let (k, m) = (w.row_len(), w.n_rows());
    let tile = (TILE_VALUES / k.max(1)).clamp(1, m.max(1));
    let mut buf = vec![0f32; tile * k];
    let mut r0 = 0;
    while r0 < m {
        let nr = tile.min(m - r0);
        w.dequantize_into(r0, &mut buf[..nr * k])?;
        f(r0, &buf[..nr * k]);
        r0 += nr;
    }
    Ok(())
}

/// Values per dequantized tile of W (256 KiB of f32).
const TILE_VALUES: usize = 1 << 16;

/// A dot product with eight running sums, so that it vectorizes.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// One position's distillation target: the teacher's top-k log-probabilities (`ids`, `logp`)
/// at temperature 1, the probability mass its distribution softened to the loss's
/// temperature T puts outside those k (`tail`), and the next token.
pub struct Target<'a> {
    pub ids: &'a [u32],
    pub logp: &'a [f32],
    pub tail: f64,
    pub next: u32,
}

/// Loss = α·T²·KL(p_T ‖ q_T) + (1 − α)·CE(next | q) for one position's student logits, and
/// its gradient.
///
/// The KL is over the teacher's kept support: its top k tokens one by one and every other
/// token as one bucket. p_T over the top k is exp(logp/T) renormalized to 1 − `tail` (their
/// exact softened probabilities, since the teacher's partition function cancels), the bucket
/// holds `tail`; the student's q_T = softmax(z/T) is summed over the same partition. With
/// `tail` = 0 this is the top k renormalized.
pub fn distill_loss(z: &[f32], target: &Target, temperature: f32, alpha: f32) -> (f32, Vec<f32>) {
    let tt = temperature as f64;
    let p_tail = target.tail.clamp(0.0, 1.0);
    let mx = target
        .logp
        .iter()
        .cloned()
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let pe: Vec<f64> = target
        .logp
        .iter()
        .map(|&l| ((l as f64 - mx) / tt).exp())
        .collect();
    let ps: f64 = pe.iter().sum();
    let p: Vec<f64> = pe.iter().map(|v| v / ps * (1.0 - p_tail)).collect();
    // Student log-softmax at T and at 1.
    let log_softmax = |scale: f64| -> Vec<f64> {
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = z
            .iter()
            .map(|&v| ((v as f64 - m) / scale).exp())
            .sum::<f64>()
            .ln()
            + m / scale;
        z.iter().map(|&v| v as f64 / scale - lse).collect()
    };
    let lq_t = log_softmax(tt);
    let lq_1 = log_softmax(1.0);
    let q_top: f64 = target.ids.iter().map(|&id| lq_t[id as usize].exp()).sum();
    // The student's bucket, floored so a student with all its mass in the top k stays finite.
    let q_tail = (1.0 - q_top).max(1e-12);
    let mut kl: f64 = p
        .iter()
        .zip(target.ids)
        .filter(|(pi, _)| **pi > 0.0)
        .map(|(pi, &id)| pi * (pi.ln() - lq_t[id as usize]))
        .sum();
    if p_tail > 0.0 {
        kl += p_tail * (p_tail.ln() - q_tail.ln());
    }
    let ce = -lq_1[target.next as usize];
    let (a, t2) = (alpha as f64, tt * tt);
    let loss = a * t2 * kl + (1.0 - a) * ce;
    // d KL / dz_j = (q_T,j − p_j)/T for a kept token, q_T,j·(1 − p_tail/q_tail)/T for any
    // other; d CE / dz = q − onehot.
    let bucket = 1.0 - p_tail / q_tail;
    let mut g: Vec<f32> = (0..z.len())
        .map(|i| (a * t2 * bucket * lq_t[i].exp() / tt + (1.0 - a) * lq_1[i].exp()) as f32)
        .collect();
    for (pi, &id) in p.iter().zip(target.ids) {
        // Undo the bucket factor for the kept tokens, then subtract p.
        let qi = lq_t[id as usize].exp();
        g[id as usize] += (a * t2 * (qi * (1.0 - bucket) - pi) / tt) as f32;
    }
    g[target.next as usize] -= (1.0 - a) as f32;
    (loss as f32, g)
}

/// Causal multi-head attention with grouped KV heads, as the forward pass computes it (f32,
/// no cache): q (n, nh·hd), k and v (n, nkv·hd) → out (n, nh·hd); query head h reads KV head
/// h / (nh / nkv); scores scaled by 1/√hd. Returns out and the probabilities P (nh, n, n),
/// which the backward reuses. The heads run in parallel.
pub fn attention_forward_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (qw, kw, group) = (nh * hd, nkv * hd, nh / nkv);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut probs = vec![0f32; nh * n * n];
    // Each head's output (n, hd), gathered into the interleaved rows afterwards.
    let heads: Vec<Vec<f32>> = probs
        .par_chunks_mut(n * n)
        .enumerate()
        .map(|(h, ph)| {
            let kvh = h / group;
            let mut oh = vec![0f32; n * hd];
            for i in 0..n {
                let qi = &q[i * qw + h * hd..i * qw + (h + 1) * hd];
                let p = &mut ph[i * n..(i + 1) * n];
                let mut mx = f32::NEG_INFINITY;
                for j in 0..=i {
                    p[j] = scale * dot(qi, &k[j * kw + kvh * hd..j * kw + (kvh + 1) * hd]);
                    mx = mx.max(p[j]);
                }
                let mut sum = 0f32;
                for pj in &mut p[..=i] {
                    *pj = (*pj - mx).exp();
                    sum += *pj;
                }
                p[..=i].iter_mut().for_each(|x| *x /= sum);
                let o = &mut oh[i * hd..(i + 1) * hd];
                for (j, &pj) in p[..=i].iter().enumerate() {
                    let vj = &v[j * kw + kvh * hd..j * kw + (kvh + 1) * hd];
                    o.iter_mut().zip(vj).for_each(|(a, &b)| *a += pj * b);
                }
            }
            oh
        })
        .collect();
    let mut out = vec![0f32; n * qw];
    for (h, oh) in heads.iter().enumerate() {
        for i in 0..n {
            out[i * qw + h * hd..i * qw + (h + 1) * hd].copy_from_slice(&oh[i * hd..(i + 1) * hd]);
        }
    }
    (out, probs)
}

/// The backward of `attention_forward`: (dq, dk, dv). With S = scale·q·kᵀ, P = softmax(S),
/// O = P·V: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − Σ_j dP ⊙ P), dQ = scale·dS·K,
/// dK = scale·dSᵀ·Q; the query heads sharing a KV head add into its dK and dV. Each query
/// head runs in parallel into its own (n, hd) buffers, added in head order afterwards.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    n: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qw, kw, group) = (nh * hd, nkv * hd, nh / nkv);
    let scale = 1.0 / (hd as f32).sqrt();
    let per_head: Vec<[Vec<f32>; 3]> = (0..nh)
        .into_par_iter()
        .map(|h| {
            let kvh = h / group;
            let (mut dq, mut dk, mut dv) =
                (vec![0f32; n * hd], vec![0f32; n * hd], vec![0f32; n * hd]);
            let mut ds = vec![0f32; n];
            for i in 0..n {
                let p = &probs[(h * n + i) * n..(h * n + i) * n + i + 1];
                let doi = &dout[i * qw + h * hd..i * qw + (h + 1) * hd];
                // dP_j = dO_i · V_j; dV_j += P_ij dO_i.
                let mut pdp = 0f32;
                for (j, &pj) in p.iter().enumerate() {
                    let vj = &v[j * kw + kvh * hd..j * kw + (kvh + 1) * hd];
                    ds[j] = dot(doi, vj);
                    pdp += pj * ds[j];
                    dv[j * hd..(j + 1) * hd]
                        .iter_mut()
                        .zip(doi)
                        .for_each(|(a, &g)| *a += pj * g);
                }
                let qi = &q[i * qw + h * hd..i * qw + (h + 1) * hd];
                for (j, &pj) in p.iter().enumerate() {
                    let g = scale * pj * (ds[j] - pdp);
                    let kj = &k[j * kw + kvh * hd..j * kw + (kvh + 1) * hd];
                    dq[i * hd..(i + 1) * hd]
                        .iter_mut()
                        .zip(kj)
                        .for_each(|(a, &b)| *a += g * b);
                    dk[j * hd..(j + 1) * hd]
                        .iter_mut()
                        .zip(qi)
                        .for_each(|(a, &b)| *a += g * b);
                }
            }
            [dq, dk, dv]
        })
        .collect();
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; k.len()],
        vec![0f32; v.len()],
    );
    for (h, [hq, hk, hv]) in per_head.iter().enumerate() {
        let kvh = h / group;
        for i in 0..n {
            dq[i * qw + h * hd..i * qw + (h + 1) * hd].copy_from_slice(&hq[i * hd..(i + 1) * hd]);
            let (ko, vo) = (i * kw + kvh * hd, i * kw + kvh * hd);
            dk[ko..ko + hd]
                .iter_mut()
                .zip(&hk[i * hd..(i + 1) * hd])
                .for_each(|(a, &b)| *a += b);
            dv[vo..vo + hd]
                .iter_mut()
                .zip(&hv[i * hd..(i + 1) * hd])
                .for_each(|(a, &b)| *a += b);
        }
    }
    (dq, dk, dv)
}

/// `attention_forward_reference` as GEMMs per head (`train::kernels::matmul_into`): the
/// scores for all (i, j) at once, the causal mask applied after (half the products are
/// wasted, and still far faster than the per-position loops).
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> (Vec<f32>, Vec<f32>) {
    use crate::train::kernels::{matmul_into, View};
    let (qw, kw, group) = (nh * hd, nkv * hd, nh / nkv);
    let scale = 1.0 / (hd as f32).sqrt();
    let head = |x, h, w| head_view(x, h, w, n, hd);
    let mut probs = vec![0f32; nh * n * n];
    let mut out = vec![0f32; n * qw];
    let mut oh = vec![0f32; n * hd];
    for (h, ph) in probs.chunks_exact_mut(n * n).enumerate() {
        let kvh = h / group;
        matmul_into(ph, false, head(q, h, qw), head(k, kvh, kw).t(), scale);
        ph.par_chunks_mut(n).enumerate().for_each(|(i, p)| {
            let mx = p[..=i].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for pj in &mut p[..=i] {
                *pj = (*pj - mx).exp();
                sum += *pj;
            }
            p[..=i].iter_mut().for_each(|x| *x /= sum);
            p[i + 1..].fill(0.0);
        });
        matmul_into(&mut oh, false, View::rows(ph, n, n), head(v, kvh, kw), 1.0);
        for i in 0..n {
            out[i * qw + h * hd..][..hd].copy_from_slice(&oh[i * hd..(i + 1) * hd]);
        }
    }
    (out, probs)
}

/// `attention_backward_reference` as GEMMs per head: dV = Pᵀ·dO, dP = dO·Vᵀ,
/// dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = scale·dS·K, dK = scale·dSᵀ·Q.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    n: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    use crate::train::kernels::{matmul_into, View};
    let (qw, kw, group) = (nh * hd, nkv * hd, nh / nkv);
    let scale = 1.0 / (hd as f32).sqrt();
    let head = |x, h, w| head_view(x, h, w, n, hd);
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; k.len()],
        vec![0f32; v.len()],
    );
    let mut ds = vec![0f32; n * n];
    let mut tmp = vec![0f32; n * hd];
    for h in 0..nh {
        let kvh = h / group;
        let p = View::rows(&probs[h * n * n..(h + 1) * n * n], n, n);
        let doh = head(dout, h, qw);
        // dV_kvh += Pᵀ·dO_h.
        matmul_into(&mut tmp, false, p.t(), doh, 1.0);
        add_head(&mut dv, &tmp, kvh, kw, hd);
        // dS = P ⊙ (dO·Vᵀ − rowsum), the rowsum over the causal part.
        matmul_into(&mut ds, false, doh, head(v, kvh, kw).t(), 1.0);
        ds.par_chunks_mut(n)
            .zip(p.data.par_chunks(n))
            .enumerate()
            .for_each(|(i, (dr, pr))| {
                let pdp: f32 = dr[..=i].iter().zip(&pr[..=i]).map(|(a, b)| a * b).sum();
                for j in 0..=i {
                    dr[j] = pr[j] * (dr[j] - pdp);
                }
                dr[i + 1..].fill(0.0);
            });
        let dsv = View::rows(&ds, n, n);
        matmul_into(&mut tmp, false, dsv, head(k, kvh, kw), scale);
        for i in 0..n {
            dq[i * qw + h * hd..][..hd].copy_from_slice(&tmp[i * hd..(i + 1) * hd]);
        }
        matmul_into(&mut tmp, false, dsv.t(), head(q, h, qw), scale);
        add_head(&mut dk, &tmp, kvh, kw, hd);
    }
    (dq, dk, dv)
}

/// Head h of x (n rows of width w) as an n × hd view.
fn head_view(
    x: &[f32],
    h: usize,
    w: usize,
    n: usize,
    hd: usize,
) -> crate::train::kernels::View<'_> {
    crate::train::kernels::View {
        data: &x[h * hd..],
        rows: n,
        cols: hd,
        rs: w,
        cs: 1,
    }
}

/// x's head `h` columns (rows of width w) += t (n, hd).
fn add_head(x: &mut [f32], t: &[f32], h: usize, w: usize, hd: usize) {
    for (row, tr) in x.chunks_exact_mut(w).zip(t.chunks_exact(hd)) {
        row[h * hd..(h + 1) * hd]
            .iter_mut()
            .zip(tr)
            .for_each(|(a, &b)| *a += b);
    }
}

/// RoPE on x (n, heads·hd) at positions pos0.., rotating pairs (2i, 2i+1) (ggml's normal
/// mode, llama) or (i, i + hd/2) (NeoX mode) by pos·base^(−2i/hd); `inverse` rotates by the
/// opposite angle, which is the backward (a rotation's transpose is its inverse).
pub fn rope(
    x: &mut [f32],
    heads: usize,
    hd: usize,
    pos0: usize,
    base: f32,
    neox: bool,
    inverse: bool,
) {
    let w = heads * hd;
    for (t, row) in x.chunks_exact_mut(w).enumerate() {
        let pos = (pos0 + t) as f32;
        for h in 0..heads {
            let r = &mut row[h * hd..(h + 1) * hd];
            for i in 0..hd / 2 {
                let theta = pos * base.powf(-2.0 * i as f32 / hd as f32);
                let (s, c) = theta.sin_cos();
                let s = if inverse { -s } else { s };
                let (a, b) = if neox {
                    (i, i + hd / 2)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (r[a], r[b]);
                r[a] = x0 * c - x1 * s;
                r[b] = x0 * s + x1 * c;
            }
        }
    }
}

// Finite differences perturb v[i] in place while comparing with g[i]: index loops read best.
#[allow(clippy::needless_range_loop)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml_type::GgmlType;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// Central difference of a scalar function of `v` at index i.
    fn fd(v: &mut [f32], i: usize, f: &dyn Fn(&[f32]) -> f64) -> f64 {
        let h = 1e-2f32.max(v[i].abs() * 1e-2);
        let old = v[i];
        v[i] = old + h;
        let up = f(v);
        v[i] = old - h;
        let dn = f(v);
        v[i] = old;
        (up - dn) / (2.0 * (h as f64))
    }

    fn close(a: f64, b: f64, what: &str) {
        let tol = 2e-2 * a.abs().max(b.abs()).max(1e-2);
        assert!(
            (a - b).abs() <= tol,
            "{what}: analytic {a} vs finite difference {b}"
        );
    }

    /// A scalar of an output: Σ y ⊙ c for fixed random c (so every output element counts).
    fn weigh(y: &[f32], c: &[f32]) -> f64 {
        y.iter().zip(c).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    #[test]
    fn rms_norm_gradients() {
        let (n, rows, eps) = (12, 3, 1e-5);
        let (mut x, mut w) = (rand(n * rows, 1), rand(n, 2));
        let c = rand(n * rows, 3);
        let mut dw = vec![0f32; n];
        let dx = rms_norm_backward(&x, &w, eps, &c, &mut dw);
        let wc = w.clone();
        for i in 0..x.len() {
            let f = |v: &[f32]| weigh(&rms_norm_forward(v, &wc, eps), &c);
            close(dx[i] as f64, fd(&mut x, i, &f), &format!("dx[{i}]"));
        }
        let xc = x.clone();
        for i in 0..n {
            let f = |v: &[f32]| weigh(&rms_norm_forward(&xc, v, eps), &c);
            close(dw[i] as f64, fd(&mut w, i, &f), &format!("dw[{i}]"));
        }
    }

    #[test]
    fn swiglu_gradients() {
        let (mut g, mut u) = (rand(20, 4), rand(20, 5));
        g.iter_mut().for_each(|v| *v *= 3.0);
        let c = rand(20, 6);
        let (dg, du) = swiglu_backward(&g, &u, &c);
        let uc = u.clone();
        for i in 0..20 {
            let f = |v: &[f32]| weigh(&swiglu_forward(v, &uc), &c);
            close(dg[i] as f64, fd(&mut g, i, &f), &format!("dg[{i}]"));
        }
        let gc = g.clone();
        for i in 0..20 {
            let f = |v: &[f32]| weigh(&swiglu_forward(&gc, v), &c);
            close(du[i] as f64, fd(&mut u, i, &f), &format!("du[{i}]"));
        }
    }

    #[test]
    fn linear_lora_gradients_through_a_quantized_matrix() {
        let (k, m, n, r) = (64, 5, 3, 2);
        // W in Q8_0, read back through its blocks as the student would.
        let wf = rand(k * m, 7);
        let bytes = crate::quant::quantize_to_vec(GgmlType::Q8_0, &wf).unwrap();
        let w = TensorView::borrowed("w", GgmlType::Q8_0, vec![k, m], &bytes);
        let mut lora = LoraParams {
            rank: r,
            k,
            m,
            scale: 1.5,
            a: rand(r * k, 8),
            b: rand(m * r, 9),
        };
        let mut x = rand(n * k, 10);
        let c = rand(n * m, 11);
        let (_, tv) = linear_forward(&w, Some(&lora), &x, n).unwrap();
        let mut grads = LoraGrads {
            a: vec![0.0; r * k],
            b: vec![0.0; m * r],
        };
        let dx = linear_backward(&w, Some((&lora, &tv, &mut grads)), &x, &c, n).unwrap();
        let l0 = lora.clone();
        for i in (0..x.len()).step_by(7) {
            let f = |v: &[f32]| weigh(&linear_forward(&w, Some(&l0), v, n).unwrap().0, &c);
            close(dx[i] as f64, fd(&mut x, i, &f), &format!("dx[{i}]"));
        }
        let xc = x.clone();
        for i in (0..r * k).step_by(5) {
            let f = |v: &[f32]| {
                let l = LoraParams {
                    a: v.to_vec(),
                    ..l0.clone()
                };
                weigh(&linear_forward(&w, Some(&l), &xc, n).unwrap().0, &c)
            };
            close(
                grads.a[i] as f64,
                fd(&mut lora.a, i, &f),
                &format!("dA[{i}]"),
            );
        }
        for i in 0..m * r {
            let f = |v: &[f32]| {
                let l = LoraParams {
                    b: v.to_vec(),
                    ..l0.clone()
                };
                weigh(&linear_forward(&w, Some(&l), &xc, n).unwrap().0, &c)
            };
            close(
                grads.b[i] as f64,
                fd(&mut lora.b, i, &f),
                &format!("dB[{i}]"),
            );
        }
    }

    #[test]
    fn attention_gradients() {
        let (n, nh, nkv, hd) = (5, 4, 2, 6);
        let (mut q, mut k, mut v) = (
            rand(n * nh * hd, 20),
            rand(n * nkv * hd, 21),
            rand(n * nkv * hd, 22),
        );
        let c = rand(n * nh * hd, 23);
        let (_, p) = attention_forward(&q, &k, &v, n, nh, nkv, hd);
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &p, &c, n, nh, nkv, hd);
        let (k0, v0) = (k.clone(), v.clone());
        for i in 0..q.len() {
            let f = |x: &[f32]| weigh(&attention_forward(x, &k0, &v0, n, nh, nkv, hd).0, &c);
            close(dq[i] as f64, fd(&mut q, i, &f), &format!("dq[{i}]"));
        }
        let q0 = q.clone();
        for i in 0..k.len() {
            let f = |x: &[f32]| weigh(&attention_forward(&q0, x, &v0, n, nh, nkv, hd).0, &c);
            close(dk[i] as f64, fd(&mut k, i, &f), &format!("dk[{i}]"));
        }
        for i in 0..v.len() {
            let f = |x: &[f32]| weigh(&attention_forward(&q0, &k0, x, n, nh, nkv, hd).0, &c);
            close(dv[i] as f64, fd(&mut v, i, &f), &format!("dv[{i}]"));
        }
    }

    #[test]
    fn rope_backward_is_the_transposed_rotation() {
        let (n, heads, hd) = (4, 2, 8);
        for neox in [false, true] {
            let x = rand(n * heads * hd, 30);
            let c = rand(n * heads * hd, 31);
            // Σ c·rope(x) = Σ rope⁻¹(c)·x for every x: the backward of c is rope⁻¹(c).
            let mut y = x.clone();
            rope(&mut y, heads, hd, 3, 10000.0, neox, false);
            let mut g = c.clone();
            rope(&mut g, heads, hd, 3, 10000.0, neox, true);
            let (a, b) = (weigh(&y, &c), weigh(&x, &g));
            assert!(
                (a - b).abs() < 1e-4 * a.abs().max(1.0),
                "neox {neox}: {a} vs {b}"
            );
            // The forward is the model's RoPE (plain parameters), head by head.
            for t in 0..n {
                for h in 0..heads {
                    let mut one = x[(t * heads + h) * hd..(t * heads + h + 1) * hd].to_vec();
                    let style = if neox {
                        crate::ops::rope::RopeStyle::Neox
                    } else {
                        crate::ops::rope::RopeStyle::Norm
                    };
                    let p = crate::ops::rope::RopeParams::plain(hd, 10000.0);
                    crate::ops::rope::rope(&mut one, 3 + t, &p, style);
                    let mine = &y[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                    let d = one
                        .iter()
                        .zip(mine)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        d < 1e-5,
                        "neox {neox}: position {t} head {h} differs by {d}"
                    );
                }
            }
            // And rotating back undoes it.
            let mut back = y.clone();
            rope(&mut back, heads, hd, 3, 10000.0, neox, true);
            let d = back
                .iter()
                .zip(&x)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "neox {neox}: inverse does not undo ({d})");
        }
    }

    /// The GEMM attention equals the per-position reference, forward and backward, with
    /// grouped heads and a length that is no multiple of anything.
    #[test]
    fn attention_gemm_equals_the_reference() {
        let (n, nh, nkv, hd) = (13, 6, 2, 8);
        let q = rand(n * nh * hd, 31);
        let k = rand(n * nkv * hd, 32);
        let v = rand(n * nkv * hd, 33);
        let c = rand(n * nh * hd, 34);
        let (o1, p1) = attention_forward(&q, &k, &v, n, nh, nkv, hd);
        let (o2, p2) = attention_forward_reference(&q, &k, &v, n, nh, nkv, hd);
        let close = |a: &[f32], b: &[f32], what: &str| {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "{what}: off by {d}");
        };
        close(&o1, &o2, "out");
        close(&p1, &p2, "probs");
        let g1 = attention_backward(&q, &k, &v, &p1, &c, n, nh, nkv, hd);
        let g2 = attention_backward_reference(&q, &k, &v, &p2, &c, n, nh, nkv, hd);
        close(&g1.0, &g2.0, "dq");
        close(&g1.1, &g2.1, "dk");
        close(&g1.2, &g2.2, "dv");
    }

    #[test]
    fn distill_loss_gradient_and_limits() {
        let v = 40;
        let mut z = rand(v, 12);
        z.iter_mut().for_each(|x| *x *= 4.0);
        let tz = rand(v, 13);
        // The teacher's top 8 log-probabilities at temperature 1.
        let lse = tz.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln() as f32;
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| tz[b].total_cmp(&tz[a]));
        let ids: Vec<u32> = order[..8].iter().map(|&i| i as u32).collect();
        let logp: Vec<f32> = order[..8].iter().map(|&i| tz[i] - lse).collect();
        let tail: f64 = order[8..]
            .iter()
            .map(|&i| ((tz[i] - lse) as f64).exp())
            .sum();
        for tail in [0.0, tail] {
            let t = Target {
                ids: &ids,
                logp: &logp,
                tail,
                next: 5,
            };
            for (temp, alpha) in [(1.0, 0.7), (2.5, 0.7), (3.0, 1.0), (2.0, 0.0)] {
                let (_, g) = distill_loss(&z, &t, temp, alpha);
                for i in 0..v {
                    let f = |zz: &[f32]| distill_loss(zz, &t, temp, alpha).0 as f64;
                    close(
                        g[i] as f64,
                        fd(&mut z, i, &f),
                        &format!("tail {tail} T={temp} α={alpha} dz[{i}]"),
                    );
                }
            }
        }
        // With the bucket, the teacher against itself has KL 0 at T = 1 and at T = 2 (its
        // own softened tail in the bucket), and a wrong bucket mass costs.
        let t = Target {
            ids: &ids,
            logp: &logp,
            tail: 0.0,
            next: 5,
        };
        for temp in [1.0f32, 2.0] {
            let w: Vec<f64> = tz.iter().map(|&x| (x as f64 / temp as f64).exp()).collect();
            let all: f64 = w.iter().sum();
            let tail: f64 = order[8..].iter().map(|&i| w[i]).sum::<f64>() / all;
            let (kl, _) = distill_loss(&tz, &Target { tail, ..t }, temp, 1.0);
            assert!(
                kl.abs() < 1e-5,
                "T={temp}: the teacher against itself: KL {kl}"
            );
            let (kl2, _) = distill_loss(
                &tz,
                &Target {
                    tail: 0.5 * tail,
                    ..t
                },
                temp,
                1.0,
            );
            assert!(
                kl2 > 1e-3,
                "T={temp}: a wrong bucket mass costs nothing ({kl2})"
            );
        }
    }
}
