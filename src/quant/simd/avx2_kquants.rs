//! AVX2 (+FMA, F16C) kernels for the 256-weight formats: the K-quant and IQ4_XS dot products
//! against Q8_K, and the Q8_K activation quantizer. Each is tested against the scalar
//! reference in tests/simd_kquants.rs.
//!
//! The approach is ggml's x86 one (ggml-cpu/arch/x86/quants.c), rewritten: unsigned weight
//! levels meet signed activations in `vpmaddubsw`, the sub-block scales are applied with
//! `vpmaddwd`, and each super-block's integer sum is converted to f32 once. The integer sums
//! are exact, so results differ from the scalar reference only in f32 rounding order.
//!
//! Safety model: the `unsafe fn`s below require AVX2, FMA and F16C. The safe wrappers are
//! only installed in the AVX2 kernel set, which `simd::available()` offers only after
//! `is_x86_feature_detected!` has confirmed all three (`available()` here does the same
//! check, and the wrappers `debug_assert!` it). That is the unsafe fns' only precondition:
//! every vector load or store in them is of a fixed-size array (or a slice-checked one, via
//! the `load_*` helpers) of exactly the vector's width, so they stay inside their arguments.
//!
//! Invariant relied on (as ggml's AVX2 code does): a `BlockQ8K` is what the Q8_K quantizer
//! makes, so its quants are in -127..=127 (never -128) and `bsums` are the sums of `qs`.

use std::arch::x86_64::*;

use bytemuck::Zeroable;
use half::f16;

use crate::quant::iq4::KVALUES_IQ4NL;
use crate::quant::{BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};

/// True if this CPU can run the kernels of this file.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

macro_rules! safe_wrapper {
    ($(#[$doc:meta])* $name:ident => $imp:ident($w:ty, $a:ty) -> $ret:ty) => {
        $(#[$doc])*
        pub fn $name(w: $w, a: $a) -> $ret {
            // A public safe function must not run AVX2 on a CPU without it: the check is a
            // cached atomic load, cheap beside a row's dot product.
            assert!(available(), "AVX2 kernel called on a CPU without AVX2/FMA/F16C");
            // SAFETY: `available()` just confirmed avx2, fma and f16c; the implementation
            // reads only inside the blocks it is given.
            unsafe { $imp(w, a) }
        }
    };
}

safe_wrapper!(
    /// Σ w·a over one row of Q2_K weights and Q8_K activations.
    vec_dot_q2k_q8k => q2k(&[BlockQ2K], &[BlockQ8K]) -> f32
);
safe_wrapper!(
    /// Σ w·a over one row of Q3_K weights and Q8_K activations.
    vec_dot_q3k_q8k => q3k(&[BlockQ3K], &[BlockQ8K]) -> f32
);
safe_wrapper!(
    /// Σ w·a over one row of Q4_K weights and Q8_K activations.
    vec_dot_q4k_q8k => q4k(&[BlockQ4K], &[BlockQ8K]) -> f32
);
safe_wrapper!(
    /// Σ w·a over one row of Q5_K weights and Q8_K activations.
    vec_dot_q5k_q8k => q5k(&[BlockQ5K], &[BlockQ8K]) -> f32
);
safe_wrapper!(
    /// Σ w·a over one row of Q6_K weights and Q8_K activations.
    vec_dot_q6k_q8k => q6k(&[BlockQ6K], &[BlockQ8K]) -> f32
);
safe_wrapper!(
    /// Σ w·a over one row of IQ4_XS weights and Q8_K activations.
    vec_dot_iq4xs_q8k => iq4xs(&[BlockIQ4XS], &[BlockQ8K]) -> f32
);
safe_wrapper!(
    /// Quantizes `src` (`out.len()` × 256 values) to Q8_K; byte-identical to
    /// `BlockQ8K::quantize`, the reference.
    quantize_q8k => quantize_q8k_impl(&[f32], &mut [BlockQ8K]) -> ()
);

// ---- helpers -------------------------------------------------------------------------------

/// 32 bytes from the start of `s` (bounds-checked; the checks fold away at constant offsets).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_u8(s: &[u8]) -> __m256i {
    let s: &[u8; 32] = s[..32].try_into().unwrap();
    _mm256_loadu_si256(s.as_ptr().cast())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_i8(s: &[i8]) -> __m256i {
    let s: &[i8; 32] = s[..32].try_into().unwrap();
    _mm256_loadu_si256(s.as_ptr().cast())
}

/// 8 floats from the start of `s` (bounds-checked).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32(s: &[f32]) -> __m256 {
    let s: &[f32; 8] = s[..8].try_into().unwrap();
    _mm256_loadu_ps(s.as_ptr())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bsums(y: &BlockQ8K) -> __m256i {
    _mm256_loadu_si256(y.bsums.as_ptr().cast())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fp16(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps128(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    hsum_ps128(_mm_add_ps(
        _mm256_castps256_ps128(v),
        _mm256_extractf128_ps::<1>(v),
    ))
}

/// Broadcasts 16-bit word `k` (0..8) of each 128-bit lane across that lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast_word(v: __m256i, k: usize) -> __m256i {
    let lo = 2 * k as i16;
    _mm256_shuffle_epi8(v, _mm256_set1_epi16(((lo + 1) << 8) | lo))
}

/// Sixteen i8 sub-block scales (each for 16 weights) as i16, the even-numbered ones in the
/// low lane and the odd ones in the high lane: `bcast_word(_, k)` then gives the scales of
/// the two halves of 32-weight chunk `k`, lined up with `vpmaddubsw`'s output.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_scales_i8(s: __m128i) -> __m256i {
    let even_odd = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s, even_odd))
}

/// As `pair_scales_i8` for unsigned scales.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_scales_u8(s: __m128i) -> __m256i {
    let even_odd = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    _mm256_cvtepu8_epi16(_mm_shuffle_epi8(s, even_odd))
}

/// Q4_K/Q5_K's eight 6-bit scales and eight 6-bit mins, one per byte, as two u64s (the same
/// unpacking as `get_scale_min_k4`, four at a time).
#[inline]
fn unpack_scale_min_k4(q: &[u8; 12]) -> (u64, u64) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (u0, u1, u2) = (word(0), word(1), word(2));
    let sc_high = (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4);
    let mn_high = ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4);
    (
        (u0 & LOW6) as u64 | (sc_high as u64) << 32,
        (u1 & LOW6) as u64 | (mn_high as u64) << 32,
    )
}

/// Q3_K's sixteen 6-bit scales, still offset by 32, one per byte (as `q3k::unpack_scales`).
#[inline]
fn unpack_q3k_scales(s: &[u8; 12]) -> [u8; 16] {
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, a2) = (word(0), word(1), word(2));
    let w = [
        (a0 & LOW4) | ((a2 & LOW2) << 4),
        (a1 & LOW4) | (((a2 >> 2) & LOW2) << 4),
        ((a0 >> 4) & LOW4) | (((a2 >> 4) & LOW2) << 4),
        ((a1 >> 4) & LOW4) | (((a2 >> 6) & LOW2) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(w) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

// ---- dot products --------------------------------------------------------------------------

/// Q4_K: levels 0..=15 per nibble, a 6-bit scale per 32 weights, the min term through the
/// activation's `bsums` (pairs of them, one pair per 32).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = y.d * fp16(x.d);
        let dmin = -y.d * fp16(x.dmin);
        let (sc, mn) = unpack_scale_min_k4(&x.scales);

        let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
        let bsums = load_bsums(y);
        let bsums32 = _mm_hadd_epi16(
            _mm256_castsi256_si128(bsums),
            _mm256_extracti128_si256::<1>(bsums),
        );
        let prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, bsums32));
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), prod, acc_m);

        let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        let mut sumi = _mm256_setzero_si256();
        for j in 0..QK_K / 64 {
            let bits = load_u8(&x.qs[32 * j..]);
            let lo = _mm256_and_si256(bits, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
            let p_lo = _mm256_maddubs_epi16(lo, load_i8(&y.qs[64 * j..]));
            let p_hi = _mm256_maddubs_epi16(hi, load_i8(&y.qs[64 * j + 32..]));
            let p_lo = _mm256_madd_epi16(p_lo, bcast_word(scales, 2 * j));
            let p_hi = _mm256_madd_epi16(p_hi, bcast_word(scales, 2 * j + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + hsum_ps128(acc_m)
}

/// Q5_K: Q4_K plus a fifth bit per weight from `qh` (bit `e / 32` of byte `e % 32`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let m4 = _mm256_set1_epi8(0x0F);
    let m1 = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = y.d * fp16(x.d);
        let dmin = -y.d * fp16(x.dmin);
        let (sc, mn) = unpack_scale_min_k4(&x.scales);

        let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
        let bsums = load_bsums(y);
        let bsums32 = _mm_hadd_epi16(
            _mm256_castsi256_si128(bsums),
            _mm256_extracti128_si256::<1>(bsums),
        );
        let prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, bsums32));
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), prod, acc_m);

        let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        // Shifted right by 2 per 64 weights, so bit 0 (bit 1) of each byte is always the
        // high bit of the current low (high) 32; bits pulled in from the next byte are masked.
        let mut hbits = load_u8(&x.qh);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..QK_K / 64 {
            let bits = load_u8(&x.qs[32 * j..]);
            let h_lo = _mm256_slli_epi16::<4>(_mm256_and_si256(hbits, m1));
            let h_hi = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(hbits), m1));
            hbits = _mm256_srli_epi16::<2>(hbits);
            let lo = _mm256_or_si256(_mm256_and_si256(bits, m4), h_lo);
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4), h_hi);
            let p_lo = _mm256_maddubs_epi16(lo, load_i8(&y.qs[64 * j..]));
            let p_hi = _mm256_maddubs_epi16(hi, load_i8(&y.qs[64 * j + 32..]));
            let p_lo = _mm256_madd_epi16(p_lo, bcast_word(scales, 2 * j));
            let p_hi = _mm256_madd_epi16(p_hi, bcast_word(scales, 2 * j + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + hsum_ps128(acc_m)
}

/// Q6_K: levels 0..=63 (4 bits in `ql`, 2 in `qh`) dotted unsigned; the -32 offset is taken
/// off at the end as 32·Σ scale·bsum, which saves a multiply per 32 weights.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let m4 = _mm256_set1_epi8(0x0F);
    let m_hi = _mm256_set1_epi8(0x30);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = y.d * fp16(x.d);
        let sc = _mm_loadu_si128(x.scales.as_ptr().cast());
        let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), load_bsums(y));
        let scales = pair_scales_i8(sc);

        let mut sumi = _mm256_setzero_si256();
        for h in 0..QK_K / 128 {
            let ql1 = load_u8(&x.ql[64 * h..]);
            let ql2 = load_u8(&x.ql[64 * h + 32..]);
            let qh = load_u8(&x.qh[32 * h..]);
            // Bit pair p of `qh` moved to bits 4..6; 16-bit shifts are fine under the mask.
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m_hi),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql2, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m_hi),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_and_si256(qh, m_hi),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql2), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m_hi),
                ),
            ];
            for (p, &qp) in q.iter().enumerate() {
                let k = 4 * h + p;
                let p16 = _mm256_maddubs_epi16(qp, load_i8(&y.qs[32 * k..]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, bcast_word(scales, k)));
            }
        }
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(offset));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// Q3_K: levels `low + 4·high` in 0..=7 dotted unsigned; the -4 offset is taken off at the
/// end as 4·Σ scale·bsum.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let m3 = _mm256_set1_epi8(3);
    let m_bit2 = _mm256_set1_epi8(4);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = y.d * fp16(x.d);
        let raw = unpack_q3k_scales(&x.scales);
        let sc = _mm_sub_epi8(_mm_loadu_si128(raw.as_ptr().cast()), _mm_set1_epi8(32));
        let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), load_bsums(y));
        let scales = pair_scales_i8(sc);

        // Shifted right by 1 per 32 weights, so bit 0 of each byte is the current high bit.
        let mut hbits = load_u8(&x.hmask);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..QK_K / 128 {
            let mut bits = load_u8(&x.qs[32 * h..]);
            for p in 0..4 {
                let k = 4 * h + p;
                let high = _mm256_and_si256(_mm256_slli_epi16::<2>(hbits), m_bit2);
                hbits = _mm256_srli_epi16::<1>(hbits);
                let q = _mm256_or_si256(_mm256_and_si256(bits, m3), high);
                bits = _mm256_srli_epi16::<2>(bits);
                let p16 = _mm256_maddubs_epi16(q, load_i8(&y.qs[32 * k..]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, bcast_word(scales, k)));
            }
        }
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<2>(offset));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// Q2_K: levels 0..=3, a 4-bit scale and a 4-bit min per 16, the min term through `bsums`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let dall = y.d * fp16(x.d);
        let dmin = y.d * fp16(x.dmin);
        let packed = _mm_loadu_si128(x.scales.as_ptr().cast());
        let sc = _mm_and_si128(packed, m4);
        let mn = _mm_and_si128(_mm_srli_epi16::<4>(packed), m4);
        let summs = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mn), load_bsums(y));
        acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(summs), acc_m);
        let scales = pair_scales_u8(sc);

        let mut sumi = _mm256_setzero_si256();
        for h in 0..QK_K / 128 {
            let mut bits = load_u8(&x.qs[32 * h..]);
            for p in 0..4 {
                let k = 4 * h + p;
                let q = _mm256_and_si256(bits, m3);
                bits = _mm256_srli_epi16::<2>(bits);
                let p16 = _mm256_maddubs_epi16(q, load_i8(&y.qs[32 * k..]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, bcast_word(scales, k)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - hsum_ps(acc_m)
}

/// IQ4_XS: the 4-bit indices looked up in the non-linear table with `vpshufb`; the signed
/// levels meet the signed activations through the sign trick (|w| · a·sign(w)), which is
/// exact because neither side is ever -128.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4xs(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len());
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()));
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = fp16(x.d) * y.d;
        let mut ls = [0i8; 16];
        for (ib, l) in ls[..QK_K / 32].iter_mut().enumerate() {
            let low = (x.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
            let high = ((x.scales_h >> (2 * ib)) & 3) as u8;
            *l = (low | (high << 4)) as i8 - 32;
        }
        let scales = pair_scales_i8(_mm_loadu_si128(ls.as_ptr().cast()));
        let mut sumi = _mm256_setzero_si256();
        // Two sub-blocks at a time: lane 0 holds sub-block 2k, lane 1 sub-block 2k+1, low
        // nibbles being their weights 0..16 and high nibbles 16..32; the activations are
        // regrouped to match.
        for k in 0..QK_K / 64 {
            let bits = load_u8(&x.qs[32 * k..]);
            let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(bits, m4));
            let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4));
            let a0 = load_i8(&y.qs[64 * k..]);
            let a1 = load_i8(&y.qs[64 * k + 32..]);
            let q8_lo = _mm256_permute2x128_si256::<0x20>(a0, a1);
            let q8_hi = _mm256_permute2x128_si256::<0x31>(a0, a1);
            let p_lo = _mm256_maddubs_epi16(_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(q8_lo, lo));
            let p_hi = _mm256_maddubs_epi16(_mm256_sign_epi8(hi, hi), _mm256_sign_epi8(q8_hi, hi));
            let sc = bcast_word(scales, k);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p_lo, sc));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p_hi, sc));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

// ---- Q8_K quantizer ------------------------------------------------------------------------

/// The horizontal sums of eight i32x8 vectors, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vector_sums(t: &[__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(t[0], t[1]);
    let h23 = _mm256_hadd_epi32(t[2], t[3]);
    let h45 = _mm256_hadd_epi32(t[4], t[5]);
    let h67 = _mm256_hadd_epi32(t[6], t[7]);
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(h0123, h4567),
        _mm256_permute2x128_si256::<0x31>(h0123, h4567),
    )
}

/// ggml's `quantize_row_q8_K_ref`, vectorised. The f32 operations are the reference's own
/// (one division for the scale, one multiply per value, round half to even), so the output
/// is byte-identical. Blocks holding NaN or ±∞ (or so tiny that the inverse scale overflows)
/// go to the reference itself: its output for them is garbage from its integer rounding
/// trick, which `vcvtps2dq` does not reproduce.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8k_impl(src: &[f32], out: &mut [BlockQ8K]) {
    debug_assert_eq!(src.len(), out.len() * QK_K);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for (x, y) in src.chunks_exact(QK_K).zip(out) {
        let mut amax_v = _mm256_setzero_ps();
        let mut unordered = _mm256_setzero_ps();
        for c in 0..QK_K / 8 {
            let v = load_f32(&x[8 * c..]);
            unordered = _mm256_or_ps(unordered, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            amax_v = _mm256_max_ps(_mm256_and_ps(v, abs_mask), amax_v);
        }
        let m = _mm_max_ps(
            _mm256_castps256_ps128(amax_v),
            _mm256_extractf128_ps::<1>(amax_v),
        );
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        if _mm256_movemask_ps(unordered) != 0 || amax.is_infinite() {
            *y = BlockQ8K::from_f32(x);
            continue;
        }
        if amax == 0.0 {
            *y = BlockQ8K::zeroed();
            continue;
        }
        // The reference keeps the first element of largest magnitude (its sign matters).
        let target = _mm256_set1_ps(amax);
        let mut max = amax;
        for c in 0..QK_K / 8 {
            let v = load_f32(&x[8 * c..]);
            let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_and_ps(v, abs_mask), target);
            let mask = _mm256_movemask_ps(eq);
            if mask != 0 {
                max = x[8 * c + mask.trailing_zeros() as usize];
                break;
            }
        }

        let iscale = -127.0 / max;
        if iscale.is_infinite() {
            // A subnormal maximum: ±∞·x again needs the reference's garbage.
            *y = BlockQ8K::from_f32(x);
            continue;
        }
        let iv = _mm256_set1_ps(iscale);
        let fix_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        // Per 16 values, as i32x8 to be summed: the first and second half of each 32.
        let mut halves = [_mm256_setzero_si256(); 16];
        for c in 0..QK_K / 32 {
            // `vcvtps2dq` rounds half to even in the default rounding mode, as `nearest_int`.
            let i = [0, 1, 2, 3]
                .map(|k| _mm256_cvtps_epi32(_mm256_mul_ps(iv, load_f32(&x[32 * c + 8 * k..]))));
            halves[2 * c] = _mm256_add_epi32(i[0], i[1]);
            halves[2 * c + 1] = _mm256_add_epi32(i[2], i[3]);
            // |iscale·x| ≤ 127 (up to rounding), so the saturating packs never saturate
            // below 127, where they agree with the reference's `.min(127)`.
            let p = _mm256_packs_epi16(
                _mm256_packs_epi32(i[0], i[1]),
                _mm256_packs_epi32(i[2], i[3]),
            );
            let p = _mm256_permutevar8x32_epi32(p, fix_order);
            let dst: &mut [i8; 32] = (&mut y.qs[32 * c..32 * c + 32]).try_into().unwrap();
            _mm256_storeu_si256(dst.as_mut_ptr().cast(), p);
        }
        let lo: &[__m256i; 8] = halves[..8].try_into().unwrap();
        let hi: &[__m256i; 8] = halves[8..].try_into().unwrap();
        // The packs interleave 64-bit quarters as [lo 0..4, hi 0..4, lo 4..8, hi 4..8].
        let s = _mm256_packs_epi32(vector_sums(lo), vector_sums(hi));
        let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(s);
        _mm256_storeu_si256(y.bsums.as_mut_ptr().cast(), s);
        y.d = 1.0 / iscale;
    }
}

// ---- prompt tiles (one weight row × eight tokens) ----------------------------------------
// Each superblock is decoded once for the eight tokens; per token the operations are those
// of the single-token kernels above, in their order, so each result equals that kernel's.

/// Q4_K against eight tokens (`a`: eight rows of `w.len()` blocks); `vec_dot_q4k_q8k`'s
/// bits for each token.
pub fn gemm8_q4k(w: &[BlockQ4K], a: &[BlockQ8K], dy: &[[f32; 8]], _: &[[f32; 8]]) -> [f32; 8] {
    assert!(
        available(),
        "AVX2 kernel called on a CPU without AVX2/FMA/F16C"
    );
    assert_eq!(a.len(), 8 * w.len(), "gemm8: not eight rows of activations");
    assert_eq!(dy.len(), w.len(), "gemm8: scales for the wrong block count");
    // SAFETY: `available()` confirmed the features; the slices were checked above.
    unsafe { q4k_x8(w, a) }
}

/// Q6_K against eight tokens; `vec_dot_q6k_q8k`'s bits for each token.
pub fn gemm8_q6k(w: &[BlockQ6K], a: &[BlockQ8K], dy: &[[f32; 8]], _: &[[f32; 8]]) -> [f32; 8] {
    assert!(
        available(),
        "AVX2 kernel called on a CPU without AVX2/FMA/F16C"
    );
    assert_eq!(a.len(), 8 * w.len(), "gemm8: not eight rows of activations");
    assert_eq!(dy.len(), w.len(), "gemm8: scales for the wrong block count");
    // SAFETY: as for `gemm8_q4k`.
    unsafe { q6k_x8(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_x8(w: &[BlockQ4K], a: &[BlockQ8K]) -> [f32; 8] {
    let nb = w.len();
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut acc_m = [_mm_setzero_ps(); 8];
    for (k, x) in w.iter().enumerate() {
        let (xd, xdmin) = (fp16(x.d), fp16(x.dmin));
        let (sc, mn) = unpack_scale_min_k4(&x.scales);
        let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
        let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        let mut lo = [_mm256_setzero_si256(); QK_K / 64];
        let mut hi = [_mm256_setzero_si256(); QK_K / 64];
        for j in 0..QK_K / 64 {
            let bits = load_u8(&x.qs[32 * j..]);
            lo[j] = _mm256_and_si256(bits, m4);
            hi[j] = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
        }
        for t in 0..8 {
            let y = &a[t * nb + k];
            let d = y.d * xd;
            let dmin = -y.d * xdmin;
            let bsums = load_bsums(y);
            let bsums32 = _mm_hadd_epi16(
                _mm256_castsi256_si128(bsums),
                _mm256_extracti128_si256::<1>(bsums),
            );
            let prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, bsums32));
            acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), prod, acc_m[t]);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 64 {
                let p_lo = _mm256_maddubs_epi16(lo[j], load_i8(&y.qs[64 * j..]));
                let p_hi = _mm256_maddubs_epi16(hi[j], load_i8(&y.qs[64 * j + 32..]));
                let p_lo = _mm256_madd_epi16(p_lo, bcast_word(scales, 2 * j));
                let p_hi = _mm256_madd_epi16(p_hi, bcast_word(scales, 2 * j + 1));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    core::array::from_fn(|t| hsum_ps(acc[t]) + hsum_ps128(acc_m[t]))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_x8(w: &[BlockQ6K], a: &[BlockQ8K]) -> [f32; 8] {
    let nb = w.len();
    let m4 = _mm256_set1_epi8(0x0F);
    let m_hi = _mm256_set1_epi8(0x30);
    let mut acc = [_mm256_setzero_ps(); 8];
    for (k, x) in w.iter().enumerate() {
        let xd = fp16(x.d);
        let sc = _mm_loadu_si128(x.scales.as_ptr().cast());
        let sc16 = _mm256_cvtepi8_epi16(sc);
        let scales = pair_scales_i8(sc);
        let mut q = [_mm256_setzero_si256(); QK_K / 32];
        for h in 0..QK_K / 128 {
            let ql1 = load_u8(&x.ql[64 * h..]);
            let ql2 = load_u8(&x.ql[64 * h + 32..]);
            let qh = load_u8(&x.qh[32 * h..]);
            q[4 * h] = _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m_hi),
            );
            q[4 * h + 1] = _mm256_or_si256(
                _mm256_and_si256(ql2, m4),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m_hi),
            );
            q[4 * h + 2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                _mm256_and_si256(qh, m_hi),
            );
            q[4 * h + 3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql2), m4),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m_hi),
            );
        }
        for t in 0..8 {
            let y = &a[t * nb + k];
            let d = y.d * xd;
            let offset = _mm256_madd_epi16(sc16, load_bsums(y));
            let mut sumi = _mm256_setzero_si256();
            for (kk, &qp) in q.iter().enumerate() {
                let p16 = _mm256_maddubs_epi16(qp, load_i8(&y.qs[32 * kk..]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, bcast_word(scales, kk)));
            }
            sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(offset));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
        }
    }
    core::array::from_fn(|t| hsum_ps(acc[t]))
}
