//! Scaled dot-product attention over the KV cache, for one query position.

use half::f16;

/// Attention of one query position `pos` (all heads) against cached positions `first..=pos`.
///
/// q (n_head, hd_k) · K (positions, n_kv, hd_k)ᵀ · scale → softmax → · V (positions, n_kv, hd_v)
/// → out (n_head, hd_v). Head h reads KV head h / (n_head / n_kv) (grouped-query attention).
/// As in ggml, q is rounded to f16 before the dot with the f16 keys, the softmax sum is f64,
/// and the probabilities are rounded to f16 before the product with the f16 values.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    n_head: usize,
    n_kv: usize,
    hd_k: usize,
    hd_v: usize,
    first: usize,
    pos: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let group = n_head / n_kv;
    let (kw, vw) = (n_kv * hd_k, n_kv * hd_v);
    let n = pos + 1 - first;
    for h in 0..n_head {
        let g = h / group;
        let qh: Vec<f32> = q[h * hd_k..(h + 1) * hd_k]
            .iter()
            .map(|&x| f16::from_f32(x).to_f32())
            .collect();
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in first..=pos {
            let kr = &k_cache[p * kw + g * hd_k..p * kw + (g + 1) * hd_k];
            let s: f32 = qh
                .iter()
                .zip(kr)
                .map(|(&a, &b)| a * b.to_f32())
                .sum::<f32>()
                * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0f64;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s as f64;
        }
        let inv = (1.0 / sum) as f32;
        let oh = &mut out[h * hd_v..(h + 1) * hd_v];
        oh.fill(0.0);
        for (i, &s) in scores.iter().enumerate().take(n) {
            let p = first + i;
            // ggml multiplies V (f16) by the probabilities converted to f16.
            let w = f16::from_f32(s * inv).to_f32();
            let vr = &v_cache[p * vw + g * hd_v..p * vw + (g + 1) * hd_v];
            for (o, &vv) in oh.iter_mut().zip(vr) {
                *o += w * vv.to_f32();
            }
        }
    }
}
