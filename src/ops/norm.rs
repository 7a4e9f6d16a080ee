use rayon::prelude::*;

/// Rows per parallel task: below this many rows in all, the norms run inline (decode).
const ROWS_PER_TASK: usize = 8;

/// RMS norm of each `n`-long row of `x` in place, then times `w`:
/// x (rows, n) → x / sqrt(mean(x²) + eps) ⊙ w. The sum is in f64 as in ggml.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    debug_assert!(x.len().is_multiple_of(n));
    for_rows(x, n, |row| {
        let scale = inv_rms(row, eps);
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    });
}

/// `out` = `x` RMS-normed row by row, times `w` (as `rms_norm` on a copy, bit for bit).
pub fn rms_norm_into(x: &[f32], out: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    debug_assert_eq!(x.len(), out.len());
    let one = |(src, dst): (&[f32], &mut [f32])| {
        let scale = inv_rms(src, eps);
        for ((d, &v), &g) in dst.iter_mut().zip(src).zip(w) {
            *d = v * scale * g;
        }
    };
    if x.len() / n < 2 * ROWS_PER_TASK {
        x.chunks_exact(n).zip(out.chunks_exact_mut(n)).for_each(one);
    } else {
        x.par_chunks_exact(n)
            .zip(out.par_chunks_exact_mut(n))
            .with_min_len(ROWS_PER_TASK)
            .for_each(one);
    }
}

/// The residual step between two matmul blocks, in one pass over x: x += o, then
/// `out` = x RMS-normed times `w` (the next block's input).
pub fn add_rms_norm(x: &mut [f32], o: &[f32], out: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    let one = |((x, o), dst): ((&mut [f32], &[f32]), &mut [f32])| {
        x.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        let scale = inv_rms(x, eps);
        for ((d, &v), &g) in dst.iter_mut().zip(x.iter()).zip(w) {
            *d = v * scale * g;
        }
    };
    if x.len() / n < 2 * ROWS_PER_TASK {
        x.chunks_exact_mut(n)
            .zip(o.chunks_exact(n))
            .zip(out.chunks_exact_mut(n))
            .for_each(one);
    } else {
        x.par_chunks_exact_mut(n)
            .zip(o.par_chunks_exact(n))
            .zip(out.par_chunks_exact_mut(n))
            .with_min_len(ROWS_PER_TASK)
            .for_each(one);
    }
}

/// x += o.
pub fn add(x: &mut [f32], o: &[f32]) {
    x.iter_mut().zip(o).for_each(|(a, b)| *a += b);
}

/// 1 / sqrt(mean(row²) + eps), the mean summed in f64 in order (as ggml).
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let sum: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (sum / row.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// `f(row)` for every `n`-long row of x, across the pool when there are many.
fn for_rows(x: &mut [f32], n: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    if x.len() / n < 2 * ROWS_PER_TASK {
        x.chunks_exact_mut(n).for_each(f);
    } else {
        x.par_chunks_exact_mut(n)
            .with_min_len(ROWS_PER_TASK)
            .for_each(f);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fused_forms_equal_the_plain_norm_bit_for_bit() {
        // 40 rows: the parallel path; 3 rows: the inline one.
        for rows in [3usize, 40] {
            let n = 96;
            let x: Vec<f32> = (0..rows * n)
                .map(|i| (i as f32 * 0.731).sin() * 2.5)
                .collect();
            let o: Vec<f32> = (0..rows * n).map(|i| (i as f32 * 0.277).cos()).collect();
            let w: Vec<f32> = (0..n).map(|i| 0.5 + (i as f32 * 0.13).sin()).collect();
            let mut plain = x.clone();
            super::rms_norm(&mut plain, &w, 1e-5);
            let mut into = vec![0.0; x.len()];
            super::rms_norm_into(&x, &mut into, &w, 1e-5);
            assert_eq!(plain, into);

            let mut summed = x.clone();
            summed.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let mut normed = summed.clone();
            super::rms_norm(&mut normed, &w, 1e-5);
            let mut fused_x = x.clone();
            let mut fused = vec![0.0; x.len()];
            super::add_rms_norm(&mut fused_x, &o, &mut fused, &w, 1e-5);
            assert_eq!(fused_x, summed);
            assert_eq!(fused, normed);
        }
    }

    #[test]
    fn unit_rms_after_norm() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        super::rms_norm(&mut x, &[1.0; 32], 0.0);
        for row in x.chunks(32) {
            let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / 32.0;
            assert!((ms - 1.0).abs() < 1e-5, "{ms}");
        }
    }
}
