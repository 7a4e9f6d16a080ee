//! Attention-head pruning by whole KV groups (`--prune-heads N`), the part of pruning
//! that knows the attention layout.
//!
//! With GQA, KV head g serves the r = n_head / n_head_kv query heads g·r … g·r + r − 1 (in
//! llama.cpp, HF's `repeat_kv` and ledge's `attend_head` alike). Removing a query head alone
//! would break that mapping, so the unit removed is the group: KV head g (its attn_k and
//! attn_v rows), its r query heads (attn_q rows) and the matching r·hd_v columns of
//! attn_output. Every other head computes exactly what it did: softmax is per head and the
//! heads only meet in attn_output, so the pruned layer equals the unpruned one with the
//! group's attn_output columns zeroed. RoPE (and llama.cpp's Q/K row permutation for it) is
//! per head, and Gemma's q_norm/k_norm weights are per head dimension (length hd_k, shared
//! by all heads), so neither changes.
//!
//! **Score.** Group g adds W_o[:, C_g]·a_C_g to the residual stream (a = the attn_output
//! input, C_g the group's columns). Its expected energy over the calibration tokens follows
//! from the Gram G = Σ_t a_t a_tᵀ exactly:
//!
//! ```text
//! score(g)² = Σ_t ‖W_o[:, C_g] a_t[C_g]‖² / T = Σ_e W_o[e, C_g] · G[C_g, C_g] · W_o[e, C_g]ᵀ / T
//! ```
//!
//! the group form of the FFN channels' ‖W‖·rms(h) (which is this with G diagonal). The N
//! lowest-scoring groups of every block go. With a re-fit, attn_output is then re-solved on
//! the kept columns by the same ridge least squares as ffn_down (`prune::refit_down`).

use rayon::prelude::*;

/// Scores of the `n_kv` groups of one layer; `wo` is n_embd rows of `n_cols` (= n_head·hd_v)
/// values, `gram` the full n_cols × n_cols Gram of its input over `tokens` positions.
pub fn group_scores(
    wo: &[f32],
    n_cols: usize,
    gram: &[f64],
    tokens: usize,
    n_kv: usize,
) -> Vec<f64> {
    let width = n_cols / n_kv;
    (0..n_kv)
        .map(|g| {
            let c0 = g * width;
            let energy: f64 = wo
                .par_chunks_exact(n_cols)
                .map(|row| {
                    let w = &row[c0..c0 + width];
                    let mut e = 0f64;
                    for (i, &wi) in w.iter().enumerate() {
                        let gi = &gram[(c0 + i) * n_cols + c0..(c0 + i) * n_cols + c0 + width];
                        let s: f64 = gi.iter().zip(w).map(|(&a, &b)| a * b as f64).sum();
                        e += wi as f64 * s;
                    }
                    e
                })
                .sum();
            (energy.max(0.0) / tokens.max(1) as f64).sqrt()
        })
        .collect()
}

/// The `n` lowest-scoring groups, sorted (ties go to the lower index).
pub fn weakest_groups(scores: &[f64], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut out = order[..n.min(scores.len())].to_vec();
    out.sort_unstable();
    out
}

/// Indices kept of `n_groups` consecutive runs of `width` (rows of attn_q / attn_k / attn_v,
/// columns of attn_output) when the groups in `removed` go.
pub fn kept_indices(removed: &[usize], n_groups: usize, width: usize) -> Vec<usize> {
    (0..n_groups)
        .filter(|g| !removed.contains(g))
        .flat_map(|g| g * width..(g + 1) * width)
        .collect()
}

/// The rows `rows` (of `row_len` values each) of a row-major matrix.
pub fn select_rows(v: &[f32], row_len: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| v[r * row_len..(r + 1) * row_len].iter().copied())
        .collect()
}

/// The columns `cols` of each row (of `row_len` values) of a row-major matrix.
pub fn select_cols(v: &[f32], row_len: usize, cols: &[usize]) -> Vec<f32> {
    v.chunks_exact(row_len)
        .flat_map(|r| cols.iter().map(move |&c| r[c]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_direct_energy() {
        // 2 groups of 2 columns, 3 output rows, 4 positions.
        let (n_cols, n_kv) = (4, 2);
        let wo = [
            1.0f32, -2.0, 0.5, 0.0, 0.3, 0.1, -1.0, 2.0, 0.0, 1.0, 1.0, 1.0,
        ];
        let a = [
            [1.0f32, 0.0, 2.0, -1.0],
            [0.5, 1.5, 0.0, 1.0],
            [-1.0, 2.0, 1.0, 0.0],
            [0.0, 0.0, -2.0, 3.0],
        ];
        let mut gram = vec![0f64; 16];
        for t in &a {
            for i in 0..4 {
                for j in 0..4 {
                    gram[i * 4 + j] += t[i] as f64 * t[j] as f64;
                }
            }
        }
        let s = group_scores(&wo, n_cols, &gram, a.len(), n_kv);
        for (g, &sg) in s.iter().enumerate().take(2) {
            let mut e = 0f64;
            for t in &a {
                for row in wo.chunks_exact(4) {
                    let y: f64 = (2 * g..2 * g + 2).map(|c| (row[c] * t[c]) as f64).sum();
                    e += y * y;
                }
            }
            assert!((sg - (e / 4.0).sqrt()).abs() < 1e-9, "{g}: {sg} vs {e}");
        }
        assert_eq!(weakest_groups(&[3.0, 1.0, 2.0], 2), [1, 2]);
        assert_eq!(kept_indices(&[1], 3, 2), [0, 1, 4, 5]);
        assert_eq!(
            select_cols(&wo, 4, &[1, 3]),
            [-2.0, 0.0, 0.1, 2.0, 1.0, 1.0]
        );
        assert_eq!(select_rows(&wo, 4, &[2]), [0.0, 1.0, 1.0, 1.0]);
    }
}
