/// How RoPE pairs dimensions: NORM rotates adjacent pairs (llama: the converter permuted
/// Q/K for it), NEOX rotates dimension i with i + n_rot/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    Norm,
    Neox,
}

/// Rotary position embedding of one head vector `x` (head_dim long; the first `n_rot`
/// dimensions rotate) at position `pos`. Angles follow ggml: θ starts at pos·freq_scale and
/// is multiplied by base^(-2/n_rot) per pair, in f32.
pub fn rope(x: &mut [f32], pos: usize, n_rot: usize, base: f32, freq_scale: f32, style: RopeStyle) {
    let theta_scale = base.powf(-2.0 / n_rot as f32);
    let mut theta = pos as f32 * freq_scale;
    for i in 0..n_rot / 2 {
        let (sin, cos) = theta.sin_cos();
        let (a, b) = match style {
            RopeStyle::Norm => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + n_rot / 2),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
        theta *= theta_scale;
    }
}

/// The (sin, cos) pairs of `rope` for positions pos0..pos0+n, computed once per forward
/// pass instead of once per head and layer (the same f32 steps as `rope`, so the same bits).
pub struct RopeTable {
    pub base: f32,
    pub freq_scale: f32,
    n_rot: usize,
    pos0: usize,
    sin_cos: Vec<(f32, f32)>,
}

impl RopeTable {
    pub fn new(pos0: usize, n: usize, n_rot: usize, base: f32, freq_scale: f32) -> RopeTable {
        let theta_scale = base.powf(-2.0 / n_rot as f32);
        let mut sin_cos = Vec::with_capacity(n * (n_rot / 2));
        for pos in pos0..pos0 + n {
            let mut theta = pos as f32 * freq_scale;
            for _ in 0..n_rot / 2 {
                sin_cos.push(theta.sin_cos());
                theta *= theta_scale;
            }
        }
        RopeTable {
            base,
            freq_scale,
            n_rot,
            pos0,
            sin_cos,
        }
    }

    /// `rope(x, pos, …)` with this table's angles; pos must be one the table covers.
    pub fn apply(&self, x: &mut [f32], pos: usize, style: RopeStyle) {
        let half = self.n_rot / 2;
        let sc = &self.sin_cos[(pos - self.pos0) * half..][..half];
        for (i, &(sin, cos)) in sc.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Norm => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * cos - x1 * sin;
            x[b] = x0 * sin + x1 * cos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_norm_and_position_zero_is_identity() {
        let orig: Vec<f32> = (0..64).map(|i| (i as f32 * 0.7).cos()).collect();
        for style in [RopeStyle::Norm, RopeStyle::Neox] {
            let mut x = orig.clone();
            rope(&mut x, 0, 64, 10000.0, 1.0, style);
            assert_eq!(x, orig);
            rope(&mut x, 37, 64, 10000.0, 1.0, style);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
            assert_ne!(x, orig);
        }
    }

    #[test]
    fn table_equals_rope_bit_for_bit() {
        let orig: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        for (n_rot, base, scale) in [(64, 10000.0, 1.0), (128, 1e6, 0.125), (32, 500000.0, 1.0)] {
            let table = RopeTable::new(5, 300, n_rot, base, scale);
            for pos in [5, 6, 77, 304] {
                for style in [RopeStyle::Norm, RopeStyle::Neox] {
                    let (mut a, mut b) = (orig.clone(), orig.clone());
                    rope(&mut a, pos, n_rot, base, scale, style);
                    table.apply(&mut b, pos, style);
                    assert_eq!(a, b, "n_rot {n_rot} pos {pos} {style:?}");
                }
            }
        }
    }

    #[test]
    fn relative_positions_give_equal_dot_products() {
        let q: Vec<f32> = (0..32).map(|i| (i as f32 * 0.3).sin()).collect();
        let k: Vec<f32> = (0..32).map(|i| (i as f32 * 0.5).cos()).collect();
        let dot_at = |pq, pk| {
            let (mut a, mut b) = (q.clone(), k.clone());
            rope(&mut a, pq, 32, 10000.0, 1.0, RopeStyle::Neox);
            rope(&mut b, pk, 32, 10000.0, 1.0, RopeStyle::Neox);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        assert!((dot_at(10, 7) - dot_at(23, 20)).abs() < 1e-3);
    }
}
