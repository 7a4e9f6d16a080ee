//! AVX2 kernel over the sixteen-row layouts of `quant::repack16`, for CPUs without AVX-512
//! (most laptops): the same arithmetic as `repack16::gemm_ref`, bit for bit.
//!
//! AVX2 has no `vpdpbusd`; the byte products come from `vpmaddubsw` (unsigned weight byte ×
//! signed activation byte, adjacent pairs summed to i16) and `vpmaddwd` against ones (the
//! four bytes of a row summed to i32). The i16 sums never saturate, which keeps the result
//! exact: a Q4 nibble pair is at most 2·15·127 = 3810, so eight of them (the whole block) are
//! summed in i16 before one `vpmaddwd`; Q5_0's 5-bit pairs (7874) four at a time; Q8_0's
//! stored bytes (q + 128) would overflow, so Q8_0 takes the signed weight q itself through
//! the sign trick (|q| × sign(q)·a, at most 2·128·127 = 32512 per pair) and sums Σ q·a
//! directly, which is the reference's bias + Σ (q + 128)·a. A 256-bit register holds eight
//! rows' four bytes, so a block's sixteen rows are two halves of eight.
//!
//! Every function is monomorphized per weight kind (`K`), so the kind's decoding is straight
//! code: with one function for all kinds, the decoding stayed an out-of-line call returning
//! its eight registers through memory, a third of a one-token decode's time (perf, SmolLM2
//! Q8_0 on an AMD EPYC). One token (`gemv`) takes both halves of each block in one pass, so
//! every activation word is broadcast once and each line is read once; prompt tiles of up to
//! `TILE` tokens decode a half's eight registers once for all their tokens.
//!
//! Where the CPU has AVX-VNNI (`kernel_vnni`), the same source, expanded by a macro with
//! `avxvnni` enabled, takes the byte dots with `vpdpbusd` straight into i32 (no i16 stage, no
//! `vpmaddwd`). Its arithmetic is tested through the EVEX-encoded twin (`kernel_vnni_evex`)
//! on CPUs with AVX512-VNNI, since neither this project's machines nor qemu have AVX-VNNI.

use core::arch::x86_64::*;

use crate::quant::line64::Line64;
use crate::quant::repack16::{Act16, Gemm16Fn, ROWS};

/// Tokens per tile: one accumulator each beside eight decoded weight registers (8 measured
/// 5 % faster than 4 on SmolLM2 Q4_0 and Q8_0 prompts, AMD EPYC, some values spilled).
pub const TILE: usize = 8;

// The kinds as const-generic parameters.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q8_0: u8 = 3;

/// 0x10 in each byte i of the half whose bit 32·half + i is set in `mask`, else 0.
#[inline]
#[target_feature(enable = "avx2")]
fn bit4(mask: u64, half: usize) -> __m256i {
    let m = _mm256_set1_epi32((mask >> (32 * half)) as u32 as i32);
    // Byte i takes the mask byte i / 8, then tests bit i % 8.
    let spread = _mm256_shuffle_epi8(
        m,
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
    );
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Bytes 32·half .. 32·half + 32 of a line.
///
/// # Safety
/// AVX2; `half` < 2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_half(line: &Line64, half: usize) -> __m256i {
    // SAFETY: a Line64 is 64 readable bytes.
    unsafe { _mm256_loadu_si256(line.0.as_ptr().add(32 * half) as *const __m256i) }
}

/// Activation word j (bytes 4j .. 4j + 4) in every lane.
#[inline]
#[target_feature(enable = "avx2")]
fn word(a: &Act16, j: usize) -> __m256i {
    let w = i32::from_le_bytes([
        a.qs[4 * j] as u8,
        a.qs[4 * j + 1] as u8,
        a.qs[4 * j + 2] as u8,
        a.qs[4 * j + 3] as u8,
    ]);
    _mm256_set1_epi32(w)
}

/// The eight rows' f16 values of one half, as f32.
///
/// # Safety
/// AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_f16(v: &[half::f16; ROWS], half: usize) -> __m256 {
    // SAFETY: 8 f16 = 16 readable bytes at rows 8·half ...
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(v.as_ptr().add(8 * half) as *const __m128i) })
}

/// acc += (s as f32)·(d_w·d_a), then Q4_1's acc += m_w·s_a: the reference's float steps.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_add<const K: u8>(acc: __m256, s: __m256i, dw: __m256, mw: __m256, a: &Act16) -> __m256 {
    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d));
    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
    if K == Q4_1 {
        _mm256_fmadd_ps(mw, _mm256_set1_ps(a.s), acc)
    } else {
        acc
    }
}

/// The eight weight registers of one block's half, in the activation's word order: w[j]
/// pairs with activation bytes 4j .. 4j + 4. Q8_0's are the signed weights; the others' the
/// unsigned stored values.
///
/// # Safety
/// AVX2; `ql` holds the block's lines, `masks` its fifth bits (Q5_0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode<const K: u8>(half: usize, ql: &[Line64], masks: &[u64; 8]) -> [__m256i; 8] {
    let mut w = [_mm256_setzero_si256(); 8];
    if K == Q8_0 {
        let flip = _mm256_set1_epi8(-128);
        for (j, w) in w.iter_mut().enumerate() {
            // SAFETY: AVX2 (this function's features); the caller passes 8 lines.
            *w = _mm256_xor_si256(unsafe { load_half(&ql[j], half) }, flip);
        }
    } else {
        let m4 = _mm256_set1_epi8(0x0F);
        for j in 0..4 {
            // SAFETY: as above, 4 lines.
            let x = unsafe { load_half(&ql[j], half) };
            w[j] = _mm256_and_si256(x, m4);
            w[4 + j] = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
            if K == Q5_0 {
                w[j] = _mm256_or_si256(w[j], bit4(masks[2 * j], half));
                w[4 + j] = _mm256_or_si256(w[4 + j], bit4(masks[2 * j + 1], half));
            }
        }
    }
    w
}

/// The AVX2 sixteen-row kernel, if this CPU has AVX2, FMA and F16C.
pub fn kernel() -> Option<Gemm16Fn> {
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Some(plain::gemm)
    } else {
        None
    }
}

/// The AVX-VNNI sixteen-row kernel (256-bit `vpdpbusd` in its VEX encoding: Intel Alder
/// Lake and later, AMD Zen 5), if this CPU has it besides AVX2, FMA and F16C.
pub fn kernel_vnni() -> Option<Gemm16Fn> {
    (kernel().is_some() && is_x86_feature_detected!("avxvnni")).then_some(vnni::gemm as Gemm16Fn)
}

/// The AVX-VNNI kernel's code with `vpdpbusd` in its EVEX encoding (AVX512-VNNI + VL), where
/// the CPU has that: so the AVX-VNNI arithmetic is tested on CPUs with AVX-512 but without
/// AVX-VNNI (Zen 4, Ice Lake), and under no other name. No kernel set uses it: those CPUs
/// take the AVX-512 set.
pub fn kernel_vnni_evex() -> Option<Gemm16Fn> {
    (kernel().is_some()
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl"))
    .then_some(vnni_evex::gemm as Gemm16Fn)
}

/// `vpdpbusd` (VEX): each i32 lane += the dot of its four unsigned bytes of `u` and signed
/// bytes of `s`, without saturation.
#[inline]
#[target_feature(enable = "avx2,avxvnni")]
fn dpbusd_vex(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, u, s)
}

/// `vpdpbusd` (EVEX, 256-bit), the same operation.
#[inline]
#[target_feature(enable = "avx2,avx512vnni,avx512vl")]
fn dpbusd_evex(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// Never called: the plain AVX2 kernels test `VNNI` (false) before any byte dot.
#[inline]
#[target_feature(enable = "avx2")]
fn no_dpbusd(_: __m256i, _: __m256i, _: __m256i) -> __m256i {
    unreachable!("vpdpbusd in the plain AVX2 kernel")
}

/// The kernels whose code depends on the byte-dot instruction, once per instruction set:
/// `$feat` the target features, `$vnni` whether `$dp` (`vpdpbusd`) replaces `vpmaddubsw` +
/// `vpmaddwd` (a byte dot straight into i32: no i16 stage, so no grouping of sums to keep
/// them below saturation).
macro_rules! sixteen_row_kernels {
    ($name:ident, $feat:literal, $vnni:literal, $dp:ident) => {
        mod $name {
            use core::arch::x86_64::*;

            use super::{
                bit4, decode, half_f16, load_half, scale_add, word, $dp, Q4_0, Q4_1, Q5_0, Q8_0,
                TILE,
            };
            use crate::quant::repack16::{self, Act16, Group, Packed16, ROWS};

            const VNNI: bool = $vnni;

            /// acc + the dot of u (unsigned bytes) and s (signed bytes) per i32 lane.
            #[inline]
            #[target_feature(enable = $feat)]
            fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
                $dp(acc, u, s)
            }

            pub(super) fn gemm(p: &Packed16, g: usize, acts: &[Act16], out: &mut [[f32; ROWS]]) {
                match p.kind {
                    repack16::Kind16::Q4_0 => gemm_kind::<Q4_0>(p, g, acts, out),
                    repack16::Kind16::Q4_1 => gemm_kind::<Q4_1>(p, g, acts, out),
                    repack16::Kind16::Q5_0 => gemm_kind::<Q5_0>(p, g, acts, out),
                    repack16::Kind16::Q8_0 => gemm_kind::<Q8_0>(p, g, acts, out),
                }
            }

            fn gemm_kind<const K: u8>(
                p: &Packed16,
                g: usize,
                acts: &[Act16],
                out: &mut [[f32; ROWS]],
            ) {
                repack16::for_each_tile(p, g, acts, out, TILE, |group, chunk, o| {
                    // SAFETY (every arm): the kernel's constructor checked the CPU features;
                    // the group holds nb blocks, `chunk` t·nb activation blocks and `o` t
                    // rows (for_each_tile).
                    match o.len() {
                        1 => unsafe { gemv::<K>(group, chunk, &mut o[0]) },
                        2 => unsafe { tile::<K, 2>(group, chunk, o) },
                        3 => unsafe { tile::<K, 3>(group, chunk, o) },
                        4 => unsafe { tile::<K, 4>(group, chunk, o) },
                        5 => unsafe { tile::<K, 5>(group, chunk, o) },
                        6 => unsafe { tile::<K, 6>(group, chunk, o) },
                        7 => unsafe { tile::<K, 7>(group, chunk, o) },
                        8 => unsafe { tile::<K, 8>(group, chunk, o) },
                        _ => unreachable!("tiles hold 1..=8 tokens"),
                    }
                });
            }

            /// One token, both halves of every block in one pass.
            ///
            /// # Safety
            /// The module's features; `group` from `Packed16::group` (nb blocks in
            /// bounds), `act` nb blocks.
            #[target_feature(enable = $feat)]
            unsafe fn gemv<const K: u8>(group: Group, act: &[Act16], out: &mut [f32; ROWS]) {
                let Group {
                    d, m, qh, i0, qs, ..
                } = group;
                let nb = d.len();
                let lines = if K == Q8_0 { 8 } else { 4 };
                assert!(act.len() == nb && qs.len() == nb * lines);
                let ones = _mm256_set1_epi16(1);
                let m4 = _mm256_set1_epi8(0x0F);
                let pf = super::super::prefetch16_avx2();
                let mut acc = [_mm256_setzero_ps(); 2];
                for (b, a) in act.iter().enumerate() {
                    let ahead = qs.as_ptr().wrapping_add(b * lines + pf.lines);
                    if pf.l2 {
                        super::super::prefetch_l2(ahead, lines);
                    } else {
                        super::super::prefetch(ahead, lines);
                    }
                    let ql = &qs[b * lines..(b + 1) * lines];
                    let mut s = [_mm256_setzero_si256(); 2];
                    if K == Q8_0 {
                        let flip = _mm256_set1_epi8(-128);
                        for (j, line) in ql.iter().enumerate() {
                            let aw = word(a, j);
                            for (h, s) in s.iter_mut().enumerate() {
                                // SAFETY: the module's features, h < 2.
                                let q = _mm256_xor_si256(unsafe { load_half(line, h) }, flip);
                                let (u, v) = (_mm256_sign_epi8(q, q), _mm256_sign_epi8(aw, q));
                                *s = if VNNI {
                                    dp(*s, u, v)
                                } else {
                                    let pairs = _mm256_maddubs_epi16(u, v);
                                    _mm256_add_epi32(*s, _mm256_madd_epi16(pairs, ones))
                                };
                            }
                        }
                    } else {
                        // Without VNNI, Q5_0's 5-bit products are summed in i16 four at a
                        // time (low and high nibbles apart), the 4-bit kinds' all eight
                        // together; with it, lo and hi are two i32 chains per half.
                        let mut lo = [_mm256_setzero_si256(); 2];
                        let mut hi = [_mm256_setzero_si256(); 2];
                        for (j, line) in ql.iter().enumerate() {
                            let (a_lo, a_hi) = (word(a, j), word(a, 4 + j));
                            for h in 0..2 {
                                // SAFETY: as above.
                                let x = unsafe { load_half(line, h) };
                                let mut wl = _mm256_and_si256(x, m4);
                                let mut wh = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
                                if K == Q5_0 {
                                    let masks = &qh[i0 + b];
                                    wl = _mm256_or_si256(wl, bit4(masks[2 * j], h));
                                    wh = _mm256_or_si256(wh, bit4(masks[2 * j + 1], h));
                                }
                                if VNNI {
                                    lo[h] = dp(lo[h], wl, a_lo);
                                    hi[h] = dp(hi[h], wh, a_hi);
                                    continue;
                                }
                                lo[h] = _mm256_add_epi16(lo[h], _mm256_maddubs_epi16(wl, a_lo));
                                let ph = _mm256_maddubs_epi16(wh, a_hi);
                                if K == Q5_0 {
                                    hi[h] = _mm256_add_epi16(hi[h], ph);
                                } else {
                                    lo[h] = _mm256_add_epi16(lo[h], ph);
                                }
                            }
                        }
                        for h in 0..2 {
                            let bias = _mm256_set1_epi32(a.bias);
                            s[h] = if VNNI {
                                _mm256_add_epi32(bias, _mm256_add_epi32(lo[h], hi[h]))
                            } else if K == Q5_0 {
                                let v = _mm256_add_epi32(bias, _mm256_madd_epi16(lo[h], ones));
                                _mm256_add_epi32(v, _mm256_madd_epi16(hi[h], ones))
                            } else {
                                _mm256_add_epi32(bias, _mm256_madd_epi16(lo[h], ones))
                            };
                        }
                    }
                    for h in 0..2 {
                        // SAFETY: AVX2, F16C (this function's features).
                        let dw = unsafe { half_f16(&d[b], h) };
                        let mw = if K == Q4_1 {
                            // SAFETY: as for dw.
                            unsafe { half_f16(&m[i0 + b], h) }
                        } else {
                            _mm256_setzero_ps()
                        };
                        acc[h] = scale_add::<K>(acc[h], s[h], dw, mw, a);
                    }
                }
                for (h, a) in acc.into_iter().enumerate() {
                    // SAFETY: `out` is 16 writable f32; the half is floats 8·h .. 8·h + 8.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), a) };
                }
            }

            /// The block's integer sum for one token and eight rows: bias + Σ u·a (Σ q·a
            /// for Q8_0, through the sign trick: |q| × sign(q)·a).
            #[inline]
            #[target_feature(enable = $feat)]
            fn block_sum<const K: u8>(w: &[__m256i; 8], a: &Act16) -> __m256i {
                let ones = _mm256_set1_epi16(1);
                if VNNI {
                    // Two chains, for `vpdpbusd`'s latency.
                    let bias = if K == Q8_0 { 0 } else { a.bias };
                    let mut s = [_mm256_set1_epi32(bias), _mm256_setzero_si256()];
                    for (j, &wj) in w.iter().enumerate() {
                        s[j & 1] = if K == Q8_0 {
                            dp(
                                s[j & 1],
                                _mm256_sign_epi8(wj, wj),
                                _mm256_sign_epi8(word(a, j), wj),
                            )
                        } else {
                            dp(s[j & 1], wj, word(a, j))
                        };
                    }
                    _mm256_add_epi32(s[0], s[1])
                } else if K == Q8_0 {
                    let mut s = _mm256_setzero_si256();
                    for (j, &wj) in w.iter().enumerate() {
                        let pairs = _mm256_maddubs_epi16(
                            _mm256_sign_epi8(wj, wj),
                            _mm256_sign_epi8(word(a, j), wj),
                        );
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(pairs, ones));
                    }
                    s
                } else if K == Q5_0 {
                    // 5-bit pairs (at most 7874) four at a time in i16.
                    let mut s = _mm256_set1_epi32(a.bias);
                    for q in 0..2 {
                        let mut h = _mm256_setzero_si256();
                        for (j, &wj) in w.iter().enumerate().skip(4 * q).take(4) {
                            h = _mm256_add_epi16(h, _mm256_maddubs_epi16(wj, word(a, j)));
                        }
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(h, ones));
                    }
                    s
                } else {
                    // 4-bit pairs (at most 3810) all eight in i16.
                    let mut h = _mm256_setzero_si256();
                    for (j, &wj) in w.iter().enumerate() {
                        h = _mm256_add_epi16(h, _mm256_maddubs_epi16(wj, word(a, j)));
                    }
                    _mm256_add_epi32(_mm256_set1_epi32(a.bias), _mm256_madd_epi16(h, ones))
                }
            }

            /// T tokens of one group, a half (eight rows) at a time.
            ///
            /// # Safety
            /// The module's features; `group` from `Packed16::group` (its nb blocks are in
            /// bounds), `acts` holds T·nb blocks and `out` T rows.
            #[target_feature(enable = $feat)]
            unsafe fn tile<const K: u8, const T: usize>(
                group: Group,
                acts: &[Act16],
                out: &mut [[f32; ROWS]],
            ) {
                let Group {
                    d, m, qh, i0, qs, ..
                } = group;
                let nb = d.len();
                let lines = if K == Q8_0 { 8 } else { 4 };
                assert!(acts.len() == T * nb && out.len() == T && qs.len() == nb * lines);
                let no_qh = [0u64; 8];
                for half in 0..2 {
                    let mut acc = [_mm256_setzero_ps(); T];
                    for b in 0..nb {
                        let masks = if K == Q5_0 { &qh[i0 + b] } else { &no_qh };
                        // SAFETY: the block's lines are within qs (b < nb); the module's
                        // features.
                        let w =
                            unsafe { decode::<K>(half, &qs[b * lines..(b + 1) * lines], masks) };
                        // SAFETY: AVX2, F16C (this function's features).
                        let dw = unsafe { half_f16(&d[b], half) };
                        let mw = if K == Q4_1 {
                            // SAFETY: as for dw.
                            unsafe { half_f16(&m[i0 + b], half) }
                        } else {
                            _mm256_setzero_ps()
                        };
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let a = &acts[t * nb + b];
                            *acc = scale_add::<K>(*acc, block_sum::<K>(&w, a), dw, mw, a);
                        }
                    }
                    for (o, a) in out.iter_mut().zip(acc) {
                        // SAFETY: o is 16 writable f32; the half is floats 8·half .. + 8.
                        unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * half), a) };
                    }
                }
            }
        }
    };
}

sixteen_row_kernels!(plain, "avx2,fma,f16c", false, no_dpbusd);
sixteen_row_kernels!(vnni, "avx2,fma,f16c,avxvnni", true, dpbusd_vex);
sixteen_row_kernels!(
    vnni_evex,
    "avx2,fma,f16c,avx512vnni,avx512vl",
    true,
    dpbusd_evex
);
