//! AVX-512 VNNI kernel over the sixteen-row layouts of `quant::repack16`.
//!
//! Per block of 32 weights and per token: one `vpdpbusd` per four weights, each against a
//! `{1to16}` broadcast of the four matching activation bytes, starting from the activation
//! block's bias, then one convert and one fused multiply-add per sixteen rows. The weights
//! are decoded once per block for up to `TILE` tokens. `repack16::gemm_ref` does the same
//! arithmetic in scalar and equals this bit for bit.

use core::arch::x86_64::*;

use crate::quant::repack16::{Act16, Gemm16Fn, Kind16, Packed16, ROWS};

/// Tokens per tile: eight accumulators beside up to eight decoded weight registers.
pub const TILE: usize = 8;

/// The kernel, if this CPU has AVX-512 F/BW/VL/VNNI (and F16C).
pub fn kernel() -> Option<Gemm16Fn> {
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

fn gemm(p: &Packed16, g: usize, acts: &[Act16], out: &mut [[f32; ROWS]]) {
    let nb = p.nb();
    assert_eq!(
        acts.len(),
        out.len() * nb,
        "gemm16: activations for the wrong k"
    );
    assert!(g < p.groups(), "gemm16: group {g} out of range");
    let lines = p.kind.lines();
    let d = &p.d[g * nb..(g + 1) * nb];
    let qs = &p.qs[g * nb * lines..(g + 1) * nb * lines];
    for (chunk, o) in acts.chunks(TILE * nb).zip(out.chunks_mut(TILE)) {
        macro_rules! tile {
            ($($t:literal)*) => {
                match o.len() {
                    $($t => {
                        // SAFETY: `kernel()` checked the CPU features; d and qs hold nb
                        // blocks of this group (m and qh too where the kind has them),
                        // chunk holds t·nb activation blocks, o t rows (checked above).
                        unsafe { tile::<$t>(p.kind, d, &p.m, &p.qh, g * nb, qs, chunk, o) }
                    })*
                    _ => unreachable!("tiles hold 1..=8 tokens"),
                }
            };
        }
        tile!(1 2 3 4 5 6 7 8);
    }
}

/// acc + (bias + Σ_j dpbusd(w[j], a[4j..4j+4])) · (dw · da).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn step(acc: __m512, w: &[__m512i; 8], dw: __m512, a: &Act16) -> __m512 {
    let p = a.qs.as_ptr() as *const i32;
    let mut s = _mm512_set1_epi32(a.bias);
    for (j, &wj) in w.iter().enumerate() {
        // SAFETY: qs is 32 bytes: words 0..8 are readable.
        let aj = _mm512_set1_epi32(unsafe { p.add(j).read_unaligned() });
        s = _mm512_dpbusd_epi32(s, wj, aj);
    }
    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a.d));
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc)
}

/// T tokens of one group, any kind.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C must be available; `d` holds nb blocks, `qs`
/// nb·lines lines, `m` / `qh` (where the kind has them) at least i0 + nb entries, `acts`
/// T·nb blocks and `out` T rows.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const T: usize>(
    kind: Kind16,
    d: &[[half::f16; ROWS]],
    m: &[[half::f16; ROWS]],
    qh: &[[u64; 8]],
    i0: usize,
    qs: &[crate::quant::repack::Line64],
    acts: &[Act16],
    out: &mut [[f32; ROWS]],
) {
    let nb = d.len();
    let lines = kind.lines();
    let m4 = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); T];
    let mut w = [_mm512_setzero_si512(); 8];
    for b in 0..nb {
        let line = |j: usize| {
            // SAFETY: a Line64 is 64 bytes aligned to 64, and b·lines + j < nb·lines.
            unsafe { _mm512_load_si512(qs[b * lines + j].0.as_ptr() as *const __m512i) }
        };
        match kind {
            Kind16::Q8_0 => {
                for (j, w) in w.iter_mut().enumerate() {
                    *w = line(j);
                }
            }
            _ => {
                for j in 0..4 {
                    let x = line(j);
                    w[j] = _mm512_and_si512(x, m4);
                    w[4 + j] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
                }
                if kind == Kind16::Q5_0 {
                    let h = &qh[i0 + b];
                    for j in 0..4 {
                        w[j] = _mm512_or_si512(w[j], _mm512_maskz_mov_epi8(h[2 * j], bit4));
                        w[4 + j] =
                            _mm512_or_si512(w[4 + j], _mm512_maskz_mov_epi8(h[2 * j + 1], bit4));
                    }
                }
            }
        }
        // SAFETY: 16 f16 = 32 readable bytes.
        let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(d[b].as_ptr() as *const __m256i) });
        // w[j] pairs with activation word j (bytes 4j..4j+4): for Q8_0 line j is weights
        // 4j..; for Q4_x / Q5_0 w[j] (j < 4) is line j's low nibbles, weights 4j.., and
        // w[4 + j] its high nibbles, weights 16 + 4j..: the activation's own byte order.
        if kind == Kind16::Q4_1 {
            // SAFETY: as for d: 32 readable bytes.
            let mw = _mm512_cvtph_ps(unsafe {
                _mm256_loadu_si256(m[i0 + b].as_ptr() as *const __m256i)
            });
            for (t, acc) in acc.iter_mut().enumerate() {
                let a = &acts[t * nb + b];
                let v = step(*acc, &w, dw, a);
                *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(a.s), v);
            }
        } else {
            for (t, acc) in acc.iter_mut().enumerate() {
                *acc = step(*acc, &w, dw, &acts[t * nb + b]);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: o is 16 writable f32.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
}
