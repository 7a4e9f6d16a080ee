/// RMS norm of each `n`-long row of `x` in place, then times `w`:
/// x (rows, n) → x / sqrt(mean(x²) + eps) ⊙ w. The sum is in f64 as in ggml.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    debug_assert!(x.len().is_multiple_of(n));
    for row in x.chunks_exact_mut(n) {
        let sum: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

#[cfg(test)]
mod tests {
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
