//! Vectorized elementwise math for the AVX2 set: eˣ (softmax, SiLU) and the SwiGLU product,
//! eight lanes per step; `avx512_math` with 256-bit registers and no `vscalefps`.

use core::arch::x86_64::*;

/// eˣ to within about an ulp of `f32::exp`, as `avx512_math::exp` (same reduction and
/// polynomial; 2ⁿ is built in the exponent bits). Inputs are clamped to [−87.3, 88.7].
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub fn exp(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.336_54)),
        _mm256_set1_ps(88.722_83),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        _mm256_mul_ps(p, r),
        r,
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // n is in −126..=128 after the clamp: 2ⁿ in two factors keeps each a normal float.
    let ni = _mm256_cvtps_epi32(n);
    let half = _mm256_srai_epi32(ni, 1);
    let pow = |e: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(e, _mm256_set1_epi32(127)),
            23,
        ))
    };
    _mm256_mul_ps(_mm256_mul_ps(y, pow(half)), pow(_mm256_sub_epi32(ni, half)))
}

/// Whether `silu_mul` runs on this CPU.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// gate[i] = SiLU(gate[i]) · up[i] = gate/(1 + e^(−gate)) · up.
/// Panics unless `supported()` and the slices have equal lengths.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert!(supported(), "silu_mul: no AVX2/FMA");
    assert_eq!(gate.len(), up.len());
    // SAFETY: AVX2 and FMA checked above; equal lengths bound both slices.
    unsafe { silu_mul_impl(gate, up) }
}

/// # Safety
/// AVX2, FMA; `gate.len() == up.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_impl(gate: &mut [f32], up: &[f32]) {
    let n = gate.len();
    let one = _mm256_set1_ps(1.0);
    let f = |g: __m256, u: __m256| {
        let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u)
    };
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n in both slices.
        unsafe {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), f(g, u));
        }
        i += 8;
    }
    if i < n {
        let (mut g, mut u) = ([0f32; 8], [0f32; 8]);
        g[..n - i].copy_from_slice(&gate[i..]);
        u[..n - i].copy_from_slice(&up[i..]);
        let mut r = [0f32; 8];
        // SAFETY: three 8-float arrays.
        unsafe {
            _mm256_storeu_ps(
                r.as_mut_ptr(),
                f(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())),
            )
        };
        gate[i..].copy_from_slice(&r[..n - i]);
    }
}
