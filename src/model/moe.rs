//! Mixture-of-experts routing (Qwen3-MoE): which experts each token uses, with what weight,
//! and the tokens grouped per expert so a prompt streams each chosen expert's rows once.

/// The router's choice for `n` tokens: `logits` (n, n_expert) → per token the `k` experts of
/// highest softmax probability, best first, with their probabilities renormalised to sum to
/// one (llama.cpp's `build_moe_ffn` with softmax gating and weight normalisation; the sum is
/// clamped to f16's smallest normal as there).
pub struct Routes {
    pub k: usize,
    /// (n, k): expert ids.
    pub experts: Vec<usize>,
    /// (n, k): their weights.
    pub weights: Vec<f32>,
}

pub fn route(logits: &[f32], n_expert: usize, k: usize) -> Routes {
    let n = logits.len() / n_expert;
    let mut experts = Vec::with_capacity(n * k);
    let mut weights = Vec::with_capacity(n * k);
    let mut probs = vec![0f32; n_expert];
    let mut order: Vec<usize> = Vec::with_capacity(n_expert);
    for row in logits.chunks_exact(n_expert) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f64;
        for (p, &l) in probs.iter_mut().zip(row) {
            *p = (l - max).exp();
            sum += *p as f64;
        }
        let inv = (1.0 / sum) as f32;
        probs.iter_mut().for_each(|p| *p *= inv);
        order.clear();
        order.extend(0..n_expert);
        // Descending probability; equal ones by index, so the choice is deterministic.
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let chosen = &order[..k];
        let total: f32 = chosen
            .iter()
            .map(|&e| probs[e])
            .sum::<f32>()
            .max(6.103_515_6e-5);
        for &e in chosen {
            experts.push(e);
            weights.push(probs[e] / total);
        }
    }
    Routes {
        k,
        experts,
        weights,
    }
}

impl Routes {
    /// For each expert, the (token, slot) pairs routed to it, in token order.
    pub fn by_expert(&self, n_expert: usize) -> Vec<Vec<(usize, usize)>> {
        let mut groups = vec![Vec::new(); n_expert];
        for (i, &e) in self.experts.iter().enumerate() {
            groups[e].push((i / self.k, i % self.k));
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_top_k_and_renormalises() {
        // Two tokens, four experts.
        let logits = [0.1, 2.0, -1.0, 1.5, /* */ 3.0, 3.0, 0.0, -2.0];
        let r = route(&logits, 4, 2);
        assert_eq!(r.experts, vec![1, 3, 0, 1]);
        let e = |x: f32| x.exp();
        let w0 = e(2.0) / (e(2.0) + e(1.5));
        assert!((r.weights[0] - w0).abs() < 1e-6 && (r.weights[1] - (1.0 - w0)).abs() < 1e-6);
        assert!((r.weights[2] - 0.5).abs() < 1e-6 && (r.weights[3] - 0.5).abs() < 1e-6);
        let g = r.by_expert(4);
        assert_eq!(g[0], vec![(1, 0)]);
        assert_eq!(g[1], vec![(0, 0), (1, 1)]);
        assert!(g[2].is_empty());
        assert_eq!(g[3], vec![(0, 1)]);
    }
}
