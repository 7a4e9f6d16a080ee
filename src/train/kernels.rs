//! The one dense product training adds: dx (nt, k) += G (nt, nr)·R (nr, k), the backward of a
//! frozen matrix once a tile of its rows is dequantized (`student::frozen_backward`), and its
//! scalar reference.

/// dx (nt, k) += G·R: G is nt × nr, row t at g[t·g_stride..] (a column block of dy); R is
/// nr × k, row-major. Through the `gemm` crate (the f32 GEMM candle uses: 1.5–2.3× a
/// hand-blocked loop here, measured in docs/distill.md), on the rayon pool.
pub fn gemm_acc(
    dx: &mut [f32],
    g: &[f32],
    g_stride: usize,
    rows: &[f32],
    nt: usize,
    nr: usize,
    k: usize,
) {
    assert!(dx.len() >= nt * k && rows.len() >= nr * k);
    assert!(nt == 0 || g.len() >= (nt - 1) * g_stride + nr);
    if nt == 0 || nr == 0 || k == 0 {
        return;
    }
    // SAFETY: dx is nt × k (row stride k), g is nt × nr with row stride g_stride, rows is
    // nr × k (row stride k): the asserts above keep every index gemm forms in bounds, and
    // dx does not alias g or rows (a &mut and two & slices).
    unsafe {
        gemm::gemm(
            nt,
            k,
            nr,
            dx.as_mut_ptr(),
            1,
            k as isize,
            true,
            g.as_ptr(),
            1,
            g_stride as isize,
            rows.as_ptr(),
            1,
            k as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }
}

/// A strided f32 matrix view: element (i, j) at `data[i·rs + j·cs]`, so a transpose is a swap
/// of strides.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major rows × cols matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> View<'a> {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// dst (row-major a.rows × b.cols) = beta·a·b, plus dst's values where `accumulate`.
pub fn matmul_into(dst: &mut [f32], accumulate: bool, a: View, b: View, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    assert!(dst.len() >= m * n && a.fits(a.data.len()) && b.fits(b.data.len()));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: every index gemm forms is (i·rs + j·cs) within the extents checked just above
    // (`fits`, dst.len() ≥ m·n for its row-major layout), and dst, a &mut, aliases neither
    // input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }
}

/// The reference of `matmul_into`.
pub fn matmul_into_reference(dst: &mut [f32], accumulate: bool, a: View, b: View, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for l in 0..k {
                s += a.data[i * a.rs + l * a.cs] * b.data[l * b.rs + j * b.cs];
            }
            let d = &mut dst[i * n + j];
            *d = if accumulate { *d + beta * s } else { beta * s };
        }
    }
}

/// The reference: for every element, Σ over rows in row order, added to dx's value.
pub fn gemm_acc_reference(
    dx: &mut [f32],
    g: &[f32],
    g_stride: usize,
    rows: &[f32],
    nt: usize,
    nr: usize,
    k: usize,
) {
    for t in 0..nt {
        for i in 0..nr {
            let gv = g[t * g_stride + i];
            for j in 0..k {
                dx[t * k + j] += gv * rows[i * k + j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every shape class (the GEMM's blocks, tails of each dimension, one element), with G a
    /// column block of a wider matrix: within 1e-5 of the sum of magnitudes of each entry
    /// (the GEMM sums in another order, with fused multiply-adds).
    #[test]
    fn gemm_equals_the_reference_on_every_shape() {
        for &(nt, nr, k) in &[
            (4, 16, 64),
            (7, 33, 100),
            (3, 5, 31),
            (1, 1, 1),
            (9, 64, 576),
        ] {
            let stride = nr + 3;
            let g = rand(nt * stride, 1 + nt as u64);
            let rows = rand(nr * k, 2 + k as u64);
            let init = rand(nt * k, 3);
            let mut a = init.clone();
            gemm_acc(&mut a, &g, stride, &rows, nt, nr, k);
            let mut b = init.clone();
            gemm_acc_reference(&mut b, &g, stride, &rows, nt, nr, k);
            for i in 0..a.len() {
                let (t, j) = (i / k, i % k);
                let mag: f32 = init[i].abs()
                    + (0..nr)
                        .map(|r| (g[t * stride + r] * rows[r * k + j]).abs())
                        .sum::<f32>();
                assert!(
                    (a[i] - b[i]).abs() <= 1e-5 * mag,
                    "({nt},{nr},{k}) [{i}]: gemm {} vs reference {}",
                    a[i],
                    b[i]
                );
            }
        }
    }

    /// Strided products (each operand plain or transposed, accumulating or not, scaled)
    /// equal the reference within 1e-5 of each entry's sum of magnitudes.
    #[test]
    fn strided_products_equal_the_reference() {
        for &(m, k, n) in &[(5, 7, 3), (16, 64, 33), (1, 1, 1), (40, 16, 100)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    for acc in [false, true] {
                        let ad = rand(m * k, 5 + m as u64);
                        let bd = rand(k * n, 6 + n as u64);
                        let a = if ta {
                            View::rows(&ad, k, m).t()
                        } else {
                            View::rows(&ad, m, k)
                        };
                        let b = if tb {
                            View::rows(&bd, n, k).t()
                        } else {
                            View::rows(&bd, k, n)
                        };
                        let init = rand(m * n, 9);
                        let (mut x, mut y) = (init.clone(), init.clone());
                        matmul_into(&mut x, acc, a, b, 0.75);
                        matmul_into_reference(&mut y, acc, a, b, 0.75);
                        for i in 0..m * n {
                            let (r, c) = (i / n, i % n);
                            let mag = init[i].abs()
                                + (0..k)
                                    .map(|l| {
                                        (a.data[r * a.rs + l * a.cs] * b.data[l * b.rs + c * b.cs])
                                            .abs()
                                    })
                                    .sum::<f32>();
                            assert!(
                                (x[i] - y[i]).abs() <= 1e-5 * mag.max(1e-6),
                                "({m},{k},{n}) ta {ta} tb {tb} acc {acc} [{i}]: {} vs {}",
                                x[i],
                                y[i]
                            );
                        }
                    }
                }
            }
        }
    }
}
