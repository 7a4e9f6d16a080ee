/// How RoPE pairs dimensions: NORM rotates adjacent pairs (llama: the converter permuted
/// Q/K for it), NEOX rotates dimension i with i + n_rot/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    Norm,
    Neox,
}

/// How one layer's rotation angles are made, as ggml's `rope_ext` makes them: for pair i at
/// position p, θ = p·base^(-2i/n_rot) divided by the pair's frequency factor (Llama 3's
/// `rope_freqs`, LongRoPE's short/long set), then scaled by `freq_scale` (linear scaling,
/// YaRN's interpolation), mixed with the unscaled angle on YaRN's ramp; sin and cos are
/// multiplied by `attn_factor` (LongRoPE's and YaRN's magnitude correction).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams<'f> {
    pub n_rot: usize,
    pub base: f32,
    pub freq_scale: f32,
    pub factors: Option<&'f [f32]>,
    pub attn_factor: f32,
    pub yarn: Option<Yarn>,
}

/// YaRN's extrapolation mix: pairs below `corr_dims[0]` keep the unscaled angle, pairs above
/// `corr_dims[1]` the interpolated one, a linear ramp between.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub ext_factor: f32,
    pub corr_dims: [f32; 2],
}

impl Yarn {
    /// ggml's `ggml_rope_yarn_corr_dims`: the pair indices where the rotation period crosses
    /// `n_ctx_orig` / beta_fast and / beta_slow turns.
    pub fn new(n_rot: usize, n_ctx_orig: usize, base: f32, beta_fast: f32, beta_slow: f32) -> Yarn {
        let dim = |beta: f32| {
            n_rot as f32 * (n_ctx_orig as f32 / (beta * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        Yarn {
            ext_factor: 1.0,
            corr_dims: [
                dim(beta_fast).floor().max(0.0),
                dim(beta_slow).ceil().min(n_rot as f32 - 1.0),
            ],
        }
    }
}

impl RopeParams<'_> {
    /// Plain RoPE: no factors, no scaling.
    pub fn plain(n_rot: usize, base: f32) -> RopeParams<'static> {
        RopeParams {
            n_rot,
            base,
            freq_scale: 1.0,
            factors: None,
            attn_factor: 1.0,
            yarn: None,
        }
    }

    /// (sin, cos) of every pair at position `pos`, appended to `out`.
    fn sin_cos(&self, pos: usize, out: &mut Vec<(f32, f32)>) {
        let theta_scale = self.base.powf(-2.0 / self.n_rot as f32);
        let mut mscale = self.attn_factor;
        if let Some(y) = self.yarn {
            if y.ext_factor != 0.0 {
                mscale *= 1.0 + 0.1 * (1.0 / self.freq_scale).ln();
            }
        }
        let mut theta = pos as f32;
        for i in 0..self.n_rot / 2 {
            let ff = self.factors.map_or(1.0, |f| f[i]);
            let extrap = theta / ff;
            let interp = self.freq_scale * extrap;
            let angle = match self.yarn {
                Some(y) if y.ext_factor != 0.0 => {
                    let [lo, hi] = y.corr_dims;
                    let ramp = 1.0 - ((i as f32 - lo) / (hi - lo).max(0.001)).clamp(0.0, 1.0);
                    let mix = ramp * y.ext_factor;
                    interp * (1.0 - mix) + extrap * mix
                }
                _ => interp,
            };
            let (sin, cos) = angle.sin_cos();
            out.push((sin * mscale, cos * mscale));
            theta *= theta_scale;
        }
    }
}

/// Rotary position embedding of one head vector `x` (head_dim long; the first `n_rot`
/// dimensions rotate) at position `pos`: the reference the table must equal.
pub fn rope(x: &mut [f32], pos: usize, p: &RopeParams, style: RopeStyle) {
    let mut sc = Vec::with_capacity(p.n_rot / 2);
    p.sin_cos(pos, &mut sc);
    rotate(x, &sc, style);
}

fn rotate(x: &mut [f32], sc: &[(f32, f32)], style: RopeStyle) {
    let half = sc.len();
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

/// The (sin, cos) pairs of `rope` for positions pos0..pos0+n, computed once per forward
/// pass instead of once per head and layer (the same f32 steps as `rope`, so the same bits).
pub struct RopeTable<'f> {
    pub params: RopeParams<'f>,
    pos0: usize,
    sin_cos: Vec<(f32, f32)>,
}

impl<'f> RopeTable<'f> {
    pub fn new(pos0: usize, n: usize, params: RopeParams<'f>) -> RopeTable<'f> {
        let mut sin_cos = Vec::with_capacity(n * (params.n_rot / 2));
        for pos in pos0..pos0 + n {
            params.sin_cos(pos, &mut sin_cos);
        }
        RopeTable {
            params,
            pos0,
            sin_cos,
        }
    }

    /// `rope(x, pos, …)` with this table's angles; pos must be one the table covers.
    pub fn apply(&self, x: &mut [f32], pos: usize, style: RopeStyle) {
        let half = self.params.n_rot / 2;
        rotate(x, &self.sin_cos[(pos - self.pos0) * half..][..half], style);
    }

    /// The transpose of `apply` (the rotation by the opposite angle, at the same magnitude):
    /// the backward of RoPE for training.
    pub fn apply_transposed(&self, x: &mut [f32], pos: usize, style: RopeStyle) {
        let half = self.params.n_rot / 2;
        let sc: Vec<(f32, f32)> = self.sin_cos[(pos - self.pos0) * half..][..half]
            .iter()
            .map(|&(s, c)| (-s, c))
            .collect();
        rotate(x, &sc, style);
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
            let p = RopeParams::plain(64, 10000.0);
            rope(&mut x, 0, &p, style);
            assert_eq!(x, orig);
            rope(&mut x, 37, &p, style);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
            assert_ne!(x, orig);
        }
    }

    #[test]
    fn table_equals_rope_bit_for_bit() {
        let orig: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let factors: Vec<f32> = (0..64).map(|i| 1.0 + 7.0 * i as f32 / 63.0).collect();
        let cases = [
            RopeParams::plain(64, 10000.0),
            RopeParams {
                freq_scale: 0.125,
                ..RopeParams::plain(128, 1e6)
            },
            RopeParams {
                factors: Some(&factors[..16]),
                ..RopeParams::plain(32, 500000.0)
            },
            RopeParams {
                factors: Some(&factors),
                attn_factor: 1.118,
                ..RopeParams::plain(128, 10000.0)
            },
            RopeParams {
                freq_scale: 0.25,
                yarn: Some(Yarn::new(128, 4096, 1e6, 32.0, 1.0)),
                ..RopeParams::plain(128, 1e6)
            },
        ];
        for p in cases {
            let n_rot = p.n_rot;
            let table = RopeTable::new(5, 300, p);
            for pos in [5, 6, 77, 304] {
                for style in [RopeStyle::Norm, RopeStyle::Neox] {
                    let (mut a, mut b) = (orig.clone(), orig.clone());
                    rope(&mut a, pos, &p, style);
                    table.apply(&mut b, pos, style);
                    assert_eq!(a, b, "n_rot {n_rot} pos {pos} {style:?}");
                }
            }
        }
    }

    /// The angles, recomputed in f64 from the formulas (llama3/LongRoPE factors divide θ,
    /// linear scaling multiplies it, YaRN keeps low pairs unscaled and ramps to the scaled
    /// high pairs, and magnifies by 1 + 0.1·ln(1/scale)); f32 accumulation over 64 pairs at
    /// position 300 leaves ~1e-4 rad.
    #[test]
    fn angles_match_the_formulas_in_f64() {
        let factors: Vec<f32> = (0..64).map(|i| 1.0 + 7.0 * i as f32 / 63.0).collect();
        let yarn = Yarn::new(128, 4096, 1e6, 32.0, 1.0);
        assert!(
            yarn.corr_dims[0] > 5.0 && yarn.corr_dims[1] < 60.0,
            "{yarn:?}"
        );
        let cases = [
            RopeParams {
                factors: Some(&factors),
                attn_factor: 1.118,
                ..RopeParams::plain(128, 10000.0)
            },
            RopeParams {
                freq_scale: 0.25,
                ..RopeParams::plain(128, 500000.0)
            },
            RopeParams {
                freq_scale: 0.25,
                yarn: Some(yarn),
                ..RopeParams::plain(128, 1e6)
            },
        ];
        for p in cases {
            for pos in [1usize, 17, 300] {
                let mut got = Vec::new();
                p.sin_cos(pos, &mut got);
                for (i, &(sin, cos)) in got.iter().enumerate() {
                    let theta = pos as f64 * (p.base as f64).powf(-2.0 * i as f64 / 128.0)
                        / p.factors.map_or(1.0, |f| f[i] as f64);
                    let s = p.freq_scale as f64;
                    let (angle, mag) = match p.yarn {
                        Some(y) => {
                            let [lo, hi] = y.corr_dims.map(|v| v as f64);
                            let ramp = 1.0 - ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                            let a = s * theta * (1.0 - ramp) + theta * ramp;
                            (a, 1.0 + 0.1 * (1.0 / s).ln())
                        }
                        None => (s * theta, p.attn_factor as f64),
                    };
                    let tol = 2e-4 * (1.0 + angle.abs() / 100.0);
                    assert!(
                        (sin as f64 - mag * angle.sin()).abs() < tol
                            && (cos as f64 - mag * angle.cos()).abs() < tol,
                        "{p:?} pos {pos} pair {i}: ({sin}, {cos}) vs angle {angle} × {mag}"
                    );
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
            let p = RopeParams::plain(32, 10000.0);
            rope(&mut a, pq, &p, RopeStyle::Neox);
            rope(&mut b, pk, &p, RopeStyle::Neox);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        assert!((dot_at(10, 7) - dot_at(23, 20)).abs() < 1e-3);
    }
}
