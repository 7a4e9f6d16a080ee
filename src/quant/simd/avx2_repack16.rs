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
//! rows' four bytes, so each block is done as two halves of eight rows.

use core::arch::x86_64::*;

use crate::quant::line64::Line64;
use crate::quant::repack16::{self, Act16, Gemm16Fn, Group, Kind16, Packed16, ROWS};

/// Tokens per tile: one accumulator each beside eight decoded weight registers.
pub const TILE: usize = 4;

/// The AVX2 sixteen-row kernel, if this CPU has AVX2, FMA and F16C.
pub fn kernel() -> Option<Gemm16Fn> {
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Some(gemm)
    } else {
        None
    }
}

fn gemm(p: &Packed16, g: usize, acts: &[Act16], out: &mut [[f32; ROWS]]) {
    repack16::for_each_tile(p, g, acts, out, TILE, |group, chunk, o| {
        for half in 0..2 {
            macro_rules! tile {
                ($($t:literal)*) => {
                    match o.len() {
                        $($t => {
                            // SAFETY: `kernel()` checked the CPU features; the group holds nb
                            // blocks, chunk t·nb activation blocks, o t rows (for_each_tile).
                            unsafe { tile::<$t>(group, half, chunk, o) }
                        })*
                        _ => unreachable!("tiles hold 1..=4 tokens"),
                    }
                };
            }
            tile!(1 2 3 4);
        }
    });
}

/// The eight weight registers of one block's half (rows 8·half .. 8·half + 8), in the
/// activation's word order: w[j] pairs with activation bytes 4j .. 4j + 4. Q8_0's are the
/// signed weights; the others' the unsigned stored values.
///
/// # Safety
/// AVX2 must be available; `qs` holds the block's lines, `qh` its masks (Q5_0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode(kind: Kind16, half: usize, qs: &[Line64], qh: &[u64; 8]) -> [__m256i; 8] {
    let line = |j: usize| {
        // SAFETY: a Line64 is 64 readable bytes; the half is bytes 32·half .. 32·half + 32.
        unsafe { _mm256_loadu_si256(qs[j].0.as_ptr().add(32 * half) as *const __m256i) }
    };
    let mut w = [_mm256_setzero_si256(); 8];
    match kind {
        Kind16::Q8_0 => {
            let flip = _mm256_set1_epi8(-128);
            for (j, w) in w.iter_mut().enumerate() {
                *w = _mm256_xor_si256(line(j), flip);
            }
        }
        _ => {
            let m4 = _mm256_set1_epi8(0x0F);
            for j in 0..4 {
                let x = line(j);
                w[j] = _mm256_and_si256(x, m4);
                w[4 + j] = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
            }
            if kind == Kind16::Q5_0 {
                for j in 0..4 {
                    w[j] = _mm256_or_si256(w[j], bit4(qh[2 * j], half));
                    w[4 + j] = _mm256_or_si256(w[4 + j], bit4(qh[2 * j + 1], half));
                }
            }
        }
    }
    w
}

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

/// The block's integer sum for one token and eight rows: bias + Σ u·a (Σ q·a for Q8_0).
///
/// # Safety
/// AVX2 must be available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_sum(kind: Kind16, w: &[__m256i; 8], a: &Act16) -> __m256i {
    let p = a.qs.as_ptr() as *const i32;
    // SAFETY: qs is 32 bytes: words 0..8 are readable.
    let word = |j: usize| _mm256_set1_epi32(unsafe { p.add(j).read_unaligned() });
    let ones = _mm256_set1_epi16(1);
    match kind {
        Kind16::Q8_0 => {
            let mut s = _mm256_setzero_si256();
            for (j, &wj) in w.iter().enumerate() {
                let pairs =
                    _mm256_maddubs_epi16(_mm256_sign_epi8(wj, wj), _mm256_sign_epi8(word(j), wj));
                s = _mm256_add_epi32(s, _mm256_madd_epi16(pairs, ones));
            }
            s
        }
        Kind16::Q5_0 => {
            let mut s = _mm256_set1_epi32(a.bias);
            for q in 0..2 {
                let mut h = _mm256_setzero_si256();
                for (j, &wj) in w.iter().enumerate().skip(4 * q).take(4) {
                    h = _mm256_add_epi16(h, _mm256_maddubs_epi16(wj, word(j)));
                }
                s = _mm256_add_epi32(s, _mm256_madd_epi16(h, ones));
            }
            s
        }
        _ => {
            let mut h = _mm256_setzero_si256();
            for (j, &wj) in w.iter().enumerate() {
                h = _mm256_add_epi16(h, _mm256_maddubs_epi16(wj, word(j)));
            }
            _mm256_add_epi32(_mm256_set1_epi32(a.bias), _mm256_madd_epi16(h, ones))
        }
    }
}

/// T tokens of one group's half (eight rows), any kind.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `group` comes from `Packed16::group` (its nb
/// blocks are in bounds), `acts` holds T·nb blocks and `out` T rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const T: usize>(group: Group, half: usize, acts: &[Act16], out: &mut [[f32; ROWS]]) {
    let Group {
        kind,
        d,
        m,
        qh,
        i0,
        qs,
    } = group;
    let nb = d.len();
    let lines = kind.lines();
    let no_qh = [0u64; 8];
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        // The second half's pass finds the lines in cache.
        if T == 1 && half == 0 {
            super::prefetch(
                qs.as_ptr().wrapping_add(b * lines + super::PREFETCH_LINES),
                lines,
            );
        }
        let h = if kind == Kind16::Q5_0 {
            &qh[i0 + b]
        } else {
            &no_qh
        };
        // SAFETY: the block's lines are within qs (b < nb); AVX2 checked by the caller.
        let w = unsafe { decode(kind, half, &qs[b * lines..(b + 1) * lines], h) };
        // SAFETY: 8 f16 = 16 readable bytes at rows 8·half ...
        let dw = _mm256_cvtph_ps(unsafe {
            _mm_loadu_si128(d[b].as_ptr().add(8 * half) as *const __m128i)
        });
        let mw = if kind == Kind16::Q4_1 {
            // SAFETY: as for d.
            _mm256_cvtph_ps(unsafe {
                _mm_loadu_si128(m[i0 + b].as_ptr().add(8 * half) as *const __m128i)
            })
        } else {
            _mm256_setzero_ps()
        };
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = &acts[t * nb + b];
            // SAFETY: AVX2 checked by the caller.
            let s = unsafe { block_sum(kind, &w, a) };
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, *acc);
            if kind == Kind16::Q4_1 {
                *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(a.s), *acc);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: o is 16 writable f32; the half is floats 8·half .. 8·half + 8.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * half), a) };
    }
}
