//! AVX-512 attention of one query head over the f16 KV cache, in one call: the scores of
//! four positions at a time (four independent FMA chains), and the weighted sum of values
//! kept in zmm registers for the whole pass instead of loaded and stored once per position.
//! Same numerics as `ops::attention::attend_head`'s portable path (q and the probabilities
//! rounded to f16, f64 softmax sum) except the summation order of the dots and of the
//! output, so it equals that path within rounding (tests/simd_repack.rs).

use core::arch::x86_64::*;

use half::f16;

/// Where one head's keys and values are in the cache: row `p` of the keys starts at
/// `p·k_stride + k_off`, of the values at `p·v_stride + v_off`.
#[derive(Clone, Copy, Debug)]
pub struct HeadLayout {
    pub k_stride: usize,
    pub k_off: usize,
    pub v_stride: usize,
    pub v_off: usize,
}

/// The largest key head size handled (q is rounded into a stack buffer of this size).
const MAX_HD_K: usize = 512;

/// Whether `attend` handles these head sizes on this CPU.
pub fn supports(hd_k: usize, hd_v: usize) -> bool {
    hd_k.is_multiple_of(16)
        && (16..=MAX_HD_K).contains(&hd_k)
        && matches!(hd_v, 64 | 128 | 256)
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
}

/// q (hd_k; rounded through f16 here, as ggml does) against positions first..=pos: softmax(q·Kᵀ·scale)·V
/// into `out` (hd_v). `scores` is scratch. Callers check `supports(q.len(), out.len())` and
/// that the cache holds rows up to `pos` (asserted here).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    l: HeadLayout,
    scale: f32,
    first: usize,
    pos: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd_k, hd_v) = (q.len(), out.len());
    assert!(supports(hd_k, hd_v), "attend: unsupported head sizes");
    assert!(first <= pos);
    assert!(
        pos * l.k_stride + l.k_off + hd_k <= k_cache.len(),
        "attend: keys too short"
    );
    assert!(
        pos * l.v_stride + l.v_off + hd_v <= v_cache.len(),
        "attend: values too short"
    );
    scores.clear();
    scores.resize(pos + 1 - first, 0.0);
    // SAFETY: `supports` checked AVX-512 F, F16C and FMA; the asserts above bound every row
    // the kernels read.
    let mut qr = [0f32; MAX_HD_K];
    for (r, &x) in qr.iter_mut().zip(q) {
        *r = f16::from_f32(x).to_f32();
    }
    unsafe { qk(&qr[..hd_k], k_cache, l, scale, first, scores) };
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f64;
    for v in scores.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in scores.iter_mut() {
        *v = f16::from_f32(*v * inv).to_f32();
    }
    // SAFETY: as above.
    unsafe {
        match hd_v {
            64 => pv::<4>(scores, v_cache, l, first, out),
            128 => pv::<8>(scores, v_cache, l, first, out),
            _ => pv::<16>(scores, v_cache, l, first, out),
        }
    }
}

/// scores[i] = q · K[first + i] · scale.
///
/// # Safety
/// AVX-512 F, F16C, FMA; every key row first..first+scores.len() in bounds.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn qk(q: &[f32], k: &[f16], l: HeadLayout, scale: f32, first: usize, scores: &mut [f32]) {
    let hd = q.len();
    let kp = k.as_ptr();
    let row = |p: usize| -> *const f16 {
        // SAFETY: the caller bounds the rows.
        unsafe { kp.add(p * l.k_stride + l.k_off) }
    };
    let dot16 = |r: *const f16, c: usize, acc: __m512| -> __m512 {
        // SAFETY: c + 16 ≤ hd, within the row; q has hd elements.
        unsafe {
            let kv = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(c) as *const __m256i));
            _mm512_fmadd_ps(kv, _mm512_loadu_ps(q.as_ptr().add(c)), acc)
        }
    };
    let n = scores.len();
    let mut i = 0;
    while i + 4 <= n {
        let r = [
            row(first + i),
            row(first + i + 1),
            row(first + i + 2),
            row(first + i + 3),
        ];
        let mut acc = [_mm512_setzero_ps(); 4];
        for c in (0..hd).step_by(16) {
            for j in 0..4 {
                acc[j] = dot16(r[j], c, acc[j]);
            }
        }
        for j in 0..4 {
            scores[i + j] = _mm512_reduce_add_ps(acc[j]) * scale;
        }
        i += 4;
    }
    while i < n {
        let r = row(first + i);
        let mut acc = _mm512_setzero_ps();
        for c in (0..hd).step_by(16) {
            acc = dot16(r, c, acc);
        }
        scores[i] = _mm512_reduce_add_ps(acc) * scale;
        i += 1;
    }
}

/// out = Σᵢ w[i] · V[first + i], with hd_v = 16·N held in N zmm accumulators.
///
/// # Safety
/// AVX-512 F, F16C, FMA; every value row in bounds; out.len() == 16·N.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn pv<const N: usize>(w: &[f32], v: &[f16], l: HeadLayout, first: usize, out: &mut [f32]) {
    debug_assert_eq!(out.len(), 16 * N);
    let mut acc = [_mm512_setzero_ps(); N];
    for (i, &wi) in w.iter().enumerate() {
        // SAFETY: the caller bounds the rows; each row has 16·N values.
        let r = unsafe { v.as_ptr().add((first + i) * l.v_stride + l.v_off) };
        let wv = _mm512_set1_ps(wi);
        for (c, a) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let x = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(r.add(16 * c) as *const __m256i)) };
            *a = _mm512_fmadd_ps(wv, x, *a);
        }
    }
    for (c, a) in acc.iter().enumerate() {
        // SAFETY: out has 16·N elements.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), *a) };
    }
}
