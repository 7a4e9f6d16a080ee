//! AdamW with a linear warm-up and cosine decay, and clipping by the global gradient norm.

use std::ops::Range;

/// Optimizer settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Gradients with a larger global L2 norm are scaled down to it (0: no clipping).
    pub clip: f32,
    pub warmup: usize,
    pub total: usize,
    /// The cosine decays to this fraction of `lr`.
    pub min_lr_frac: f32,
}

/// AdamW's moments and step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: usize,
}

impl AdamWConfig {
    /// The learning rate of step `step` (0-based): linear warm-up from lr/warmup, then a cosine
    /// from lr down to min_lr_frac·lr at `total`.
    pub fn lr_at(&self, step: usize) -> f32 {
        if step < self.warmup {
            return self.lr * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let t = ((step - self.warmup) as f32 / span as f32).min(1.0);
        let floor = self.lr * self.min_lr_frac;
        floor + (self.lr - floor) * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
    }
}

impl AdamW {
    pub fn new(n: usize) -> AdamW {
        AdamW {
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        }
    }

    /// One update of `params` from `grads` (clipped in place first); weight decay only on the
    /// `decay` ranges. Returns the gradient norm before clipping.
    pub fn update(
        &mut self,
        cfg: &AdamWConfig,
        params: &mut [f32],
        grads: &mut [f32],
        decay: &[Range<usize>],
    ) -> f32 {
        let norm = grads
            .iter()
            .map(|&g| g as f64 * g as f64)
            .sum::<f64>()
            .sqrt() as f32;
        if cfg.clip > 0.0 && norm > cfg.clip {
            let s = cfg.clip / norm;
            grads.iter_mut().for_each(|g| *g *= s);
        }
        let lr = cfg.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - cfg.beta1.powi(t), 1.0 - cfg.beta2.powi(t));
        let mut decayed = vec![false; params.len()];
        for r in decay {
            decayed[r.clone()].iter_mut().for_each(|d| *d = true);
        }
        for i in 0..params.len() {
            let g = grads[i];
            self.m[i] = cfg.beta1 * self.m[i] + (1.0 - cfg.beta1) * g;
            self.v[i] = cfg.beta2 * self.v[i] + (1.0 - cfg.beta2) * g * g;
            let mh = self.m[i] / c1;
            let vh = self.v[i] / c2;
            if decayed[i] {
                params[i] -= lr * cfg.weight_decay * params[i];
            }
            params[i] -= lr * mh / (vh.sqrt() + cfg.eps);
        }
        norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdamWConfig {
        AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip: 0.0,
            warmup: 10,
            total: 110,
            min_lr_frac: 0.1,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = cfg();
        assert!((c.lr_at(0) - 0.01).abs() < 1e-7);
        assert!((c.lr_at(9) - 0.1).abs() < 1e-7);
        assert!((c.lr_at(10) - 0.1).abs() < 1e-7);
        assert!((c.lr_at(60) - 0.055).abs() < 1e-6, "{}", c.lr_at(60));
        assert!((c.lr_at(110) - 0.01).abs() < 1e-7);
        assert!((c.lr_at(500) - 0.01).abs() < 1e-7);
    }

    /// The first step moves each parameter by lr against its gradient's sign (Adam's
    /// normalisation), a quadratic's minimum is reached, clipping reports the raw norm, and
    /// decay shrinks only the decayed range.
    #[test]
    fn adamw_steps_minimise_and_decay_where_asked() {
        let mut c = cfg();
        c.warmup = 1;
        let mut p = vec![1.0f32, -2.0];
        let mut opt = AdamW::new(2);
        let mut g = vec![2.0 * p[0], 2.0 * p[1]];
        opt.update(&c, &mut p, &mut g, &[]);
        assert!(
            (p[0] - 0.9).abs() < 1e-5 && (p[1] + 1.9).abs() < 1e-5,
            "{p:?}"
        );
        for _ in 0..400 {
            let mut g = vec![2.0 * p[0], 2.0 * p[1]];
            opt.update(&c, &mut p, &mut g, &[]);
        }
        assert!(p[0].abs() < 0.05 && p[1].abs() < 0.05, "{p:?}");
        c.clip = 1.0;
        c.weight_decay = 0.5;
        let mut q = vec![1.0f32, 1.0];
        let mut opt = AdamW::new(2);
        let mut g = vec![0.0, 0.0];
        let first_only = std::iter::once(0..1).collect::<Vec<_>>();
        opt.update(&c, &mut q, &mut g, &first_only);
        assert!(q[0] < 1.0 && q[1] == 1.0, "{q:?}");
        let mut g = vec![3.0, 4.0];
        assert_eq!(opt.update(&c, &mut q, &mut g, &[]), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
    }
}
