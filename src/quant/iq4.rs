//! IQ4_NL and IQ4_XS: 4-bit indices into a fixed non-linear table of 16 levels (ggml's
//! `block_iq4_nl`, `block_iq4_xs`). IQ4_NL has one f16 scale per 32 weights; IQ4_XS packs
//! 6-bit sub-scales for 8 × 32 weights under one f16.

use super::kquant_util::{best_index_int8, nearest_int, signed_absmax, GROUP_MAX_EPS};
use super::q4::pack_nibbles;
use super::*;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// The 16 levels (ggml's `kvalues_iq4nl`): denser near zero, where weights cluster.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Weights per IQ4_NL block and per IQ4_XS sub-block.
const QK4_NL: usize = 32;

/// 32 weights `x = d·KVALUES_IQ4NL[q]`; byte `i` of `qs` holds elements `i` (low nibble) and
/// `16 + i` (high).
/// 18 bytes per 32 weights: effectively 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4NL {
    pub d: f16,
    pub qs: [u8; QK4_NL / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);

/// 8 sub-blocks of 32 weights `x = d·(ls-32)·KVALUES_IQ4NL[q]` with the 6-bit `ls` split
/// into a low nibble (`scales_l`) and a high bit pair (`scales_h`); each sub-block's 16
/// bytes of `qs` are laid out as an IQ4_NL block's.
/// 136 bytes per 256 weights: effectively 4.25 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4XS {
    pub d: f16,
    /// Bits `2·ib .. 2·ib+2`: the high bits of sub-block `ib`'s scale.
    pub scales_h: u16,
    /// Nibble `ib % 2` of byte `ib / 2`: the low bits of sub-block `ib`'s scale.
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == 136);

/// The output of `quantize_iq4`: the super-scale and, for IQ4_XS, the packed sub-scales.
struct Iq4Scales {
    d: f16,
    scales_h: u16,
    scales_l: [u8; QK_K / 64],
}

/// ggml's `quantize_row_iq4_nl_impl` with `block_size` 32 over one super-block `x` of 32
/// (IQ4_NL) or 256 (IQ4_XS) weights. `l` is scratch for the level indices; ggml leaves it
/// untouched for an all-zero IQ4_NL block, so the caller keeps it across blocks to match.
/// `ntry` is ggml's scale-search width (negative: no search, as in the `_ref` IQ4_NL path);
/// `qw` are importance weights (imatrix), `None` for the reference quantizers.
fn quantize_iq4(
    x: &[f32],
    qw: Option<&[f32]>,
    ntry: i32,
    l: &mut [u8],
    q4: &mut [u8],
) -> Iq4Scales {
    let values = &KVALUES_IQ4NL;
    let v0 = values[0] as f32;
    let nb = x.len() / QK4_NL;
    debug_assert!(l.len() == x.len() && q4.len() == x.len() / 2 && nb <= QK_K / QK4_NL);

    let mut sigma2 = x.iter().fold(0.0f32, |s, &v| s + v * v);
    sigma2 *= 2.0 / x.len() as f32;

    let mut out = Iq4Scales {
        d: f16::from_f32(0.0),
        scales_h: 0,
        scales_l: [0; QK_K / 64],
    };
    let mut scales = [0.0f32; QK_K / QK4_NL];
    let mut weight = [0.0f32; QK4_NL];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for ib in 0..nb {
        let xb = &x[ib * QK4_NL..(ib + 1) * QK4_NL];
        let lb = &mut l[ib * QK4_NL..(ib + 1) * QK4_NL];
        match qw {
            Some(qw) => {
                let qw = &qw[ib * QK4_NL..(ib + 1) * QK4_NL];
                for ((w, &q), &v) in weight.iter_mut().zip(qw).zip(xb) {
                    *w = q * (sigma2 + v * v).sqrt();
                }
            }
            None => {
                for (w, &v) in weight.iter_mut().zip(xb) {
                    *w = v * v;
                }
            }
        }
        let (max, amax) = signed_absmax(xb);
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        // Σw·q·x and Σw·q² of the levels nearest to `id·x`; stores the levels in `lb` if given.
        let fit = |id: f32, mut lb: Option<&mut [u8]>| {
            let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
            for (j, (&v, &w)) in xb.iter().zip(&weight).enumerate() {
                let k = best_index_int8(values, id * v);
                if let Some(lb) = lb.as_deref_mut() {
                    lb[j] = k as u8;
                }
                let q = values[k] as f32;
                sumqx += w * q * v;
                sumq2 += w * q * q;
            }
            (sumqx, sumq2)
        };
        let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
        let (sumqx, sumq2) = fit(1.0 / d, Some(lb));
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            let id = (itry + values[0] as i32) as f32 / max;
            let (sumqx, sumq2) = fit(id, None);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }

    if nb > 1 {
        let d = -max_scale / 32.0;
        out.d = f16::from_f32(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nb {
            let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
            // The levels are re-picked against the 6-bit sub-scale, but with the f32 `d`
            // rather than its f16 rounding, as in ggml.
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = &x[ib * QK4_NL..(ib + 1) * QK4_NL];
            for (lj, &v) in l[ib * QK4_NL..(ib + 1) * QK4_NL].iter_mut().zip(xb) {
                *lj = best_index_int8(values, idl * v) as u8;
            }
            let ls = (ls + 32) as u8;
            out.scales_l[ib / 2] |= (ls & 0xF) << (4 * (ib % 2));
            out.scales_h |= ((ls >> 4) as u16) << (2 * (ib % 8));
        }
    } else {
        out.d = f16::from_f32(scales[0]);
        if ntry > 0 {
            let id = if scales[0] != 0.0 {
                1.0 / scales[0]
            } else {
                0.0
            };
            for (lj, &v) in l.iter_mut().zip(x) {
                *lj = best_index_int8(values, id * v) as u8;
            }
        }
    }

    for (q16, l32) in q4.chunks_exact_mut(16).zip(l.chunks_exact(32)) {
        q16.copy_from_slice(&pack_nibbles(l32.try_into().expect("32 levels")));
    }
    out
}

/// Σ q8·level over one 32-weight sub-block laid out as IQ4_NL's `qs`.
#[inline]
fn dot_iq4_32(qs: &[u8], q8: &[i8]) -> i32 {
    let (mut sumi1, mut sumi2) = (0i32, 0i32);
    for j in 0..16 {
        sumi1 += q8[j] as i32 * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as i32;
        sumi2 += q8[j + 16] as i32 * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as i32;
    }
    sumi1 + sumi2
}

/// Expands one 32-weight sub-block with scale `d`.
#[inline]
fn dequant_iq4_32(qs: &[u8], d: f32, y: &mut [f32]) {
    for j in 0..16 {
        y[j] = d * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
    }
}

impl BlockIQ4NL {
    /// The block of scale `d` and table indices `l` (0..16, value `d·KVALUES_IQ4NL[l]`).
    pub fn from_levels(d: f16, l: &[u8; QK4_NL]) -> Self {
        Self {
            d,
            qs: pack_nibbles(l),
        }
    }
}

impl QuantBlock for BlockIQ4NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const BLOCK_SIZE: usize = QK4_NL;

    /// ggml's `quantize_row_iq4_nl_ref`: one scale fit per block, no scale search.
    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK4_NL);
        let mut l = [0u8; QK4_NL];
        for (x, y) in src.chunks_exact(QK4_NL).zip(out) {
            y.d = quantize_iq4(x, None, -1, &mut l, &mut y.qs).d;
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK4_NL);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK4_NL)) {
            dequant_iq4_32(&b.qs, b.d.to_f32(), y);
        }
    }
}

impl VecDot for BlockIQ4NL {
    type Act = BlockQ8_0;

    /// ggml's `ggml_vec_dot_iq4_nl_q8_0_generic`.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sumf = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let d = y.d.to_f32() * x.d.to_f32();
            sumf += d * dot_iq4_32(&x.qs, &y.qs) as f32;
        }
        sumf
    }
}

impl QuantBlock for BlockIQ4XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const BLOCK_SIZE: usize = QK_K;

    /// ggml's `quantize_row_iq4_xs_ref` (`quantize_iq4_xs` without an imatrix).
    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK_K);
        let mut l = [0u8; QK_K];
        for (x, y) in src.chunks_exact(QK_K).zip(out) {
            let s = quantize_iq4(x, None, 7, &mut l, &mut y.qs);
            y.d = s.d;
            y.scales_h = s.scales_h;
            y.scales_l = s.scales_l;
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            for (ib, y32) in y.chunks_exact_mut(32).enumerate() {
                let dl = d * (b.sub_scale(ib) - 32) as f32;
                dequant_iq4_32(&b.qs[16 * ib..16 * ib + 16], dl, y32);
            }
        }
    }
}

impl BlockIQ4XS {
    /// The 6-bit scale (0..=63, 32 meaning zero) of sub-block `ib`.
    #[inline]
    fn sub_scale(&self, ib: usize) -> i32 {
        let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let high = (self.scales_h >> (2 * ib)) & 3;
        low as i32 | (high as i32) << 4
    }
}

impl VecDot for BlockIQ4XS {
    type Act = BlockQ8K;

    /// ggml's `ggml_vec_dot_iq4_xs_q8_K_generic`.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sumf = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let d4d8 = x.d.to_f32() * y.d;
            for ib in 0..QK_K / 32 {
                let dl = d4d8 * (x.sub_scale(ib) - 32) as f32;
                let sumi = dot_iq4_32(&x.qs[16 * ib..16 * ib + 16], &y.qs[32 * ib..32 * ib + 32]);
                sumf += dl * sumi as f32;
            }
        }
        sumf
    }
}
