//! Vectorized elementwise math for the AVX-512 set: eˣ (softmax, SiLU) and the SwiGLU
//! product. `f32::exp` per element was ~7% of a prompt's time (one call per attention score
//! and per FFN activation); these run 16 lanes per step.

use core::arch::x86_64::*;

/// eˣ to within about an ulp of `f32::exp`: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in
/// two for an exact product), a degree-6 polynomial for eʳ (Cephes' expf coefficients),
/// then ·2ⁿ. Inputs are clamped to [−87.3, 88.7]: below, ≈1e-38 instead of a subnormal or
/// 0 (invisible in a softmax, whose largest term is 1, and in SiLU); above, ≈3e38.
/// (Cephes' last coefficient, 0.50000001201, is 0.5 in f32.)
///
/// # Safety
/// The CPU has AVX-512 F and FMA.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f")]
pub fn exp(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.336_54)),
        _mm512_set1_ps(88.722_83),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(
        _mm512_mul_ps(p, r),
        r,
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_scalef_ps(y, n)
}

/// Whether `silu_mul` runs on this CPU.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")
}

/// gate[i] = SiLU(gate[i]) · up[i] = gate/(1 + e^(−gate)) · up.
/// Panics unless `supported()` and the slices have equal lengths.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert!(supported(), "silu_mul: no AVX-512 F");
    assert_eq!(gate.len(), up.len());
    // SAFETY: AVX-512 F and FMA checked above; equal lengths bound both slices.
    unsafe { silu_mul_impl(gate, up) }
}

/// # Safety
/// AVX-512 F, FMA; `gate.len() == up.len()`.
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn silu_mul_impl(gate: &mut [f32], up: &[f32]) {
    let n = gate.len();
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let left = n - i;
        let m: __mmask16 = if left >= 16 {
            0xffff
        } else {
            ((1u32 << left) - 1) as u16
        };
        // SAFETY: the mask keeps lanes below n in both slices.
        unsafe {
            let g = _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i));
            let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
            _mm512_mask_storeu_ps(gate.as_mut_ptr().add(i), m, _mm512_mul_ps(s, u));
        }
        i += 16;
    }
}
