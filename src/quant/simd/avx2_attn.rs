//! AVX2 attention over the f16 KV cache: `avx512_attn` with eight-lane registers, for CPUs
//! without AVX-512. One query head at a time (decode: four key rows per step, four FMA
//! chains; the values' weighted sum held in registers, 64 columns per pass), and tiles of a
//! KV group's queries for prompts (keys transposed once per layer, `attn_tile::KeysT`:
//! 4 queries × 16 keys of scores per step with no horizontal sums, a vectorized softmax, and
//! every value row converted once for 4 queries). Numerics as the portable
//! `ops::attention::attend_head` (q and the probabilities rounded to f16, f64 softmax sum)
//! except summation order and the exp's last bit (tests/simd_avx2_attn.rs).

use core::arch::x86_64::*;

use half::f16;

use super::attn_tile::{prepare, KeysT, TileScratch, MAX_HD_K};
use super::avx2_math::exp;
use super::HeadLayout;

/// Whether this CPU has the features the kernels need.
pub fn usable() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
}

/// Whether the kernels handle these head sizes on this CPU.
pub fn supports(hd_k: usize, hd_v: usize) -> bool {
    hd_k.is_multiple_of(8)
        && (8..=MAX_HD_K).contains(&hd_k)
        && hd_v.is_multiple_of(32)
        && (32..=512).contains(&hd_v)
        && usable()
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Eight f16 → f32.
///
/// # Safety
/// F16C; eight readable f16 at `p`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load8(p: *const f16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
}

/// q (hd_k; rounded through f16 here, as ggml does) against positions first..=pos:
/// softmax(q·Kᵀ·scale)·V into `out` (hd_v). `scores` is scratch. Callers check
/// `supports(q.len(), out.len())` and that the cache holds rows up to `pos` (asserted here).
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
    let mut qr = [0f32; MAX_HD_K];
    for (r, &x) in qr.iter_mut().zip(q) {
        *r = f16::from_f32(x).to_f32();
    }
    // SAFETY: `supports` checked AVX2, F16C and FMA; the asserts above bound every row the
    // kernels read.
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
    for c in (0..hd_v).step_by(64) {
        let o = &mut out[c..(c + 64).min(hd_v)];
        // SAFETY: as above; o is 32 or 64 columns of each value row.
        unsafe {
            if o.len() == 64 {
                pv::<8>(scores, v_cache, l, first, c, o)
            } else {
                pv::<4>(scores, v_cache, l, first, c, o)
            }
        }
    }
}

/// scores[i] = q · K[first + i] · scale.
///
/// # Safety
/// AVX2, F16C, FMA; every key row first..first+scores.len() in bounds; hd a multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn qk(q: &[f32], k: &[f16], l: HeadLayout, scale: f32, first: usize, scores: &mut [f32]) {
    let hd = q.len();
    let kp = k.as_ptr();
    let row = |p: usize| -> *const f16 {
        // SAFETY: the caller bounds the rows.
        unsafe { kp.add(p * l.k_stride + l.k_off) }
    };
    let dot8 = |r: *const f16, c: usize, acc: __m256| -> __m256 {
        // SAFETY: c + 8 ≤ hd, within the row; q has hd elements.
        unsafe { _mm256_fmadd_ps(load8(r.add(c)), _mm256_loadu_ps(q.as_ptr().add(c)), acc) }
    };
    let n = scores.len();
    let mut i = 0;
    while i + 4 <= n {
        let r: [*const f16; 4] = core::array::from_fn(|j| row(first + i + j));
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in (0..hd).step_by(8) {
            for j in 0..4 {
                acc[j] = dot8(r[j], c, acc[j]);
            }
        }
        for j in 0..4 {
            scores[i + j] = hsum(acc[j]) * scale;
        }
        i += 4;
    }
    while i < n {
        let r = row(first + i);
        let mut acc = _mm256_setzero_ps();
        for c in (0..hd).step_by(8) {
            acc = dot8(r, c, acc);
        }
        scores[i] = hsum(acc) * scale;
        i += 1;
    }
}

/// out = Σᵢ w[i] · V[first + i][c .. c + 8·N], in N ymm accumulators.
///
/// # Safety
/// AVX2, F16C, FMA; every value row in bounds up to column c + 8·N; out.len() == 8·N.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pv<const N: usize>(
    w: &[f32],
    v: &[f16],
    l: HeadLayout,
    first: usize,
    c: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), 8 * N);
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, &wi) in w.iter().enumerate() {
        // SAFETY: the caller bounds the rows and columns.
        let r = unsafe { v.as_ptr().add((first + i) * l.v_stride + l.v_off + c) };
        let wv = _mm256_set1_ps(wi);
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            *a = _mm256_fmadd_ps(wv, unsafe { load8(r.add(8 * j)) }, *a);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: out has 8·N elements.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), *a) };
    }
}

/// Attention of a tile of queries of one KV group (see `avx512_attn::attend_tile`): query
/// i (row i of `q`) attends to positions `ranges[i].0..=ranges[i].1`; its output goes to
/// row i of `out`. Callers check `supports(hd_k, hd_v)`; every range must lie below the
/// keys' `npos` and within `v_cache` (asserted).
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
    // SAFETY: `supports` checked AVX2, F16C and FMA; lo + width ≤ hi + 32 < npos + 32 ≤
    // stride bounds the key columns; ranges below npos and `prepare`'s assert bound the
    // value rows; `prepare` sized the buffers.
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

/// scores[i·width + j] = q_i · K[lo + j] · scale for 4-query groups and 16-key blocks.
///
/// # Safety
/// AVX2, FMA; q holds a multiple of 4 rows of hd_k; lo + width ≤ kt.stride; width a
/// multiple of 16; scores holds (q rows) × width.
#[target_feature(enable = "avx2,fma")]
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
    let sv = _mm256_set1_ps(scale);
    for qb in (0..q.len() / hd_k).step_by(4) {
        let qp = q[qb * hd_k..].as_ptr();
        for j in (0..width).step_by(16) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for d in 0..hd_k {
                // SAFETY: d < hd_k rows of stride ≥ lo + width ≥ lo + j + 16; four query rows
                // of hd_k from qb.
                unsafe {
                    let col = kp.add(d * kt.stride + lo + j);
                    let k0 = _mm256_loadu_ps(col);
                    let k1 = _mm256_loadu_ps(col.add(8));
                    for r in 0..4 {
                        let qv = _mm256_broadcast_ss(&*qp.add(r * hd_k + d));
                        acc[2 * r] = _mm256_fmadd_ps(qv, k0, acc[2 * r]);
                        acc[2 * r + 1] = _mm256_fmadd_ps(qv, k1, acc[2 * r + 1]);
                    }
                }
            }
            for r in 0..4 {
                // SAFETY: row qb + r < rows, j + 16 ≤ width.
                unsafe {
                    let dst = scores.as_mut_ptr().add((qb + r) * width + j);
                    _mm256_storeu_ps(dst, _mm256_mul_ps(acc[2 * r], sv));
                    _mm256_storeu_ps(dst.add(8), _mm256_mul_ps(acc[2 * r + 1], sv));
                }
            }
        }
    }
}

/// Softmax over row[a..=b] in place, as `attend` computes it (f64 sum, probabilities
/// rounded through f16); the rest of the row becomes 0.
///
/// # Safety
/// AVX2, F16C, FMA; a ≤ b < row.len().
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_row(row: &mut [f32], a: usize, b: usize) {
    let s = &mut row[a..=b];
    let n = s.len();
    let full = n - n % 8;
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 ≤ full ≤ n.
        mv = _mm256_max_ps(mv, unsafe { _mm256_loadu_ps(s.as_ptr().add(i)) });
    }
    let mut lanes = [0f32; 8];
    // SAFETY: an 8-float array.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mv) };
    let max = lanes
        .iter()
        .chain(&s[full..])
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let maxv = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_pd();
    let add_pd = |sum: __m256d, e: __m256| {
        _mm256_add_pd(
            _mm256_add_pd(sum, _mm256_cvtps_pd(_mm256_castps256_ps128(e))),
            _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)),
        )
    };
    for i in (0..full).step_by(8) {
        // SAFETY: as above.
        unsafe {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(s.as_ptr().add(i)), maxv));
            _mm256_storeu_ps(s.as_mut_ptr().add(i), e);
            sum = add_pd(sum, e);
        }
    }
    // The tail through a padded buffer; its padding lanes are dropped, not summed.
    let tail = n - full;
    let mut tail_sum = 0f64;
    if tail > 0 {
        let mut t = [max; 8];
        t[..tail].copy_from_slice(&s[full..]);
        // SAFETY: an 8-float array.
        unsafe {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(t.as_ptr()), maxv));
            _mm256_storeu_ps(t.as_mut_ptr(), e);
        }
        for (d, &e) in s[full..].iter_mut().zip(&t) {
            *d = e;
            tail_sum += e as f64;
        }
    }
    let mut pd = [0f64; 4];
    // SAFETY: a 4-double array.
    unsafe { _mm256_storeu_pd(pd.as_mut_ptr(), sum) };
    let total = pd.iter().sum::<f64>() + tail_sum;
    let inv = (1.0 / total) as f32;
    let invv = _mm256_set1_ps(inv);
    for i in (0..full).step_by(8) {
        // SAFETY: as above.
        unsafe {
            let e = _mm256_loadu_ps(s.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(e, invv));
            _mm256_storeu_ps(s.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    for v in &mut s[full..] {
        *v = f16::from_f32(*v * inv).to_f32();
    }
    row[..a].fill(0.0);
    row[b + 1..].fill(0.0);
}

/// out row i = Σ_p w[i][p − lo] · V[p], p in lo..=hi, for 4 queries × 16 output columns at
/// a time (8 accumulators; each value row converted once per 4 queries).
///
/// # Safety
/// AVX2, F16C, FMA; w holds nq.next_multiple_of(4) rows of `width` ≥ hi + 1 − lo; value
/// rows lo..=hi in bounds; hd_v a multiple of 16; out holds nq rows of hd_v.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
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
    for c in (0..hd_v).step_by(16) {
        for qb in (0..nq).step_by(4) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for p in lo..=hi {
                // SAFETY: row p in bounds, columns c..c + 16 ≤ hd_v; weight rows qb..qb + 4
                // exist (padded), column p − lo < width.
                unsafe {
                    let r = v.as_ptr().add(p * l.v_stride + l.v_off + c);
                    let x0 = load8(r);
                    let x1 = load8(r.add(8));
                    for j in 0..4 {
                        let wv = _mm256_broadcast_ss(&*w.as_ptr().add((qb + j) * width + p - lo));
                        acc[2 * j] = _mm256_fmadd_ps(wv, x0, acc[2 * j]);
                        acc[2 * j + 1] = _mm256_fmadd_ps(wv, x1, acc[2 * j + 1]);
                    }
                }
            }
            for j in 0..4.min(nq - qb) {
                // SAFETY: row qb + j < nq, columns c + 16 ≤ hd_v.
                unsafe {
                    let o = out.as_mut_ptr().add((qb + j) * hd_v + c);
                    _mm256_storeu_ps(o, acc[2 * j]);
                    _mm256_storeu_ps(o.add(8), acc[2 * j + 1]);
                }
            }
        }
    }
}
