//! NEON prompt kernel with the Int8 Matrix Multiply extension (`smmla`, FEAT_I8MM: Graviton
//! 3/4, Apple M2 and later, Cortex-A510/A710/X2 and later) over the sixteen-row layouts of
//! `quant::repack16`: the same arithmetic as `repack16::gemm_ref`, bit for bit.
//!
//! `smmla` multiplies a 2×8 matrix of signed bytes by the transpose of another, adding the
//! 2×2 products to four i32 lanes: two rows' eight weights against two tokens' eight
//! activation bytes, 32 multiply-adds where `sdot` does 16. The sixteen-row layout keeps a
//! row's four bytes per 32-bit word of a quarter; zipping the words of two consecutive lines
//! gives two rows' eight consecutive bytes, done once per block and reused by every token
//! pair of the tile. A block's integer sum per row and token is therefore exactly the
//! reference's (integer adds in another order), and the f32 steps are the reference's, lane
//! for lane, in the 2×2 order [row 0 · token 0, row 0 · token 1, row 1 · token 0, row 1 ·
//! token 1]. A tile's odd last token, and one-token decode, go to the DotProd kernel
//! (`neon_repack16`), which streams the weights once per token either way.

use core::arch::aarch64::*;
use core::arch::asm;

use super::neon_f16::h2f_x4;
use super::neon_repack16;
use crate::quant::repack16::{self, Act16, Gemm16Fn, Group, Kind16, Packed16, ROWS};

/// Tokens per tile: four pairs, eight f32 accumulators per quarter beside its eight zipped
/// weight registers.
pub const TILE: usize = 8;

/// Whether this CPU runs the kernel: I8MM, and DotProd for the odd tokens.
pub fn supported() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
        && std::arch::is_aarch64_feature_detected!("i8mm")
}

/// The I8MM sixteen-row kernel, if this CPU has I8MM and DotProd.
pub fn kernel() -> Option<Gemm16Fn> {
    supported().then_some(gemm as Gemm16Fn)
}

fn gemm(p: &Packed16, g: usize, acts: &[Act16], out: &mut [[f32; ROWS]]) {
    assert!(supported(), "i8mm sixteen-row kernel on a CPU without i8mm");
    repack16::for_each_tile(p, g, acts, out, TILE, |group, chunk, o| {
        let nb = group.d.len();
        let pairs = o.len() / 2;
        let (ce, co) = chunk.split_at(2 * pairs * nb);
        let (oe, oo) = o.split_at_mut(2 * pairs);
        for quarter in 0..4 {
            // SAFETY (every call): the CPU has I8MM and DotProd (asserted above); the group
            // holds nb blocks, `ce` 2·pairs·nb activation blocks and `oe` 2·pairs rows, `co`
            // nb blocks and `oo` one row when the tile is odd (for_each_tile).
            unsafe {
                match pairs {
                    0 => {}
                    1 => tile::<1>(group, quarter, ce, oe),
                    2 => tile::<2>(group, quarter, ce, oe),
                    3 => tile::<3>(group, quarter, ce, oe),
                    4 => tile::<4>(group, quarter, ce, oe),
                    _ => unreachable!("tiles hold at most {TILE} tokens"),
                }
                if !oo.is_empty() {
                    neon_repack16::tile::<1>(group, quarter, co, oo);
                }
            }
        }
    });
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

/// [v0, v0, v1, v1] and [v2, v2, v3, v3]: a quarter's per-row values in the 2×2 lane order.
#[inline]
#[target_feature(enable = "neon")]
fn row_pairs(v: float32x4_t) -> [float32x4_t; 2] {
    [vzip1q_f32(v, v), vzip2q_f32(v, v)]
}

/// 2·P tokens (P pairs) of one group's quarter (four rows), any kind.
///
/// # Safety
/// The CPU must have I8MM and DotProd; `group` comes from `Packed16::group` (its nb blocks
/// are in bounds), `acts` holds 2·P·nb blocks and `out` 2·P rows.
#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn tile<const P: usize>(
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
    assert!(acts.len() == 2 * P * nb && out.len() == 2 * P && qs.len() == nb * lines);
    let no_qh = [0u64; 8];
    // acc[p][h]: token pair p against rows 4·quarter + 2h, + 1, in the 2×2 lane order.
    let mut acc = [[vdupq_n_f32(0.0); 2]; P];
    for b in 0..nb {
        let h = if kind == Kind16::Q5_0 {
            &qh[i0 + b]
        } else {
            &no_qh
        };
        // SAFETY: the block's lines are within qs (b < nb); DotProd (this function's).
        let w = unsafe { neon_repack16::decode(kind, quarter, &qs[b * lines..(b + 1) * lines], h) };
        // x[i][h]: rows 2h, 2h + 1 of the quarter, their weights for activation bytes
        // 8i .. 8i + 8 (words 2i and 2i + 1 zipped).
        let x: [[int8x16_t; 2]; 4] = core::array::from_fn(|i| {
            let (lo, hi) = (
                vreinterpretq_s32_s8(w[2 * i]),
                vreinterpretq_s32_s8(w[2 * i + 1]),
            );
            [
                vreinterpretq_s8_s32(vzip1q_s32(lo, hi)),
                vreinterpretq_s8_s32(vzip2q_s32(lo, hi)),
            ]
        });
        // SAFETY: four f16 = 8 readable bytes at rows 4·quarter ...
        let dw = row_pairs(h2f_x4(unsafe {
            vld1_u16(d[b].as_ptr().add(4 * quarter) as *const u16)
        }));
        let mw = if kind == Kind16::Q4_1 {
            // SAFETY: as for d.
            row_pairs(h2f_x4(unsafe {
                vld1_u16(m[i0 + b].as_ptr().add(4 * quarter) as *const u16)
            }))
        } else {
            [vdupq_n_f32(0.0); 2]
        };
        for (p, acc) in acc.iter_mut().enumerate() {
            let (a0, a1) = (&acts[2 * p * nb + b], &acts[(2 * p + 1) * nb + b]);
            // Q8_0's weights went in as q, whose sum Σ q·a is the reference's bias + Σ (q + 128)·a.
            let (b0, b1) = match kind {
                Kind16::Q8_0 => (0, 0),
                _ => (a0.bias, a1.bias),
            };
            let init = vcombine_s32(vcreate_s32(pack(b0, b1)), vcreate_s32(pack(b0, b1)));
            let mut s = [init; 2];
            for (i, x) in x.iter().enumerate() {
                // SAFETY: qs is 32 bytes; bytes 8i .. 8i + 8 (i < 4) are readable.
                let y = unsafe {
                    vcombine_s8(
                        vld1_s8(a0.qs.as_ptr().add(8 * i)),
                        vld1_s8(a1.qs.as_ptr().add(8 * i)),
                    )
                };
                s[0] = smmla(s[0], x[0], y);
                s[1] = smmla(s[1], x[1], y);
            }
            let pair = |u: f32, v: f32| {
                let uv = vcreate_f32(u.to_bits() as u64 | (v.to_bits() as u64) << 32);
                vcombine_f32(uv, uv)
            };
            let da = pair(a0.d, a1.d);
            let sa = pair(a0.s, a1.s);
            for h in 0..2 {
                let scale = vmulq_f32(dw[h], da);
                // acc + s·scale, fused (as the reference's mul_add).
                acc[h] = vfmaq_f32(acc[h], vcvtq_f32_s32(s[h]), scale);
                if kind == Kind16::Q4_1 {
                    acc[h] = vfmaq_f32(acc[h], mw[h], sa);
                }
            }
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        for (h, &a) in acc.iter().enumerate() {
            let mut l = [0f32; 4];
            // SAFETY: `l` is 16 writable bytes.
            unsafe { vst1q_f32(l.as_mut_ptr(), a) };
            let r = 4 * quarter + 2 * h;
            out[2 * p][r] = l[0];
            out[2 * p + 1][r] = l[1];
            out[2 * p][r + 1] = l[2];
            out[2 * p + 1][r + 1] = l[3];
        }
    }
}

/// Two i32 as the low and high halves of a u64 (a 64-bit lane pair).
#[inline]
fn pack(lo: i32, hi: i32) -> u64 {
    lo as u32 as u64 | (hi as u32 as u64) << 32
}
