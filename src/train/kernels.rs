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
}
