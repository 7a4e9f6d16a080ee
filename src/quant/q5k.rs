//! Q5_K: 5-bit weights with a 6-bit scale and a 6-bit min per 32 (ggml's `block_q5_K`).
//! The same fit as Q4_K (see `q4k::quantize_asym_k`) with one more bit per weight.

use super::kquant_util::{get_scale_min_k4, ScaleSearch};
use super::q4k::{dot_asym_k, nibble, pack_k_nibbles, quantize_asym_k};
use super::*;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 8 sub-blocks of 32 weights, each `x = d·sc·q - dmin·m` with `q` in 0..=31: the low 4 bits
/// in `qs` (laid out as Q4_K's), the high bit in `qh`.
/// 176 bytes per 256 weights: effectively 5.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    /// Bit `e / 32` of byte `e % 32` is the high bit of element `e`.
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

/// The level (0..=31) of element `e`.
#[inline]
fn q5(b: &BlockQ5K, e: usize) -> u8 {
    let high = (b.qh[e % 32] >> (e / 32)) & 1;
    nibble(&b.qs, e) | (high << 4)
}

impl BlockQ5K {
    /// ggml's `quantize_row_q5_K_ref` for one block.
    fn from_f32(x: &[f32]) -> Self {
        let search = ScaleSearch {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
        };
        let (d, dmin, scales, l) = quantize_asym_k(x, 31, search);
        Self::from_levels(d, dmin, scales, &l)
    }

    /// The block of super-scales `d`, `dmin`, stored `scales` (`pack_scale_min_k4`) and
    /// levels `l` (0..=31).
    pub fn from_levels(d: f16, dmin: f16, scales: [u8; 12], l: &[u8; QK_K]) -> Self {
        let mut qh = [0u8; QK_K / 8];
        for (e, &le) in l.iter().enumerate() {
            if le > 15 {
                qh[e % 32] |= 1 << (e / 32);
            }
        }
        Self {
            d,
            dmin,
            scales,
            qh,
            qs: pack_k_nibbles(l),
        }
    }
}

impl QuantBlock for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
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
            let d = b.d.to_f32();
            let min = b.dmin.to_f32();
            for (j, y32) in y.chunks_exact_mut(32).enumerate() {
                let (sc, m) = get_scale_min_k4(j, &b.scales);
                let (dl, ml) = (d * sc as f32, min * m as f32);
                for (i, v) in y32.iter_mut().enumerate() {
                    *v = dl * q5(b, 32 * j + i) as f32 - ml;
                }
            }
        }
    }
}

impl VecDot for BlockQ5K {
    type Act = BlockQ8K;

    /// ggml's `ggml_vec_dot_q5_K_q8_K_generic`.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sums = [0.0f32; 8];
        let mut sumf = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let q: [i8; QK_K] = std::array::from_fn(|e| q5(x, e) as i8);
            sumf -= dot_asym_k(x.d, x.dmin, &x.scales, &q, y, &mut sums);
        }
        sums.iter().fold(sumf, |acc, &s| acc + s)
    }
}
