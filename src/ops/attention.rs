//! Scaled dot-product attention over the KV cache, one (query position, head) at a time so
//! the caller can spread heads and positions over threads.

use half::f16;

use crate::quant::simd;

/// Shapes of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv: usize,
    pub hd_k: usize,
    pub hd_v: usize,
    pub scale: f32,
}

/// Attention of query head `h` at position `pos` against cached positions `first..=pos`.
///
/// q (hd_k) · K (positions, n_kv, hd_k)ᵀ[kv head] · scale → softmax → · V (positions, n_kv,
/// hd_v)[kv head] → out (hd_v). Head h reads KV head h / (n_head / n_kv) (grouped-query
/// attention). As in ggml, q is rounded to f16 before the dot with the f16 keys, the softmax
/// sum is f64, and the probabilities are rounded to f16 before the product with the f16
/// values. `q16` and `scores` are scratch space.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    s: AttnShape,
    h: usize,
    first: usize,
    pos: usize,
    q16: &mut Vec<f16>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let ks = simd::kernels();
    let g = h / (s.n_head / s.n_kv);
    let (kw, vw) = (s.n_kv * s.hd_k, s.n_kv * s.hd_v);
    #[cfg(target_arch = "x86_64")]
    if fast_path(s.hd_k, s.hd_v) {
        use simd::avx512_attn::{attend, HeadLayout};
        let l = HeadLayout {
            k_stride: kw,
            k_off: g * s.hd_k,
            v_stride: vw,
            v_off: g * s.hd_v,
        };
        attend(q, k_cache, v_cache, l, s.scale, first, pos, scores, out);
        return;
    }
    q16.clear();
    q16.extend(q.iter().map(|&x| f16::from_f32(x)));
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for p in first..=pos {
        let kr = &k_cache[p * kw + g * s.hd_k..p * kw + (g + 1) * s.hd_k];
        let v = (ks.f16)(kr, q16) * s.scale;
        max = max.max(v);
        scores.push(v);
    }
    let mut sum = 0f64;
    for v in scores.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    out.fill(0.0);
    for (i, &p_un) in scores.iter().enumerate() {
        let p = first + i;
        let w = f16::from_f32(p_un * inv).to_f32();
        let vr = &v_cache[p * vw + g * s.hd_v..p * vw + (g + 1) * s.hd_v];
        (ks.axpy_f16)(out, w, vr);
    }
}

/// Whether the AVX-512 attention kernel runs: the AVX-512 kernel set is in use (so
/// `LEDGE_SIMD=avx2|scalar` keep the portable path) and it handles the head sizes.
#[cfg(target_arch = "x86_64")]
fn fast_path(hd_k: usize, hd_v: usize) -> bool {
    use std::sync::OnceLock;
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| simd::kernels().name == "avx512")
        && simd::avx512_attn::supports(hd_k, hd_v)
}
