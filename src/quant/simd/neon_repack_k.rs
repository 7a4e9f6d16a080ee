//! NEON DotProd kernels over the four-row K-quant layouts of `quant::repack_k` (Q4_K, Q5_K,
//! Q6_K, IQ4_XS),
//! for ARM CPUs with `sdot` (Raspberry Pi 5, Graviton 2+, Apple M): the same integer lanes
//! and f32 steps as `repack_k::gemm_ref`, bit for bit.
//!
//! A 64-byte line holds four rows' sixteen bytes of one 32-weight chunk, one row per 128-bit
//! quarter: a quarter is one NEON register. Per chunk, row and token, two `sdot`s (the low
//! and the high sixteen weights against their sixteen activation bytes) give four exact i32
//! (bytes 4m .. 4m + 4 of the row's sixteen), multiplied by the sub-block scale (`mla`).
//! Q4_K's even and odd chunks, Q6_K's low and high sixteens, are accumulated apart so that one
//! pairwise add (`addp`) per super-block lands the sums in `gemm_ref`'s four lanes per row;
//! the min (Q4_K) and offset (Q6_K) terms come from the activation sums with widening
//! multiplies and pairwise adds. The weights (nibbles; Q5_K's ≤ 31, Q6_K's q + 32 ≤ 63) are
//! non-negative and fit `sdot`'s signed bytes; IQ4_XS's levels (from a table, `tbl`) are
//! signed bytes already, so its chunks' two `sdot`s are its lanes, times the scale (`mla`).

use core::arch::aarch64::*;

use super::neon_f16::h2f;
use super::neon_repack16::sdot;
use crate::quant::iq4::KVALUES_IQ4NL;
use crate::quant::line64::Line64;
use crate::quant::repack_k::{ActK, GemmKFn, KindK, PackedK};

/// Tokens per tile.
pub const TILE: usize = 4;

/// The NEON packed K kernel, if this CPU has DotProd.
pub fn kernel() -> Option<GemmKFn> {
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        Some(gemm)
    } else {
        None
    }
}

/// Group `g` of `p` against `out.len()` tokens (`acts`: token-major, k/256 super-blocks each).
pub(crate) fn gemm(p: &PackedK, g: usize, acts: &[ActK], out: &mut [[f32; 4]]) {
    assert!(
        std::arch::is_aarch64_feature_detected!("dotprod"),
        "neon K kernel on a CPU without dotprod"
    );
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
        for r in 0..4 {
            macro_rules! tile {
                ($($t:literal)*) => {
                    match (p.kind, o.len()) {
                        $((KindK::Q4_K, $t) => {
                            // SAFETY: DotProd asserted above; d, m: nsb entries of this
                            // group, qs: 9·nsb lines, chunk: t·nsb blocks (checked above).
                            unsafe { row_q4_k::<$t, false>(r, d, m, qs, chunk, o) }
                        })*
                        $((KindK::Q5_K, $t) => {
                            // SAFETY: as above, with 11·nsb lines.
                            unsafe { row_q4_k::<$t, true>(r, d, m, qs, chunk, o) }
                        })*
                        $((KindK::IQ4_XS, $t) => {
                            // SAFETY: as above, with 9·nsb lines and no mins.
                            unsafe { row_iq4_xs::<$t>(r, d, qs, chunk, o) }
                        })*
                        $((KindK::Q6_K, $t) => {
                            // SAFETY: as above, with 13·nsb lines.
                            unsafe { row_q6_k::<$t>(r, d, qs, chunk, o) }
                        })*
                        _ => unreachable!("K tiles hold 1..=4 tokens"),
                    }
                };
            }
            tile!(1 2 3 4);
        }
    }
}

/// Row r's sixteen bytes of a line.
///
/// # Safety
/// r < 4.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn quarter(line: &Line64, r: usize) -> uint8x16_t {
    // SAFETY: a Line64 is 64 readable bytes; the caller keeps r < 4.
    unsafe { vld1q_u8(line.0.as_ptr().add(16 * r)) }
}

/// Sixteen activation quants at byte `at`.
#[inline]
#[target_feature(enable = "neon")]
fn act16(a: &ActK, at: usize) -> int8x16_t {
    debug_assert!(at + 16 <= 256);
    // SAFETY: `at + 16 ≤ 256`, within the quants.
    unsafe { vld1q_s8(a.qs.as_ptr().add(at)) }
}

/// The row's four lanes summed in `gemm_ref`'s order.
#[inline]
#[target_feature(enable = "neon")]
fn finish(acc: float32x4_t) -> f32 {
    ((vgetq_lane_f32::<0>(acc) + vgetq_lane_f32::<1>(acc)) + vgetq_lane_f32::<2>(acc))
        + vgetq_lane_f32::<3>(acc)
}

/// Q4_K (Q5_K where `Q5`), row r of a four-row group, against T tokens.
///
/// # Safety
/// DotProd; d and m hold nsb entries, qs 9·nsb lines (Q5_K 11·nsb), acts T·nsb blocks, out T
/// rows; r < 4.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn row_q4_k<const T: usize, const Q5: bool>(
    r: usize,
    d: &[[half::f16; 4]],
    m: &[[half::f16; 4]],
    qs: &[Line64],
    acts: &[ActK],
    out: &mut [[f32; 4]],
) {
    let nsb = d.len();
    let nl = if Q5 { 11 } else { 9 };
    assert!(m.len() == nsb && qs.len() == nl * nsb && acts.len() == T * nsb && out.len() == T);
    assert!(r < 4);
    let m4 = vdupq_n_u8(0x0F);
    let m10 = vdupq_n_u8(0x10);
    let mut acc = [vdupq_n_f32(0.0); T];
    for sb in 0..nsb {
        let l = &qs[nl * sb..nl * sb + nl];
        let a: [&ActK; T] = core::array::from_fn(|t| &acts[t * nsb + sb]);
        let sc = &l[8].0[8 * r..8 * r + 8];
        let mut even = [vdupq_n_s32(0); T];
        let mut odd = [vdupq_n_s32(0); T];
        for c in 0..8 {
            // SAFETY: r < 4 (asserted).
            let x = unsafe { quarter(&l[c], r) };
            let (mut lo, mut hi) = (vandq_u8(x, m4), vshrq_n_u8::<4>(x));
            if Q5 {
                // The fifth bits: bit 2(c % 4) (low sixteen) and the next (high), to bit 4
                // (`vshl` by a negative count shifts right).
                // SAFETY: r < 4 (asserted).
                let h = unsafe { quarter(&l[9 + c / 4], r) };
                let b = 2 * (c % 4) as i8;
                lo = vorrq_u8(lo, vandq_u8(vshlq_u8(h, vdupq_n_s8(4 - b)), m10));
                hi = vorrq_u8(hi, vandq_u8(vshlq_u8(h, vdupq_n_s8(3 - b)), m10));
            }
            let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
            let s = sc[c] as i32;
            for t in 0..T {
                let v = sdot(
                    sdot(vdupq_n_s32(0), lo, act16(a[t], 32 * c)),
                    hi,
                    act16(a[t], 32 * c + 16),
                );
                if c % 2 == 0 {
                    even[t] = vmlaq_n_s32(even[t], v, s);
                } else {
                    odd[t] = vmlaq_n_s32(odd[t], v, s);
                }
            }
        }
        // SAFETY: bytes 32 + 8r .. 32 + 8r + 8 of line 8 (r < 4).
        let mn = vreinterpretq_s16_u16(vmovl_u8(unsafe {
            vld1_u8(l[8].0.as_ptr().add(32 + 8 * r))
        }));
        let (dw, mw) = (h2f(d[sb][r]), h2f(m[sb][r]));
        for t in 0..T {
            let isum = vpaddq_s32(even[t], odd[t]);
            // SAFETY: sums32 is eight readable i16.
            let s32 = unsafe { vld1q_s16(a[t].sums32.as_ptr()) };
            let imin = vpaddq_s32(
                vmull_s16(vget_low_s16(mn), vget_low_s16(s32)),
                vmull_high_s16(mn, s32),
            );
            let dd = vdupq_n_f32(dw * a[t].d);
            let dm = vdupq_n_f32(mw * a[t].d);
            acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(isum), dd);
            acc[t] = vfmsq_f32(acc[t], vcvtq_f32_s32(imin), dm);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        o[r] = finish(a);
    }
}

/// Q6_K, row r of a four-row group, against T tokens.
///
/// # Safety
/// DotProd; d holds nsb entries, qs 13·nsb lines, acts T·nsb blocks, out T rows; r < 4.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn row_q6_k<const T: usize>(
    r: usize,
    d: &[[half::f16; 4]],
    qs: &[Line64],
    acts: &[ActK],
    out: &mut [[f32; 4]],
) {
    let nsb = d.len();
    assert!(qs.len() == 13 * nsb && acts.len() == T * nsb && out.len() == T);
    assert!(r < 4);
    let m4 = vdupq_n_u8(0x0F);
    let m30 = vdupq_n_u8(0x30);
    let mut acc = [vdupq_n_f32(0.0); T];
    for sb in 0..nsb {
        let l = &qs[13 * sb..13 * sb + 13];
        let a: [&ActK; T] = core::array::from_fn(|t| &acts[t * nsb + sb]);
        // The row's sixteen-weight scales: 0..8 at bytes 8r.., 8..16 at 32 + 8r...
        let sc = |s: usize| {
            let at = if s < 8 { 8 * r + s } else { 32 + 8 * r + s - 8 };
            l[12].0[at] as i8 as i32
        };
        let mut lows = [vdupq_n_s32(0); T];
        let mut highs = [vdupq_n_s32(0); T];
        macro_rules! chunk {
            ($c:literal) => {{
                // SAFETY: r < 4 (asserted).
                let x = unsafe { quarter(&l[$c], r) };
                let h = unsafe { quarter(&l[8 + $c / 2], r) };
                // Chunk c = 2p + u: its low sixteen's high bits at shift 4u, the high
                // sixteen's at 4u + 2.
                let (hl, hh) = if $c % 2 == 0 {
                    (vshlq_n_u8::<4>(h), vshlq_n_u8::<2>(h))
                } else {
                    (h, vshrq_n_u8::<2>(h))
                };
                let lo = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(x, m4), vandq_u8(hl, m30)));
                let hi = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8::<4>(x), vandq_u8(hh, m30)));
                let (s_lo, s_hi) = (sc(2 * $c), sc(2 * $c + 1));
                for t in 0..T {
                    let vl = sdot(vdupq_n_s32(0), lo, act16(a[t], 32 * $c));
                    let vh = sdot(vdupq_n_s32(0), hi, act16(a[t], 32 * $c + 16));
                    lows[t] = vmlaq_n_s32(lows[t], vl, s_lo);
                    highs[t] = vmlaq_n_s32(highs[t], vh, s_hi);
                }
            }};
        }
        chunk!(0);
        chunk!(1);
        chunk!(2);
        chunk!(3);
        chunk!(4);
        chunk!(5);
        chunk!(6);
        chunk!(7);
        // SAFETY: bytes 8r .. 8r + 8 and 32 + 8r .. 32 + 8r + 8 of line 12 (r < 4).
        let (s0, s1) = unsafe {
            (
                vmovl_s8(vld1_s8(l[12].0.as_ptr().add(8 * r) as *const i8)),
                vmovl_s8(vld1_s8(l[12].0.as_ptr().add(32 + 8 * r) as *const i8)),
            )
        };
        let dw = h2f(d[sb][r]);
        for t in 0..T {
            let isum = vpaddq_s32(lows[t], highs[t]);
            // SAFETY: bsums is sixteen readable i16.
            let (b0, b1) = unsafe {
                (
                    vld1q_s16(a[t].bsums.as_ptr()),
                    vld1q_s16(a[t].bsums.as_ptr().add(8)),
                )
            };
            // Lane q: scales 2q, 2q + 1, 8 + 2q, 9 + 2q times their sums, as gemm_ref.
            let p0 = vpaddq_s32(
                vmull_s16(vget_low_s16(s0), vget_low_s16(b0)),
                vmull_high_s16(s0, b0),
            );
            let p1 = vpaddq_s32(
                vmull_s16(vget_low_s16(s1), vget_low_s16(b1)),
                vmull_high_s16(s1, b1),
            );
            let ioff = vaddq_s32(p0, p1);
            let v = vsubq_s32(isum, vshlq_n_s32::<5>(ioff));
            let dd = vdupq_n_f32(dw * a[t].d);
            acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(v), dd);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        o[r] = finish(a);
    }
}

/// IQ4_XS, row r of a four-row group, against T tokens.
///
/// # Safety
/// DotProd; d holds nsb entries, qs 9·nsb lines, acts T·nsb blocks, out T rows; r < 4.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn row_iq4_xs<const T: usize>(
    r: usize,
    d: &[[half::f16; 4]],
    qs: &[Line64],
    acts: &[ActK],
    out: &mut [[f32; 4]],
) {
    let nsb = d.len();
    assert!(qs.len() == 9 * nsb && acts.len() == T * nsb && out.len() == T);
    assert!(r < 4);
    let m4 = vdupq_n_u8(0x0F);
    // SAFETY: the table is 16 bytes.
    let tbl = unsafe { vld1q_s8(KVALUES_IQ4NL.as_ptr()) };
    let mut acc = [vdupq_n_f32(0.0); T];
    for sb in 0..nsb {
        let l = &qs[9 * sb..9 * sb + 9];
        let a: [&ActK; T] = core::array::from_fn(|t| &acts[t * nsb + sb]);
        let mut isum = [vdupq_n_s32(0); T];
        for c in 0..8 {
            // SAFETY: r < 4 (asserted).
            let x = unsafe { quarter(&l[c], r) };
            let lo = vqtbl1q_s8(tbl, vandq_u8(x, m4));
            let hi = vqtbl1q_s8(tbl, vshrq_n_u8::<4>(x));
            let s = l[8].0[8 * r + c] as i8 as i32;
            for t in 0..T {
                let v = sdot(
                    sdot(vdupq_n_s32(0), lo, act16(a[t], 32 * c)),
                    hi,
                    act16(a[t], 32 * c + 16),
                );
                isum[t] = vmlaq_n_s32(isum[t], v, s);
            }
        }
        let dw = h2f(d[sb][r]);
        for t in 0..T {
            let dd = vdupq_n_f32(dw * a[t].d);
            acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(isum[t]), dd);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        o[r] = finish(a);
    }
}
