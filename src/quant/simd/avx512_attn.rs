//! AVX-512 attention of one query head over the f16 KV cache, in one call: the scores of
//! four positions at a time (four independent FMA chains), and the weighted sum of values
//! kept in zmm registers for the whole pass instead of loaded and stored once per position.
//! Same numerics as `ops::attention::attend_head`'s portable path (q and the probabilities
//! rounded to f16, f64 softmax sum) except the summation order of the dots and of the
//! output, so it equals that path within rounding (tests/simd_avx512.rs).

use core::arch::x86_64::*;

use half::f16;

pub use super::attn_tile::{KeysT, TileScratch};
pub use super::HeadLayout;

use super::attn_tile::{prepare, MAX_HD_K};

/// Whether this CPU has the features the kernels need.
pub fn usable() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
}

/// Whether `attend` handles these head sizes on this CPU.
pub fn supports(hd_k: usize, hd_v: usize) -> bool {
    hd_k.is_multiple_of(16)
        && (16..=MAX_HD_K).contains(&hd_k)
        && matches!(hd_v, 64 | 128 | 256)
        && usable()
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

// ---------------------------------------------------------------------------------------
// Prompt attention: many queries of one KV group at once.
//
// Per (query, head) the kernel above streams the keys and reduces one dot product at a time;
// for a prompt that is ~25% of the time, spent in horizontal sums, f16 conversions and a
// scalar `expf` per score. Here a tile of queries (consecutive positions × the query heads
// of one KV group) is scored against keys transposed once per layer into f32 columns, so 16
// keys' scores come out of 16-lane FMAs with no reduction and every key load serves four
// queries; the softmax is vectorized (exp below); and each value row is converted once and
// used by four queries. Numerics as `attend` (q and probabilities through f16, f64 sum)
// except summation order and the exp's last bit.

/// Attention of a tile of queries of one KV group: query i (row i of `q`, hd_k long)
/// attends to positions `ranges[i].0..=ranges[i].1`; its output goes to row i of `out`
/// (hd_v long). Callers check `supports(hd_k, hd_v)`; every range must lie below the keys'
/// `npos` and within `v_cache` (asserted).
#[allow(clippy::too_many_arguments)]
pub fn attend_tile(
    q: &[f32],
    ranges: &[(usize, usize)],
    kt: &KeysT,
    v_cache: &[f16],
    l: HeadLayout,
    scale: f32,
    scratch: &mut TileScratch,
    out: &mut [f32],
) {
    let hd_k = kt.hd_k;
    let Some((lo, hi, width, hd_v)) = prepare(q, ranges, kt, v_cache.len(), l, out.len(), scratch)
    else {
        return;
    };
    assert!(supports(hd_k, hd_v), "attend_tile: unsupported head sizes");
    let nq = ranges.len();
    let nq4 = nq.next_multiple_of(4);
    let TileScratch { q: qr, scores } = scratch;
    // SAFETY: `supports` checked AVX-512 F, F16C and FMA; lo + width ≤ hi + 32 < npos + 32
    // ≤ stride bounds the key columns; ranges below npos and the value assert bound the
    // value rows; the buffers were sized just above.
    unsafe {
        qk_tile(qr, hd_k, kt, lo, width, scale, scores);
        for (i, &(f, p)) in ranges.iter().enumerate() {
            softmax_row(&mut scores[i * width..(i + 1) * width], f - lo, p - lo);
        }
        // Padded query rows keep weight 0: their outputs are never stored.
        for i in nq..nq4 {
            scores[i * width..(i + 1) * width].fill(0.0);
        }
        pv_tile(scores, width, nq, lo, hi, v_cache, l, hd_v, out);
    }
}

/// scores[i·width + j] = q_i · K[lo + j] · scale for 4-query groups and 32-key blocks.
///
/// # Safety
/// AVX-512 F, FMA; q holds a multiple of 4 rows of hd_k; lo + width ≤ kt.stride; scores
/// holds (q rows) × width.
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn qk_tile(
    q: &[f32],
    hd_k: usize,
    kt: &KeysT,
    lo: usize,
    width: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let kp = kt.data.as_ptr();
    let sv = _mm512_set1_ps(scale);
    for qb in (0..q.len() / hd_k).step_by(4) {
        let qp = q[qb * hd_k..].as_ptr();
        for j in (0..width).step_by(32) {
            let mut acc = [_mm512_setzero_ps(); 8];
            for d in 0..hd_k {
                // SAFETY: d < hd_k rows of stride ≥ lo + width ≥ lo + j + 32; four query rows
                // of hd_k from qb.
                unsafe {
                    let col = kp.add(d * kt.stride + lo + j);
                    let k0 = _mm512_loadu_ps(col);
                    let k1 = _mm512_loadu_ps(col.add(16));
                    for r in 0..4 {
                        let qv = _mm512_set1_ps(*qp.add(r * hd_k + d));
                        acc[2 * r] = _mm512_fmadd_ps(qv, k0, acc[2 * r]);
                        acc[2 * r + 1] = _mm512_fmadd_ps(qv, k1, acc[2 * r + 1]);
                    }
                }
            }
            for r in 0..4 {
                // SAFETY: row qb + r < rows, j + 32 ≤ width.
                unsafe {
                    let dst = scores.as_mut_ptr().add((qb + r) * width + j);
                    _mm512_storeu_ps(dst, _mm512_mul_ps(acc[2 * r], sv));
                    _mm512_storeu_ps(dst.add(16), _mm512_mul_ps(acc[2 * r + 1], sv));
                }
            }
        }
    }
}

/// Softmax over row[a..=b] in place, as `attend` computes it (f64 sum, probabilities
/// rounded through f16); the rest of the row becomes 0.
///
/// # Safety
/// AVX-512 F, F16C; a ≤ b < row.len().
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn softmax_row(row: &mut [f32], a: usize, b: usize) {
    let n = b + 1 - a;
    let s = &mut row[a..=b];
    let mask = |i: usize| -> __mmask16 {
        let left = n - i;
        if left >= 16 {
            0xffff
        } else {
            (1u32 << left) as u16 - 1
        }
    };
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut mv = ninf;
    for i in (0..n).step_by(16) {
        // SAFETY: the mask keeps lanes within s.
        let x = unsafe { _mm512_mask_loadu_ps(ninf, mask(i), s.as_ptr().add(i)) };
        mv = _mm512_max_ps(mv, x);
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    let (mut sum_lo, mut sum_hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    for i in (0..n).step_by(16) {
        let m = mask(i);
        // SAFETY: as above; masked-off lanes load 0 and their exp is not stored.
        unsafe {
            let x = _mm512_maskz_loadu_ps(m, s.as_ptr().add(i));
            let e = _mm512_maskz_mov_ps(m, super::avx512_math::exp(_mm512_sub_ps(x, max)));
            _mm512_mask_storeu_ps(s.as_mut_ptr().add(i), m, e);
            sum_lo = _mm512_add_pd(sum_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1));
            sum_hi = _mm512_add_pd(sum_hi, _mm512_cvtps_pd(hi));
        }
    }
    let inv = _mm512_set1_ps((1.0 / _mm512_reduce_add_pd(_mm512_add_pd(sum_lo, sum_hi))) as f32);
    for i in (0..n).step_by(16) {
        let m = mask(i);
        // SAFETY: as above.
        unsafe {
            let e = _mm512_maskz_loadu_ps(m, s.as_ptr().add(i));
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(e, inv),
            );
            _mm512_mask_storeu_ps(s.as_mut_ptr().add(i), m, _mm512_cvtph_ps(h));
        }
    }
    row[..a].fill(0.0);
    row[b + 1..].fill(0.0);
}

/// out row i = Σ_p w[i][p − lo] · V[p], p in lo..=hi, for 4 queries × 64 output columns at
/// a time (16 accumulators; each value row converted once per 4 queries).
///
/// # Safety
/// AVX-512 F, F16C, FMA; w holds nq.next_multiple_of(4) rows of `width` ≥ hi + 1 − lo;
/// value rows lo..=hi in bounds; hd_v a multiple of 64; out holds nq rows of hd_v.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn pv_tile(
    w: &[f32],
    width: usize,
    nq: usize,
    lo: usize,
    hi: usize,
    v: &[f16],
    l: HeadLayout,
    hd_v: usize,
    out: &mut [f32],
) {
    for c in (0..hd_v).step_by(64) {
        for qb in (0..nq).step_by(4) {
            let mut acc = [_mm512_setzero_ps(); 16];
            for p in lo..=hi {
                // SAFETY: row p in bounds, columns c..c + 64 ≤ hd_v; weight rows qb..qb + 4
                // exist (padded), column p − lo < width.
                unsafe {
                    let r = v.as_ptr().add(p * l.v_stride + l.v_off + c);
                    let mut x = [_mm512_setzero_ps(); 4];
                    for (k, xk) in x.iter_mut().enumerate() {
                        *xk = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(16 * k) as *const __m256i));
                    }
                    for j in 0..4 {
                        let wv = _mm512_set1_ps(*w.as_ptr().add((qb + j) * width + p - lo));
                        for k in 0..4 {
                            acc[4 * j + k] = _mm512_fmadd_ps(wv, x[k], acc[4 * j + k]);
                        }
                    }
                }
            }
            for j in 0..4.min(nq - qb) {
                for k in 0..4 {
                    // SAFETY: row qb + j < nq, columns c + 16k + 16 ≤ hd_v.
                    unsafe {
                        _mm512_storeu_ps(
                            out.as_mut_ptr().add((qb + j) * hd_v + c + 16 * k),
                            acc[4 * j + k],
                        )
                    };
                }
            }
        }
    }
}
