//! Low-rank repair of quantization error, without training (`ledge quantize … --gram G
//! --lowrank-repair R --adapter-out A.gguf`).
//!
//! For a matrix W (m × k) quantized to Q, the error E = W − Q changes the outputs by E·x.
//! Over the calibration inputs (second moment H = E[xxᵀ], from `ledge calibrate --gram`) the
//! rank-R correction B·A that removes most of it minimizes ‖(E − B·A)·H^½‖_F. With the
//! damped H = L·Lᵀ (Cholesky) that norm equals ‖(E − B·A)·L‖_F, whose minimizer is the
//! truncated SVD of C = E·L: C ≈ U_R Σ_R V_Rᵀ, so B = U_R Σ_R and A = V_Rᵀ L⁻¹.
//!
//! C is never formed (for a 7B FFN matrix it would cost m·k² multiply-adds): a randomized
//! SVD (Halko, Martinsson, Tropp 2011) needs only products of C and Cᵀ with R + 8 vectors,
//! each an E product and a triangular L product, with three power iterations, whose
//! captured energy is checked against the exact SVD in the tests. The pairs are written as
//! a llama.cpp LoRA adapter (alpha = R, so llama.cpp's scale alpha/r is 1).

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::gram::{group_of, GramFile};
use super::{ConvertError, Result};
use crate::linalg::{cholesky_in_place, dot_f64};

/// Extra random directions beyond the rank, and power iterations: (8, 3) captures the top
/// singular values to a fraction of a percent on the matrices tested.
const OVERSAMPLE: usize = 8;
const POWER_ITERS: usize = 3;

/// The damped H = L·Lᵀ of one Gram group: L (lower) and Lᵀ, row-major.
pub struct Factor {
    pub k: usize,
    l: Vec<f64>,
    lt: Vec<f64>,
}

impl Factor {
    /// Factors E[xxᵀ] + damp·mean(diag)·I.
    pub fn new(k: usize, moment: &[f32], damp: f64) -> std::result::Result<Factor, String> {
        let mut h: Vec<f64> = moment.iter().map(|&v| v as f64).collect();
        let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        if !(mean_diag.is_finite() && mean_diag > 0.0) {
            return Err("the input second moment is zero or not finite".into());
        }
        for i in 0..k {
            h[i * k + i] += damp * mean_diag;
        }
        cholesky_in_place(&mut h, k)
            .map_err(|j| format!("the damped second moment is not positive definite at {j}"))?;
        let mut lt = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..=i {
                lt[j * k + i] = h[i * k + j];
            }
        }
        Ok(Factor { k, l: h, lt })
    }

    /// L·x.
    fn l_mul(&self, x: &[f64]) -> Vec<f64> {
        let k = self.k;
        (0..k)
            .into_par_iter()
            .map(|i| dot_f64(&self.l[i * k..i * k + i + 1], &x[..i + 1]))
            .collect()
    }

    /// Lᵀ·x.
    fn lt_mul(&self, x: &[f64]) -> Vec<f64> {
        let k = self.k;
        (0..k)
            .into_par_iter()
            .map(|i| dot_f64(&self.lt[i * k + i..(i + 1) * k], &x[i..]))
            .collect()
    }

    /// Solves Lᵀ·a = v (back substitution).
    fn lt_solve(&self, v: &[f64]) -> Vec<f64> {
        let k = self.k;
        let mut a = v.to_vec();
        for i in (0..k).rev() {
            let s = dot_f64(&self.lt[i * k + i + 1..(i + 1) * k], &a[i + 1..]);
            a[i] = (a[i] - s) / self.lt[i * k + i];
        }
        a
    }
}

/// The result for one matrix: A (r × k), B (m × r), and the weighted error ‖E·L‖² before and
/// after (`exact`: computed over every row; else estimated from a sample of rows).
pub struct Repair {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub rank: usize,
    pub err_before: f64,
    pub err_after: f64,
    pub exact: bool,
    /// The weighted error each component removes (σ², largest first): what a shorter prefix
    /// of the pairs keeps.
    pub gains: Vec<f64>,
}

/// The per-group factors, shared by the matrices reading the same input.
pub struct LowRank {
    gram: GramFile,
    /// The rank of every pair, or the largest one under `budget`.
    pub rank: usize,
    pub damp: f64,
    /// The adapter's bytes as a fraction of the model's: ranks per matrix are then chosen by
    /// gain per byte (`allocate`) instead of one rank for all.
    pub budget: Option<f64>,
    cache: Mutex<Vec<(String, Arc<Factor>)>>,
}

impl std::fmt::Debug for LowRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LowRank {{ rank: {}, damp: {} }}", self.rank, self.damp)
    }
}

impl LowRank {
    pub fn new(gram: GramFile, rank: usize, damp: f64, budget: Option<f64>) -> LowRank {
        LowRank {
            gram,
            rank,
            damp,
            budget,
            cache: Mutex::new(Vec::new()),
        }
    }

    /// The factor of the group `name` reads from; None without statistics or at another width.
    pub fn factor(&self, name: &str, tied: bool, row_len: usize) -> Result<Option<Arc<Factor>>> {
        let Some(group) = group_of(name, tied) else {
            return Ok(None);
        };
        if let Ok(c) = self.cache.lock() {
            if let Some((_, f)) = c.iter().find(|(g, _)| *g == group) {
                return Ok(Some(f.clone()).filter(|f| f.k == row_len));
            }
        }
        let Some((k, m)) = self.gram.moment(&group)? else {
            return Ok(None);
        };
        if k != row_len {
            return Ok(None);
        }
        let f = Factor::new(k, &m, self.damp)
            .map_err(|e| ConvertError::Usage(format!("gram group {group}: {e}")))?;
        let f = Arc::new(f);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= 4 {
                c.remove(0);
            }
            c.push((group, f.clone()));
        }
        Ok(Some(f))
    }
}

/// Deterministic standard normals (splitmix64 + Box-Muller), so a repair reproduces.
fn normals(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next().max(1e-300), next());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        })
        .collect()
}

/// Orthonormalizes `cols` in place (modified Gram-Schmidt, twice for stability); a column
/// that vanishes becomes zero.
fn orthonormalize(cols: &mut [Vec<f64>]) {
    for _ in 0..2 {
        for j in 0..cols.len() {
            let (done, rest) = cols.split_at_mut(j);
            let c = &mut rest[0];
            for q in done.iter() {
                let p = dot_f64(q, c);
                c.iter_mut().zip(q).for_each(|(x, y)| *x -= p * y);
            }
            let n = dot_f64(c, c).sqrt();
            if n > 1e-300 {
                c.iter_mut().for_each(|x| *x /= n);
            } else {
                c.iter_mut().for_each(|x| *x = 0.0);
            }
        }
    }
}

/// E·x for E (m × k, row-major f32).
fn e_mul(e: &[f32], m: usize, k: usize, x: &[f64]) -> Vec<f64> {
    (0..m)
        .into_par_iter()
        .map(|i| {
            e[i * k..(i + 1) * k]
                .iter()
                .zip(x)
                .map(|(&a, b)| a as f64 * b)
                .sum()
        })
        .collect()
}

/// The symmetric eigen-decomposition of `g` (n × n, row-major) by cyclic Jacobi rotations:
/// eigenvalues, and eigenvectors as the columns of the returned row-major matrix.
fn jacobi_eigen(mut g: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = g.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| g[i * n + j] * g[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = g[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let (app, aqq) = (g[p * n + p], g[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..n {
                    let (grp, grq) = (g[r * n + p], g[r * n + q]);
                    g[r * n + p] = c * grp - s * grq;
                    g[r * n + q] = s * grp + c * grq;
                }
                for r in 0..n {
                    let (gpr, gqr) = (g[p * n + r], g[q * n + r]);
                    g[p * n + r] = c * gpr - s * gqr;
                    g[q * n + r] = s * gpr + c * gqr;
                }
                for r in 0..n {
                    let (vrp, vrq) = (v[r * n + p], v[r * n + q]);
                    v[r * n + p] = c * vrp - s * vrq;
                    v[r * n + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    ((0..n).map(|i| g[i * n + i]).collect(), v)
}

/// Multiply-adds (m·k²/2) up to which ‖E·L‖² is computed over every row (a second or two);
/// above, over ERR_ROWS evenly spaced rows, scaled.
const ERR_EXACT_WORK: usize = 2_000_000_000;
const ERR_ROWS: usize = 256;

/// ‖E·L‖² (exact, or estimated from a sample of rows for large matrices).
fn weighted_err(e: &[f32], m: usize, k: usize, f: &Factor) -> (f64, bool) {
    let rows: Vec<usize> = if m * k * k / 2 <= ERR_EXACT_WORK || m <= ERR_ROWS {
        (0..m).collect()
    } else {
        (0..ERR_ROWS).map(|i| i * m / ERR_ROWS).collect()
    };
    let sum: f64 = rows
        .iter()
        .map(|&i| {
            // ‖e_i·L‖² = Σ_j (Σ_{l ≥ j} e_il L_lj)² = ‖Lᵀ e_iᵀ‖².
            let ei: Vec<f64> = e[i * k..(i + 1) * k].iter().map(|&v| v as f64).collect();
            let y = f.lt_mul(&ei);
            dot_f64(&y, &y)
        })
        .sum();
    (sum * m as f64 / rows.len() as f64, rows.len() == m)
}

/// The rank-`rank` repair of the error `e` (m × k) under `f`; `seed` fixes the random
/// directions.
pub fn repair(e: &[f32], m: usize, k: usize, f: &Factor, rank: usize, seed: u64) -> Repair {
    assert_eq!(e.len(), m * k, "low-rank repair: E is not m×k");
    assert_eq!(f.k, k, "low-rank repair: the factor is not k×k");
    let l = (rank + OVERSAMPLE).min(m).min(k);
    let rank = rank.min(l);
    // Columns of C·Ω = E·(L·Ω).
    let omega = normals(k * l, seed);
    let mut y: Vec<Vec<f64>> = omega
        .chunks_exact(k)
        .map(|w| e_mul(e, m, k, &f.l_mul(w)))
        .collect();
    // Eᵀ as rows, for Cᵀ·q = Lᵀ·(Eᵀ·q).
    let mut et = vec![0f32; k * m];
    for i in 0..m {
        for j in 0..k {
            et[j * m + i] = e[i * k + j];
        }
    }
    for _ in 0..POWER_ITERS {
        orthonormalize(&mut y);
        let mut z: Vec<Vec<f64>> = y.iter().map(|q| f.lt_mul(&e_mul(&et, k, m, q))).collect();
        orthonormalize(&mut z);
        y = z.iter().map(|w| e_mul(e, m, k, &f.l_mul(w))).collect();
    }
    orthonormalize(&mut y);
    // Small = Qᵀ·C (l × k): row j = (Eᵀ·q_j)ᵀ·L = (Lᵀ·Eᵀ·q_j)ᵀ.
    let small: Vec<Vec<f64>> = y.iter().map(|q| f.lt_mul(&e_mul(&et, k, m, q))).collect();
    let mut g = vec![0f64; l * l];
    for i in 0..l {
        for j in i..l {
            let d = dot_f64(&small[i], &small[j]);
            g[i * l + j] = d;
            g[j * l + i] = d;
        }
    }
    let (vals, vecs) = jacobi_eigen(g, l);
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    let mut a = vec![0f32; rank * k];
    let mut b = vec![0f32; m * rank];
    let mut captured = 0.0;
    let mut gains = vec![0f64; rank];
    for (r, &o) in order.iter().take(rank).enumerate() {
        let s2 = vals[o].max(0.0);
        let s = s2.sqrt();
        if s <= 1e-300 {
            continue;
        }
        captured += s2;
        gains[r] = s2;
        let w: Vec<f64> = (0..l).map(|j| vecs[j * l + o]).collect();
        // u = Q·w (m), v = Smallᵀ·w / σ (k); B column r = σ·u, A row r = (Lᵀ)⁻¹ v.
        for i in 0..m {
            let u: f64 = (0..l).map(|j| y[j][i] * w[j]).sum();
            b[i * rank + r] = (s * u) as f32;
        }
        let v: Vec<f64> = (0..k)
            .map(|c| (0..l).map(|j| small[j][c] * w[j]).sum::<f64>() / s)
            .collect();
        for (dst, x) in a[r * k..(r + 1) * k].iter_mut().zip(f.lt_solve(&v)) {
            *dst = x as f32;
        }
    }
    let (before, exact) = weighted_err(e, m, k, f);
    Repair {
        a,
        b,
        rank,
        err_before: before,
        err_after: (before - captured).max(0.0),
        exact,
        gains,
    }
}

/// Ranks for matrices under a byte budget: `gains[t]` is matrix t's weighted error removed by
/// each further component (non-increasing), `costs[t]` the bytes one component takes. The
/// components are taken in order of gain per byte while they fit, which is optimal for
/// non-increasing gains up to the last, partly unused, component's bytes.
pub fn allocate(gains: &[Vec<f64>], costs: &[usize], budget: usize) -> Vec<usize> {
    let mut cand: Vec<(f64, usize, usize)> = gains
        .iter()
        .zip(costs)
        .enumerate()
        .flat_map(|(t, (g, &c))| {
            g.iter()
                .enumerate()
                .map(move |(j, &v)| (v / c.max(1) as f64, t, j))
        })
        .collect();
    // Ties fall to the lower component index, so each matrix's ranks stay a prefix.
    cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut ranks = vec![0usize; gains.len()];
    let mut used = 0usize;
    for (ratio, t, j) in cand {
        if ratio <= 0.0 {
            break;
        }
        if j == ranks[t] && used + costs[t] <= budget {
            ranks[t] += 1;
            used += costs[t];
        }
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random SPD moment and an error matrix with a decaying spectrum.
    fn problem(m: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let x = normals(4 * k * k, 1);
        let mut h = vec![0f32; k * k];
        for p in 0..4 * k {
            let row = &x[p * k..(p + 1) * k];
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += (row[i] * row[j]) as f32 / (4 * k) as f32;
                }
            }
        }
        let g = normals(m * k, 2);
        let e: Vec<f32> = (0..m * k)
            .map(|i| (g[i] * (1.0 + 3.0 / (1.0 + (i % k) as f64))) as f32)
            .collect();
        (h, e)
    }

    /// ‖(E − B·A)·L‖² computed directly.
    fn residual(e: &[f32], rp: &Repair, m: usize, k: usize, f: &Factor) -> f64 {
        let mut d = e.to_vec();
        for i in 0..m {
            for j in 0..k {
                let ba: f32 = (0..rp.rank)
                    .map(|r| rp.b[i * rp.rank + r] * rp.a[r * k + j])
                    .sum();
                d[i * k + j] -= ba;
            }
        }
        weighted_err(&d, m, k, f).0
    }

    #[test]
    fn allocation_takes_the_best_gain_per_byte_within_the_budget() {
        // Matrix 0: big gains, cost 10; matrix 1: small gains, cost 1; matrix 2: nothing.
        let gains = vec![
            vec![100.0, 50.0, 1.0],
            vec![20.0, 8.0, 3.0, 2.0],
            vec![0.0; 3],
        ];
        let costs = [10, 1, 5];
        // Per byte: m0 10, 5, 0.1; m1 20, 8, 3, 2.
        assert_eq!(allocate(&gains, &costs, 0), vec![0, 0, 0]);
        assert_eq!(allocate(&gains, &costs, 2), vec![0, 2, 0]);
        assert_eq!(allocate(&gains, &costs, 12), vec![1, 2, 0]);
        assert_eq!(allocate(&gains, &costs, 24), vec![2, 4, 0]);
        // Everything useful fits: the zero-gain matrix still gets nothing.
        assert_eq!(allocate(&gains, &costs, 1000), vec![3, 4, 0]);
        // Brute force over all prefixes agrees on small budgets (gains non-increasing).
        for budget in 0..40 {
            let got = allocate(&gains, &costs, budget);
            let value = |r: &[usize]| -> f64 {
                r.iter()
                    .enumerate()
                    .map(|(t, &n)| gains[t][..n].iter().sum::<f64>())
                    .sum()
            };
            let bytes = |r: &[usize]| -> usize { r.iter().zip(costs).map(|(n, c)| n * c).sum() };
            assert!(bytes(&got) <= budget);
            let mut best = 0.0f64;
            for a in 0..=3 {
                for b in 0..=4 {
                    if bytes(&[a, b, 0]) <= budget {
                        best = best.max(value(&[a, b, 0]));
                    }
                }
            }
            // Greedy by ratio is within one component of the optimum.
            assert!(value(&got) + 100.0 >= best, "budget {budget}: {got:?}");
        }
    }

    #[test]
    fn repair_matches_the_exact_truncated_svd() {
        let (m, k, r) = (48, 40, 6);
        let (h, e) = problem(m, k);
        let f = Factor::new(k, &h, 0.01).unwrap();
        let rp = repair(&e, m, k, &f, r, 7);
        assert!(rp.exact);
        // The exact optimum: eigenvalues of CᵀC, C = E·L, formed here (small).
        let mut c = vec![0f64; m * k];
        for i in 0..m {
            let ei: Vec<f64> = e[i * k..(i + 1) * k].iter().map(|&v| v as f64).collect();
            let row = f.lt_mul(&ei);
            c[i * k..(i + 1) * k].copy_from_slice(&row);
        }
        let mut ctc = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                ctc[i * k + j] = (0..m).map(|p| c[p * k + i] * c[p * k + j]).sum();
            }
        }
        let (mut vals, _) = jacobi_eigen(ctc, k);
        vals.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = vals.iter().sum();
        let best_after = total - vals[..r].iter().sum::<f64>();
        assert!(
            (rp.err_before - total).abs() < 1e-6 * total,
            "{} vs {total}",
            rp.err_before
        );
        // The reported residual is the true residual of the written pair, and within 0.5 %
        // of the optimum.
        let true_after = residual(&e, &rp, m, k, &f);
        assert!(
            (true_after - rp.err_after).abs() < 1e-3 * total,
            "reported {} true {true_after}",
            rp.err_after
        );
        assert!(
            true_after <= best_after * 1.005 + 1e-9 * total,
            "after {true_after}, optimum {best_after}"
        );
        assert!(true_after < 0.9 * total, "the repair removed too little");
    }

    #[test]
    fn rank_is_capped_and_zero_error_stays_zero() {
        let (m, k) = (5, 12);
        let (h, _) = problem(m, k);
        let f = Factor::new(k, &h, 0.01).unwrap();
        let rp = repair(&vec![0f32; m * k], m, k, &f, 16, 1);
        assert_eq!(rp.rank, 5);
        assert!(rp.a.iter().chain(&rp.b).all(|&x| x == 0.0));
        assert_eq!(rp.err_before, 0.0);
    }

    #[test]
    fn jacobi_diagonalizes() {
        let n = 7;
        let x = normals(n * n, 3);
        let mut g = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                g[i * n + j] = x[i * n + j] + x[j * n + i];
            }
        }
        let (vals, v) = jacobi_eigen(g.clone(), n);
        for c in 0..n {
            for i in 0..n {
                let gv: f64 = (0..n).map(|j| g[i * n + j] * v[j * n + c]).sum();
                assert!((gv - vals[c] * v[i * n + c]).abs() < 1e-9, "column {c}");
            }
        }
    }
}
