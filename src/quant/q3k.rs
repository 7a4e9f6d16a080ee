//! Q3_K: 3-bit symmetric weights with a 6-bit scale per 16 (ggml's `block_q3_K`).

use super::kquant_util::{lane_dot16, make_q3_quants, nearest_int};
use super::q2k::pack_2bit;
use super::*;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 16 sub-blocks of 16 weights, each `x = d·(sc-32)·(q-4)` with `q` in 0..=7: its low two
/// bits in `qs` (laid out as Q2_K's), its high bit in `hmask`; the 6-bit `sc` packed in
/// `scales` (low nibbles in bytes 0..8, high bit pairs in bytes 8..12).
/// 110 bytes per 256 weights: effectively 3.4375 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3K {
    /// Bit `e / 32` of byte `e % 32` is the high bit of element `e`.
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

/// The 16 signed sub-block scales (`sc - 32`, in -32..=31).
fn unpack_scales(s: &[u8; 12]) -> [i8; 16] {
    std::array::from_fn(|j| {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

/// The level of element `e` minus 4, in -4..=3.
#[inline]
fn q3(b: &BlockQ3K, e: usize) -> i8 {
    let (h, p, i) = (e / 128, (e % 128) / 32, e % 32);
    let low = ((b.qs[32 * h + i] >> (2 * p)) & 3) as i8;
    let high_set = b.hmask[i] & (1 << (e / 32)) != 0;
    low - if high_set { 0 } else { 4 }
}

impl BlockQ3K {
    /// ggml's `quantize_row_q3_K_ref` for one block.
    fn from_f32(x: &[f32]) -> Self {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..], true);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }

        let mut d = f16::ZERO;
        let mut packed = [0u8; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            // ggml narrows to int8 before clamping.
            let sc = scales.map(|s| ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8);
            packed = Self::pack_scales(&sc);
            d = f16::from_f32(1.0 / iscale);
        }

        // Re-quantize against the scales as they will be decoded (6-bit, through f16).
        for (j, &s) in unpack_scales(&packed).iter().enumerate() {
            let dj = d.to_f32() * s as f32;
            if dj == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / dj).clamp(-4, 3);
                l[16 * j + ii] = q as i8 + 4;
            }
        }
        Self::from_levels(d, packed, &l.map(|v| v as u8))
    }

    /// The stored `scales` of 16 six-bit sub-block scales (`sc − 32` as decoded): low
    /// nibbles in bytes 0..8, high bit pairs in bytes 8..12.
    pub fn pack_scales(sc: &[u8; QK_K / 16]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for (j, &q) in sc.iter().enumerate() {
            if j < 8 {
                s[j] = q & 0xF;
            } else {
                s[j - 8] |= (q & 0xF) << 4;
            }
            s[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
        }
        s
    }

    /// The block of super-scale `d`, stored `scales` (`pack_scales`) and levels `l`
    /// (0..=7, value `d·(sc − 32)·(l − 4)`).
    pub fn from_levels(d: f16, scales: [u8; 12], l: &[u8; QK_K]) -> Self {
        let mut hmask = [0u8; QK_K / 8];
        let mut low = [0u8; QK_K];
        for (e, (&le, lo)) in l.iter().zip(&mut low).enumerate() {
            if le > 3 {
                hmask[e % 32] |= 1 << (e / 32);
            }
            *lo = le & 3;
        }
        Self {
            hmask,
            qs: pack_2bit(&low),
            scales,
            d,
        }
    }
}

impl QuantBlock for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const BLOCK_SIZE: usize = QK_K;

    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK_K);
        for (x, y) in src.chunks_exact(QK_K).zip(out) {
            *y = Self::from_f32(x);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d_all = b.d.to_f32();
            let scales = unpack_scales(&b.scales);
            for (j, y16) in y.chunks_exact_mut(16).enumerate() {
                let dl = d_all * scales[j] as f32;
                for (i, v) in y16.iter_mut().enumerate() {
                    *v = dl * q3(b, 16 * j + i) as f32;
                }
            }
        }
    }
}

impl VecDot for BlockQ3K {
    type Act = BlockQ8K;

    /// ggml's `ggml_vec_dot_q3_K_q8_K_generic`.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sums = [0.0f32; 8];
        for (x, y) in w.iter().zip(a) {
            let q: [i8; QK_K] = std::array::from_fn(|e| q3(x, e));
            let scales = unpack_scales(&x.scales).map(|s| s as i32);
            let lanes = lane_dot16(&q, &y.qs, &scales);
            let d = x.d.to_f32() * y.d;
            for (s, &lane) in sums.iter_mut().zip(&lanes) {
                *s += d * lane as f32;
            }
        }
        sums.iter().fold(0.0, |acc, &s| acc + s)
    }
}
