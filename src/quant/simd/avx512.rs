//! AVX-512 (F, BW, VL, VNNI) kernels: the AVX2 set with its prompt tiles' integer dots done
//! by `vpdpbusd` (four u8·i8 products summed into each i32 lane in one instruction, where
//! AVX2 needs `vpmaddubsw` then `vpmaddwd`). Chosen at run time when the CPU has all four
//! features; entries not written here are the AVX2 set's.
//!
//! `vpdpbusd` does not saturate, and `vpmaddubsw` never saturates on these operands (see
//! `avx2::dot_u8_i8`), so the integer block sums are the same and every entry returns the
//! same bits as the AVX2 one (asserted in tests/simd.rs).

use core::arch::x86_64::*;

use super::avx2::{self, block_gemm8_impl, hsum8_i32, load_q8};
use super::*;

/// The AVX-512 kernel sets this CPU can run, best last: `avx512-vnni`, and `avx512-amx`
/// (the same with the AMX GEMMs) where AMX is usable.
pub fn kernels() -> Vec<KernelSet> {
    let Some(base) = avx2::kernels() else {
        return Vec::new();
    };
    if !(is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni"))
    {
        return Vec::new();
    }
    let attn = super::avx512_attn::usable().then_some(AttnKernel {
        name: "avx512",
        supports: super::avx512_attn::supports,
        head: super::avx512_attn::attend,
        tile: Some(super::avx512_attn::attend_tile),
    });
    let vnni = KernelSet {
        name: "avx512-vnni",
        gemm16: super::avx512_repack16::vnni_kernel(),
        gemm_k: super::avx512_repack_k::kernel(),
        k_kinds: KindK::ALL,
        amx_k: false,
        amx16: false,
        attn,
        silu_mul: super::avx512_math::supported().then_some(super::avx512_math::silu_mul as _),
        prefetch_lines: PREFETCH_LINES,
        prefetch_lines_k: super::prefetch_k().lines,
        gemm8_q4_0: Some(gemm8_q4_0),
        gemm8_q4_1: Some(gemm8_q4_1),
        gemm8_q5_0: Some(gemm8_q5_0),
        gemm8_q5_1: Some(gemm8_q5_1),
        gemm8_q8_0: Some(gemm8_q8_0),
        gemm8_iq4_nl: Some(gemm8_iq4_nl),
        ..base
    };
    let mut v = vec![vnni];
    if let Some(amx) = super::avx512_repack16::amx_kernel() {
        v.push(KernelSet {
            name: "avx512-amx",
            gemm16: Some(amx),
            amx16: true,
            amx_k: vnni.gemm_k.is_some() && super::avx512_amx_k::usable(),
            ..vnni
        });
    }
    v
}

/// Σ x·y over each group of four bytes as i32 lanes (x unsigned, y signed), exact.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot_u8_i8_vnni(x: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y)
}

macro_rules! gemm8 {
    ($name:ident, $kernel:ident, $w:ty, $a:ty, $dec:path, $signed:expr, $term:path) => {
        fn $name(w: &[$w], a: &[$a], dy: &[[f32; 8]], sy: &[[f32; 8]]) -> [f32; 8] {
            assert_eq!(a.len(), 8 * w.len(), "gemm8: not eight rows of activations");
            assert_eq!(dy.len(), w.len(), "gemm8: scales for the wrong block count");
            // SAFETY: reachable only through the set built by `kernels()`, which checked
            // AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI first.
            unsafe { $kernel(w, a, dy, sy) }
        }

        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        fn $kernel(w: &[$w], a: &[$a], dy: &[[f32; 8]], sy: &[[f32; 8]]) -> [f32; 8] {
            block_gemm8_impl!(w, a, dy, sy, $dec, $signed, $term, dot_u8_i8_vnni)
        }
    };
}

gemm8!(
    gemm8_q4_0,
    gemm8_q4_0_vnni,
    BlockQ4_0,
    BlockQ8_0,
    avx2::dec_q4_0,
    true,
    avx2::term_q4_0
);
gemm8!(
    gemm8_q4_1,
    gemm8_q4_1_vnni,
    BlockQ4_1,
    BlockQ8_1,
    avx2::dec_q4_1,
    false,
    avx2::term_q4_1
);
gemm8!(
    gemm8_q5_0,
    gemm8_q5_0_vnni,
    BlockQ5_0,
    BlockQ8_0,
    avx2::dec_q5_0,
    true,
    avx2::term_q5_0
);
gemm8!(
    gemm8_q5_1,
    gemm8_q5_1_vnni,
    BlockQ5_1,
    BlockQ8_1,
    avx2::dec_q5_1,
    false,
    avx2::term_q5_1
);
gemm8!(
    gemm8_q8_0,
    gemm8_q8_0_vnni,
    BlockQ8_0,
    BlockQ8_0,
    avx2::dec_q8_0,
    true,
    avx2::term_q8_0
);
gemm8!(
    gemm8_iq4_nl,
    gemm8_iq4_nl_vnni,
    BlockIQ4NL,
    BlockQ8_0,
    avx2::dec_iq4_nl,
    true,
    avx2::term_iq4_nl
);
