//! AVX-512 VNNI kernel over the sixteen-row layouts of `quant::repack16`, and an AMX one.
//!
//! Per block of 32 weights and per token: one `vpdpbusd` per four weights, each against a
//! `{1to16}` broadcast of the four matching activation bytes, starting from the activation
//! block's bias, then one convert and one fused multiply-add per sixteen rows. The weights
//! are decoded once per block for up to `TILE` tokens. `repack16::gemm_ref` does the same
//! arithmetic in scalar and equals this bit for bit.
//!
//! Why AMX as well: on this class of CPU (one 512-bit FMA port) `vpdpbusd` and the float
//! scaling share port 0, so the VNNI kernel spends 11 port-0 cycles per 8 useful ones and
//! tops out near 60 % of the `vpdpbusd` peak. AMX's `tdpbssd` does a block's whole 16-token
//! × 16-row × 32-weight integer product in one instruction on its own unit, leaving port 0
//! only the per-block scaling (convert, multiply, fused add). The integer sums are exact
//! either way and the float steps are the same, so the AMX kernel equals `gemm_ref` bit for
//! bit too. Measured on 576×1536 … 4096² Q4_0 / Q8_0 at 512 tokens, one thread, noisy
//! shared host: about 1.5–2.5× the VNNI kernel. `LEDGE_SIMD=avx512-vnni` turns it off.

use core::arch::asm;
use core::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use crate::quant::line64::Line64;
use crate::quant::repack16::{self, Act16, Gemm16Fn, Group, Kind16, Packed16, ROWS};

/// Tokens per tile: eight accumulators beside up to eight decoded weight registers.
pub const TILE: usize = 8;

/// Tokens per AMX tile (its rows); fewer left over go through the VNNI kernel.
pub const AMX_TOKENS: usize = 16;

/// The VNNI kernel, if this CPU has AVX-512 F/BW/VL/VNNI (and F16C).
pub fn vnni_kernel() -> Option<Gemm16Fn> {
    if has_vnni() {
        Some(gemm)
    } else {
        None
    }
}

fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
}

/// The AMX kernel, if this CPU has AMX-TILE/INT8 besides the VNNI set and the OS grants this
/// process the tile state.
pub fn amx_kernel() -> Option<Gemm16Fn> {
    if amx_usable() {
        Some(gemm_amx)
    } else {
        None
    }
}

/// Whether AMX can be used: the CPU has AMX-TILE/INT8 besides the VNNI set, the OS grants
/// this process the tile state (asked once).
pub fn amx_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| has_vnni() && amx_permitted())
}

/// CPUID.(7,0):EDX bits 24 (AMX-TILE) and 25 (AMX-INT8), then Linux's per-process
/// permission for the tile data (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA):
/// without it the first tile load faults.
fn amx_permitted() -> bool {
    // CPUID leaf 7 exists on every x86-64 CPU with AVX-512 (checked first).
    let edx = __cpuid_count(7, 0).edx;
    if edx & (3 << 24) != 3 << 24 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with this request only changes the process's permitted
        // extended state; it reads no user memory.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

fn gemm(p: &Packed16, g: usize, acts: &[Act16], out: &mut [[f32; ROWS]]) {
    repack16::for_each_tile(p, g, acts, out, TILE, |group, chunk, o| {
        macro_rules! tile {
            ($($t:literal)*) => {
                match o.len() {
                    $($t => {
                        // SAFETY: `vnni_kernel()` checked the CPU features; the group holds
                        // nb blocks, chunk t·nb activation blocks, o t rows (for_each_tile).
                        unsafe { tile::<$t>(group, chunk, o) }
                    })*
                    _ => unreachable!("tiles hold 1..=8 tokens"),
                }
            };
        }
        tile!(1 2 3 4 5 6 7 8);
    });
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
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C must be available; `group` comes from
/// `Packed16::group` (its nb blocks are in bounds), `acts` holds T·nb blocks and `out` T rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const T: usize>(group: Group, acts: &[Act16], out: &mut [[f32; ROWS]]) {
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
    let m4 = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); T];
    let mut w = [_mm512_setzero_si512(); 8];
    for b in 0..nb {
        if T == 1 {
            super::prefetch(
                qs.as_ptr().wrapping_add(b * lines + super::PREFETCH_LINES),
                lines,
            );
        }
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

/// The AMX kernel: the VNNI kernel's arithmetic with each block's integer sums for sixteen
/// tokens × sixteen rows from one `tdpbssd`. The group's weights are first decoded to
/// signed bytes (stored value − offset) in the layout `tdpbssd` wants for its second
/// operand, which is the sixteen-row layout itself (row i of the tile: four consecutive
/// weights of each of the sixteen rows); the activations' quants are the first operand
/// as they lie, one token per tile row. Σ (u − offset)·a is the VNNI kernel's bias + Σ u·a.
fn gemm_amx(p: &Packed16, g: usize, acts: &[Act16], out: &mut [[f32; ROWS]]) {
    thread_local! {
        /// The decoded group: nb blocks × 8 lines of signed weights.
        static DECODED: RefCell<Vec<Line64>> = const { RefCell::new(Vec::new()) };
    }
    let nb = p.nb();
    assert_eq!(
        acts.len(),
        out.len() * nb,
        "gemm16: activations for the wrong k"
    );
    assert!(g < p.groups(), "gemm16: group {g} out of range");
    let full = out.len() / AMX_TOKENS * AMX_TOKENS;
    if full > 0 {
        DECODED.with(|w| {
            let mut w = w.borrow_mut();
            if w.len() < nb * 8 {
                w.resize(nb * 8, Line64([0; 64]));
            }
            let w = &mut w[..nb * 8];
            // SAFETY: `amx_kernel()` checked the CPU features (VNNI set and AMX) and got the
            // OS's permission for the tile state; w holds nb·8 lines, acts full·nb blocks
            // and out full rows, full a multiple of AMX_TOKENS (checked above).
            unsafe {
                decode_signed(p, g, w);
                amx_tiles(p, g, w, &acts[..full * nb], &mut out[..full]);
            }
        });
    }
    if full < out.len() {
        gemm(p, g, &acts[full * nb..], &mut out[full..]);
    }
}

/// Group g's weights as signed bytes, eight lines per block: line j (j < 4) the low
/// nibbles of stored line j (weights 4j..4j+4 of each row), line 4 + j its high nibbles
/// (weights 16 + 4j..), fifth bits merged for Q5_0; Q8_0's eight lines as they are; each
/// minus the kind's offset (Q8_0: XOR 0x80, the same modulo 256).
///
/// # Safety
/// AVX-512 F/BW must be available; `dst` holds nb·8 lines.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn decode_signed(p: &Packed16, g: usize, dst: &mut [Line64]) {
    let nb = p.nb();
    let lines = p.kind.lines();
    let qs = &p.qs[g * nb * lines..(g + 1) * nb * lines];
    let m4 = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    let off = _mm512_set1_epi8(p.kind.offset() as u8 as i8);
    assert!(dst.len() >= nb * 8, "decode: scratch too small");
    for b in 0..nb {
        let line = |j: usize| {
            // SAFETY: a Line64 is 64 bytes aligned to 64, and b·lines + j < nb·lines.
            unsafe { _mm512_load_si512(qs[b * lines + j].0.as_ptr() as *const __m512i) }
        };
        let mut w = [_mm512_setzero_si512(); 8];
        match p.kind {
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
                if p.kind == Kind16::Q5_0 {
                    let h = &p.qh[g * nb + b];
                    for j in 0..4 {
                        w[j] = _mm512_or_si512(w[j], _mm512_maskz_mov_epi8(h[2 * j], bit4));
                        w[4 + j] =
                            _mm512_or_si512(w[4 + j], _mm512_maskz_mov_epi8(h[2 * j + 1], bit4));
                    }
                }
            }
        }
        for (j, w) in w.into_iter().enumerate() {
            // SAFETY: b·8 + j < nb·8 ≤ dst.len(); a Line64 is aligned to 64.
            unsafe {
                _mm512_store_si512(
                    dst.as_mut_ptr().add(b * 8 + j) as *mut __m512i,
                    _mm512_sub_epi8(w, off),
                )
            };
        }
    }
}

/// AMX tile configuration (palette 1): 64 bytes, see the Intel SDM on LDTILECFG.
#[repr(C, align(64))]
pub(crate) struct TileCfg {
    palette: u8,
    start_row: u8,
    _reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileCfg {
    /// Palette 1 with tiles `ids` each `rows` × `colsb` bytes, the others unused.
    pub(crate) fn uniform(ids: &[usize], rows: u8, colsb: u16) -> TileCfg {
        let mut cfg = TileCfg {
            palette: 1,
            start_row: 0,
            _reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for &i in ids {
            (cfg.colsb[i], cfg.rows[i]) = (colsb, rows);
        }
        cfg
    }
}

/// Two blocks' integer sums: 16 tokens × 16 rows of i32 each.
#[repr(C, align(64))]
struct Sums([[[i32; ROWS]; AMX_TOKENS]; 2]);

/// Tiles of AMX_TOKENS tokens over group g: per pair of blocks, two `tdpbssd` into tiles 0
/// and 3 (operands in 1, 2 and 4, 5), stored, then scaled and accumulated as the VNNI
/// kernel does.
///
/// # Safety
/// The VNNI set and AMX-TILE/INT8 must be available with the tile state permitted; `w` is
/// group g decoded by `decode_signed`; `acts` holds out.len()·nb blocks, out.len() a
/// multiple of AMX_TOKENS.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn amx_tiles(p: &Packed16, g: usize, w: &[Line64], acts: &[Act16], out: &mut [[f32; ROWS]]) {
    let nb = p.nb();
    let i0 = g * nb;
    let d = &p.d[i0..i0 + nb];
    let q4_1 = p.kind == Kind16::Q4_1;
    assert!(
        w.len() >= nb * 8 && acts.len() == out.len() * nb && out.len().is_multiple_of(AMX_TOKENS)
    );
    let mut cfg = TileCfg {
        palette: 1,
        start_row: 0,
        _reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    // Sums: 16 tokens × 16 i32; activations: 16 tokens × 32 bytes; weights: 8 × 64 bytes.
    for (c, a, b) in [(0, 1, 2), (3, 4, 5)] {
        (cfg.colsb[c], cfg.rows[c]) = (64, 16);
        (cfg.colsb[a], cfg.rows[a]) = (32, 16);
        (cfg.colsb[b], cfg.rows[b]) = (64, 8);
    }
    // SAFETY: cfg is a valid 64-byte palette-1 configuration (AMX checked by the caller).
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
    let mut sums = Sums([[[0; ROWS]; AMX_TOKENS]; 2]);
    let stride = nb * std::mem::size_of::<Act16>();
    for (ta, o) in acts
        .chunks_exact(AMX_TOKENS * nb)
        .zip(out.chunks_exact_mut(AMX_TOKENS))
    {
        let mut acc = [_mm512_setzero_ps(); AMX_TOKENS];
        for b in (0..nb).step_by(2) {
            let two = b + 1 < nb;
            let s0 = sums.0[0].as_mut_ptr();
            let s1 = sums.0[1].as_mut_ptr();
            // SAFETY: tile rows read: 16 tokens' 32 quant bytes at ta[t·nb + b] (t < 16,
            // b < nb: inside ta), 8 lines at w[8b..8b+8] (inside w), and the same for b + 1
            // when two; tile rows written: 16 × 64 bytes into sums.0[0] (and [1]).
            unsafe {
                if two {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm3",
                        "tileloadd tmm1, [{a0} + {sa}*1]",
                        "tileloadd tmm2, [{w0} + {sw}*1]",
                        "tileloadd tmm4, [{a1} + {sa}*1]",
                        "tileloadd tmm5, [{w1} + {sw}*1]",
                        "tdpbssd tmm0, tmm1, tmm2",
                        "tdpbssd tmm3, tmm4, tmm5",
                        "tilestored [{s0} + {sw}*1], tmm0",
                        "tilestored [{s1} + {sw}*1], tmm3",
                        a0 = in(reg) ta.as_ptr().add(b),
                        a1 = in(reg) ta.as_ptr().add(b + 1),
                        sa = in(reg) stride,
                        w0 = in(reg) w.as_ptr().add(8 * b),
                        w1 = in(reg) w.as_ptr().add(8 * b + 8),
                        sw = in(reg) 64usize,
                        s0 = in(reg) s0,
                        s1 = in(reg) s1,
                        options(nostack),
                    );
                } else {
                    asm!(
                        "tilezero tmm0",
                        "tileloadd tmm1, [{a0} + {sa}*1]",
                        "tileloadd tmm2, [{w0} + {sw}*1]",
                        "tdpbssd tmm0, tmm1, tmm2",
                        "tilestored [{s0} + {sw}*1], tmm0",
                        a0 = in(reg) ta.as_ptr().add(b),
                        sa = in(reg) stride,
                        w0 = in(reg) w.as_ptr().add(8 * b),
                        sw = in(reg) 64usize,
                        s0 = in(reg) s0,
                        options(nostack),
                    );
                }
            }
            for (k, s) in sums.0[..1 + two as usize].iter().enumerate() {
                let b = b + k;
                // SAFETY: 16 f16 = 32 readable bytes.
                let dw =
                    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(d[b].as_ptr() as *const __m256i) });
                let mw = if q4_1 {
                    // SAFETY: as for d; Q4_1 has m for every group and block.
                    _mm512_cvtph_ps(unsafe {
                        _mm256_loadu_si256(p.m[i0 + b].as_ptr() as *const __m256i)
                    })
                } else {
                    _mm512_setzero_ps()
                };
                for (t, acc) in acc.iter_mut().enumerate() {
                    let a = &ta[t * nb + b];
                    // SAFETY: s[t] is 16 i32, aligned to 64 (Sums is).
                    let si = unsafe { _mm512_load_si512(s[t].as_ptr() as *const __m512i) };
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a.d));
                    let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), scale, *acc);
                    *acc = if q4_1 {
                        _mm512_fmadd_ps(mw, _mm512_set1_ps(a.s), v)
                    } else {
                        v
                    };
                }
            }
        }
        for (o, a) in o.iter_mut().zip(acc) {
            // SAFETY: o is 16 writable f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
        }
    }
    // SAFETY: releases the tile state configured above; no tile is used after this.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
