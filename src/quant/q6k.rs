//! Q6_K: 6-bit symmetric weights with an 8-bit scale per 16 (ggml's `block_q6_K`).

use super::kquant_util::{lane_dot16, make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::*;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 16 sub-blocks of 16 weights, each `x = d·sc·(q-32)` with `q` in 0..=63: its low 4 bits in
/// `ql`, its high 2 bits in `qh`.
/// 210 bytes per 256 weights: effectively 6.5625 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    /// For element `e = 128·h + 32·p + i`: byte `64·h + 32·(p%2) + i`, nibble `p/2`.
    pub ql: [u8; QK_K / 2],
    /// For the same element: byte `32·h + i`, bit pair `p`.
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// Byte indices and shifts of element `e` in (`ql`, `qh`).
#[inline]
fn q6_pos(e: usize) -> (usize, u32, usize, u32) {
    let (h, p, i) = (e / 128, (e % 128) / 32, e % 32);
    (
        64 * h + 32 * (p % 2) + i,
        4 * (p / 2) as u32,
        32 * h + i,
        2 * p as u32,
    )
}

/// The level of element `e` minus 32, in -32..=31.
#[inline]
pub(super) fn q6(b: &BlockQ6K, e: usize) -> i8 {
    let (lb, ls, hb, hs) = q6_pos(e);
    let low = (b.ql[lb] >> ls) & 0xF;
    let high = (b.qh[hb] >> hs) & 3;
    (low | (high << 4)) as i8 - 32
}

impl BlockQ6K {
    /// ggml's `quantize_row_q6_K_ref` for one block.
    fn from_f32(x: &[f32]) -> Self {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for (ib, xb) in x.chunks_exact(16).enumerate() {
            let scale = make_qx_quants(32, xb, &mut l[16 * ib..16 * ib + 16], 1, None);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }

        if max_abs_scale < GROUP_MAX_EPS {
            return Self::zeroed();
        }
        let iscale = -128.0 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        let sc = scales.map(|s| nearest_int(iscale * s).min(127) as i8);

        // Re-quantize against the scales as they will be decoded (8-bit, through f16).
        for (j, &s) in sc.iter().enumerate() {
            let dj = d.to_f32() * s as f32;
            if dj == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        Self::from_levels(d, sc, &l.map(|v| v as u8))
    }

    /// The block of super-scale `d`, sub-block scales `sc` and levels `l` (0..=63, value
    /// `d·sc·(l − 32)`).
    pub fn from_levels(d: f16, sc: [i8; QK_K / 16], l: &[u8; QK_K]) -> Self {
        let mut y = Self {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: sc,
            d,
        };
        for (e, &le) in l.iter().enumerate() {
            let (lb, ls, hb, hs) = q6_pos(e);
            y.ql[lb] |= (le & 0xF) << ls;
            y.qh[hb] |= (le >> 4) << hs;
        }
        y
    }
}

impl QuantBlock for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
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
            for (j, y16) in y.chunks_exact_mut(16).enumerate() {
                let dl = d * b.scales[j] as f32;
                for (i, v) in y16.iter_mut().enumerate() {
                    *v = dl * q6(b, 16 * j + i) as f32;
                }
            }
        }
    }
}

impl VecDot for BlockQ6K {
    type Act = BlockQ8K;

    /// ggml's `ggml_vec_dot_q6_K_q8_K_generic`.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sums = [0.0f32; 8];
        for (x, y) in w.iter().zip(a) {
            let q: [i8; QK_K] = std::array::from_fn(|e| q6(x, e));
            let scales = x.scales.map(|s| s as i32);
            let lanes = lane_dot16(&q, &y.qs, &scales);
            let d = x.d.to_f32() * y.d;
            for (s, &lane) in sums.iter_mut().zip(&lanes) {
                *s += d * lane as f32;
            }
        }
        sums.iter().fold(0.0, |acc, &s| acc + s)
    }
}
