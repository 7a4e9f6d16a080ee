//! The dense linear algebra the converter needs, written once: Gram accumulation (Σ xxᵀ over
//! calibration positions), Cholesky factorization and the solves built on it (ridge least
//! squares for pruning's re-fits, the triangular inverse GPTQ uses).
//!
//! Matrices are row-major `Vec`s with their side passed alongside. Sums run in fixed lane
//! orders so results do not depend on the thread count.

use rayon::prelude::*;

/// Σ a·b in f64 over 4 lanes (vectorizable; f64 addition is not reassociated otherwise).
pub fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f64>() + tail
}

/// Adds the upper triangle (j ≥ i) of XᵀX to the row-major `sum` (n × n), X being the rows
/// of `x` (positions × `n`). f32 sums over this call's positions, added into the f64 totals.
pub fn add_gram_upper(sum: &mut [f64], x: &[f32], n: usize) {
    let t = x.len() / n;
    // Columns of X as contiguous rows, so each entry is one long dot product.
    let mut xt = vec![0f32; n * t];
    for (p, row) in x.chunks_exact(n).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            xt[i * t + p] = v;
        }
    }
    // Rows of the upper triangle in parallel, four at a time (each xt[j] read once per four
    // rows).
    sum.par_chunks_mut(4 * n)
        .enumerate()
        .for_each(|(bi, rows)| {
            let i0 = 4 * bi;
            let ni = rows.len() / n;
            let xi: [&[f32]; 4] = std::array::from_fn(|k| {
                let r = (i0 + k.min(ni - 1)) * t;
                &xt[r..r + t]
            });
            for j in i0..n {
                let acc = dot4(xi, &xt[j * t..(j + 1) * t]);
                for (k, &a) in acc.iter().enumerate().take(ni) {
                    if j >= i0 + k {
                        rows[k * n + j] += a as f64;
                    }
                }
            }
        });
}

/// Copies the upper triangle of the row-major `m` (n × n) into its lower one.
pub fn mirror_upper(m: &mut [f64], n: usize) {
    for i in 0..n {
        for j in 0..i {
            m[i * n + j] = m[j * n + i];
        }
    }
}

/// Four dot products `xi[k]·y`, through the AVX2+FMA build of the loop where the CPU has it.
fn dot4(xi: [&[f32]; 4], y: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { dot4_avx2(xi, y) };
    }
    dot4_generic(xi, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot4_avx2(xi: [&[f32]; 4], y: &[f32]) -> [f32; 4] {
    dot4_generic(xi, y)
}

/// Eight lanes per row so the compiler keeps 4×8 partial sums in registers.
#[inline(always)]
fn dot4_generic(xi: [&[f32]; 4], y: &[f32]) -> [f32; 4] {
    let mut acc = [[0f32; 8]; 4];
    let t = y.len() / 8 * 8;
    for c in (0..t).step_by(8) {
        let yv: &[f32; 8] = y[c..c + 8].try_into().expect("8 lanes");
        for (a, x) in acc.iter_mut().zip(&xi) {
            let xv: &[f32; 8] = x[c..c + 8].try_into().expect("8 lanes");
            for l in 0..8 {
                a[l] += xv[l] * yv[l];
            }
        }
    }
    let mut out = [0f32; 4];
    for (k, o) in out.iter_mut().enumerate() {
        *o = acc[k].iter().sum::<f32>()
            + xi[k][t..]
                .iter()
                .zip(&y[t..])
                .map(|(a, b)| a * b)
                .sum::<f32>();
    }
    out
}

/// In-place Cholesky A = L·Lᵀ of the row-major symmetric `a` (n × n): L is left in the lower
/// triangle, the upper one zeroed. Err(j) when pivot j is not positive (A is not positive
/// definite). Column by column; the entries below the diagonal of one column in parallel.
pub fn cholesky_in_place(a: &mut [f64], n: usize) -> Result<(), usize> {
    for j in 0..n {
        let rowj = &a[j * n..j * n + j + 1];
        let d = rowj[j] - dot_f64(&rowj[..j], &rowj[..j]);
        if d.is_nan() || d <= 0.0 {
            return Err(j);
        }
        a[j * n + j] = d.sqrt();
        let (upto, below) = a.split_at_mut((j + 1) * n);
        let lj = &upto[j * n..j * n + j + 1];
        below.par_chunks_mut(n).for_each(|ri| {
            let s = dot_f64(&ri[..j], &lj[..j]);
            ri[j] = (ri[j] - s) / lj[j];
        });
    }
    for i in 0..n {
        for j in i + 1..n {
            a[i * n + j] = 0.0;
        }
    }
    Ok(())
}

/// A factored symmetric positive definite matrix, ready for many solves.
pub struct Cholesky {
    n: usize,
    /// L (lower triangle, row-major).
    l: Vec<f64>,
    /// Lᵀ row-major, so the back substitution reads contiguous rows too.
    lt: Vec<f64>,
}

impl Cholesky {
    /// Factors `a` (n × n, row-major); Err(pivot) if it is not positive definite.
    pub fn new(mut a: Vec<f64>, n: usize) -> Result<Cholesky, usize> {
        cholesky_in_place(&mut a, n)?;
        let mut lt = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                lt[j * n + i] = a[i * n + j];
            }
        }
        Ok(Cholesky { n, l: a, lt })
    }

    /// Solves A·x = y in place.
    pub fn solve(&self, y: &mut [f64]) {
        let (n, l, lt) = (self.n, &self.l, &self.lt);
        for i in 0..n {
            let s = dot_f64(&l[i * n..i * n + i], &y[..i]);
            y[i] = (y[i] - s) / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s = dot_f64(&lt[i * n + i + 1..(i + 1) * n], &y[i + 1..]);
            y[i] = (y[i] - s) / lt[i * n + i];
        }
    }
}

/// Ridge least squares for many right-hand sides: with A = G + λI factored once, each
/// `rhs(i)` gives b_i and the result holds x_i = A⁻¹ b_i (as f32, concatenated), in parallel
/// over i. Err(pivot) if G + λI is not positive definite.
pub fn ridge_solve_many(
    g: Vec<f64>,
    n: usize,
    lambda: f64,
    count: usize,
    rhs: impl Fn(usize) -> Vec<f64> + Sync,
) -> Result<Vec<f32>, usize> {
    let mut a = g;
    for i in 0..n {
        a[i * n + i] += lambda;
    }
    let c = Cholesky::new(a, n)?;
    let out: Vec<Vec<f32>> = (0..count)
        .into_par_iter()
        .map(|i| {
            let mut y = rhs(i);
            c.solve(&mut y);
            y.into_iter().map(|v| v as f32).collect()
        })
        .collect();
    Ok(out.concat())
}

/// The inverse of the lower-triangular `l` (row-major), lower-triangular; columns solved in
/// parallel by forward substitution.
pub fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            // x = L⁻¹ e_j; x_i = 0 for i < j.
            let mut x = vec![0f64; n - j];
            x[0] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let row = &l[i * n + j..i * n + i];
                let s: f64 = row.iter().zip(&x[..i - j]).map(|(a, b)| a * b).sum();
                x[i - j] = -s / l[i * n + i];
            }
            x
        })
        .collect();
    let mut out = vec![0f64; n * n];
    for (j, c) in cols.iter().enumerate() {
        for (k, &v) in c.iter().enumerate() {
            out[(j + k) * n + j] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_solve_recovers_a_known_solution() {
        // G = MᵀM for a well-conditioned M; b = (G + λI)·x.
        let n = 5;
        let m: Vec<f32> = (0..n * 7).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        let mut g = vec![0f64; n * n];
        add_gram_upper(&mut g, &m, n);
        mirror_upper(&mut g, n);
        let x: Vec<f64> = (0..n).map(|i| i as f64 - 2.0).collect();
        let lambda = 0.5;
        let b: Vec<f64> = (0..n)
            .map(|i| dot_f64(&g[i * n..(i + 1) * n], &x) + lambda * x[i])
            .collect();
        let got = ridge_solve_many(g, n, lambda, 1, |_| b.clone()).unwrap();
        for (a, e) in got.iter().zip(&x) {
            assert!((*a as f64 - e).abs() < 1e-4, "{got:?} vs {x:?}");
        }
    }

    #[test]
    fn cholesky_rejects_an_indefinite_matrix() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky_in_place(&mut a, 2), Err(1));
    }
}
