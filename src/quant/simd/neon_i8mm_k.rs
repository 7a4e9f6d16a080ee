//! NEON prompt kernels with the Int8 Matrix Multiply extension (`smmla`) over the four-row
//! K-quant layouts of `quant::repack_k` (Q4_K, Q6_K): the same integer lanes and f32 steps as
//! `repack_k::gemm_ref`, bit for bit.
//!
//! A line holds one row's sixteen bytes of a 32-weight chunk per 128-bit quarter. Zipping the
//! 64-bit halves of two rows' quarters gives `smmla`'s 2×8 operand: two rows' eight
//! consecutive bytes; two tokens' eight activation bytes are the other. Each reference lane q
//! of a row holds eight of each chunk's bytes (Q4_K: bytes 8·(q % 2) .. of the even chunks for
//! q < 2, of the odd ones for q ≥ 2, low and high nibbles; Q6_K: weights 32c + 8q ..), so one
//! `smmla` chain per lane gives that lane's chunk sum for 2 rows × 2 tokens, and one `mla`
//! with the rows' sub-block scales ([s₀, s₀, s₁, s₁]) accumulates it: the lanes stay in the
//! 2×2 order [row 0 · token 0, row 0 · token 1, row 1 · token 0, row 1 · token 1]. The min
//! (Q4_K) and offset (Q6_K) terms are computed per row and token over the lanes, as in the
//! DotProd kernel, and transposed into the same order. The f32 steps per lane are the
//! reference's, and each (row, token)'s four lanes are summed in its order. A tile's odd last
//! token, and one-token decode, go to the DotProd kernel (`neon_repack_k`).

use core::arch::aarch64::*;
use core::arch::asm;

use super::neon_f16::h2f;
use super::neon_repack_k;
use crate::quant::line64::Line64;
use crate::quant::repack_k::{ActK, GemmKFn, KindK, PackedK};

/// Tokens per tile: two pairs.
pub const TILE: usize = 4;

/// Whether this CPU runs the kernel: I8MM, and DotProd for the odd tokens.
pub fn supported() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
        && std::arch::is_aarch64_feature_detected!("i8mm")
}

/// The I8MM packed K kernel, if this CPU has I8MM and DotProd.
pub fn kernel() -> Option<GemmKFn> {
    supported().then_some(gemm as GemmKFn)
}

/// Group `g` of `p` against `out.len()` tokens (`acts`: token-major, k/256 super-blocks each).
fn gemm(p: &PackedK, g: usize, acts: &[ActK], out: &mut [[f32; 4]]) {
    assert!(supported(), "i8mm K kernel on a CPU without i8mm");
    if !matches!(p.kind, KindK::Q4_K | KindK::Q6_K) {
        // No `smmla` kernels for Q5_K and IQ4_XS yet: the DotProd ones.
        return neon_repack_k::gemm(p, g, acts, out);
    }
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
    let m = match p.kind {
        KindK::Q4_K => &p.m[g * nsb..(g + 1) * nsb],
        _ => &[][..],
    };
    for (chunk, o) in acts.chunks(TILE * nsb).zip(out.chunks_mut(TILE)) {
        let pairs = o.len() / 2;
        let (ce, co) = chunk.split_at(2 * pairs * nsb);
        let (oe, oo) = o.split_at_mut(2 * pairs);
        for h in 0..2 {
            // SAFETY (every call): I8MM and DotProd asserted above; d, m: nsb entries of this
            // group, qs: 9·nsb (Q4_K) or 13·nsb (Q6_K) lines, ce: 2·pairs·nsb blocks, oe:
            // 2·pairs rows (checked above); h < 2.
            unsafe {
                match (p.kind, pairs) {
                    (_, 0) => {}
                    (KindK::Q4_K, 1) => pair_q4_k::<1>(h, d, m, qs, ce, oe),
                    (KindK::Q4_K, 2) => pair_q4_k::<2>(h, d, m, qs, ce, oe),
                    (KindK::Q6_K, 1) => pair_q6_k::<1>(h, d, qs, ce, oe),
                    (KindK::Q6_K, 2) => pair_q6_k::<2>(h, d, qs, ce, oe),
                    _ => unreachable!("K tiles hold at most {TILE} tokens"),
                }
            }
        }
        if !oo.is_empty() {
            for r in 0..4 {
                // SAFETY: as above, with co: nsb blocks and oo one row; r < 4.
                unsafe {
                    match p.kind {
                        KindK::Q4_K => neon_repack_k::row_q4_k::<1, false>(r, d, m, qs, co, oo),
                        KindK::Q6_K => neon_repack_k::row_q6_k::<1>(r, d, qs, co, oo),
                        _ => unreachable!("only Q4_K and Q6_K get here (checked above)"),
                    }
                }
            }
        }
    }
}

/// `smmla`: acc (2×2, row-major) += a (2×8) · bᵀ (b: 2×8), signed bytes, i32 sums.
#[inline]
#[target_feature(enable = "neon,i8mm")]
fn smmla(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: registers only; the caller runs with `i8mm` (its target feature, checked at
    // run time before any kernel is entered).
    unsafe {
        asm!(
            "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
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

/// `smmla`'s weight operands from two rows' sixteen bytes: [bytes 0..8 of each, bytes 8..16].
#[inline]
#[target_feature(enable = "neon")]
fn zip_rows(x0: uint8x16_t, x1: uint8x16_t) -> [int8x16_t; 2] {
    let (a, b) = (vreinterpretq_u64_u8(x0), vreinterpretq_u64_u8(x1));
    [
        vreinterpretq_s8_u64(vzip1q_u64(a, b)),
        vreinterpretq_s8_u64(vzip2q_u64(a, b)),
    ]
}

/// Two tokens' eight activation bytes at `at`: [token 0's, token 1's].
#[inline]
#[target_feature(enable = "neon")]
fn act_pair(a0: &ActK, a1: &ActK, at: usize) -> int8x16_t {
    debug_assert!(at + 8 <= 256);
    // SAFETY: `at + 8 ≤ 256`, within the quants.
    unsafe {
        vcombine_s8(
            vld1_s8(a0.qs.as_ptr().add(at)),
            vld1_s8(a1.qs.as_ptr().add(at)),
        )
    }
}

/// [u, u, v, v]: two rows' values in the 2×2 lane order.
#[inline]
#[target_feature(enable = "neon")]
fn rows_i32(u: i32, v: i32) -> int32x4_t {
    vcombine_s32(vdup_n_s32(u), vdup_n_s32(v))
}

/// The 2×2-order vector of f32 products row value × token value.
#[inline]
#[target_feature(enable = "neon")]
fn outer(r0: f32, r1: f32, t0: f32, t1: f32) -> float32x4_t {
    let l = [r0 * t0, r0 * t1, r1 * t0, r1 * t1];
    // SAFETY: `l` is 16 readable bytes.
    unsafe { vld1q_f32(l.as_ptr()) }
}

/// Four per-(row, token) vectors over the lanes q (order r0t0, r0t1, r1t0, r1t1) as four
/// per-lane vectors in the 2×2 order.
#[inline]
#[target_feature(enable = "neon")]
fn transpose(v: [int32x4_t; 4]) -> [int32x4_t; 4] {
    let t0 = vtrn1q_s32(v[0], v[1]);
    let t1 = vtrn2q_s32(v[0], v[1]);
    let t2 = vtrn1q_s32(v[2], v[3]);
    let t3 = vtrn2q_s32(v[2], v[3]);
    let (t0, t1, t2, t3) = (
        vreinterpretq_s64_s32(t0),
        vreinterpretq_s64_s32(t1),
        vreinterpretq_s64_s32(t2),
        vreinterpretq_s64_s32(t3),
    );
    [
        vreinterpretq_s32_s64(vzip1q_s64(t0, t2)),
        vreinterpretq_s32_s64(vzip1q_s64(t1, t3)),
        vreinterpretq_s32_s64(vzip2q_s64(t0, t2)),
        vreinterpretq_s32_s64(vzip2q_s64(t1, t3)),
    ]
}

/// Each (row, token)'s four lanes summed in `gemm_ref`'s order, into out[2p ..][2h ..].
#[inline]
#[target_feature(enable = "neon")]
fn finish(acc: &[float32x4_t; 4], h: usize, p: usize, out: &mut [[f32; 4]]) {
    let s = vaddq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), acc[2]), acc[3]);
    let mut l = [0f32; 4];
    // SAFETY: `l` is 16 writable bytes.
    unsafe { vst1q_f32(l.as_mut_ptr(), s) };
    out[2 * p][2 * h] = l[0];
    out[2 * p + 1][2 * h] = l[1];
    out[2 * p][2 * h + 1] = l[2];
    out[2 * p + 1][2 * h + 1] = l[3];
}

/// Q4_K, rows 2h and 2h + 1 of a four-row group, against P token pairs.
///
/// # Safety
/// I8MM; d and m hold nsb entries, qs 9·nsb lines, acts 2·P·nsb blocks, out 2·P rows; h < 2.
#[target_feature(enable = "neon,i8mm")]
unsafe fn pair_q4_k<const P: usize>(
    h: usize,
    d: &[[half::f16; 4]],
    m: &[[half::f16; 4]],
    qs: &[Line64],
    acts: &[ActK],
    out: &mut [[f32; 4]],
) {
    let nsb = d.len();
    assert!(m.len() == nsb && qs.len() == 9 * nsb && acts.len() == 2 * P * nsb);
    assert!(out.len() == 2 * P && h < 2);
    let (r0, r1) = (2 * h, 2 * h + 1);
    let m4 = vdupq_n_u8(0x0F);
    let mut acc = [[vdupq_n_f32(0.0); 4]; P];
    for sb in 0..nsb {
        let l = &qs[9 * sb..9 * sb + 9];
        let a: [[&ActK; 2]; P] =
            core::array::from_fn(|p| [&acts[2 * p * nsb + sb], &acts[(2 * p + 1) * nsb + sb]]);
        let mut lanes = [[vdupq_n_s32(0); 4]; P];
        for c in 0..8 {
            // SAFETY: r0, r1 < 4.
            let (x0, x1) = unsafe { (quarter(&l[c], r0), quarter(&l[c], r1)) };
            let lo = zip_rows(vandq_u8(x0, m4), vandq_u8(x1, m4));
            let hi = zip_rows(vshrq_n_u8::<4>(x0), vshrq_n_u8::<4>(x1));
            let s = rows_i32(l[8].0[8 * r0 + c] as i32, l[8].0[8 * r1 + c] as i32);
            let q0 = 2 * (c % 2);
            for (p, [a0, a1]) in a.iter().enumerate() {
                for (half, q) in [q0, q0 + 1].into_iter().enumerate() {
                    let v = smmla(
                        smmla(
                            vdupq_n_s32(0),
                            lo[half],
                            act_pair(a0, a1, 32 * c + 8 * half),
                        ),
                        hi[half],
                        act_pair(a0, a1, 32 * c + 16 + 8 * half),
                    );
                    lanes[p][q] = vmlaq_s32(lanes[p][q], v, s);
                }
            }
        }
        let mn = |r: usize| {
            // SAFETY: bytes 32 + 8r .. 32 + 8r + 8 of line 8 (r < 4).
            vreinterpretq_s16_u16(vmovl_u8(unsafe {
                vld1_u8(l[8].0.as_ptr().add(32 + 8 * r))
            }))
        };
        let (mn0, mn1) = (mn(r0), mn(r1));
        let (d0, d1, m0, m1) = (
            h2f(d[sb][r0]),
            h2f(d[sb][r1]),
            h2f(m[sb][r0]),
            h2f(m[sb][r1]),
        );
        for (p, [a0, a1]) in a.iter().enumerate() {
            // Per (row, token) over the lanes, as the DotProd kernel, then into 2×2 order.
            let imin = |mn: int16x8_t, a: &ActK| {
                // SAFETY: sums32 is eight readable i16.
                let s32 = unsafe { vld1q_s16(a.sums32.as_ptr()) };
                vpaddq_s32(
                    vmull_s16(vget_low_s16(mn), vget_low_s16(s32)),
                    vmull_high_s16(mn, s32),
                )
            };
            let imin = transpose([imin(mn0, a0), imin(mn0, a1), imin(mn1, a0), imin(mn1, a1)]);
            let dd = outer(d0, d1, a0.d, a1.d);
            let dm = outer(m0, m1, a0.d, a1.d);
            for q in 0..4 {
                acc[p][q] = vfmaq_f32(acc[p][q], vcvtq_f32_s32(lanes[p][q]), dd);
                acc[p][q] = vfmsq_f32(acc[p][q], vcvtq_f32_s32(imin[q]), dm);
            }
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        finish(acc, h, p, out);
    }
}

/// Q6_K, rows 2h and 2h + 1 of a four-row group, against P token pairs.
///
/// # Safety
/// I8MM; d holds nsb entries, qs 13·nsb lines, acts 2·P·nsb blocks, out 2·P rows; h < 2.
#[target_feature(enable = "neon,i8mm")]
unsafe fn pair_q6_k<const P: usize>(
    h: usize,
    d: &[[half::f16; 4]],
    qs: &[Line64],
    acts: &[ActK],
    out: &mut [[f32; 4]],
) {
    let nsb = d.len();
    assert!(qs.len() == 13 * nsb && acts.len() == 2 * P * nsb && out.len() == 2 * P && h < 2);
    let (r0, r1) = (2 * h, 2 * h + 1);
    let m4 = vdupq_n_u8(0x0F);
    let m30 = vdupq_n_u8(0x30);
    let mut acc = [[vdupq_n_f32(0.0); 4]; P];
    for sb in 0..nsb {
        let l = &qs[13 * sb..13 * sb + 13];
        let a: [[&ActK; 2]; P] =
            core::array::from_fn(|p| [&acts[2 * p * nsb + sb], &acts[(2 * p + 1) * nsb + sb]]);
        // Row r's sixteen-weight scales: 0..8 at bytes 8r.., 8..16 at 32 + 8r...
        let sc = |r: usize, s: usize| {
            let at = if s < 8 { 8 * r + s } else { 32 + 8 * r + s - 8 };
            l[12].0[at] as i8 as i32
        };
        let mut lanes = [[vdupq_n_s32(0); 4]; P];
        macro_rules! chunk {
            ($c:literal) => {{
                // The row's low and high sixteens with their high bits, as the DotProd kernel.
                let row = |r: usize| {
                    // SAFETY: r < 4.
                    let x = unsafe { quarter(&l[$c], r) };
                    let hb = unsafe { quarter(&l[8 + $c / 2], r) };
                    let (hl, hh) = if $c % 2 == 0 {
                        (vshlq_n_u8::<4>(hb), vshlq_n_u8::<2>(hb))
                    } else {
                        (hb, vshrq_n_u8::<2>(hb))
                    };
                    (
                        vorrq_u8(vandq_u8(x, m4), vandq_u8(hl, m30)),
                        vorrq_u8(vshrq_n_u8::<4>(x), vandq_u8(hh, m30)),
                    )
                };
                let ((lo0, hi0), (lo1, hi1)) = (row(r0), row(r1));
                // Lanes 0, 1: the low sixteen's bytes 0..8, 8..16; lanes 2, 3: the high's.
                let [w0, w1] = zip_rows(lo0, lo1);
                let [w2, w3] = zip_rows(hi0, hi1);
                let s_lo = rows_i32(sc(r0, 2 * $c), sc(r1, 2 * $c));
                let s_hi = rows_i32(sc(r0, 2 * $c + 1), sc(r1, 2 * $c + 1));
                for (p, [a0, a1]) in a.iter().enumerate() {
                    for (q, (w, s)) in [(w0, s_lo), (w1, s_lo), (w2, s_hi), (w3, s_hi)]
                        .into_iter()
                        .enumerate()
                    {
                        let v = smmla(vdupq_n_s32(0), w, act_pair(a0, a1, 32 * $c + 8 * q));
                        lanes[p][q] = vmlaq_s32(lanes[p][q], v, s);
                    }
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
        let scales = |r: usize| {
            // SAFETY: bytes 8r .. 8r + 8 and 32 + 8r .. 32 + 8r + 8 of line 12 (r < 4).
            unsafe {
                (
                    vmovl_s8(vld1_s8(l[12].0.as_ptr().add(8 * r) as *const i8)),
                    vmovl_s8(vld1_s8(l[12].0.as_ptr().add(32 + 8 * r) as *const i8)),
                )
            }
        };
        let (sr0, sr1) = (scales(r0), scales(r1));
        let (d0, d1) = (h2f(d[sb][r0]), h2f(d[sb][r1]));
        for (p, [a0, a1]) in a.iter().enumerate() {
            // Lane q: scales 2q, 2q + 1, 8 + 2q, 9 + 2q times their sums, as gemm_ref.
            let ioff = |(s0, s1): (int16x8_t, int16x8_t), a: &ActK| {
                // SAFETY: bsums is sixteen readable i16.
                let (b0, b1) = unsafe {
                    (
                        vld1q_s16(a.bsums.as_ptr()),
                        vld1q_s16(a.bsums.as_ptr().add(8)),
                    )
                };
                let p0 = vpaddq_s32(
                    vmull_s16(vget_low_s16(s0), vget_low_s16(b0)),
                    vmull_high_s16(s0, b0),
                );
                let p1 = vpaddq_s32(
                    vmull_s16(vget_low_s16(s1), vget_low_s16(b1)),
                    vmull_high_s16(s1, b1),
                );
                vaddq_s32(p0, p1)
            };
            let ioff = transpose([ioff(sr0, a0), ioff(sr0, a1), ioff(sr1, a0), ioff(sr1, a1)]);
            let dd = outer(d0, d1, a0.d, a1.d);
            for q in 0..4 {
                let v = vsubq_s32(lanes[p][q], vshlq_n_s32::<5>(ioff[q]));
                acc[p][q] = vfmaq_f32(acc[p][q], vcvtq_f32_s32(v), dd);
            }
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        finish(acc, h, p, out);
    }
}
