//! AVX-512 VNNI kernels over the four-row K-quant layouts of `quant::repack_k`.
//!
//! Per 32-weight chunk, one zmm of packed nibbles (four rows, one per 128-bit lane) is split
//! into the low and high sixteen weights (Q6_K: with the high bit pairs ORed in), then for
//! each of up to eight tokens `vpdpbusd` with the broadcast activation quants gives one
//! sub-block's (Q4_K) or sixteen's (Q6_K) 4-byte dots, which fit i16; `vpackssdw` pairs two
//! of them and `vpdpwssd` with the rows' sub-block scales accumulates sixteen exact i32 lanes
//! per token; the min / offset terms and the f32 scaling happen once per super-block. The weights are decoded
//! once per tile of tokens. Q5_K is Q4_K with the fifth bits ORed in (eight products still
//! fit i16). IQ4_XS takes its levels from a table (`vpshufb`) and, as the AVX2 kernel,
//! `vpmaddubsw` of |w| with the activations given w's sign, then `vpmaddwd` with the scales.
//! `repack_k::gemm_ref` does the same arithmetic in scalar and equals this bit for bit.

use core::arch::x86_64::*;

use super::{prefetch, prefetch_k, prefetch_l2};
use crate::quant::iq4::KVALUES_IQ4NL;
use crate::quant::line64::Line64;
use crate::quant::repack_k::{ActK, GemmKFn, KindK, PackedK};

/// Tokens per tile: eight f32 accumulators and eight i32 super-block sums in zmm registers.
pub const TILE: usize = 8;

/// The packed K kernel, if this CPU has AVX-512 F/BW/VL/VNNI.
pub fn kernel() -> Option<GemmKFn> {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
    {
        Some(gemm)
    } else {
        None
    }
}

/// Group `g` of `p` against `out.len()` tokens (`acts`: token-major, k/256 super-blocks each).
fn gemm(p: &PackedK, g: usize, acts: &[ActK], out: &mut [[f32; 4]]) {
    let nsb = p.k / 256;
    assert_eq!(
        acts.len(),
        out.len() * nsb,
        "packed K gemm: activations for the wrong k"
    );
    assert!(g < p.groups(), "packed K gemm: group {g} out of range");
    let nl = p.kind.lines();
    let d = &p.d[g * nsb..(g + 1) * nsb];
    let qs = &p.qs[g * nsb * nl..(g + 1) * nsb * nl];
    for (chunk, o) in acts.chunks(TILE * nsb).zip(out.chunks_mut(TILE)) {
        macro_rules! tile {
            ($($t:literal)*) => {
                match (p.kind, o.len()) {
                    $((KindK::Q4_K, $t) => {
                        // SAFETY: `kernel()` checked the features; d, m: nsb entries of this
                        // group, qs: 9·nsb lines, chunk: t·nsb (checked above).
                        unsafe {
                            tile_q4_k::<$t, false>(d, &p.m[g * nsb..(g + 1) * nsb], qs, chunk, o)
                        }
                    })*
                    $((KindK::Q5_K, $t) => {
                        // SAFETY: as above, with 11·nsb lines.
                        unsafe {
                            tile_q4_k::<$t, true>(d, &p.m[g * nsb..(g + 1) * nsb], qs, chunk, o)
                        }
                    })*
                    $((KindK::IQ4_XS, $t) => {
                        // SAFETY: as above, with 9·nsb lines and no mins.
                        unsafe { tile_iq4_xs::<$t>(d, qs, chunk, o) }
                    })*
                    $((KindK::Q6_K, $t) => {
                        // SAFETY: as above, with 13·nsb lines.
                        unsafe { tile_q6_k::<$t>(d, qs, chunk, o) }
                    })*
                    _ => unreachable!("K tiles hold 1..=8 tokens"),
                }
            };
        }
        tile!(1 2 3 4 5 6 7 8);
    }
}

/// The four rows' f16 values as sixteen f32 lanes (each repeated four times).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn rows_f32(d: &[half::f16; 4]) -> __m512 {
    // SAFETY: `d` is 8 readable bytes.
    let d4 = _mm_cvtph_ps(unsafe { _mm_loadl_epi64(d.as_ptr() as *const __m128i) });
    let idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(d4))
}

/// Sums each row's four lanes, in the order `gemm_ref` uses.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn finish(acc: __m512) -> [f32; 4] {
    let mut l = [0f32; 16];
    // SAFETY: `l` is 64 writable bytes.
    unsafe { _mm512_storeu_ps(l.as_mut_ptr(), acc) };
    std::array::from_fn(|r| ((l[4 * r] + l[4 * r + 1]) + l[4 * r + 2]) + l[4 * r + 3])
}

/// Sixteen activation quants at byte `at` of `a`, broadcast to the four 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn bcast16(a: &ActK, at: usize) -> __m512i {
    debug_assert!(at + 16 <= 256 + 48);
    // SAFETY: an ActK is 320 bytes; callers read at most byte 304 + 16.
    unsafe {
        _mm512_broadcast_i32x4(_mm_loadu_si128(
            (a as *const ActK as *const u8).add(at) as *const __m128i
        ))
    }
}

/// acc + the sums of adjacent i16 products of `a` and `b`, as i32 lanes (`vpdpwssd`). Written
/// in `asm!` because LLVM, tuning for a generic x86-64, splits the intrinsic into
/// `vpmaddwd` + `vpaddd`: two uops on the port the kernel is bound by instead of one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut r = acc;
    // SAFETY: a register-only instruction of AVX-512 VNNI, which this function requires.
    unsafe {
        core::arch::asm!(
            "vpdpwssd {r}, {a}, {b}",
            r = inout(zmm_reg) r,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}

/// acc + the 4-byte dot products of unsigned `a` and signed `b` bytes, as i32 lanes
/// (`vpdpbusd`), in `asm!` like `dpwssd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dpbusd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut r = acc;
    // SAFETY: a register-only instruction of AVX-512 VNNI, which this function requires.
    unsafe {
        core::arch::asm!(
            "vpdpbusd {r}, {a}, {b}",
            r = inout(zmm_reg) r,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}

/// The permutation that puts i16 element `8r + s` in elements 0..4 of 128-bit lane r and
/// `8r + s + 1` in its elements 4..8: the scales of two sub-blocks, matching the
/// `vpackssdw` of their sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn pair_idx(s: i16) -> __m512i {
    let base = _mm512_set_epi16(
        25, 25, 25, 25, 24, 24, 24, 24, 17, 17, 17, 17, 16, 16, 16, 16, 9, 9, 9, 9, 8, 8, 8, 8, 1,
        1, 1, 1, 0, 0, 0, 0,
    );
    _mm512_add_epi16(base, _mm512_set1_epi16(s))
}

/// One token's sums of two Q4_K sub-blocks (`w`: their low and high sixteens, in order) with
/// the activation quants at `at` onwards, packed to i16, times the scales `sc`, added to
/// `isum`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn pair_dot(isum: __m512i, w: [__m512i; 4], a: &ActK, at: usize, sc: __m512i) -> __m512i {
    let z = _mm512_setzero_si512();
    let s0 = dpbusd(dpbusd(z, w[0], bcast16(a, at)), w[1], bcast16(a, at + 16));
    let s1 = dpbusd(
        dpbusd(z, w[2], bcast16(a, at + 32)),
        w[3],
        bcast16(a, at + 48),
    );
    dpwssd(isum, _mm512_packs_epi32(s0, s1), sc)
}

/// T tokens of one Q4_K group (Q5_K where `Q5`).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C must be available; `d`, `m` hold nsb entries,
/// `qs` 9·nsb lines (Q5_K 11·nsb), `acts` T·nsb, `out` T.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q4_k<const T: usize, const Q5: bool>(
    d: &[[half::f16; 4]],
    m: &[[half::f16; 4]],
    qs: &[Line64],
    acts: &[ActK],
    out: &mut [[f32; 4]],
) {
    let nsb = d.len();
    let nl = if Q5 { 11 } else { 9 };
    assert!(qs.len() == nl * nsb && m.len() == nsb);
    let pf = prefetch_k();
    let m4 = _mm512_set1_epi8(0x0F);
    let m10 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); T];
    for sb in 0..nsb {
        if T == 1 {
            let at = qs.as_ptr().wrapping_add(nl * sb + pf.lines);
            if pf.l2 {
                prefetch_l2(at, nl);
            } else {
                prefetch(at, nl);
            }
        }
        let l = &qs[nl * sb..nl * sb + nl];
        // SAFETY: a Line64 is 64 bytes aligned to 64; bytes 0..32 the scales, 32..64 the mins.
        let (scales, mins) = unsafe {
            let p = l[8].0.as_ptr() as *const __m256i;
            (
                _mm512_cvtepu8_epi16(_mm256_load_si256(p)),
                _mm512_cvtepu8_epi16(_mm256_load_si256(p.add(1))),
            )
        };
        let mut isum = [_mm512_setzero_si512(); T];
        for pair in 0..4 {
            // SAFETY: as above.
            let (w0, w1) = unsafe {
                (
                    _mm512_load_si512(l[2 * pair].0.as_ptr() as *const __m512i),
                    _mm512_load_si512(l[2 * pair + 1].0.as_ptr() as *const __m512i),
                )
            };
            let mut w = [
                _mm512_and_si512(w0, m4),
                _mm512_and_si512(_mm512_srli_epi16(w0, 4), m4),
                _mm512_and_si512(w1, m4),
                _mm512_and_si512(_mm512_srli_epi16(w1, 4), m4),
            ];
            if Q5 {
                // Chunks 2·pair and 2·pair + 1's fifth bits are bits 4·(pair % 2) + 0..4 of
                // line 9 + pair / 2: brought to bits 0..4, then each to bit 4. (The 16-bit
                // shifts move bits within each byte where it matters: bits 0..4 after the
                // first, bit 4 after the second.)
                // SAFETY: as above.
                let hb = unsafe { _mm512_load_si512(l[9 + pair / 2].0.as_ptr() as *const __m512i) };
                let hb = if pair % 2 == 1 {
                    _mm512_srli_epi16(hb, 4)
                } else {
                    hb
                };
                let bits = [
                    _mm512_slli_epi16(hb, 4),
                    _mm512_slli_epi16(hb, 3),
                    _mm512_slli_epi16(hb, 2),
                    _mm512_slli_epi16(hb, 1),
                ];
                for (w, b) in w.iter_mut().zip(bits) {
                    *w = _mm512_or_si512(*w, _mm512_and_si512(b, m10));
                }
            }
            let sc = _mm512_permutexvar_epi16(pair_idx(2 * pair as i16), scales);
            for (t, isum) in isum.iter_mut().enumerate() {
                *isum = pair_dot(*isum, w, &acts[t * nsb + sb], 64 * pair, sc);
            }
        }
        let dw = rows_f32(&d[sb]);
        let mw = rows_f32(&m[sb]);
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = &acts[t * nsb + sb];
            // sums32 sits at byte 256 + 32 of the activation block.
            let imin = dpwssd(_mm512_setzero_si512(), mins, bcast16(a, 288));
            let dy = _mm512_set1_ps(a.d);
            let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dw, dy), *acc);
            *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(mw, dy), v);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = finish(a);
    }
}

/// T tokens of one Q6_K group.
///
/// # Safety
/// As `tile_q4_k`, with 13·nsb lines in `qs` and no `m`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q6_k<const T: usize>(
    d: &[[half::f16; 4]],
    qs: &[Line64],
    acts: &[ActK],
    out: &mut [[f32; 4]],
) {
    let nsb = d.len();
    let pf = prefetch_k();
    let m4 = _mm512_set1_epi8(0x0F);
    let m30 = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); T];
    for sb in 0..nsb {
        if T == 1 {
            let at = qs.as_ptr().wrapping_add(13 * sb + pf.lines);
            if pf.l2 {
                prefetch_l2(at, 13);
            } else {
                prefetch(at, 13);
            }
        }
        let l = &qs[13 * sb..13 * sb + 13];
        // SAFETY: a Line64 is 64 bytes aligned to 64; bytes 0..32 the scales of sub-blocks
        // 0..8, 32..64 of 8..16, each [8r + j].
        let (sa, sbh) = unsafe {
            let p = l[12].0.as_ptr() as *const __m256i;
            (
                _mm512_cvtepi8_epi16(_mm256_load_si256(p)),
                _mm512_cvtepi8_epi16(_mm256_load_si256(p.add(1))),
            )
        };
        let mut isum = [_mm512_setzero_si512(); T];
        // Two 32-weight chunks (four sixteens) per step, as Q4_K's sub-block pairs.
        for c2 in 0..4 {
            let mut w = [_mm512_setzero_si512(); 4];
            for h in 0..2 {
                let c = 2 * c2 + h;
                // SAFETY: as above.
                let (wq, hb) = unsafe {
                    (
                        _mm512_load_si512(l[c].0.as_ptr() as *const __m512i),
                        _mm512_load_si512(l[8 + c2].0.as_ptr() as *const __m512i),
                    )
                };
                // The high bit pairs of this chunk's two sixteens, moved to bits 4-5.
                let (hlo, hhi) = if h == 0 {
                    (_mm512_slli_epi16(hb, 4), _mm512_slli_epi16(hb, 2))
                } else {
                    (hb, _mm512_srli_epi16(hb, 2))
                };
                w[2 * h] = _mm512_or_si512(_mm512_and_si512(wq, m4), _mm512_and_si512(hlo, m30));
                w[2 * h + 1] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(wq, 4), m4),
                    _mm512_and_si512(hhi, m30),
                );
            }
            // Sixteens 4·c2 .. 4·c2 + 4: in `sa` for c2 < 2, else in `sbh`.
            let src = if c2 < 2 { sa } else { sbh };
            let j = (4 * (c2 % 2)) as i16;
            let sc0 = _mm512_permutexvar_epi16(pair_idx(j), src);
            let sc1 = _mm512_permutexvar_epi16(pair_idx(j + 2), src);
            for (t, isum) in isum.iter_mut().enumerate() {
                let a = &acts[t * nsb + sb];
                *isum = six_dot(*isum, [w[0], w[1]], a, 64 * c2, sc0);
                *isum = six_dot(*isum, [w[2], w[3]], a, 64 * c2 + 32, sc1);
            }
        }
        let dw = rows_f32(&d[sb]);
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = &acts[t * nsb + sb];
            // bsums sit at byte 256 of the activation block.
            let ioff = dpwssd(_mm512_setzero_si512(), sa, bcast16(a, 256));
            let ioff = dpwssd(ioff, sbh, bcast16(a, 272));
            let v = _mm512_sub_epi32(isum[t], _mm512_slli_epi32(ioff, 5));
            let dy = _mm512_set1_ps(a.d);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(dw, dy), *acc);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = finish(a);
    }
}

/// One token's sums of two Q6_K sixteens (`w`: the 32-weight chunk's halves) with the
/// activation quants at `at` onwards, packed to i16, times the scales `sc`, added to `isum`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn six_dot(isum: __m512i, w: [__m512i; 2], a: &ActK, at: usize, sc: __m512i) -> __m512i {
    let z = _mm512_setzero_si512();
    let s0 = dpbusd(z, w[0], bcast16(a, at));
    let s1 = dpbusd(z, w[1], bcast16(a, at + 16));
    dpwssd(isum, _mm512_packs_epi32(s0, s1), sc)
}

/// T tokens of one IQ4_XS group: per chunk, the levels of both sixteens from the table,
/// their magnitudes, and the masks of the negative ones; per token, the activations given
/// the weights' signs (`vpsubb` under the mask: exact, the quants are within ±127),
/// `vpmaddubsw` with the magnitudes (pairs at most 2·127·127) and `vpmaddwd` with the chunk's
/// scale, into `gemm_ref`'s lanes.
///
/// # Safety
/// As `tile_q4_k`, with 9·nsb lines in `qs` and no `m`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_iq4_xs<const T: usize>(
    d: &[[half::f16; 4]],
    qs: &[Line64],
    acts: &[ActK],
    out: &mut [[f32; 4]],
) {
    let nsb = d.len();
    assert!(qs.len() == 9 * nsb);
    let pf = prefetch_k();
    let m4 = _mm512_set1_epi8(0x0F);
    let z = _mm512_setzero_si512();
    // SAFETY: the table is 16 bytes.
    let tbl = _mm512_broadcast_i32x4(unsafe {
        _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i)
    });
    // Chunk c's scale index per i16 element: 8r + c in all eight of lane r.
    let spread: [__m512i; 8] = core::array::from_fn(|c| {
        let idx: [i16; 32] = core::array::from_fn(|e| (8 * (e / 8) + c) as i16);
        // SAFETY: 64 readable bytes.
        unsafe { _mm512_loadu_si512(idx.as_ptr() as *const __m512i) }
    });
    let mut acc = [_mm512_setzero_ps(); T];
    for sb in 0..nsb {
        if T == 1 {
            let at = qs.as_ptr().wrapping_add(9 * sb + pf.lines);
            if pf.l2 {
                prefetch_l2(at, 9);
            } else {
                prefetch(at, 9);
            }
        }
        let l = &qs[9 * sb..9 * sb + 9];
        // SAFETY: a Line64 is 64 bytes aligned to 64; bytes 0..32 the scales, [8r + c].
        let scales =
            _mm512_cvtepi8_epi16(unsafe { _mm256_load_si256(l[8].0.as_ptr() as *const __m256i) });
        let mut isum = [_mm512_setzero_si512(); T];
        for (c, spread) in spread.iter().enumerate() {
            // SAFETY: as above.
            let w = unsafe { _mm512_load_si512(l[c].0.as_ptr() as *const __m512i) };
            let lo = _mm512_shuffle_epi8(tbl, _mm512_and_si512(w, m4));
            let hi = _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16(w, 4), m4));
            let (nlo, nhi) = (_mm512_movepi8_mask(lo), _mm512_movepi8_mask(hi));
            let (alo, ahi) = (_mm512_abs_epi8(lo), _mm512_abs_epi8(hi));
            let sc = _mm512_permutexvar_epi16(*spread, scales);
            for (t, isum) in isum.iter_mut().enumerate() {
                let a = &acts[t * nsb + sb];
                let (al, ah) = (bcast16(a, 32 * c), bcast16(a, 32 * c + 16));
                let pl = _mm512_maddubs_epi16(alo, _mm512_mask_sub_epi8(al, nlo, z, al));
                let ph = _mm512_maddubs_epi16(ahi, _mm512_mask_sub_epi8(ah, nhi, z, ah));
                *isum = _mm512_add_epi32(
                    *isum,
                    _mm512_add_epi32(_mm512_madd_epi16(pl, sc), _mm512_madd_epi16(ph, sc)),
                );
            }
        }
        let dw = rows_f32(&d[sb]);
        for (t, acc) in acc.iter_mut().enumerate() {
            let dy = _mm512_set1_ps(acts[t * nsb + sb].d);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dw, dy), *acc);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = finish(a);
    }
}
