//! NEON kernels (aarch64), in two flavours chosen at run time: `neon-dotprod` multiplies
//! bytes with `sdot` (ARMv8.2 DotProd) where `is_aarch64_feature_detected!("dotprod")` says
//! the CPU has it, `neon` with `smull`/`sadalp` (baseline ARMv8 Advanced SIMD) otherwise.
//! Both are tested against the scalar reference in tests/simd.rs and tests/simd_kquants.rs,
//! under qemu with and without dotprod (scripts/test.sh, cross/README.md).
//!
//! One body per kernel, compiled twice by `flavour!`: the only difference between the
//! flavours is how 16 byte products are summed into four i32 lanes (`dot_plain`, `dot_sdot`).
//! The dotprod kernels are `#[target_feature(enable = "neon,dotprod")]` functions and
//! `dot_sdot` issues `sdot` through `asm!` (the `vdotq_s32` intrinsic is still unstable on
//! Rust 1.95); their table entries check `is_aarch64_feature_detected!("dotprod")` before
//! calling them. NEON itself is the aarch64 baseline, but Rust still wants the intrinsics'
//! callers marked `#[target_feature(enable = "neon")]`, hence the attribute on every helper
//! and the one-line `unsafe` in each plain entry.
//!
//! The approach is ggml's ARM one (ggml-cpu/arch/arm/quants.c: `vmull_s8`/`vpadalq_s16` or
//! `sdot` per 16 bytes, nibbles unpacked with masks and shifts, IQ4 levels by `tbl`, the
//! K-quant minimums through the activations' `bsums`), rewritten here.
//!
//! Exactness: every kernel sums the integer products of a block exactly. Where the scalar
//! reference then adds per-block f32 terms one by one (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! IQ4_NL, Q2_K, IQ4_XS), the kernels use the reference's own f32 expression in its order,
//! so they return its bits; the tests assert that. Q3_K, Q4_K, Q5_K and Q6_K's reference
//! keeps eight f32 lane sums across super-blocks; the kernels add one f32 term per
//! super-block instead, so they differ by f32 rounding: the tests allow 1e-5 of Σ|w·a|
//! (simd_kquants.rs) and of Σ max|w|·Σ|a| (simd.rs); measured under qemu, the worst is
//! 1.1e-7 of Σ|w·a|. The float dots sum in f32 lanes with FMA against the reference's f64
//! sum (the latter tolerance). The activation quantizers return the scalar reference's
//! bytes exactly; blocks holding NaN or ±∞, or so tiny that the inverse scale overflows, are
//! handed to the reference itself, whose C-cast behaviour on those values the vector
//! conversions do not reproduce.

use core::arch::aarch64::*;
use core::arch::asm;

use super::neon_f16::{h2f, h2f_x4};
use super::*;
use crate::quant::float::f32_to_f16;
use crate::quant::iq4::KVALUES_IQ4NL;
use crate::quant::kquant_util::get_scale_min_k4;
use bytemuck::Zeroable;

/// The plain NEON set: every aarch64 CPU has Advanced SIMD (the target baseline).
pub fn plain_kernels() -> KernelSet {
    KernelSet {
        name: "neon",
        quantize_q8_0,
        quantize_q8_1,
        quantize_q8_k,
        q4_0: plain::q4_0,
        q4_1: plain::q4_1,
        q5_0: plain::q5_0,
        q5_1: plain::q5_1,
        q8_0: plain::q8_0,
        q2_k: plain::q2_k,
        q3_k: plain::q3_k,
        q4_k: plain::q4_k,
        q5_k: plain::q5_k,
        q6_k: plain::q6_k,
        iq4_nl: plain::iq4_nl,
        iq4_xs: plain::iq4_xs,
        f32: dot_f32,
        f16: dot_f16,
        bf16: dot_bf16,
        // Attention's value sum and the prompt tiles are not written for NEON yet.
        ..SCALAR
    }
}

/// The `sdot` set, if this CPU has the DotProd extension.
pub fn dotprod_kernels() -> Option<KernelSet> {
    if !has_dotprod() {
        return None;
    }
    Some(KernelSet {
        name: "neon-dotprod",
        gemm16: super::neon_repack16::kernel(),
        gemm_k: super::neon_repack_k::kernel(),
        k_kinds: KindK::ALL,
        q4_0: dotprod::q4_0,
        q4_1: dotprod::q4_1,
        q5_0: dotprod::q5_0,
        q5_1: dotprod::q5_1,
        q8_0: dotprod::q8_0,
        q2_k: dotprod::q2_k,
        q3_k: dotprod::q3_k,
        q4_k: dotprod::q4_k,
        q5_k: dotprod::q5_k,
        q6_k: dotprod::q6_k,
        iq4_nl: dotprod::iq4_nl,
        iq4_xs: dotprod::iq4_xs,
        ..plain_kernels()
    })
}

/// The DotProd set with the I8MM (`smmla`) prompt kernels for the sixteen-row and the K
/// layouts, where the CPU has both.
pub fn i8mm_kernels() -> Option<KernelSet> {
    let dotprod = dotprod_kernels()?;
    Some(KernelSet {
        name: "neon-i8mm",
        gemm16: Some(super::neon_i8mm::kernel()?),
        gemm_k: Some(super::neon_i8mm_k::kernel()?),
        k_kinds: KindK::ALL,
        ..dotprod
    })
}

// ---------------------------------------------------------------------------------------
// The byte dot product, the one thing the flavours do differently: `acc` plus the 16
// products `a[i]·b[i]`, exactly, spread over the four lanes (which lane gets which product
// differs between the two; callers only use lane totals).

/// Baseline NEON: widening multiplies into i16 (exact: |a·b| ≤ 128² fits), pairwise
/// widening adds into the i32 lanes.
#[inline]
#[target_feature(enable = "neon")]
fn dot_plain(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// `sdot`: four byte products per lane in one instruction.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn dot_sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: registers only; the function's `dotprod` feature is the caller's obligation
    // (it is only reached from `dotprod` kernels, behind the run-time check).
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

fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

// ---------------------------------------------------------------------------------------
// Loads, stores and conversions.

#[inline]
#[target_feature(enable = "neon")]
fn load_u8(x: &[u8; 16]) -> uint8x16_t {
    // SAFETY: reads exactly the 16 bytes of the array.
    unsafe { vld1q_u8(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn load_i8(x: &[i8; 16]) -> int8x16_t {
    // SAFETY: reads exactly the 16 bytes of the array.
    unsafe { vld1q_s8(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn load_f32(x: &[f32; 4]) -> float32x4_t {
    // SAFETY: reads exactly the 4 floats of the array.
    unsafe { vld1q_f32(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn load_u16(x: &[u16; 8]) -> uint16x8_t {
    // SAFETY: reads exactly the 8 u16 of the array.
    unsafe { vld1q_u16(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn store_i8(dst: &mut [i8; 16], v: int8x16_t) {
    // SAFETY: writes exactly the 16 bytes of the array.
    unsafe { vst1q_s8(dst.as_mut_ptr(), v) }
}

/// 16 bytes of `s` starting at `at` (bounds-checked; the checks fold at constant offsets).
#[inline]
#[target_feature(enable = "neon")]
fn u8_at(s: &[u8], at: usize) -> uint8x16_t {
    load_u8(s[at..at + 16].try_into().unwrap())
}

#[inline]
#[target_feature(enable = "neon")]
fn i8_at(s: &[i8], at: usize) -> int8x16_t {
    load_i8(s[at..at + 16].try_into().unwrap())
}

#[inline]
#[target_feature(enable = "neon")]
fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

/// The 32 four-bit fields of a Q4-style block as bytes: (weights 0..16, weights 16..32).
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(qs: &[u8; 16]) -> (uint8x16_t, uint8x16_t) {
    let v = load_u8(qs);
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// 0xFF in byte `i` where bit `i` of the little-endian `qh` is set, for i in 0..16 and
/// 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn bits_to_bytes(qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    let v = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(qh)));
    const LO: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
    const HI: [u8; 16] = [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3];
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bit = load_u8(&BIT);
    (
        vtstq_u8(vqtbl1q_u8(v, load_u8(&LO)), bit),
        vtstq_u8(vqtbl1q_u8(v, load_u8(&HI)), bit),
    )
}

#[inline]
#[target_feature(enable = "neon")]
fn q8_halves(qs: &[i8; 32]) -> (int8x16_t, int8x16_t) {
    (i8_at(qs, 0), i8_at(qs, 16))
}

// ---------------------------------------------------------------------------------------
// Helpers of the quantized dots.

/// The 16 IQ4 levels fit one register: a table look-up per nibble.
#[inline]
#[target_feature(enable = "neon")]
fn iq4_levels(qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    let table = load_i8(&KVALUES_IQ4NL);
    let (lo, hi) = nibbles(qs);
    (vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi))
}

/// Σ bsums[j] · m[j / 2] (the min term of Q4_K/Q5_K, one min per 32 weights).
#[inline]
#[target_feature(enable = "neon")]
fn bsum_pairs_dot(y: &BlockQ8K, mins: &[u8; 8]) -> i32 {
    let (b0, b1) = y.bsums.split_at(8);
    // SAFETY: each load reads 8 i16 from a slice of exactly 8.
    let (b0, b1) = unsafe { (vld1q_s16(b0.as_ptr()), vld1q_s16(b1.as_ptr())) };
    // Each pair sums 32 activations: ≤ 32·128, no i16 overflow.
    let pairs = vpaddq_s16(b0, b1);
    // SAFETY: reads the 8 bytes of the array.
    let m = vreinterpretq_s16_u16(vmovl_u8(unsafe { vld1_u8(mins.as_ptr()) }));
    let p = vmull_s16(vget_low_s16(pairs), vget_low_s16(m));
    vaddvq_s32(vmlal_high_s16(p, pairs, m))
}

/// Q3_K's sixteen signed sub-block scales (6 bits, less 32).
#[inline]
#[target_feature(enable = "neon")]
fn q3k_scales(s: &[u8; 12]) -> [i32; 16] {
    core::array::from_fn(|j| {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        (low | (high << 4)) as i32 - 32
    })
}

/// The Q4_K/Q5_K scales and mins, one per 32 weights.
#[inline]
#[target_feature(enable = "neon")]
fn scales_mins_k4(packed: &[u8; 12]) -> ([i32; 8], [u8; 8]) {
    let sm: [(u8, u8); 8] = core::array::from_fn(|j| get_scale_min_k4(j, packed));
    (sm.map(|s| s.0 as i32), sm.map(|s| s.1))
}

// ---------------------------------------------------------------------------------------
// The quantized dots, written once and compiled twice (`flavour!`): with `dot_plain` for
// baseline NEON and with `dot_sdot` inside `neon,dotprod` functions. Each per-block f32
// expression is the scalar reference's, operand order included (f32 multiplication is not
// associative). In the 256-weight formats sub-block sums are scaled in i32 lanes
// (`vmlaq_n_s32`), all integer and exact: the largest, Q6_K, is at most 16·32·128·128 per
// sub-block of 16.

macro_rules! flavour {
    ($feat:literal, $dot:ident) => {
        /// Σ x·y over one 32-weight block, exactly.
        #[inline]
        #[target_feature(enable = $feat)]
        fn block_sum(x: (int8x16_t, int8x16_t), y: (int8x16_t, int8x16_t)) -> i32 {
            vaddvq_s32($dot($dot(vdupq_n_s32(0), x.0, y.0), x.1, y.1))
        }

        #[target_feature(enable = $feat)]
        fn dot_q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
            let eight = vdupq_n_s8(8);
            let mut sum = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let (lo, hi) = nibbles(&x.qs);
                let qx = (vsubq_s8(s8(lo), eight), vsubq_s8(s8(hi), eight));
                let sumi = block_sum(qx, q8_halves(&y.qs));
                sum += sumi as f32 * h2f(x.d) * h2f(y.d);
            }
            sum
        }

        #[target_feature(enable = $feat)]
        fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
            let mut sum = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let (lo, hi) = nibbles(&x.qs);
                let sumi = block_sum((s8(lo), s8(hi)), q8_halves(&y.qs));
                sum += h2f(x.d) * h2f(y.d) * sumi as f32 + h2f(x.m) * h2f(y.s);
            }
            sum
        }

        #[target_feature(enable = $feat)]
        fn dot_q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
            let f0 = vdupq_n_u8(0xF0);
            let mut sum = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let (lo, hi) = nibbles(&x.qs);
                let (b0, b1) = bits_to_bytes(x.qh);
                // Level q - 16 as a signed byte: a clear fifth bit is the same as or-ing in 0xF0
                // (nibble + 240 ≡ nibble - 16 mod 256); a set one leaves the nibble as it is.
                let qx = (
                    s8(vorrq_u8(lo, vbicq_u8(f0, b0))),
                    s8(vorrq_u8(hi, vbicq_u8(f0, b1))),
                );
                let sumi = block_sum(qx, q8_halves(&y.qs));
                sum += h2f(x.d) * h2f(y.d) * sumi as f32;
            }
            sum
        }

        #[target_feature(enable = $feat)]
        fn dot_q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
            let b4 = vdupq_n_u8(0x10);
            let mut sum = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let (lo, hi) = nibbles(&x.qs);
                let (b0, b1) = bits_to_bytes(x.qh);
                let qx = (
                    s8(vorrq_u8(lo, vandq_u8(b0, b4))),
                    s8(vorrq_u8(hi, vandq_u8(b1, b4))),
                );
                let sumi = block_sum(qx, q8_halves(&y.qs));
                sum += h2f(x.d) * h2f(y.d) * sumi as f32 + h2f(x.m) * h2f(y.s);
            }
            sum
        }

        #[target_feature(enable = $feat)]
        fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
            let mut sum = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let sumi = block_sum(q8_halves(&x.qs), q8_halves(&y.qs));
                sum += sumi as f32 * (h2f(x.d) * h2f(y.d));
            }
            sum
        }

        #[target_feature(enable = $feat)]
        fn dot_iq4_nl(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
            let mut sum = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let sumi = block_sum(iq4_levels(&x.qs), q8_halves(&y.qs));
                sum += h2f(y.d) * h2f(x.d) * sumi as f32;
            }
            sum
        }

        /// Σ over the 16 weights at `at` of level·activation, into `acc`'s lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot16(q: int8x16_t, y: &BlockQ8K, at: usize) -> int32x4_t {
            $dot(vdupq_n_s32(0), q, i8_at(&y.qs, at))
        }

        #[target_feature(enable = $feat)]
        fn dot_q2_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
            let m3 = vdupq_n_u8(3);
            let mut sumf = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let summs: i32 = (y.bsums.iter().zip(&x.scales))
                    .map(|(&s, &sc)| s as i32 * (sc >> 4) as i32)
                    .sum();
                let dall = y.d * h2f(x.d);
                let dmin = y.d * h2f(x.dmin);
                let mut acc = vdupq_n_s32(0);
                for h in 0..2 {
                    let bits = [u8_at(&x.qs, 32 * h), u8_at(&x.qs, 32 * h + 16)];
                    for p in 0..4 {
                        // Elements 128h + 32p + (0..32): sub-blocks k and k + 1 of 16.
                        let k = 8 * h + 2 * p;
                        let shift = vdupq_n_s8(-2 * p as i8);
                        for (half, &b) in bits.iter().enumerate() {
                            let q = s8(vandq_u8(vshlq_u8(b, shift), m3));
                            let sc = (x.scales[k + half] & 0xF) as i32;
                            acc = vmlaq_n_s32(acc, dot16(q, y, 16 * (k + half)), sc);
                        }
                    }
                }
                let isum = vaddvq_s32(acc);
                sumf += dall * isum as f32 - dmin * summs as f32;
            }
            sumf
        }

        #[target_feature(enable = $feat)]
        fn dot_q3_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
            let m3 = vdupq_n_u8(3);
            let four = vdupq_n_u8(4);
            let mut sumf = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let scales = q3k_scales(&x.scales);
                let hmask = [u8_at(&x.hmask, 0), u8_at(&x.hmask, 16)];
                let mut acc = vdupq_n_s32(0);
                for h in 0..2 {
                    let bits = [u8_at(&x.qs, 32 * h), u8_at(&x.qs, 32 * h + 16)];
                    for p in 0..4 {
                        let k = 8 * h + 2 * p;
                        let shift = vdupq_n_s8(-2 * p as i8);
                        let bit = vdupq_n_u8(1 << (4 * h + p));
                        for half in 0..2 {
                            let low = vandq_u8(vshlq_u8(bits[half], shift), m3);
                            // Level - 4, or the level itself where the high bit is set.
                            let off = vbicq_u8(four, vtstq_u8(hmask[half], bit));
                            let q = vsubq_s8(s8(low), s8(off));
                            acc = vmlaq_n_s32(acc, dot16(q, y, 16 * (k + half)), scales[k + half]);
                        }
                    }
                }
                let d_all = h2f(x.d) * y.d;
                sumf += d_all * vaddvq_s32(acc) as f32;
            }
            sumf
        }

        #[target_feature(enable = $feat)]
        fn dot_q4_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
            let m4 = vdupq_n_u8(0xF);
            let mut sumf = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let (scales, mins) = scales_mins_k4(&x.scales);
                let summs = bsum_pairs_dot(y, &mins);
                let mut acc = vdupq_n_s32(0);
                for j in 0..4 {
                    // Bytes 32j..32j+32: low nibbles are sub-block 2j, high nibbles 2j + 1.
                    let b = [u8_at(&x.qs, 32 * j), u8_at(&x.qs, 32 * j + 16)];
                    let mut lo = vdupq_n_s32(0);
                    let mut hi = vdupq_n_s32(0);
                    for (half, &b) in b.iter().enumerate() {
                        let at = 64 * j + 16 * half;
                        lo = $dot(lo, s8(vandq_u8(b, m4)), i8_at(&y.qs, at));
                        hi = $dot(hi, s8(vshrq_n_u8::<4>(b)), i8_at(&y.qs, at + 32));
                    }
                    acc = vmlaq_n_s32(acc, lo, scales[2 * j]);
                    acc = vmlaq_n_s32(acc, hi, scales[2 * j + 1]);
                }
                let dd = y.d * h2f(x.d);
                let dmin = y.d * h2f(x.dmin);
                sumf += dd * vaddvq_s32(acc) as f32 - dmin * summs as f32;
            }
            sumf
        }

        #[target_feature(enable = $feat)]
        fn dot_q5_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
            let m4 = vdupq_n_u8(0xF);
            let b4 = vdupq_n_u8(0x10);
            let mut sumf = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let (scales, mins) = scales_mins_k4(&x.scales);
                let summs = bsum_pairs_dot(y, &mins);
                let qh = [u8_at(&x.qh, 0), u8_at(&x.qh, 16)];
                let mut acc = vdupq_n_s32(0);
                for j in 0..4 {
                    let b = [u8_at(&x.qs, 32 * j), u8_at(&x.qs, 32 * j + 16)];
                    // The fifth bit of sub-block s is bit s of qh[i].
                    let bit_lo = vdupq_n_u8(1 << (2 * j));
                    let bit_hi = vdupq_n_u8(1 << (2 * j + 1));
                    let mut lo = vdupq_n_s32(0);
                    let mut hi = vdupq_n_s32(0);
                    for half in 0..2 {
                        let at = 64 * j + 16 * half;
                        let h_lo = vandq_u8(vtstq_u8(qh[half], bit_lo), b4);
                        let h_hi = vandq_u8(vtstq_u8(qh[half], bit_hi), b4);
                        let q_lo = vorrq_u8(vandq_u8(b[half], m4), h_lo);
                        let q_hi = vorrq_u8(vshrq_n_u8::<4>(b[half]), h_hi);
                        lo = $dot(lo, s8(q_lo), i8_at(&y.qs, at));
                        hi = $dot(hi, s8(q_hi), i8_at(&y.qs, at + 32));
                    }
                    acc = vmlaq_n_s32(acc, lo, scales[2 * j]);
                    acc = vmlaq_n_s32(acc, hi, scales[2 * j + 1]);
                }
                let dd = y.d * h2f(x.d);
                let dmin = y.d * h2f(x.dmin);
                sumf += dd * vaddvq_s32(acc) as f32 - dmin * summs as f32;
            }
            sumf
        }

        #[target_feature(enable = $feat)]
        fn dot_q6_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
            let m4 = vdupq_n_u8(0xF);
            let m3 = vdupq_n_u8(3);
            let offset = vdupq_n_s8(32);
            let mut sumf = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let mut acc = vdupq_n_s32(0);
                for h in 0..2 {
                    // Element 128h + 32p + i: nibble p/2 of ql[64h + 32(p%2) + i], bit pair p of
                    // qh[32h + i].
                    let ql = [
                        [u8_at(&x.ql, 64 * h), u8_at(&x.ql, 64 * h + 16)],
                        [u8_at(&x.ql, 64 * h + 32), u8_at(&x.ql, 64 * h + 48)],
                    ];
                    let qh = [u8_at(&x.qh, 32 * h), u8_at(&x.qh, 32 * h + 16)];
                    for p in 0..4 {
                        let k = 8 * h + 2 * p;
                        let shift = vdupq_n_s8(-2 * p as i8);
                        for half in 0..2 {
                            let l = ql[p % 2][half];
                            let low = if p < 2 {
                                vandq_u8(l, m4)
                            } else {
                                vshrq_n_u8::<4>(l)
                            };
                            let high = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(qh[half], shift), m3));
                            let q = vsubq_s8(s8(vorrq_u8(low, high)), offset);
                            let sc = x.scales[k + half] as i32;
                            acc = vmlaq_n_s32(acc, dot16(q, y, 16 * (k + half)), sc);
                        }
                    }
                }
                let dd = h2f(x.d) * y.d;
                sumf += dd * vaddvq_s32(acc) as f32;
            }
            sumf
        }

        #[target_feature(enable = $feat)]
        fn dot_iq4_xs(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
            let mut sumf = 0.0f32;
            for (x, y) in w.iter().zip(a) {
                let d4d8 = h2f(x.d) * y.d;
                for ib in 0..QK_K / 32 {
                    let low = (x.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
                    let high = (x.scales_h >> (2 * ib)) & 3;
                    let ls = low as i32 | (high as i32) << 4;
                    let qs: &[u8; 16] = x.qs[16 * ib..16 * ib + 16].try_into().unwrap();
                    let ya = (i8_at(&y.qs, 32 * ib), i8_at(&y.qs, 32 * ib + 16));
                    let sumi = block_sum(iq4_levels(qs), ya);
                    let dl = d4d8 * (ls - 32) as f32;
                    sumf += dl * sumi as f32;
                }
            }
            sumf
        }
    };
}

/// The table entries: check the slice lengths, then call a kernel compiled for baseline
/// NEON, or for dotprod after confirming the CPU has it (a cached atomic load, cheap beside a
/// row's dot), so that even a stray function pointer cannot run `sdot` where it is missing.
macro_rules! entries {
    ($($name:ident => $kernel:ident($w:ty, $a:ty);)*) => {
        mod plain {
            use super::*;
            flavour!("neon", dot_plain);
            $(
                pub(super) fn $name(w: &[$w], a: &[$a]) -> f32 {
                    assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
                    // SAFETY: NEON is the baseline of every aarch64 target.
                    unsafe { $kernel(w, a) }
                }
            )*
        }

        mod dotprod {
            use super::*;
            flavour!("neon,dotprod", dot_sdot);
            $(
                pub(super) fn $name(w: &[$w], a: &[$a]) -> f32 {
                    assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
                    assert!(has_dotprod(), "neon-dotprod kernel on a CPU without dotprod");
                    // SAFETY: the CPU has the DotProd extension (just checked) and NEON.
                    unsafe { $kernel(w, a) }
                }
            )*
        }
    };
}

entries! {
    q4_0 => dot_q4_0(BlockQ4_0, BlockQ8_0);
    q4_1 => dot_q4_1(BlockQ4_1, BlockQ8_1);
    q5_0 => dot_q5_0(BlockQ5_0, BlockQ8_0);
    q5_1 => dot_q5_1(BlockQ5_1, BlockQ8_1);
    q8_0 => dot_q8_0(BlockQ8_0, BlockQ8_0);
    iq4_nl => dot_iq4_nl(BlockIQ4NL, BlockQ8_0);
    q2_k => dot_q2_k(BlockQ2K, BlockQ8K);
    q3_k => dot_q3_k(BlockQ3K, BlockQ8K);
    q4_k => dot_q4_k(BlockQ4K, BlockQ8K);
    q5_k => dot_q5_k(BlockQ5K, BlockQ8K);
    q6_k => dot_q6_k(BlockQ6K, BlockQ8K);
    iq4_xs => dot_iq4_xs(BlockIQ4XS, BlockQ8K);
}

/// Safe table entries for the functions that need only baseline NEON.
macro_rules! baseline {
    ($($name:ident => $imp:ident($($arg:ident: $t:ty),*) $(-> $ret:ty)?;)*) => {$(
        fn $name($($arg: $t),*) $(-> $ret)? {
            // SAFETY: NEON is the baseline of every aarch64 target.
            unsafe { $imp($($arg),*) }
        }
    )*};
}

baseline! {
    dot_f32 => dot_f32_neon(w: &[f32], a: &[f32]) -> f32;
    dot_f16 => dot_f16_neon(w: &[f16], a: &[f16]) -> f32;
    dot_bf16 => dot_bf16_neon(w: &[bf16], a: &[bf16]) -> f32;
    quantize_q8_0 => quantize_q8_0_neon(src: &[f32], out: &mut [BlockQ8_0]);
    quantize_q8_1 => quantize_q8_1_neon(src: &[f32], out: &mut [BlockQ8_1]);
    quantize_q8_k => quantize_q8_k_neon(src: &[f32], out: &mut [BlockQ8K]);
}

// ---------------------------------------------------------------------------------------
// Float dots: four 4-lane FMA accumulators over 16 elements at a time, the tail in scalar.

#[inline]
#[target_feature(enable = "neon")]
fn hsum4(acc: [float32x4_t; 4]) -> f32 {
    vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ))
}

#[target_feature(enable = "neon")]
fn dot_f32_neon(w: &[f32], a: &[f32]) -> f32 {
    assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
    let mut acc = [vdupq_n_f32(0.0); 4];
    let (w16, wr) = w.as_chunks::<16>();
    let (a16, ar) = a.as_chunks::<16>();
    for (x, y) in w16.iter().zip(a16) {
        let (x4, _) = x.as_chunks::<4>();
        let (y4, _) = y.as_chunks::<4>();
        for k in 0..4 {
            acc[k] = vfmaq_f32(acc[k], load_f32(&x4[k]), load_f32(&y4[k]));
        }
    }
    let tail: f32 = wr.iter().zip(ar).map(|(x, y)| x * y).sum();
    hsum4(acc) + tail
}

#[target_feature(enable = "neon")]
fn dot_f16_neon(w: &[f16], a: &[f16]) -> f32 {
    assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
    let mut acc = [vdupq_n_f32(0.0); 4];
    let bits = |v: &[f16; 8]| load_u16(&v.map(|h| h.to_bits()));
    let (w16, wr) = w.as_chunks::<16>();
    let (a16, ar) = a.as_chunks::<16>();
    for (x, y) in w16.iter().zip(a16) {
        let (x8, _) = x.as_chunks::<8>();
        let (y8, _) = y.as_chunks::<8>();
        for k in 0..2 {
            let (xv, yv) = (bits(&x8[k]), bits(&y8[k]));
            let (xl, yl) = (h2f_x4(vget_low_u16(xv)), h2f_x4(vget_low_u16(yv)));
            let (xh, yh) = (h2f_x4(vget_high_u16(xv)), h2f_x4(vget_high_u16(yv)));
            acc[2 * k] = vfmaq_f32(acc[2 * k], xl, yl);
            acc[2 * k + 1] = vfmaq_f32(acc[2 * k + 1], xh, yh);
        }
    }
    let tail: f32 = wr.iter().zip(ar).map(|(&x, &y)| h2f(x) * h2f(y)).sum();
    hsum4(acc) + tail
}

#[target_feature(enable = "neon")]
fn dot_bf16_neon(w: &[bf16], a: &[bf16]) -> f32 {
    assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
    let mut acc = [vdupq_n_f32(0.0); 4];
    let bits = |v: &[bf16; 8]| load_u16(&v.map(|h| h.to_bits()));
    // bf16 is the top half of an f32: widening by a 16-bit shift is the exact conversion.
    let lo = |v: uint16x8_t| vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(v)));
    let hi = |v: uint16x8_t| vreinterpretq_f32_u32(vshll_high_n_u16::<16>(v));
    let (w16, wr) = w.as_chunks::<16>();
    let (a16, ar) = a.as_chunks::<16>();
    for (x, y) in w16.iter().zip(a16) {
        let (x8, _) = x.as_chunks::<8>();
        let (y8, _) = y.as_chunks::<8>();
        for k in 0..2 {
            let (xv, yv) = (bits(&x8[k]), bits(&y8[k]));
            acc[2 * k] = vfmaq_f32(acc[2 * k], lo(xv), lo(yv));
            acc[2 * k + 1] = vfmaq_f32(acc[2 * k + 1], hi(xv), hi(yv));
        }
    }
    let tail: f32 = (wr.iter().zip(ar))
        .map(|(&x, &y)| x.to_f32() * y.to_f32())
        .sum();
    hsum4(acc) + tail
}

// ---------------------------------------------------------------------------------------
// Activation quantizers.

/// True if every lane of every vector is finite (no NaN, no ±∞).
#[inline]
#[target_feature(enable = "neon")]
fn all_finite(v: &[float32x4_t]) -> bool {
    let inf = vdupq_n_f32(f32::INFINITY);
    let ok = v.iter().fold(vdupq_n_u32(u32::MAX), |m, &x| {
        vandq_u32(m, vcltq_f32(vabsq_f32(x), inf))
    });
    vminvq_u32(ok) != 0
}

#[inline]
#[target_feature(enable = "neon")]
fn abs_max(v: &[float32x4_t]) -> f32 {
    let m = v
        .iter()
        .fold(vdupq_n_f32(0.0), |m, &x| vmaxq_f32(m, vabsq_f32(x)));
    vmaxvq_f32(m)
}

/// Four i32 (already within i8) narrowed to bytes, C's store into int8_t for those values.
#[inline]
#[target_feature(enable = "neon")]
fn narrow(q: [int32x4_t; 4]) -> int8x16_t {
    let lo = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]));
    let hi = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
    vcombine_s8(vmovn_s16(lo), vmovn_s16(hi))
}

/// One block of 32 as the scalar `quantize_q8`: the f32 scale `amax/127` and the levels
/// `roundf(x · (1/d))`. `None` for the blocks left to the reference (see the module doc).
#[inline]
#[target_feature(enable = "neon")]
fn quantize_block_q8(x: &[f32; 32]) -> Option<(f32, int8x16_t, int8x16_t)> {
    let (x4, _) = x.as_chunks::<4>();
    let v: [float32x4_t; 8] = core::array::from_fn(|k| load_f32(&x4[k]));
    if !all_finite(&v) {
        return None;
    }
    let d = abs_max(&v) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if !id.is_finite() {
        return None;
    }
    // `frinta` rounds half away from zero, as roundf; the result is an integer in ±127, so
    // the truncating conversion and the narrowing are exact.
    let level = |v: float32x4_t| vcvtq_s32_f32(vrndaq_f32(vmulq_n_f32(v, id)));
    let q: [int32x4_t; 8] = v.map(level);
    Some((
        d,
        narrow([q[0], q[1], q[2], q[3]]),
        narrow([q[4], q[5], q[6], q[7]]),
    ))
}

#[target_feature(enable = "neon")]
fn quantize_q8_0_neon(src: &[f32], out: &mut [BlockQ8_0]) {
    assert_eq!(
        src.len(),
        out.len() * 32,
        "quantizing into the wrong number of blocks"
    );
    let (x32, _) = src.as_chunks::<32>();
    for (x, y) in x32.iter().zip(out.iter_mut()) {
        let Some((d, q0, q1)) = quantize_block_q8(x) else {
            BlockQ8_0::quantize(x, core::slice::from_mut(y));
            continue;
        };
        y.d = f32_to_f16(d);
        let (lo, hi) = y.qs.split_at_mut(16);
        store_i8(lo.try_into().unwrap(), q0);
        store_i8(hi.try_into().unwrap(), q1);
    }
}

#[target_feature(enable = "neon")]
fn quantize_q8_1_neon(src: &[f32], out: &mut [BlockQ8_1]) {
    assert_eq!(
        src.len(),
        out.len() * 32,
        "quantizing into the wrong number of blocks"
    );
    let (x32, _) = src.as_chunks::<32>();
    for (x, y) in x32.iter().zip(out.iter_mut()) {
        let Some((d, q0, q1)) = quantize_block_q8(x) else {
            BlockQ8_1::quantize(x, core::slice::from_mut(y));
            continue;
        };
        // Each half sums to within ±16·127, an i16.
        let sum = vaddlvq_s8(q0) as i32 + vaddlvq_s8(q1) as i32;
        y.d = f32_to_f16(d);
        y.s = f32_to_f16(sum as f32 * d);
        let (lo, hi) = y.qs.split_at_mut(16);
        store_i8(lo.try_into().unwrap(), q0);
        store_i8(hi.try_into().unwrap(), q1);
    }
}

/// ggml's `quantize_row_q8_K_ref`, vectorised with the same f32 operations (one division for
/// the scale, one multiply per value, `fcvtns`'s round half to even as `nearest_int`).
#[target_feature(enable = "neon")]
fn quantize_q8_k_neon(src: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(
        src.len(),
        out.len() * QK_K,
        "quantizing into the wrong number of blocks"
    );
    let (xs, _) = src.as_chunks::<QK_K>();
    for (x, y) in xs.iter().zip(out.iter_mut()) {
        let (x4, _) = x.as_chunks::<4>();
        let v: [float32x4_t; QK_K / 4] = core::array::from_fn(|k| load_f32(&x4[k]));
        if !all_finite(&v) {
            *y = BlockQ8K::from_f32(x);
            continue;
        }
        let amax = abs_max(&v);
        if amax == 0.0 {
            *y = BlockQ8K::zeroed();
            continue;
        }
        // The reference keeps the first element of largest magnitude (its sign matters).
        let target = vdupq_n_f32(amax);
        let k = (v.iter())
            .position(|&c| vmaxvq_u32(vceqq_f32(vabsq_f32(c), target)) != 0)
            .expect("amax is some element's magnitude");
        let max = *x4[k]
            .iter()
            .find(|c| c.abs() == amax)
            .expect("amax is in this vector");
        let iscale = -127.0 / max;
        if !iscale.is_finite() {
            *y = BlockQ8K::from_f32(x);
            continue;
        }
        // |iscale·x| ≤ 127 up to rounding, so the saturating narrowing only ever meets
        // values the reference's `.min(127)` leaves alone.
        let q: [int32x4_t; QK_K / 4] = v.map(|c| vcvtnq_s32_f32(vmulq_n_f32(c, iscale)));
        let (q16, _) = q.as_chunks::<4>();
        let (qs16, _) = y.qs.as_chunks_mut::<16>();
        for ((dst, bs), q) in qs16.iter_mut().zip(y.bsums.iter_mut()).zip(q16) {
            let sum = vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3]));
            *bs = vaddvq_s32(sum) as i16;
            let lo = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
            let hi = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
            store_i8(dst, vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
        }
        y.d = 1.0 / iscale;
    }
}
