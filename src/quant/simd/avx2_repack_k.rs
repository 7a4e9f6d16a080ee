//! AVX2 kernels over the four-row K-quant layouts of `quant::repack_k`, for CPUs without
//! AVX-512: the same integer lanes and f32 steps as `repack_k::gemm_ref`, bit for bit.
//!
//! A 64-byte line holds four rows' sixteen bytes of one 32-weight chunk (one row per 128-bit
//! lane); AVX2 takes it as two 256-bit halves of two rows each. Per chunk and token,
//! `vpmaddubsw` of the unsigned weights (Q4_K's nibbles, Q6_K's q + 32) with the sixteen
//! broadcast activation bytes gives pairs in i16. Two such sets (Q4_K: an even and an odd
//! chunk; Q6_K: a chunk's low and high sixteens) are summed pairwise by one `vphaddw`, whose
//! eight i16 per row (each at most 4·15·128 or 4·63·128, within i16) are exactly the four
//! lanes of `gemm_ref` in halves; `vpmaddwd` with the two sub-block scales, replicated by a
//! byte shuffle, multiplies and completes them, into one i32 accumulator per token (AVX2's
//! sixteen registers hold four tokens' sums and their f32 totals without spilling). The
//! min (Q4_K) and offset (Q6_K) terms come from the activation sums with `vpmaddwd`; the f32
//! scaling happens once per super-block and token, as in the reference.
//!
//! Where the CPU has AVX-VNNI (`kernel_vnni`), the same source, instantiated by a macro with
//! `avxvnni` enabled, takes each chunk's (or sixteen's) four i32 per row with `vpdpbusd`,
//! packs two chunks' to i16 (`vpackssdw`, exact: at most 8·15·128 or 4·63·128) and multiplies
//! by the scales with `vpdpwssd`: the same lanes, as AVX-512 does. Its arithmetic is tested
//! through the EVEX-encoded twin (`kernel_vnni_evex`) on CPUs with AVX512-VNNI.

use core::arch::x86_64::*;

use super::{prefetch, prefetch_k, prefetch_l2};
use crate::quant::line64::Line64;
use crate::quant::repack_k::{ActK, GemmKFn};

/// Tokens per tile: one i32 sum per token beside the chunk pair's decoded weights; six
/// measured 3 % faster than four on 7B Q4_K_M prompts (AMD EPYC), their f32 totals spilled.
pub const TILE: usize = 6;

/// The packed K kernel, if this CPU has AVX2, FMA and F16C.
pub fn kernel() -> Option<GemmKFn> {
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Some(plain::gemm)
    } else {
        None
    }
}

/// The AVX-VNNI packed K kernel (VEX `vpdpbusd` and `vpdpwssd`), if this CPU has AVX-VNNI
/// besides AVX2, FMA and F16C.
pub fn kernel_vnni() -> Option<GemmKFn> {
    (kernel().is_some() && is_x86_feature_detected!("avxvnni")).then_some(vnni::gemm as GemmKFn)
}

/// The AVX-VNNI kernel's code with the EVEX encodings (AVX512-VNNI + VL), to test its
/// arithmetic on CPUs without AVX-VNNI; no kernel set uses it (see `avx2_repack16`).
pub fn kernel_vnni_evex() -> Option<GemmKFn> {
    (kernel().is_some()
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl"))
    .then_some(vnni_evex::gemm as GemmKFn)
}

/// `vpdpbusd` (VEX): i32 lanes += dots of four unsigned bytes of `u` with signed bytes of `s`.
#[inline]
#[target_feature(enable = "avx2,avxvnni")]
fn dpbusd_vex(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, u, s)
}

/// `vpdpwssd` (VEX): i32 lanes += the two i16 products of `a` and `b`.
#[inline]
#[target_feature(enable = "avx2,avxvnni")]
fn dpwssd_vex(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_avx_epi32(acc, a, b)
}

/// `vpdpbusd` (EVEX, 256-bit).
#[inline]
#[target_feature(enable = "avx2,avx512vnni,avx512vl")]
fn dpbusd_evex(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// `vpdpwssd` (EVEX, 256-bit).
#[inline]
#[target_feature(enable = "avx2,avx512vnni,avx512vl")]
fn dpwssd_evex(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, a, b)
}

/// Never called: the plain AVX2 kernels test `VNNI` (false) first.
#[inline]
#[target_feature(enable = "avx2")]
fn no_vnni(_: __m256i, _: __m256i, _: __m256i) -> __m256i {
    unreachable!("VNNI instruction in the plain AVX2 kernel")
}

/// Bytes 32·pair .. 32·pair + 32 of a line: rows 2·pair and 2·pair + 1.
///
/// # Safety
/// AVX2; pair < 2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn half(line: &Line64, pair: usize) -> __m256i {
    // SAFETY: a Line64 is 64 readable bytes.
    unsafe { _mm256_loadu_si256(line.0.as_ptr().add(32 * pair) as *const __m256i) }
}

/// Sixteen bytes at `at` of a line.
///
/// # Safety
/// SSE2; at + 16 ≤ 64.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn line16(line: &Line64, at: usize) -> __m128i {
    debug_assert!(at + 16 <= 64);
    // SAFETY: the caller keeps at + 16 within the line.
    unsafe { _mm_loadu_si128(line.0.as_ptr().add(at) as *const __m128i) }
}

/// Sixteen bytes at byte `at` of an activation block, in both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn bcast16(a: &ActK, at: usize) -> __m256i {
    debug_assert!(at + 16 <= 304);
    // SAFETY: an ActK is 320 bytes; callers read at most bytes 288..304.
    unsafe {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(
            (a as *const ActK as *const u8).add(at) as *const __m128i
        ))
    }
}

/// i16 elements `e` and `e + 1` (e < 7) of each 128-bit lane: [e ×4, e + 1 ×4] in that lane.
#[inline]
#[target_feature(enable = "avx2")]
fn spread16x2(v: __m256i, e: usize) -> __m256i {
    let (lo, hi) = (2 * e as i16, 2 * e as i16 + 1);
    let w0 = (hi << 8) | lo;
    let w1 = w0 + 0x0202;
    _mm256_shuffle_epi8(
        v,
        _mm256_setr_epi16(
            w0, w0, w0, w0, w1, w1, w1, w1, w0, w0, w0, w0, w1, w1, w1, w1,
        ),
    )
}

/// i16 element `e` (< 8) of each 128-bit lane, in all eight of that lane's.
#[inline]
#[target_feature(enable = "avx2")]
fn spread16(v: __m256i, e: usize) -> __m256i {
    let w = ((2 * e as i16 + 1) << 8) | (2 * e as i16);
    _mm256_shuffle_epi8(v, _mm256_set1_epi16(w))
}

/// Bit B of each byte of `h`, moved to bit 4 (Q5_K's fifth bits, `repack_k`'s lines 9-10).
#[inline]
#[target_feature(enable = "avx2")]
fn fifth<const B: i32>(h: __m256i) -> __m256i {
    // Shifts within 16-bit lanes: bit 4 of each byte comes from the same byte (B < 8).
    let v = match B {
        0 => _mm256_slli_epi16::<4>(h),
        1 => _mm256_slli_epi16::<3>(h),
        2 => _mm256_slli_epi16::<2>(h),
        3 => _mm256_slli_epi16::<1>(h),
        4 => h,
        5 => _mm256_srli_epi16::<1>(h),
        6 => _mm256_srli_epi16::<2>(h),
        _ => _mm256_srli_epi16::<3>(h),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(0x10))
}

/// The two rows' f16 values, each in four lanes: [a a a a | b b b b].
///
/// # Safety
/// AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_f32(v: &[half::f16; 4], pair: usize) -> __m256 {
    // SAFETY: `v` is 8 readable bytes.
    let v4 = _mm_cvtph_ps(unsafe { _mm_loadl_epi64(v.as_ptr() as *const __m128i) });
    let (a, b) = (2 * pair as i32, 2 * pair as i32 + 1);
    _mm256_permutevar8x32_ps(
        _mm256_castps128_ps256(v4),
        _mm256_setr_epi32(a, a, a, a, b, b, b, b),
    )
}

/// Each row's four lanes summed in `gemm_ref`'s order, into out[..][2·pair ..].
#[inline]
#[target_feature(enable = "avx2")]
fn finish(acc: __m256, pair: usize, out: &mut [f32; 4]) {
    let mut l = [0f32; 8];
    // SAFETY: `l` is 32 writable bytes.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    for i in 0..2 {
        out[2 * pair + i] = ((l[4 * i] + l[4 * i + 1]) + l[4 * i + 2]) + l[4 * i + 3];
    }
}

/// Prefetch of the super-block `ahead` lines on, for one token (the stream is the weights).
#[inline]
fn prefetch_ahead(qs: &[Line64], at: usize, n: usize) {
    let pf = prefetch_k();
    let p = qs.as_ptr().wrapping_add(at + pf.lines);
    if pf.l2 {
        prefetch_l2(p, n);
    } else {
        prefetch(p, n);
    }
}

/// The kernels whose code depends on the dot instructions, once per instruction set:
/// `$feat` the target features; with `$vnni`, `$dpb` (`vpdpbusd`) and `$dpw` (`vpdpwssd`)
/// replace `vpmaddubsw` + `vphaddw` + `vpmaddwd`.
macro_rules! k_kernels {
    ($name:ident, $feat:literal, $vnni:literal, $dpb:ident, $dpw:ident) => {
        mod $name {
            use core::arch::x86_64::*;

            use super::{
                bcast16, fifth, finish, half, line16, pair_f32, prefetch_ahead, spread16,
                spread16x2, TILE,
            };
            use crate::quant::iq4::KVALUES_IQ4NL;
            use crate::quant::line64::Line64;
            use crate::quant::repack_k::{ActK, KindK, PackedK};

            const VNNI: bool = $vnni;

            #[inline]
            #[target_feature(enable = $feat)]
            fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
                super::$dpb(acc, u, s)
            }

            #[inline]
            #[target_feature(enable = $feat)]
            fn dpw(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
                super::$dpw(acc, a, b)
            }

        /// Group `g` of `p` against `out.len()` tokens (`acts`: token-major, k/256 super-blocks each).
        pub(super) fn gemm(p: &PackedK, g: usize, acts: &[ActK], out: &mut [[f32; 4]]) {
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
            let m = if p.kind.has_min() {
                &p.m[g * nsb..(g + 1) * nsb]
            } else {
                &[][..]
            };
            for (chunk, o) in acts.chunks(TILE * nsb).zip(out.chunks_mut(TILE)) {
                // One token: both row pairs in one pass (each line read once, each activation
                // broadcast once). Tiles: a pair at a time, to keep the per-token sums in registers.
                if o.len() == 1 {
                    // SAFETY: the kernel's constructor checked the module's features; d, m: nsb
                    // entries of this group (m empty without mins), qs: lines·nsb, chunk: nsb
                    // blocks (checked above).
                    unsafe { tile::<1, 2>(p.kind, 0, d, m, qs, chunk, o) };
                    continue;
                }
                for pair in 0..2 {
                    // SAFETY (every arm): as above, with t·nsb activation blocks.
                    unsafe {
                        match o.len() {
                            2 => tile::<2, 1>(p.kind, pair, d, m, qs, chunk, o),
                            3 => tile::<3, 1>(p.kind, pair, d, m, qs, chunk, o),
                            4 => tile::<4, 1>(p.kind, pair, d, m, qs, chunk, o),
                            5 => tile::<5, 1>(p.kind, pair, d, m, qs, chunk, o),
                            6 => tile::<6, 1>(p.kind, pair, d, m, qs, chunk, o),
                            _ => unreachable!("K tiles hold 2..=6 tokens"),
                        }
                    }
                }
            }
        }

        /// The tile of `kind`.
        ///
        /// # Safety
        /// As the kinds' tiles.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn tile<const T: usize, const NP: usize>(
            kind: KindK,
            pair0: usize,
            d: &[[half::f16; 4]],
            m: &[[half::f16; 4]],
            qs: &[Line64],
            acts: &[ActK],
            out: &mut [[f32; 4]],
        ) {
            // SAFETY: the caller's contract.
            unsafe {
                match kind {
                    KindK::Q4_K => tile_q4_k::<T, NP, false>(pair0, d, m, qs, acts, out),
                    KindK::Q5_K => tile_q4_k::<T, NP, true>(pair0, d, m, qs, acts, out),
                    KindK::Q6_K => tile_q6_k::<T, NP>(pair0, d, qs, acts, out),
                    KindK::IQ4_XS => tile_iq4_xs::<T, NP>(pair0, d, qs, acts, out),
                }
            }
        }

        /// Q4_K (Q5_K where `Q5`), the row pairs pair0 .. pair0 + NP of a four-row group (rows
        /// 2·pair, 2·pair + 1), against T tokens.
        ///
        /// # Safety
        /// The module's features; d and m hold nsb entries, qs 9·nsb lines (Q5_K 11·nsb), acts
        /// T·nsb blocks, out T rows; pair0 + NP ≤ 2.
        #[inline(never)] // each kind and tile its own function, not all four inlined into `tile`
        #[target_feature(enable = $feat)]
        unsafe fn tile_q4_k<const T: usize, const NP: usize, const Q5: bool>(
            pair0: usize,
            d: &[[half::f16; 4]],
            m: &[[half::f16; 4]],
            qs: &[Line64],
            acts: &[ActK],
            out: &mut [[f32; 4]],
        ) {
            let nsb = d.len();
            let nl = if Q5 { 11 } else { 9 };
            assert!(m.len() == nsb && qs.len() == nl * nsb && acts.len() == T * nsb && out.len() == T);
            assert!(pair0 + NP <= 2);
            let m4 = _mm256_set1_epi8(0x0F);
            let mut acc = [[_mm256_setzero_ps(); T]; NP];
            for sb in 0..nsb {
                let l = &qs[nl * sb..nl * sb + nl];
                prefetch_ahead(qs, nl * sb, nl);
                // SAFETY (loads below): AVX2 (this function's features); offsets within the lines.
                // Each pair's sub-block scales as i16: [a's 8 | b's 8].
                let sc: [__m256i; NP] = core::array::from_fn(|i| {
                    _mm256_cvtepu8_epi16(unsafe { line16(&l[8], 16 * (pair0 + i)) })
                });
                let a: [&ActK; T] = core::array::from_fn(|t| &acts[t * nsb + sb]);
                let mut isum = [[_mm256_setzero_si256(); T]; NP];
                // Unrolled, so that each pair's scale shuffle is a constant and no branch remains.
                // Chunks 2j and 2j + 1 go together: `vphaddw` of their pair sums (each at most
                // 4·15·128, so two fit i16) gives per row [even bytes 0-3, 4-7, 8-11, 12-15, odd
                // …], and `vpmaddwd` with [even scale ×4, odd scale ×4] lands each in its lane of
                // `gemm_ref`: one accumulator per token instead of an even and an odd one.
                macro_rules! chunks {
                    ($j:literal) => {
                        for i in 0..NP {
                            let xe = unsafe { half(&l[2 * $j], pair0 + i) };
                            let xo = unsafe { half(&l[2 * $j + 1], pair0 + i) };
                            let (mut lo_e, mut hi_e) = (
                                _mm256_and_si256(xe, m4),
                                _mm256_and_si256(_mm256_srli_epi16(xe, 4), m4),
                            );
                            let (mut lo_o, mut hi_o) = (
                                _mm256_and_si256(xo, m4),
                                _mm256_and_si256(_mm256_srli_epi16(xo, 4), m4),
                            );
                            if Q5 {
                                // The fifth bits of chunks 2j and 2j + 1, moved to bit 4 (the
                                // stored values reach 31: a pair of pair sums, eight products,
                                // is at most 8·31·128, still within i16).
                                let hb = unsafe { half(&l[9 + $j / 2], pair0 + i) };
                                lo_e = _mm256_or_si256(lo_e, fifth::<{ 2 * ((2 * $j) % 4) }>(hb));
                                hi_e = _mm256_or_si256(hi_e, fifth::<{ 2 * ((2 * $j) % 4) + 1 }>(hb));
                                lo_o = _mm256_or_si256(lo_o, fifth::<{ 2 * ((2 * $j + 1) % 4) }>(hb));
                                hi_o = _mm256_or_si256(hi_o, fifth::<{ 2 * ((2 * $j + 1) % 4) + 1 }>(hb));
                            }
                            let s = spread16x2(sc[i], 2 * $j);
                            for t in 0..T {
                                if VNNI {
                                    // Each chunk's four i32 per row (at most 8·15·128) packed to
                                    // i16 as [even's 4, odd's 4], then `vpdpwssd` with the scales:
                                    // the same lanes as `vphaddw` + `vpmaddwd` below.
                                    let z = _mm256_setzero_si256();
                                    let de = dp(dp(z, lo_e, bcast16(a[t], 64 * $j)), hi_e, bcast16(a[t], 64 * $j + 16));
                                    let do_ = dp(dp(z, lo_o, bcast16(a[t], 64 * $j + 32)), hi_o, bcast16(a[t], 64 * $j + 48));
                                    isum[i][t] = dpw(isum[i][t], _mm256_packs_epi32(de, do_), s);
                                    continue;
                                }
                                let pe = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(lo_e, bcast16(a[t], 64 * $j)),
                                    _mm256_maddubs_epi16(hi_e, bcast16(a[t], 64 * $j + 16)),
                                );
                                let po = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(lo_o, bcast16(a[t], 64 * $j + 32)),
                                    _mm256_maddubs_epi16(hi_o, bcast16(a[t], 64 * $j + 48)),
                                );
                                let h = _mm256_hadd_epi16(pe, po);
                                isum[i][t] = _mm256_add_epi32(isum[i][t], _mm256_madd_epi16(h, s));
                            }
                        }
                    };
                }
                chunks!(0);
                chunks!(1);
                chunks!(2);
                chunks!(3);
                for i in 0..NP {
                    let pair = pair0 + i;
                    let mn = _mm256_cvtepu8_epi16(unsafe { line16(&l[8], 32 + 16 * pair) });
                    let (dw, mw) = (unsafe { pair_f32(&d[sb], pair) }, unsafe {
                        pair_f32(&m[sb], pair)
                    });
                    for t in 0..T {
                        let a = a[t];
                        let imin = _mm256_madd_epi16(mn, bcast16(a, 288));
                        let dy = _mm256_set1_ps(a.d);
                        let f = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(isum[i][t]),
                            _mm256_mul_ps(dw, dy),
                            acc[i][t],
                        );
                        acc[i][t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(mw, dy), f);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (o, &a) in out.iter_mut().zip(acc) {
                    finish(a, pair0 + i, o);
                }
            }
        }

        /// Q6_K, the row pairs pair0 .. pair0 + NP of a four-row group, against T tokens.
        ///
        /// # Safety
        /// The module's features; d holds nsb entries, qs 13·nsb lines, acts T·nsb blocks, out T rows;
        /// pair0 + NP ≤ 2.
        #[inline(never)] // each kind and tile its own function, not all four inlined into `tile`
        #[target_feature(enable = $feat)]
        unsafe fn tile_q6_k<const T: usize, const NP: usize>(
            pair0: usize,
            d: &[[half::f16; 4]],
            qs: &[Line64],
            acts: &[ActK],
            out: &mut [[f32; 4]],
        ) {
            let nsb = d.len();
            assert!(qs.len() == 13 * nsb && acts.len() == T * nsb && out.len() == T);
            assert!(pair0 + NP <= 2);
            let m4 = _mm256_set1_epi8(0x0F);
            let m30 = _mm256_set1_epi8(0x30);
            let mut acc = [[_mm256_setzero_ps(); T]; NP];
            for sb in 0..nsb {
                let l = &qs[13 * sb..13 * sb + 13];
                prefetch_ahead(qs, 13 * sb, 13);
                let a: [&ActK; T] = core::array::from_fn(|t| &acts[t * nsb + sb]);
                let mut isum = [[_mm256_setzero_si256(); T]; NP];
                // Unrolled, so that shifts, scale shuffles and offsets are constants. Per chunk,
                // `vphaddw` of the low and high sixteens' pair sums (each at most 2·63·128, so two
                // fit i16) gives per row [low bytes 0-3, 4-7, 8-11, 12-15, high …], and `vpmaddwd`
                // with [low scale ×4, high scale ×4] lands each in its lane of `gemm_ref`.
                macro_rules! chunk {
                    ($c:literal) => {
                        for i in 0..NP {
                            let pair = pair0 + i;
                            // SAFETY (loads below): AVX2 (this function's features); offsets within
                            // the lines. Sixteen-weight scales (i8) as i16, of sub-blocks 0..8
                            // (chunks 0..4) or 8..16: [a's 8 | b's 8].
                            let scs =
                                _mm256_cvtepi8_epi16(unsafe { line16(&l[12], 32 * ($c / 4) + 16 * pair) });
                            let x = unsafe { half(&l[$c], pair) };
                            let h = unsafe { half(&l[8 + $c / 2], pair) };
                            // Chunk c = 2p + u: its low sixteen's high bits at shift 4u, the high
                            // sixteen's at 4u + 2.
                            let (hl, hh) = if $c % 2 == 0 {
                                (_mm256_slli_epi16(h, 4), _mm256_slli_epi16(h, 2))
                            } else {
                                (h, _mm256_srli_epi16(h, 2))
                            };
                            let lo = _mm256_or_si256(_mm256_and_si256(x, m4), _mm256_and_si256(hl, m30));
                            let hi = _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(x, 4), m4),
                                _mm256_and_si256(hh, m30),
                            );
                            let s = spread16x2(scs, (2 * $c) % 8);
                            for t in 0..T {
                                if VNNI {
                                    // The low and high sixteens' four i32 per row (at most
                                    // 4·63·128) packed to i16, then `vpdpwssd` with the scales.
                                    let z = _mm256_setzero_si256();
                                    let vl = dp(z, lo, bcast16(a[t], 32 * $c));
                                    let vh = dp(z, hi, bcast16(a[t], 32 * $c + 16));
                                    isum[i][t] = dpw(isum[i][t], _mm256_packs_epi32(vl, vh), s);
                                    continue;
                                }
                                let hs = _mm256_hadd_epi16(
                                    _mm256_maddubs_epi16(lo, bcast16(a[t], 32 * $c)),
                                    _mm256_maddubs_epi16(hi, bcast16(a[t], 32 * $c + 16)),
                                );
                                isum[i][t] = _mm256_add_epi32(isum[i][t], _mm256_madd_epi16(hs, s));
                            }
                        }
                    };
                }
                chunk!(0);
                chunk!(1);
                chunk!(2);
                chunk!(3);
                chunk!(4);
                chunk!(5);
                chunk!(6);
                chunk!(7);
                // Each row's sixteen scales as i16, for the offset term.
                let row_scales = |r: usize| {
                    // SAFETY: bytes 8r .. 8r + 8 and 32 + 8r .. 32 + 8r + 8 of line 12 (r < 4).
                    unsafe {
                        let lo = _mm_loadl_epi64(l[12].0.as_ptr().add(8 * r) as *const __m128i);
                        let hi = _mm_loadl_epi64(l[12].0.as_ptr().add(32 + 8 * r) as *const __m128i);
                        _mm256_cvtepi8_epi16(_mm_unpacklo_epi64(lo, hi))
                    }
                };
                for i in 0..NP {
                    let pair = pair0 + i;
                    // SAFETY: AVX2, F16C (this function's features).
                    let dw = unsafe { pair_f32(&d[sb], pair) };
                    let (sa, sb16) = (row_scales(2 * pair), row_scales(2 * pair + 1));
                    for t in 0..T {
                        let a = a[t];
                        // SAFETY: bsums are the 32 bytes at 256 of the 320-byte block.
                        let bs = unsafe {
                            _mm256_loadu_si256((a as *const ActK as *const u8).add(256) as *const __m256i)
                        };
                        let (xa, xb) = (_mm256_madd_epi16(sa, bs), _mm256_madd_epi16(sb16, bs));
                        let ioff = _mm256_add_epi32(
                            _mm256_permute2x128_si256(xa, xb, 0x20),
                            _mm256_permute2x128_si256(xa, xb, 0x31),
                        );
                        let v = _mm256_sub_epi32(isum[i][t], _mm256_slli_epi32(ioff, 5));
                        let dd = _mm256_mul_ps(dw, _mm256_set1_ps(a.d));
                        acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), dd, acc[i][t]);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (o, &a) in out.iter_mut().zip(acc) {
                    finish(a, pair0 + i, o);
                }
            }
        }

        /// IQ4_XS, the row pairs pair0 .. pair0 + NP of a four-row group, against T tokens. The
        /// levels come from a 16-byte table (`vpshufb`); each chunk's low and high sixteens give
        /// pair sums |w|·(a with w's sign) (`vpsignb`: exact, as the quants are within ±127, so
        /// at most 2·127·127 each), multiplied by the sub-block's scale into the lanes of
        /// `gemm_ref` (`vpmaddwd`). The same in every expansion: `vpdpbusd`'s four-product sums
        /// would overflow the i16 that `vpdpwssd` takes.
        ///
        /// # Safety
        /// The module's features; d holds nsb entries, qs 9·nsb lines, acts T·nsb blocks, out T
        /// rows; pair0 + NP ≤ 2.
        #[inline(never)] // each kind and tile its own function, not all four inlined into `tile`
        #[target_feature(enable = $feat)]
        unsafe fn tile_iq4_xs<const T: usize, const NP: usize>(
            pair0: usize,
            d: &[[half::f16; 4]],
            qs: &[Line64],
            acts: &[ActK],
            out: &mut [[f32; 4]],
        ) {
            let nsb = d.len();
            assert!(qs.len() == 9 * nsb && acts.len() == T * nsb && out.len() == T);
            assert!(pair0 + NP <= 2);
            let m4 = _mm256_set1_epi8(0x0F);
            // SAFETY: the table is 16 bytes.
            let tbl = _mm256_broadcastsi128_si256(unsafe {
                _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i)
            });
            let mut acc = [[_mm256_setzero_ps(); T]; NP];
            for sb in 0..nsb {
                let l = &qs[9 * sb..9 * sb + 9];
                prefetch_ahead(qs, 9 * sb, 9);
                let a: [&ActK; T] = core::array::from_fn(|t| &acts[t * nsb + sb]);
                // SAFETY (loads below): AVX2 (this function's features); offsets within the lines.
                // Each pair's sub-block scales (i8) as i16: [a's 8 | b's 8].
                let sc: [__m256i; NP] = core::array::from_fn(|i| {
                    _mm256_cvtepi8_epi16(unsafe { line16(&l[8], 16 * (pair0 + i)) })
                });
                let mut isum = [[_mm256_setzero_si256(); T]; NP];
                macro_rules! chunk {
                    ($c:literal) => {
                        for i in 0..NP {
                            let x = unsafe { half(&l[$c], pair0 + i) };
                            let lo = _mm256_shuffle_epi8(tbl, _mm256_and_si256(x, m4));
                            let hi = _mm256_shuffle_epi8(
                                tbl,
                                _mm256_and_si256(_mm256_srli_epi16(x, 4), m4),
                            );
                            let (alo, ahi) = (_mm256_abs_epi8(lo), _mm256_abs_epi8(hi));
                            let s = spread16(sc[i], $c);
                            for t in 0..T {
                                let pl = _mm256_maddubs_epi16(
                                    alo,
                                    _mm256_sign_epi8(bcast16(a[t], 32 * $c), lo),
                                );
                                let ph = _mm256_maddubs_epi16(
                                    ahi,
                                    _mm256_sign_epi8(bcast16(a[t], 32 * $c + 16), hi),
                                );
                                isum[i][t] = _mm256_add_epi32(
                                    isum[i][t],
                                    _mm256_add_epi32(_mm256_madd_epi16(pl, s), _mm256_madd_epi16(ph, s)),
                                );
                            }
                        }
                    };
                }
                chunk!(0);
                chunk!(1);
                chunk!(2);
                chunk!(3);
                chunk!(4);
                chunk!(5);
                chunk!(6);
                chunk!(7);
                for i in 0..NP {
                    // SAFETY: AVX2, F16C (this function's features).
                    let dw = unsafe { pair_f32(&d[sb], pair0 + i) };
                    for t in 0..T {
                        let dd = _mm256_mul_ps(dw, _mm256_set1_ps(a[t].d));
                        acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i][t]), dd, acc[i][t]);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (o, &a) in out.iter_mut().zip(acc) {
                    finish(a, pair0 + i, o);
                }
            }
        }

        }
    };
}

k_kernels!(plain, "avx2,fma,f16c", false, no_vnni, no_vnni);
k_kernels!(vnni, "avx2,fma,f16c,avxvnni", true, dpbusd_vex, dpwssd_vex);
k_kernels!(
    vnni_evex,
    "avx2,fma,f16c,avx512vnni,avx512vl",
    true,
    dpbusd_evex,
    dpwssd_evex
);
