//! AMX kernel for the packed K-quant layouts of `quant::repack_k` (Q4_K, Q6_K): sixteen
//! rows (four four-row groups, a "supergroup") × sixteen tokens per tile, for prompts.
//!
//! Why a different arithmetic from the VNNI kernel: a K-quant weight is d·sc·q (− dmin·m for
//! Q4_K), with a small integer scale sc per 32 (Q4_K) or 16 (Q6_K) weights. Multiplying each
//! sub-block's integer dot by its scale after the tile product would take an AVX-512 multiply
//! per sub-block, row and token, as many as the VNNI kernel's own. Instead the product sc·q
//! is made once per call, when the supergroup is decoded, and split in base 128 into a low
//! byte (0..127) and a high one (Q4_K: 0..7, Q6_K: −32..32, with q − 32 signed), both valid
//! signed bytes for `tdpbssd`. Two tile products over a whole super-block then give
//! Σ lo·a and Σ hi·a, and isum = Σ lo·a + 128·Σ hi·a is exactly the super-block's
//! Σ sc·q·a, the same integer the VNNI kernel forms (all sums fit i32: at most
//! 256·127·(127 + 128·63)). Only the per-super-block float steps remain in AVX-512:
//! acc += (d·isum − dmin·imin)·dy per row and token (Q6_K without the min term), where
//! imin = Σ m·sums32 takes four `vpdpwssd`.
//!
//! The result is the reference's up to float rounding (its f32 steps are split over four
//! lanes per row), checked in tests/simd_repack_k.rs. The weights are the first tile operand
//! (sixteen rows × 64 consecutive weights), the activations the second (their quants in
//! groups of four per token, `ActSb`), built once per call for all rows.

use core::arch::asm;
use core::arch::x86_64::*;
use std::cell::RefCell;

use bytemuck::{Pod, Zeroable};

use super::avx512_repack16::{amx_usable, TileCfg};
use crate::quant::float::f16_to_f32;
use crate::quant::line64::Line64;
use crate::quant::repack_k::{ActK, KindK, PackedK};

/// Tokens per tile (the second operand's columns).
pub const TOKENS: usize = 16;
/// Rows per supergroup (the tile's rows): four four-row groups.
pub const ROWS: usize = 16;

/// One super-block of a decoded supergroup: sc·q in base 128, row-major, and the rows'
/// scales.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct WeightSb {
    lo: [[u8; 256]; ROWS],
    hi: [[u8; 256]; ROWS],
    d: [f32; ROWS],
    dmin: [f32; ROWS],
    /// Q4_K's eight sub-block mins per row, as i16 (pairs for `vpdpwssd`).
    mins: [[i16; 8]; ROWS],
}

/// One super-block of sixteen tokens' activations for the tile's second operand.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ActSb {
    /// Line j: token t's quants 4j .. 4j + 4 at bytes 4t .. 4t + 4.
    q: [Line64; 64],
    d: [f32; TOKENS],
    /// Pair p: token t's sums32[2p], sums32[2p + 1] at [2t], [2t + 1].
    s32: [[i16; 2 * TOKENS]; 4],
}

/// Whether the AMX K path is usable: AMX granted, AVX-512 VBMI for
/// the decoding, and the packed K layouts' own kernel set.
pub fn usable() -> bool {
    amx_usable() && is_x86_feature_detected!("avx512vbmi")
}

/// The activations of the whole tiles among `n` tokens (`acts`: token-major, nsb
/// super-blocks each) as `ActSb`s, `[tile·nsb + sb]`.
pub fn pack_acts(acts: &[ActK], n: usize, nsb: usize) -> Vec<ActSb> {
    assert_eq!(acts.len(), n * nsb, "amx K: activations are not n×k/256");
    let tiles = n / TOKENS;
    let mut out = vec![ActSb::zeroed(); tiles * nsb];
    for (i, o) in out.iter_mut().enumerate() {
        let (tile, sb) = (i / nsb, i % nsb);
        for t in 0..TOKENS {
            let a = &acts[(tile * TOKENS + t) * nsb + sb];
            for (j, line) in o.q.iter_mut().enumerate() {
                for b in 0..4 {
                    line.0[4 * t + b] = a.qs[4 * j + b] as u8;
                }
            }
            o.d[t] = a.d;
            for p in 0..4 {
                o.s32[p][2 * t] = a.sums32[2 * p];
                o.s32[p][2 * t + 1] = a.sums32[2 * p + 1];
            }
        }
    }
    out
}

/// Supergroup `sg` of `p` against the whole tiles of `acts` (`pack_acts`'s output for
/// `out.len()` tokens): `out[token][row - 16·sg]`.
///
/// # Panics
/// If AMX is not `usable()`, or the sizes disagree.
pub fn supergroup(p: &PackedK, sg: usize, acts: &[ActSb], out: &mut [[f32; ROWS]]) {
    thread_local! {
        static DECODED: RefCell<Vec<WeightSb>> = const { RefCell::new(Vec::new()) };
    }
    assert!(usable(), "amx K kernel without AMX");
    let nsb = p.k / 256;
    assert!(sg * 4 < p.groups(), "amx K: supergroup {sg} out of range");
    assert!(
        out.len().is_multiple_of(TOKENS) && acts.len() == out.len() / TOKENS * nsb,
        "amx K: activations for the wrong k or tokens"
    );
    DECODED.with(|w| {
        let mut w = w.borrow_mut();
        if w.len() < nsb {
            w.resize(nsb, WeightSb::zeroed());
        }
        let w = &mut w[..nsb];
        // SAFETY: `usable()` checked AMX (with the OS's permission), the AVX-512 set the
        // decoding and the float steps use, and VBMI; the sizes were checked above.
        unsafe {
            decode(p, sg, w);
            tiles(p.kind, w, acts, out);
        }
    });
}

/// Supergroup `sg`'s super-blocks into `dst` (rows past the matrix: zero).
///
/// # Safety
/// AVX-512 F/BW/VL and VBMI must be available; `dst` holds k/256 entries.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn decode(p: &PackedK, sg: usize, dst: &mut [WeightSb]) {
    let nsb = p.k / 256;
    let nl = p.kind.lines();
    let q6 = p.kind == KindK::Q6_K;
    let m4 = _mm512_set1_epi8(0x0F);
    let m3 = _mm512_set1_epi8(0x03);
    let low7 = _mm512_set1_epi16(0x7F);
    let byte = _mm512_set1_epi16(0xFF);
    let c32 = _mm512_set1_epi8(32);
    // Byte b of 128-bit lane r: index 8r (the row's first scale in the scales line).
    let lane8 = _mm512_set_epi64(
        0x1818_1818_1818_1818,
        0x1818_1818_1818_1818,
        0x1010_1010_1010_1010,
        0x1010_1010_1010_1010,
        0x0808_0808_0808_0808,
        0x0808_0808_0808_0808,
        0,
        0,
    );
    const EVEN: u64 = 0x5555_5555_5555_5555;
    const ODD: u64 = 0xAAAA_AAAA_AAAA_AAAA;
    // Rows r, r + 1 of a 4-row register pair as two rows' [first 16, second 16] halves.
    let pair01 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    let pair23 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (sb, w) in dst.iter_mut().enumerate() {
        for gi in 0..4 {
            let g = 4 * sg + gi;
            let rows = 4 * gi..4 * gi + 4;
            if g >= p.groups() {
                for r in rows {
                    w.lo[r] = [0; 256];
                    w.hi[r] = [0; 256];
                    w.d[r] = 0.0;
                    w.dmin[r] = 0.0;
                    w.mins[r] = [0; 8];
                }
                continue;
            }
            let i = g * nsb + sb;
            let l = &p.qs[nl * i..nl * (i + 1)];
            let line = |j: usize| {
                // SAFETY: a Line64 is 64 bytes aligned to 64; j < nl.
                unsafe { _mm512_load_si512(l[j].0.as_ptr() as *const __m512i) }
            };
            let scales = line(if q6 { 12 } else { 8 });
            for r in 0..4 {
                w.d[4 * gi + r] = f16_to_f32(p.d[i][r]);
                if !q6 {
                    w.dmin[4 * gi + r] = f16_to_f32(p.m[i][r]);
                    for s in 0..8 {
                        w.mins[4 * gi + r][s] = l[8].0[32 + 8 * r + s] as i16;
                    }
                }
            }
            // Chunk c: weights 32c .. 32c + 32 of the four rows (lane r: row r; byte j's low
            // nibble weight 32c + j, high nibble 32c + 16 + j).
            for c in 0..8 {
                let x = line(c);
                let mut u = [
                    _mm512_and_si512(x, m4),
                    _mm512_and_si512(_mm512_srli_epi16(x, 4), m4),
                ];
                // The scale index of each half (Q6_K: sixteens 2c, 2c + 1 at [8r + j] for
                // j < 8, [32 + 8r + j - 8] after; Q4_K: sub-block c at [8r + c]).
                let sidx = if q6 {
                    let at = |j: i8| if j < 8 { j } else { 32 + j - 8 };
                    [at(2 * c as i8), at(2 * c as i8 + 1)]
                } else {
                    [c as i8; 2]
                };
                if q6 {
                    let hb = line(8 + c / 2);
                    let sh = 4 * (c % 2) as u32;
                    let h0 =
                        _mm512_and_si512(_mm512_srl_epi16(hb, _mm_cvtsi32_si128(sh as i32)), m3);
                    let h1 = _mm512_and_si512(
                        _mm512_srl_epi16(hb, _mm_cvtsi32_si128(sh as i32 + 2)),
                        m3,
                    );
                    u[0] = _mm512_or_si512(u[0], _mm512_slli_epi16(h0, 4));
                    u[1] = _mm512_or_si512(u[1], _mm512_slli_epi16(h1, 4));
                }
                let mut lo = [_mm512_setzero_si512(); 2];
                let mut hi = [_mm512_setzero_si512(); 2];
                for h in 0..2 {
                    let idx = _mm512_add_epi8(lane8, _mm512_set1_epi8(sidx[h]));
                    let se = _mm512_maskz_permutexvar_epi8(EVEN, idx, scales);
                    let so = _mm512_maskz_permutexvar_epi8(ODD, idx, scales);
                    // sc·u of the even and the odd bytes, as i16 (Q6_K: minus 32·sc).
                    let mut ve = _mm512_maddubs_epi16(u[h], se);
                    let mut vo = _mm512_maddubs_epi16(u[h], so);
                    if q6 {
                        ve = _mm512_sub_epi16(ve, _mm512_maddubs_epi16(c32, se));
                        vo = _mm512_sub_epi16(vo, _mm512_maddubs_epi16(c32, so));
                    }
                    lo[h] = _mm512_or_si512(
                        _mm512_and_si512(ve, low7),
                        _mm512_slli_epi16(_mm512_and_si512(vo, low7), 8),
                    );
                    hi[h] = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srai_epi16(ve, 7), byte),
                        _mm512_slli_epi16(_mm512_srai_epi16(vo, 7), 8),
                    );
                }
                for (v, dst) in [(lo, &mut w.lo), (hi, &mut w.hi)] {
                    let z01 = _mm512_permutex2var_epi64(v[0], pair01, v[1]);
                    let z23 = _mm512_permutex2var_epi64(v[0], pair23, v[1]);
                    for (k, z) in [z01, z23].into_iter().enumerate() {
                        let r = 4 * gi + 2 * k;
                        // SAFETY: rows r, r + 1 < 16; bytes 32c .. 32c + 32 < 256.
                        unsafe {
                            _mm256_storeu_si256(
                                dst[r].as_mut_ptr().add(32 * c) as *mut __m256i,
                                _mm512_castsi512_si256(z),
                            );
                            _mm256_storeu_si256(
                                dst[r + 1].as_mut_ptr().add(32 * c) as *mut __m256i,
                                _mm512_extracti64x4_epi64::<1>(z),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// acc + the sums of adjacent i16 products of `a` and `b`, as i32 lanes (`vpdpwssd`, in
/// `asm!` for the reason `avx512_repack_k::dpwssd` gives).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut r = acc;
    // SAFETY: a register-only instruction of AVX-512 VNNI, which this function requires.
    unsafe {
        asm!(
            "vpdpwssd {r}, {a}, {b}",
            r = inout(zmm_reg) r,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}

/// The integer tile sums of one super-block: 16 rows × 16 tokens, low and high halves.
#[repr(C, align(64))]
struct Sums([[[i32; TOKENS]; ROWS]; 2]);

/// The decoded supergroup `w` against each tile of `acts`.
///
/// # Safety
/// AMX-TILE/INT8 with the tile state permitted, and the AVX-512 VNNI set; `w` holds nsb
/// super-blocks, `acts` out.len()/16·nsb, out.len() a multiple of 16.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tiles(kind: KindK, w: &[WeightSb], acts: &[ActSb], out: &mut [[f32; ROWS]]) {
    let nsb = w.len();
    let q4 = kind == KindK::Q4_K;
    let cfg = TileCfg::uniform(&[0, 1, 2, 3, 4], 16, 64);
    // SAFETY: cfg is a valid palette-1 configuration (AMX checked by the caller).
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
    let mut sums = Sums([[[0; TOKENS]; ROWS]; 2]);
    for (ta, o) in acts.chunks_exact(nsb).zip(out.chunks_exact_mut(TOKENS)) {
        let mut acc = [_mm512_setzero_ps(); ROWS];
        for (ws, a) in w.iter().zip(ta) {
            let (s0, s1) = (sums.0[0].as_mut_ptr(), sums.0[1].as_mut_ptr());
            // SAFETY: tile rows read: 16 × 64 bytes of a.q (stride 64) and of ws.lo / ws.hi
            // (stride 256, at 64c: within the rows' 256 bytes); written: 16 × 64 bytes into
            // sums.0[0] and [1].
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tileloadd tmm4, [{a} + {s64}*1]",
                    "tileloadd tmm2, [{lo} + {s256}*1]",
                    "tileloadd tmm3, [{hi} + {s256}*1]",
                    "tdpbssd tmm0, tmm2, tmm4",
                    "tdpbssd tmm1, tmm3, tmm4",
                    "tileloadd tmm4, [{a} + {s64}*1 + 1024]",
                    "tileloadd tmm2, [{lo} + {s256}*1 + 64]",
                    "tileloadd tmm3, [{hi} + {s256}*1 + 64]",
                    "tdpbssd tmm0, tmm2, tmm4",
                    "tdpbssd tmm1, tmm3, tmm4",
                    "tileloadd tmm4, [{a} + {s64}*1 + 2048]",
                    "tileloadd tmm2, [{lo} + {s256}*1 + 128]",
                    "tileloadd tmm3, [{hi} + {s256}*1 + 128]",
                    "tdpbssd tmm0, tmm2, tmm4",
                    "tdpbssd tmm1, tmm3, tmm4",
                    "tileloadd tmm4, [{a} + {s64}*1 + 3072]",
                    "tileloadd tmm2, [{lo} + {s256}*1 + 192]",
                    "tileloadd tmm3, [{hi} + {s256}*1 + 192]",
                    "tdpbssd tmm0, tmm2, tmm4",
                    "tdpbssd tmm1, tmm3, tmm4",
                    "tilestored [{s0} + {s64}*1], tmm0",
                    "tilestored [{s1} + {s64}*1], tmm1",
                    a = in(reg) a.q.as_ptr(),
                    lo = in(reg) ws.lo.as_ptr(),
                    hi = in(reg) ws.hi.as_ptr(),
                    s64 = in(reg) 64usize,
                    s256 = in(reg) 256usize,
                    s0 = in(reg) s0,
                    s1 = in(reg) s1,
                    options(nostack),
                );
            }
            // SAFETY: 16 f32, aligned to 64 (ActSb is).
            let dy = unsafe { _mm512_load_ps(a.d.as_ptr()) };
            let s32 = |p: usize| {
                // SAFETY: 32 i16, aligned to 64 (ActSb is; each pair row is 64 bytes).
                unsafe { _mm512_load_si512(a.s32[p].as_ptr() as *const __m512i) }
            };
            let sp = if q4 {
                [s32(0), s32(1), s32(2), s32(3)]
            } else {
                [_mm512_setzero_si512(); 4]
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: sums rows are 16 i32, aligned to 64 (Sums is).
                let (lo, hi) = unsafe {
                    (
                        _mm512_load_si512(sums.0[0][r].as_ptr() as *const __m512i),
                        _mm512_load_si512(sums.0[1][r].as_ptr() as *const __m512i),
                    )
                };
                let isum = _mm512_add_epi32(lo, _mm512_slli_epi32(hi, 7));
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(ws.d[r]));
                let v = if q4 {
                    let m = &ws.mins[r];
                    let pair = |p: usize| {
                        _mm512_set1_epi32((m[2 * p] as u16 as i32) | (m[2 * p + 1] as i32) << 16)
                    };
                    let mut imin = dpwssd(_mm512_setzero_si512(), sp[0], pair(0));
                    imin = dpwssd(imin, sp[1], pair(1));
                    imin = dpwssd(imin, sp[2], pair(2));
                    imin = dpwssd(imin, sp[3], pair(3));
                    _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_set1_ps(ws.dmin[r]), v)
                } else {
                    v
                };
                *acc = _mm512_fmadd_ps(v, dy, *acc);
            }
        }
        let mut t = [[0f32; TOKENS]; ROWS];
        for (t, a) in t.iter_mut().zip(acc) {
            // SAFETY: 16 writable f32.
            unsafe { _mm512_storeu_ps(t.as_mut_ptr(), a) };
        }
        for (tok, o) in o.iter_mut().enumerate() {
            for (r, v) in o.iter_mut().enumerate() {
                *v = t[r][tok];
            }
        }
    }
    // SAFETY: releases the tile state configured above; no tile is used after this.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
