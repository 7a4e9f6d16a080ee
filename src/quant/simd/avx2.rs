//! AVX2 (+FMA, F16C) kernels. Chosen at run time when the CPU has them; each is tested
//! against the scalar reference in tests/simd.rs.
//!
//! The kernels are safe `#[target_feature]` functions: the compiler only lets code without
//! those features call them through `unsafe`, and that happens in one place per kernel, the
//! thin wrapper that goes into the `KernelSet`. The set itself is only built after
//! `is_x86_feature_detected!` has confirmed every feature. Vectors are loaded and stored by
//! value through `bytemuck` (the SIMD types are `Pod`), so no raw pointers are needed.
//!
//! Block dots sum the 32 products of a block exactly as integers (vpmaddubsw, vpmaddwd),
//! then scale and add the block terms exactly as the scalar reference does, so they return
//! its bits (see `block_dot!`). The activation quantizers also reproduce the scalar
//! reference bit for bit (ggml's own AVX quantizer does not: it rounds ties to even and
//! scales by `127/amax` instead of `1/(amax/127)`). Only the float dots (F32, F16) sum in
//! f32 lanes with FMA, as ggml's do, and differ from the f64-summing reference by rounding.

use core::arch::x86_64::*;

use super::*;
use crate::quant::iq4::KVALUES_IQ4NL;

/// The AVX2 kernel set, if this CPU can run it.
pub fn kernels() -> Option<KernelSet> {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    Some(KernelSet {
        name: "avx2",
        gemm16: super::avx2_repack16::kernel(),
        gemm_k: super::avx2_repack_k::kernel(),
        k_kinds: KindK::ALL,
        prefetch_lines_k: super::prefetch_k().lines,
        attn: super::avx2_attn::usable().then_some(AttnKernel {
            name: "avx2",
            supports: super::avx2_attn::supports,
            head: super::avx2_attn::attend,
            tile: Some(super::avx2_attn::attend_tile),
        }),
        silu_mul: super::avx2_math::supported().then_some(super::avx2_math::silu_mul as _),
        prefetch_lines: super::prefetch16_avx2().lines,
        quantize_q8_0,
        quantize_q8_1,
        q4_0,
        q4_1,
        q5_0,
        q5_1,
        q8_0,
        iq4_nl,
        f32: dot_f32,
        f16: dot_f16,
        axpy_f16,
        gemm8_q4_0: Some(gemm8_q4_0),
        gemm8_q4_1: Some(gemm8_q4_1),
        gemm8_q5_0: Some(gemm8_q5_0),
        gemm8_q5_1: Some(gemm8_q5_1),
        gemm8_q8_0: Some(gemm8_q8_0),
        gemm8_iq4_nl: Some(gemm8_iq4_nl),
        gemm8_q4_k: Some(super::avx2_kquants::gemm8_q4k),
        gemm8_q6_k: Some(super::avx2_kquants::gemm8_q6k),
        quantize_q8_k: super::avx2_kquants::quantize_q8k,
        q2_k: super::avx2_kquants::vec_dot_q2k_q8k,
        q3_k: super::avx2_kquants::vec_dot_q3k_q8k,
        q4_k: super::avx2_kquants::vec_dot_q4k_q8k,
        q5_k: super::avx2_kquants::vec_dot_q5k_q8k,
        q6_k: super::avx2_kquants::vec_dot_q6k_q8k,
        iq4_xs: super::avx2_kquants::vec_dot_iq4xs_q8k,
        ..SCALAR
    })
}

/// The AVX2 set with the AVX-VNNI (256-bit `vpdpbusd`, `vpdpwssd`) sixteen-row and K kernels,
/// where the CPU has AVX-VNNI: laptops and desktops since Alder Lake, AMD Zen 5.
pub fn vnni_kernels() -> Option<KernelSet> {
    let avx2 = kernels()?;
    Some(KernelSet {
        name: "avx2-vnni",
        gemm16: Some(super::avx2_repack16::kernel_vnni()?),
        gemm_k: Some(super::avx2_repack_k::kernel_vnni()?),
        k_kinds: KindK::ALL,
        ..avx2
    })
}

/// Safe entry points for the table. Every one checks the slice lengths the kernel relies on
/// and calls the `#[target_feature]` kernel; they are private, so the only way to reach them
/// is through the set `kernels()` returns after the feature check.
macro_rules! entry {
    (dot $name:ident, $kernel:ident, $w:ty, $a:ty) => {
        fn $name(w: &[$w], a: &[$a]) -> f32 {
            assert_eq!(w.len(), a.len(), "dot of rows of different lengths");
            // SAFETY: this function is only handed out in the set built by `kernels()`,
            // which first checked that the CPU has AVX2, FMA and F16C.
            unsafe { $kernel(w, a) }
        }
    };
    (gemm $name:ident, $kernel:ident, $w:ty, $a:ty) => {
        fn $name(w: &[$w], a: &[$a], dy: &[[f32; 8]], sy: &[[f32; 8]]) -> [f32; 8] {
            assert_eq!(a.len(), 8 * w.len(), "gemm8: not eight rows of activations");
            assert_eq!(dy.len(), w.len(), "gemm8: scales for the wrong block count");
            // SAFETY: reachable only through the set built by `kernels()`, after the
            // feature check.
            unsafe { $kernel(w, a, dy, sy) }
        }
    };
    (quant $name:ident, $kernel:ident, $a:ty) => {
        fn $name(src: &[f32], out: &mut [$a]) {
            assert_eq!(
                src.len(),
                out.len() * 32,
                "quantizing into the wrong number of blocks"
            );
            // SAFETY: as for the dots, reachable only after the feature check in `kernels()`.
            unsafe { $kernel(src, out) }
        }
    };
}

entry!(gemm gemm8_q4_0, gemm8_q4_0_avx2, BlockQ4_0, BlockQ8_0);
entry!(gemm gemm8_q4_1, gemm8_q4_1_avx2, BlockQ4_1, BlockQ8_1);
entry!(gemm gemm8_q5_0, gemm8_q5_0_avx2, BlockQ5_0, BlockQ8_0);
entry!(gemm gemm8_q5_1, gemm8_q5_1_avx2, BlockQ5_1, BlockQ8_1);
entry!(gemm gemm8_q8_0, gemm8_q8_0_avx2, BlockQ8_0, BlockQ8_0);
entry!(gemm gemm8_iq4_nl, gemm8_iq4_nl_avx2, BlockIQ4NL, BlockQ8_0);
entry!(quant quantize_q8_0, quantize_q8_0_avx2, BlockQ8_0);
entry!(quant quantize_q8_1, quantize_q8_1_avx2, BlockQ8_1);
entry!(dot q4_0, dot_q4_0, BlockQ4_0, BlockQ8_0);
entry!(dot q4_1, dot_q4_1, BlockQ4_1, BlockQ8_1);
entry!(dot q5_0, dot_q5_0, BlockQ5_0, BlockQ8_0);
entry!(dot q5_1, dot_q5_1, BlockQ5_1, BlockQ8_1);
entry!(dot q8_0, dot_q8_0, BlockQ8_0, BlockQ8_0);
entry!(dot iq4_nl, dot_iq4_nl, BlockIQ4NL, BlockQ8_0);
entry!(dot dot_f32, dot_f32_avx2, f32, f32);
entry!(dot dot_f16, dot_f16_avx2, f16, f16);

fn axpy_f16(out: &mut [f32], w: f32, v: &[f16]) {
    assert_eq!(out.len(), v.len(), "axpy of rows of different lengths");
    // SAFETY: reachable only through the set built by `kernels()`, after the feature check.
    unsafe { axpy_f16_avx2(out, w, v) }
}

// ---------------------------------------------------------------------------------------
// Small helpers. All carry the same features so that they inline into the kernels.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax_f32(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// f16 → f32 with the F16C instruction (exact, like the scalar conversion).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn h2f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// The 32 four-bit fields of a Q4-style block as bytes in weight order: the low nibbles
/// (weights 0..16) in the low 128-bit lane, the high nibbles (16..32) in the high lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: [u8; 16]) -> __m256i {
    let lo: __m128i = bytemuck::cast(qs);
    let hi = _mm_srli_epi16::<4>(lo);
    _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
}

/// 0xFF in byte `i` where bit `i` of the little-endian `qh` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_bytes(qh: [u8; 4]) -> __m256i {
    let v = _mm256_set1_epi32(i32::from_le_bytes(qh));
    // Byte i takes source byte i / 8 (the shuffle works within 128-bit lanes, and every
    // lane holds a copy of the four bytes).
    let spread = _mm256_shuffle_epi8(
        v,
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

/// Σ x·y over each group of four bytes as i32 lanes, for unsigned `x` and signed `y`. Exact
/// while each pair x₀y₀ + x₁y₁ fits an i16 (vpmaddubsw saturates): true for x ≤ 128 and
/// |y| ≤ 127, which covers every caller.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// The same for two signed vectors. vpmaddubsw needs one unsigned operand, so the sign of
/// `x` moves onto `y`. Exact as long as `y` has no -128 (which cannot be negated in i8);
/// the activation quantizers never produce it, their levels are within ±127.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Lane k of the result is the sum of the eight lanes of `v[k]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum8_i32(v: &[__m256i; 8]) -> __m256i {
    // Two rounds of pairwise adds leave, per 128-bit half, one partial sum per vector:
    // [v0 v1 v2 v3] from the low halves of the inputs and the same from the high halves.
    let ab = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let cd = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(ab, cd),
        _mm256_permute2x128_si256::<0x31>(ab, cd),
    )
}

/// Runs a block dot: `$lanes(x, y)` gives a block's integer products summed into eight i32
/// lanes, `$combine(sumi, x, y)` the block's f32 term from the exact block sum. The terms
/// are added one by one in block order, with the reference's own expression, so the result
/// is the scalar reference's bit for bit: the integer work is what is vectorized, and eight
/// blocks share one horizontal reduction. (ggml instead accumulates scaled lanes with FMA;
/// that is faster still but, on formats with a minimum, sums d·q·a and m·s separately and
/// loses the per-block cancellation — enough to change SmolLM2's greedy replies.)
macro_rules! block_dot {
    ($w:expr, $a:expr, $lanes:ident, $combine:ident) => {{
        let (w, a) = ($w, $a);
        let mut sum = 0.0f32;
        let (w8, wr) = w.as_chunks::<8>();
        let (a8, ar) = a.as_chunks::<8>();
        for (x, y) in w8.iter().zip(a8) {
            let lanes: [__m256i; 8] = core::array::from_fn(|k| $lanes(&x[k], &y[k]));
            let sums: [i32; 8] = bytemuck::cast(hsum8_i32(&lanes));
            for ((&sumi, xk), yk) in sums.iter().zip(x).zip(y) {
                sum += $combine(sumi, xk, yk);
            }
        }
        for (x, y) in wr.iter().zip(ar) {
            sum += $combine(hsum_i32($lanes(x, y)), x, y);
        }
        sum
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_q8(qs: [i8; 32]) -> __m256i {
    bytemuck::cast(qs)
}

// ---------------------------------------------------------------------------------------
// Quantized dots. Each `combine_*` is the scalar reference's per-block expression, operand
// order included (f32 multiplication is not associative).

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes_q4_0(x: &BlockQ4_0, y: &BlockQ8_0) -> __m256i {
    let qx = _mm256_sub_epi8(nibbles(x.qs), _mm256_set1_epi8(8));
    dot_i8_i8(qx, load_q8(y.qs))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn combine_q4_0(sumi: i32, x: &BlockQ4_0, y: &BlockQ8_0) -> f32 {
    sumi as f32 * h2f(x.d) * h2f(y.d)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    block_dot!(w, a, lanes_q4_0, combine_q4_0)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes_q4_1(x: &BlockQ4_1, y: &BlockQ8_1) -> __m256i {
    dot_u8_i8(nibbles(x.qs), load_q8(y.qs))
}

/// The minimum enters through Q8_1's `s = d_a·Σq_a`: one product per block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn combine_q4_1(sumi: i32, x: &BlockQ4_1, y: &BlockQ8_1) -> f32 {
    h2f(x.d) * h2f(y.d) * sumi as f32 + h2f(x.m) * h2f(y.s)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    block_dot!(w, a, lanes_q4_1, combine_q4_1)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes_q5_0(x: &BlockQ5_0, y: &BlockQ8_0) -> __m256i {
    // Level q - 16 as a signed byte: a clear fifth bit is the same as or-ing in 0xF0
    // (nibble + 240 ≡ nibble - 16 mod 256); a set one leaves the nibble as it is.
    let high = _mm256_andnot_si256(bits_to_bytes(x.qh), _mm256_set1_epi8(0xF0u8 as i8));
    let qx = _mm256_or_si256(nibbles(x.qs), high);
    dot_i8_i8(qx, load_q8(y.qs))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn combine_q5_0(sumi: i32, x: &BlockQ5_0, y: &BlockQ8_0) -> f32 {
    h2f(x.d) * h2f(y.d) * sumi as f32
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    block_dot!(w, a, lanes_q5_0, combine_q5_0)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes_q5_1(x: &BlockQ5_1, y: &BlockQ8_1) -> __m256i {
    let high = _mm256_and_si256(bits_to_bytes(x.qh), _mm256_set1_epi8(0x10));
    let qx = _mm256_or_si256(nibbles(x.qs), high);
    dot_u8_i8(qx, load_q8(y.qs))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn combine_q5_1(sumi: i32, x: &BlockQ5_1, y: &BlockQ8_1) -> f32 {
    h2f(x.d) * h2f(y.d) * sumi as f32 + h2f(x.m) * h2f(y.s)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    block_dot!(w, a, lanes_q5_1, combine_q5_1)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes_q8_0(x: &BlockQ8_0, y: &BlockQ8_0) -> __m256i {
    // The weights take the unsigned side: a -128 in a weight file is still exact there.
    dot_i8_i8(load_q8(x.qs), load_q8(y.qs))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn combine_q8_0(sumi: i32, x: &BlockQ8_0, y: &BlockQ8_0) -> f32 {
    sumi as f32 * (h2f(x.d) * h2f(y.d))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    block_dot!(w, a, lanes_q8_0, combine_q8_0)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes_iq4_nl(x: &BlockIQ4NL, y: &BlockQ8_0) -> __m256i {
    // The 16 levels fit one register: a byte shuffle is the table look-up.
    let table: __m128i = bytemuck::cast(KVALUES_IQ4NL);
    let qx = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), nibbles(x.qs));
    dot_i8_i8(qx, load_q8(y.qs))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn combine_iq4_nl(sumi: i32, x: &BlockIQ4NL, y: &BlockQ8_0) -> f32 {
    h2f(y.d) * h2f(x.d) * sumi as f32
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq4_nl(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    block_dot!(w, a, lanes_iq4_nl, combine_iq4_nl)
}

// ---------------------------------------------------------------------------------------
// Prompt tiles: one weight row against eight tokens. Each weight block is decoded once; the
// eight tokens' integer block sums are reduced together into one vector (lane t = token t),
// and the block terms are computed and added lane-wise with the reference's own operations
// in its order (no FMA), so lane t equals the scalar dot for token t bit for bit.

/// `$decode(x)` gives the weight block as (unsigned bytes, sign source): for signed
/// formats the magnitudes and the signed levels, for unsigned ones the levels twice.
/// `$term(sumi, x, dy, sy)` is the reference's block term for eight tokens.
macro_rules! block_gemm8_impl {
    ($w:expr, $a:expr, $dy:expr, $sy:expr, $decode:path, $signed:expr, $term:path) => {
        block_gemm8_impl!($w, $a, $dy, $sy, $decode, $signed, $term, dot_u8_i8)
    };
    ($w:expr, $a:expr, $dy:expr, $sy:expr, $decode:path, $signed:expr, $term:path, $dot:path) => {{
        let (w, a, dy, sy) = ($w, $a, $dy, $sy);
        let nb = w.len();
        let mut sum = _mm256_setzero_ps();
        for (k, x) in w.iter().enumerate() {
            let (u, sgn) = $decode(x);
            let lanes: [__m256i; 8] = core::array::from_fn(|t| {
                let y = load_q8(a[t * nb + k].qs);
                let y = if $signed { _mm256_sign_epi8(y, sgn) } else { y };
                $dot(u, y)
            });
            let sumi = _mm256_cvtepi32_ps(hsum8_i32(&lanes));
            let sy_k = if sy.is_empty() { [0.0; 8] } else { sy[k] };
            sum = _mm256_add_ps(
                sum,
                $term(sumi, x, bytemuck::cast(dy[k]), bytemuck::cast(sy_k)),
            );
        }
        bytemuck::cast(sum)
    }};
}
pub(super) use block_gemm8_impl;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed(q: __m256i) -> (__m256i, __m256i) {
    (_mm256_sign_epi8(q, q), q)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bc(h: f16) -> __m256 {
    _mm256_set1_ps(h2f(h))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dec_q4_0(x: &BlockQ4_0) -> (__m256i, __m256i) {
    signed(_mm256_sub_epi8(nibbles(x.qs), _mm256_set1_epi8(8)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn term_q4_0(sumi: __m256, x: &BlockQ4_0, dy: __m256, _: __m256) -> __m256 {
    _mm256_mul_ps(_mm256_mul_ps(sumi, bc(x.d)), dy)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm8_q4_0_avx2(w: &[BlockQ4_0], a: &[BlockQ8_0], dy: &[[f32; 8]], sy: &[[f32; 8]]) -> [f32; 8] {
    block_gemm8_impl!(w, a, dy, sy, dec_q4_0, true, term_q4_0)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dec_q4_1(x: &BlockQ4_1) -> (__m256i, __m256i) {
    let q = nibbles(x.qs);
    (q, q)
}

/// (dx·dy)·sumi + mx·sy, as `combine_q4_1` (and Q5_1's).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn term_min(sumi: __m256, d: f16, m: f16, dy: __m256, sy: __m256) -> __m256 {
    _mm256_add_ps(
        _mm256_mul_ps(_mm256_mul_ps(bc(d), dy), sumi),
        _mm256_mul_ps(bc(m), sy),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn term_q4_1(sumi: __m256, x: &BlockQ4_1, dy: __m256, sy: __m256) -> __m256 {
    term_min(sumi, x.d, x.m, dy, sy)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm8_q4_1_avx2(w: &[BlockQ4_1], a: &[BlockQ8_1], dy: &[[f32; 8]], sy: &[[f32; 8]]) -> [f32; 8] {
    block_gemm8_impl!(w, a, dy, sy, dec_q4_1, false, term_q4_1)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dec_q5_0(x: &BlockQ5_0) -> (__m256i, __m256i) {
    let high = _mm256_andnot_si256(bits_to_bytes(x.qh), _mm256_set1_epi8(0xF0u8 as i8));
    signed(_mm256_or_si256(nibbles(x.qs), high))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn term_q5_0(sumi: __m256, x: &BlockQ5_0, dy: __m256, _: __m256) -> __m256 {
    _mm256_mul_ps(_mm256_mul_ps(bc(x.d), dy), sumi)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm8_q5_0_avx2(w: &[BlockQ5_0], a: &[BlockQ8_0], dy: &[[f32; 8]], sy: &[[f32; 8]]) -> [f32; 8] {
    block_gemm8_impl!(w, a, dy, sy, dec_q5_0, true, term_q5_0)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dec_q5_1(x: &BlockQ5_1) -> (__m256i, __m256i) {
    let high = _mm256_and_si256(bits_to_bytes(x.qh), _mm256_set1_epi8(0x10));
    let q = _mm256_or_si256(nibbles(x.qs), high);
    (q, q)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn term_q5_1(sumi: __m256, x: &BlockQ5_1, dy: __m256, sy: __m256) -> __m256 {
    term_min(sumi, x.d, x.m, dy, sy)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm8_q5_1_avx2(w: &[BlockQ5_1], a: &[BlockQ8_1], dy: &[[f32; 8]], sy: &[[f32; 8]]) -> [f32; 8] {
    block_gemm8_impl!(w, a, dy, sy, dec_q5_1, false, term_q5_1)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dec_q8_0(x: &BlockQ8_0) -> (__m256i, __m256i) {
    signed(load_q8(x.qs))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn term_q8_0(sumi: __m256, x: &BlockQ8_0, dy: __m256, _: __m256) -> __m256 {
    _mm256_mul_ps(sumi, _mm256_mul_ps(bc(x.d), dy))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm8_q8_0_avx2(w: &[BlockQ8_0], a: &[BlockQ8_0], dy: &[[f32; 8]], sy: &[[f32; 8]]) -> [f32; 8] {
    block_gemm8_impl!(w, a, dy, sy, dec_q8_0, true, term_q8_0)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dec_iq4_nl(x: &BlockIQ4NL) -> (__m256i, __m256i) {
    let table: __m128i = bytemuck::cast(KVALUES_IQ4NL);
    signed(_mm256_shuffle_epi8(
        _mm256_broadcastsi128_si256(table),
        nibbles(x.qs),
    ))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn term_iq4_nl(sumi: __m256, x: &BlockIQ4NL, dy: __m256, _: __m256) -> __m256 {
    _mm256_mul_ps(_mm256_mul_ps(dy, bc(x.d)), sumi)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm8_iq4_nl_avx2(
    w: &[BlockIQ4NL],
    a: &[BlockQ8_0],
    dy: &[[f32; 8]],
    sy: &[[f32; 8]],
) -> [f32; 8] {
    block_gemm8_impl!(w, a, dy, sy, dec_iq4_nl, true, term_iq4_nl)
}

// ---------------------------------------------------------------------------------------
// Float dots: four 8-lane FMA accumulators over 32 elements at a time, the tail in scalar.

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f32_avx2(w: &[f32], a: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let (w32, wr) = w.as_chunks::<32>();
    let (a32, ar) = a.as_chunks::<32>();
    for (x, y) in w32.iter().zip(a32) {
        let x: [__m256; 4] = bytemuck::cast(*x);
        let y: [__m256; 4] = bytemuck::cast(*y);
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(x[k], y[k], acc[k]);
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail: f32 = wr.iter().zip(ar).map(|(x, y)| x * y).sum();
    hsum_f32(v) + tail
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f16_avx2(w: &[f16], a: &[f16]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let (w32, wr) = w.as_chunks::<32>();
    let (a32, ar) = a.as_chunks::<32>();
    for (x, y) in w32.iter().zip(a32) {
        let x: [__m128i; 4] = bytemuck::cast(*x);
        let y: [__m128i; 4] = bytemuck::cast(*y);
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(_mm256_cvtph_ps(x[k]), _mm256_cvtph_ps(y[k]), acc[k]);
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail: f32 = wr.iter().zip(ar).map(|(&x, &y)| h2f(x) * h2f(y)).sum();
    hsum_f32(v) + tail
}

/// out += w · v with FMA: one rounding per element where the reference has two (the product,
/// then the sum), so results differ from it by rounding only.
#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_f16_avx2(out: &mut [f32], w: f32, v: &[f16]) {
    let wv = _mm256_set1_ps(w);
    let (o8, or) = out.as_chunks_mut::<8>();
    let (v8, vr) = v.as_chunks::<8>();
    for (o, x) in o8.iter_mut().zip(v8) {
        let x: __m128i = bytemuck::cast(*x);
        let acc: __m256 = bytemuck::cast(*o);
        *o = bytemuck::cast(_mm256_fmadd_ps(wv, _mm256_cvtph_ps(x), acc));
    }
    for (o, &x) in or.iter_mut().zip(vr) {
        *o += w * h2f(x);
    }
}

// ---------------------------------------------------------------------------------------
// Activation quantizers.

/// One block of 32 as the scalar `quantize_q8`: the f32 scale `amax/127` and the levels
/// `roundf(x · (1/d))` (half away from zero), narrowed to i8 the way C's store does.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block_q8(x: &[f32; 32]) -> (f32, __m256i) {
    let v: [__m256; 4] = bytemuck::cast(*x);
    let sign = _mm256_set1_ps(-0.0);
    let abs = |v| _mm256_andnot_ps(sign, v);
    let amax = hmax_f32(_mm256_max_ps(
        _mm256_max_ps(abs(v[0]), abs(v[1])),
        _mm256_max_ps(abs(v[2]), abs(v[3])),
    ));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let one = _mm256_set1_ps(1.0);
    let half = _mm256_set1_ps(0.5);
    let byte = _mm256_set1_epi32(0xFF);
    let level = |v: __m256| {
        let s = _mm256_mul_ps(v, id);
        // roundf: truncate, then step away from zero when the dropped fraction (exact,
        // as s - trunc(s) always is) is at least one half. The hardware's nearest mode
        // would round ties to even instead.
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(s);
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(abs(_mm256_sub_ps(s, t)), half);
        let step = _mm256_and_ps(up, _mm256_or_ps(_mm256_and_ps(s, sign), one));
        // cvttps2dq gives i32::MIN for NaN and out-of-range values, as the reference's
        // conversion does; keeping the low byte is C's wrapping store into int8_t.
        _mm256_and_si256(_mm256_cvttps_epi32(_mm256_add_ps(t, step)), byte)
    };
    let (l0, l1, l2, l3) = (level(v[0]), level(v[1]), level(v[2]), level(v[3]));
    // The packs interleave 128-bit lanes; the permute puts the 4-byte groups back in order.
    let bytes = _mm256_packus_epi16(_mm256_packus_epi32(l0, l1), _mm256_packus_epi32(l2, l3));
    let q = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    (d, q)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8_0_avx2(src: &[f32], out: &mut [BlockQ8_0]) {
    let (x32, _) = src.as_chunks::<32>();
    for (x, y) in x32.iter().zip(out.iter_mut()) {
        let (d, q) = quantize_block_q8(x);
        y.d = float::f32_to_f16(d);
        y.qs = bytemuck::cast(q);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8_1_avx2(src: &[f32], out: &mut [BlockQ8_1]) {
    let (x32, _) = src.as_chunks::<32>();
    for (x, y) in x32.iter().zip(out.iter_mut()) {
        let (d, q) = quantize_block_q8(x);
        let pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q);
        let sum = hsum_i32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
        y.d = float::f32_to_f16(d);
        y.s = float::f32_to_f16(sum as f32 * d);
        y.qs = bytemuck::cast(q);
    }
}
