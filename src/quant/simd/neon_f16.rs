//! f16 → f32 conversions for the NEON kernels (`neon`, `neon_repack16`), in base-ISA
//! instructions through `asm!`: the intrinsics that take f16 vectors are still unstable on
//! Rust 1.95, and the `half` crate checks for FEAT_FP16 at every call.

use core::arch::aarch64::*;
use core::arch::asm;

use half::f16;

/// f16 → f32, exact. `fcvt` between half and single precision is base ARMv8 floating point
/// (FEAT_FP16, which the `half` crate checks for at every call, is only needed for half
/// precision arithmetic).
#[inline(always)]
pub(crate) fn h2f(h: f16) -> f32 {
    let r: f32;
    // SAFETY: a base-ISA instruction on registers only.
    unsafe {
        asm!(
            "fcvt {r:s}, {h:h}",
            h = in(vreg) h.to_bits(),
            r = lateout(vreg) r,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}

/// Four f16 → four f32 (`fcvtl`, base Advanced SIMD), exact.
#[inline(always)]
pub(crate) fn h2f_x4(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    // SAFETY: a base-ISA instruction on registers only.
    unsafe {
        asm!(
            "fcvtl {r:v}.4s, {h:v}.4h",
            h = in(vreg) h,
            r = lateout(vreg) r,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}
