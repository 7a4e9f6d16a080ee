//! NEON kernel over the sixteen-row layouts of `quant::repack16`, for CPUs with the DotProd
//! extension (ARMv8.2+: Raspberry Pi 5, Graviton 2+, Apple M): the same arithmetic as
//! `repack16::gemm_ref`, bit for bit.
//!
//! The layout was made for this: a 128-bit quarter of a 64-byte line holds four rows' four
//! consecutive weights, so one `sdot` against the matching four activation bytes (broadcast
//! to every lane) adds each row's four products to its own lane. A block is done as four
//! quarters of four rows. The weights go in as signed bytes: the nibbles (0..15, 0..31 with
//! Q5_0's fifth bit) are non-negative, and Q8_0's stored q + 128 is flipped back to q, whose
//! sum Σ q·a is the reference's bias + Σ (q + 128)·a. Without DotProd there is no kernel
//! (the blocked NEON kernels are used): plain NEON's pairwise widening adds do not keep a
//! row's four products in one lane.

use core::arch::aarch64::*;
use core::arch::asm;

use super::neon_f16::h2f_x4;
use crate::quant::line64::Line64;
use crate::quant::repack16::{self, Act16, Gemm16Fn, Group, Kind16, Packed16, ROWS};

/// Tokens per tile.
pub const TILE: usize = 4;

/// The NEON sixteen-row kernel, if this CPU has DotProd.
pub fn kernel() -> Option<Gemm16Fn> {
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        Some(gemm)
    } else {
        None
    }
}

fn gemm(p: &Packed16, g: usize, acts: &[Act16], out: &mut [[f32; ROWS]]) {
    assert!(
        std::arch::is_aarch64_feature_detected!("dotprod"),
        "neon sixteen-row kernel on a CPU without dotprod"
    );
    repack16::for_each_tile(p, g, acts, out, TILE, |group, chunk, o| {
        for quarter in 0..4 {
            macro_rules! tile {
                ($($t:literal)*) => {
                    match o.len() {
                        $($t => {
                            // SAFETY: the CPU has DotProd (asserted above); the group holds nb
                            // blocks, chunk t·nb activation blocks, o t rows (for_each_tile).
                            unsafe { tile::<$t>(group, quarter, chunk, o) }
                        })*
                        _ => unreachable!("tiles hold 1..=4 tokens"),
                    }
                };
            }
            tile!(1 2 3 4);
        }
    });
}

/// `sdot`: each lane += the dot of its four bytes of `a` and of `b`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: registers only; the caller runs with `dotprod` (its target feature, checked at
    // run time before any kernel is entered).
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// The eight weight registers of one block's quarter (rows 4·quarter .. 4·quarter + 4), in
/// the activation's word order: w[j] pairs with activation bytes 4j .. 4j + 4.
///
/// # Safety
/// `qs` holds the block's lines.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn decode(
    kind: Kind16,
    quarter: usize,
    qs: &[Line64],
    qh: &[u64; 8],
) -> [int8x16_t; 8] {
    let line = |j: usize| {
        // SAFETY: a Line64 is 64 readable bytes; the quarter is bytes 16·quarter.. +16.
        unsafe { vld1q_u8(qs[j].0.as_ptr().add(16 * quarter)) }
    };
    let mut w = [vdupq_n_s8(0); 8];
    match kind {
        Kind16::Q8_0 => {
            let flip = vdupq_n_u8(0x80);
            for (j, w) in w.iter_mut().enumerate() {
                *w = vreinterpretq_s8_u8(veorq_u8(line(j), flip));
            }
        }
        _ => {
            let m4 = vdupq_n_u8(0x0F);
            for j in 0..4 {
                let x = line(j);
                let (mut lo, mut hi) = (vandq_u8(x, m4), vshrq_n_u8::<4>(x));
                if kind == Kind16::Q5_0 {
                    lo = vorrq_u8(lo, bit4(qh[2 * j], quarter));
                    hi = vorrq_u8(hi, bit4(qh[2 * j + 1], quarter));
                }
                w[j] = vreinterpretq_s8_u8(lo);
                w[4 + j] = vreinterpretq_s8_u8(hi);
            }
        }
    }
    w
}

/// 0x10 in each byte i of the quarter whose bit 16·quarter + i is set in `mask`, else 0.
#[inline]
#[target_feature(enable = "neon")]
fn bit4(mask: u64, quarter: usize) -> uint8x16_t {
    let m = (mask >> (16 * quarter)) as u16;
    let bytes = vcombine_u8(vdup_n_u8(m as u8), vdup_n_u8((m >> 8) as u8));
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: BITS is 16 readable bytes.
    let bits = unsafe { vld1q_u8(BITS.as_ptr()) };
    vandq_u8(vtstq_u8(bytes, bits), vdupq_n_u8(0x10))
}

/// The block's integer sums for one token and four rows: bias + Σ u·a (Σ q·a for Q8_0), in
/// two independent chains (integer adds: the order does not change the result).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn block_sum(kind: Kind16, w: &[int8x16_t; 8], a: &Act16) -> int32x4_t {
    let p = a.qs.as_ptr() as *const i32;
    let bias = if kind == Kind16::Q8_0 { 0 } else { a.bias };
    let mut s = [vdupq_n_s32(bias), vdupq_n_s32(0)];
    for (j, &wj) in w.iter().enumerate() {
        // SAFETY: qs is 32 bytes: words 0..8 are readable.
        let aj = vreinterpretq_s8_s32(vdupq_n_s32(unsafe { p.add(j).read_unaligned() }));
        s[j & 1] = sdot(s[j & 1], wj, aj);
    }
    vaddq_s32(s[0], s[1])
}

/// T tokens of one group's quarter (four rows), any kind.
///
/// # Safety
/// The CPU must have DotProd; `group` comes from `Packed16::group` (its nb blocks are in
/// bounds), `acts` holds T·nb blocks and `out` T rows.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn tile<const T: usize>(
    group: Group,
    quarter: usize,
    acts: &[Act16],
    out: &mut [[f32; ROWS]],
) {
    let Group {
        kind,
        d,
        m,
        qh,
        i0,
        qs,
    } = group;
    let nb = d.len();
    let lines = kind.lines();
    let no_qh = [0u64; 8];
    let mut acc = [vdupq_n_f32(0.0); T];
    for b in 0..nb {
        let h = if kind == Kind16::Q5_0 {
            &qh[i0 + b]
        } else {
            &no_qh
        };
        // SAFETY: the block's lines are within qs (b < nb).
        let w = unsafe { decode(kind, quarter, &qs[b * lines..(b + 1) * lines], h) };
        // SAFETY: four f16 = 8 readable bytes at rows 4·quarter ...
        let dw = h2f_x4(unsafe { vld1_u16(d[b].as_ptr().add(4 * quarter) as *const u16) });
        let mw = if kind == Kind16::Q4_1 {
            // SAFETY: as for d.
            h2f_x4(unsafe { vld1_u16(m[i0 + b].as_ptr().add(4 * quarter) as *const u16) })
        } else {
            vdupq_n_f32(0.0)
        };
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = &acts[t * nb + b];
            let s = block_sum(kind, &w, a);
            let scale = vmulq_f32(dw, vdupq_n_f32(a.d));
            // acc + s·scale, fused (as the reference's mul_add).
            *acc = vfmaq_f32(*acc, vcvtq_f32_s32(s), scale);
            if kind == Kind16::Q4_1 {
                *acc = vfmaq_f32(*acc, mw, vdupq_n_f32(a.s));
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: o is 16 writable f32; the quarter is floats 4·quarter .. 4·quarter + 4.
        unsafe { vst1q_f32(o.as_mut_ptr().add(4 * quarter), a) };
    }
}
