//! AVX-512 VNNI kernels over the four-row interleaved layouts of `quant::repack`.
//!
//! One zmm holds one 32-weight block of four rows (Q4_0: the 64 bytes of quants as stored,
//! split into low and high nibbles; Q8_0: two lines of q + 128). Each token's activation
//! block is broadcast to the four 128-bit lanes, so two `vpdpbusd` give sixteen i32 lane
//! sums (four per row) for 4 rows × 32 weights, with the weights decoded once per block for
//! up to eight tokens. The f32 accumulators keep the sixteen lanes apart until the end;
//! `repack::gemm_ref` does the same arithmetic in scalar and equals this bit for bit.

use core::arch::x86_64::*;

use crate::quant::repack::{ActQ8x4, PackedGemmFn, PackedKind, PackedMatrix};

/// Tokens per tile: eight zmm accumulators, plus the decoded weights and the broadcasts.
pub const TILE: usize = 8;

/// The packed kernel, if this CPU has AVX-512 F/BW/VL/VNNI.
pub fn kernel() -> Option<PackedGemmFn> {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
    {
        Some(gemm)
    } else {
        None
    }
}

/// Group `g` of `p` against `out.len()` tokens (`acts`: token-major, nb blocks each).
fn gemm(p: &PackedMatrix, g: usize, acts: &[ActQ8x4], out: &mut [[f32; 4]]) {
    let nb = p.nb();
    assert_eq!(
        acts.len(),
        out.len() * nb,
        "packed gemm: activations for the wrong k"
    );
    assert!(g < p.groups(), "packed gemm: group {g} out of range");
    let lines = p.kind.lines();
    let d = &p.d[g * nb..(g + 1) * nb];
    let qs = &p.qs[g * nb * lines..(g + 1) * nb * lines];
    for (chunk, o) in acts.chunks(TILE * nb).zip(out.chunks_mut(TILE)) {
        macro_rules! tile {
            ($($t:literal)*) => {
                match (p.kind, o.len()) {
                    $((PackedKind::Q4_0x4, $t) => {
                        // SAFETY: `kernel()` checked the features; the slices' lengths were
                        // checked above (d, qs: nb blocks of this group; chunk: t·nb).
                        unsafe { tile_q4_0::<$t>(d, qs, chunk, o) }
                    })*
                    $((PackedKind::Q4_1x4, $t) => {
                        // SAFETY: as above; `m` has nb entries per group like `d`.
                        unsafe { tile_q4_1::<$t>(d, &p.m[g * nb..(g + 1) * nb], qs, chunk, o) }
                    })*
                    $((PackedKind::Q5_0x4, $t) => {
                        // SAFETY: as above; `qh` has nb entries per group like `d`.
                        unsafe { tile_q5_0::<$t>(d, &p.qh[g * nb..(g + 1) * nb], qs, chunk, o) }
                    })*
                    $((PackedKind::Q8_0x4, $t) => {
                        // SAFETY: as above.
                        unsafe { tile_q8_0::<$t>(d, qs, chunk, o) }
                    })*
                    _ => unreachable!("tiles hold 1..=8 tokens"),
                }
            };
        }
        tile!(1 2 3 4 5 6 7 8);
    }
}

/// The four rows' scales as sixteen lanes (each repeated four times).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn row_scales(d: &[half::f16; 4]) -> __m512 {
    // SAFETY: `d` is 8 readable bytes.
    let d4 = _mm_cvtph_ps(unsafe { _mm_loadl_epi64(d.as_ptr() as *const __m128i) });
    let idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(d4))
}

/// acc += (bias + lo·a[0..16] + hi·a[16..32]) · (dw · da), per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn step(acc: __m512, lo: __m512i, hi: __m512i, dw: __m512, a: &ActQ8x4) -> __m512 {
    let p = a as *const ActQ8x4 as *const __m128i;
    // SAFETY: an ActQ8x4 is 64 readable bytes: qs (2 × 16), then bias (16).
    let (alo, ahi, bias) = unsafe {
        (
            _mm512_broadcast_i32x4(_mm_loadu_si128(p)),
            _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(1))),
            _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(2))),
        )
    };
    let s = _mm512_dpbusd_epi32(bias, lo, alo);
    let s = _mm512_dpbusd_epi32(s, hi, ahi);
    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a.d));
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc)
}

/// The four rows' minimums in the first lane of each row, zeros elsewhere.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn row_mins(m: &[half::f16; 4]) -> __m512 {
    // SAFETY: `m` is 8 readable bytes.
    let m4 = _mm_cvtph_ps(unsafe { _mm_loadl_epi64(m.as_ptr() as *const __m128i) });
    let idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    _mm512_maskz_permutexvar_ps(0x1111, idx, _mm512_castps128_ps512(m4))
}

/// T tokens of one Q4_1x4 group: as Q4_0x4 (no offset), plus m·s per row and block.
///
/// # Safety
/// As `tile_q4_0`, with `m` holding nb blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q4_1<const T: usize>(
    d: &[[half::f16; 4]],
    m: &[[half::f16; 4]],
    qs: &[crate::quant::repack::Line64],
    acts: &[ActQ8x4],
    out: &mut [[f32; 4]],
) {
    let nb = d.len();
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        // SAFETY: a Line64 is 64 bytes aligned to 64.
        let w = unsafe { _mm512_load_si512(qs[b].0.as_ptr() as *const __m512i) };
        let lo = _mm512_and_si512(w, m4);
        let hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
        let dw = row_scales(&d[b]);
        let mw = row_mins(&m[b]);
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = &acts[t * nb + b];
            let v = step(*acc, lo, hi, dw, a);
            *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(a.s), v);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = finish(a);
    }
}

/// T tokens of one Q5_0x4 group: as Q4_0x4 with the fifth bits ORed in from the masks.
///
/// # Safety
/// As `tile_q4_0`, with `qh` holding nb blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q5_0<const T: usize>(
    d: &[[half::f16; 4]],
    qh: &[[u64; 2]],
    qs: &[crate::quant::repack::Line64],
    acts: &[ActQ8x4],
    out: &mut [[f32; 4]],
) {
    let nb = d.len();
    let m4 = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        // SAFETY: a Line64 is 64 bytes aligned to 64.
        let w = unsafe { _mm512_load_si512(qs[b].0.as_ptr() as *const __m512i) };
        let lo = _mm512_or_si512(
            _mm512_and_si512(w, m4),
            _mm512_maskz_mov_epi8(qh[b][0], bit4),
        );
        let hi = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16(w, 4), m4),
            _mm512_maskz_mov_epi8(qh[b][1], bit4),
        );
        let dw = row_scales(&d[b]);
        for (t, acc) in acc.iter_mut().enumerate() {
            *acc = step(*acc, lo, hi, dw, &acts[t * nb + b]);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = finish(a);
    }
}

/// Sums each row's four lanes, in the order `gemm_ref` uses.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn finish(acc: __m512) -> [f32; 4] {
    let mut l = [0f32; 16];
    // SAFETY: `l` is 64 writable bytes.
    unsafe { _mm512_storeu_ps(l.as_mut_ptr(), acc) };
    std::array::from_fn(|r| ((l[4 * r] + l[4 * r + 1]) + l[4 * r + 2]) + l[4 * r + 3])
}

/// T tokens of one Q4_0x4 group.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C must be available; `d` and `qs` hold nb blocks,
/// `acts` T·nb, `out` T.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q4_0<const T: usize>(
    d: &[[half::f16; 4]],
    qs: &[crate::quant::repack::Line64],
    acts: &[ActQ8x4],
    out: &mut [[f32; 4]],
) {
    let nb = d.len();
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        // SAFETY: a Line64 is 64 bytes aligned to 64.
        let w = unsafe { _mm512_load_si512(qs[b].0.as_ptr() as *const __m512i) };
        let lo = _mm512_and_si512(w, m4);
        let hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
        let dw = row_scales(&d[b]);
        for (t, acc) in acc.iter_mut().enumerate() {
            *acc = step(*acc, lo, hi, dw, &acts[t * nb + b]);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = finish(a);
    }
}

/// T tokens of one Q8_0x4 group.
///
/// # Safety
/// As `tile_q4_0`, with two lines per block in `qs`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q8_0<const T: usize>(
    d: &[[half::f16; 4]],
    qs: &[crate::quant::repack::Line64],
    acts: &[ActQ8x4],
    out: &mut [[f32; 4]],
) {
    let nb = d.len();
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        // SAFETY: Line64s are 64 bytes aligned to 64.
        let (lo, hi) = unsafe {
            (
                _mm512_load_si512(qs[2 * b].0.as_ptr() as *const __m512i),
                _mm512_load_si512(qs[2 * b + 1].0.as_ptr() as *const __m512i),
            )
        };
        let dw = row_scales(&d[b]);
        for (t, acc) in acc.iter_mut().enumerate() {
            *acc = step(*acc, lo, hi, dw, &acts[t * nb + b]);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = finish(a);
    }
}
