//! AVX2 (+FMA, F16C) kernels. Chosen at run time when the CPU has them; each is tested
//! against the scalar reference in tests/simd.rs.

use super::*;

/// The AVX2 kernel set, if this CPU can run it.
pub fn kernels() -> Option<KernelSet> {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    // No AVX2 kernels yet: not offered, so `-v` never claims a speed-up that is not there.
    None
}
