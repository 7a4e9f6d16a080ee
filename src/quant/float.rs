//! F32, F16 and BF16 as one-element "blocks", and the scalar conversions every other block
//! format uses for its f16 scales.
//!
//! The conversions are ggml's, not the nearest Rust equivalents, wherever the two differ:
//! f32 → f16 turns every NaN into the canonical quiet NaN `0x7E00` (ggml's bit-trick
//! `ggml_compute_fp32_to_fp16` drops the payload), and f32 → bf16 keeps the payload's top bits
//! but forces the quiet bit (`ggml_compute_fp32_to_bf16`). Both round to nearest, ties to even.

use super::*;

/// f32 → f16 as ggml's `GGML_FP32_TO_FP16`: round to nearest even, overflow to ±inf, every
/// NaN to the sign-preserving canonical quiet NaN.
#[inline]
pub fn f32_to_f16(x: f32) -> f16 {
    if x.is_nan() {
        // half would keep the payload's top bits; ggml keeps only the sign.
        let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
        return f16::from_bits(sign | 0x7E00);
    }
    // half's conversion (hardware F16C or its software fallback) is correctly rounded to
    // nearest even for every finite and infinite input, like ggml's.
    f16::from_f32(x)
}

/// f16 → f32, exact for every non-NaN value (a NaN comes back quiet, as on x86 in ggml).
#[inline]
pub fn f16_to_f32(h: f16) -> f32 {
    h.to_f32()
}

/// f32 → bf16 as ggml's `ggml_compute_fp32_to_bf16`: round to nearest even on the raw bits
/// (so a finite value near f32::MAX rounds up to inf), NaN keeps its top payload bits and
/// is forced quiet.
#[inline]
pub fn f32_to_bf16(x: f32) -> bf16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 0x40) as u16);
    }
    // Adding 0x7fff plus the lowest kept bit carries into the kept half exactly when the
    // dropped half is above one half, or equal to it with an odd kept half.
    let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1));
    bf16::from_bits((rounded >> 16) as u16)
}

/// bf16 → f32: bf16 is the top half of an f32, so this is a shift, NaN payload included.
#[inline]
pub fn bf16_to_f32(h: bf16) -> f32 {
    f32::from_bits((h.to_bits() as u32) << 16)
}

/// The integer a C cast `(intN_t)x` / `(uintN_t)x` of a float yields on x86-64, where ggml's
/// reference quantizers run: truncation toward zero through a 32-bit `cvttss2si`, whose
/// out-of-range and NaN result is `i32::MIN`. Callers narrow with `as i8` / `as u8`, which
/// wraps like the C store does. Rust's own `as i8` saturates instead, which would differ from
/// ggml only for non-finite or huge inputs (e.g. a block whose scale underflows so that its
/// inverse is inf), but bit-exactness is the point of the reference.
#[inline]
pub(crate) fn c_float_to_int(x: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        x as i32
    } else {
        i32::MIN
    }
}

/// ggml's `MAX(a, b)` macro, `a > b ? a : b`: unlike `f32::max`, a NaN in `b` wins (until a
/// later value replaces it), which decides the scale of a block containing NaN.
#[inline]
pub(crate) fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

impl QuantBlock for f32 {
    const TYPE: GgmlType = GgmlType::F32;
    const BLOCK_SIZE: usize = 1;
    fn quantize(src: &[f32], out: &mut [Self]) {
        out.copy_from_slice(src);
    }
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        out.copy_from_slice(blocks);
    }
}

impl QuantBlock for f16 {
    const TYPE: GgmlType = GgmlType::F16;
    const BLOCK_SIZE: usize = 1;
    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len());
        for (o, &x) in out.iter_mut().zip(src) {
            *o = f32_to_f16(x);
        }
    }
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(blocks.len(), out.len());
        for (o, &h) in out.iter_mut().zip(blocks) {
            *o = f16_to_f32(h);
        }
    }
}

impl QuantBlock for bf16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const BLOCK_SIZE: usize = 1;
    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len());
        for (o, &x) in out.iter_mut().zip(src) {
            *o = f32_to_bf16(x);
        }
    }
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(blocks.len(), out.len());
        for (o, &h) in out.iter_mut().zip(blocks) {
            *o = bf16_to_f32(h);
        }
    }
}

/// The float dots follow ggml's scalar path (`ggml_vec_dot_f16` and friends without SIMD):
/// each product is rounded to f32, the sum is kept in f64 (`ggml_float`) and rounded to f32
/// once at the end. The f64 sum makes the result independent of summation order to within
/// one f32 rounding, so SIMD kernels (which sum in f32 lanes) are compared with a tolerance.
fn dot_f64_sum(w: impl Iterator<Item = f32>, a: impl Iterator<Item = f32>) -> f32 {
    let mut sum = 0.0f64;
    for (x, y) in w.zip(a) {
        sum += (x * y) as f64;
    }
    sum as f32
}

impl VecDot for f32 {
    type Act = f32;
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        dot_f64_sum(w.iter().copied(), a.iter().copied())
    }
}

impl VecDot for f16 {
    type Act = f16;
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        dot_f64_sum(
            w.iter().map(|&h| f16_to_f32(h)),
            a.iter().map(|&h| f16_to_f32(h)),
        )
    }
}

impl VecDot for bf16 {
    type Act = bf16;
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        dot_f64_sum(
            w.iter().map(|&h| bf16_to_f32(h)),
            a.iter().map(|&h| bf16_to_f32(h)),
        )
    }
}
