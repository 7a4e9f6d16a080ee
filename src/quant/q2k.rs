//! Q2_K: 2-bit weights with a 4-bit scale and a 4-bit min per 16 (ggml's `block_q2_K`).

use super::kquant_util::{make_qkx2_quants, nearest_int, ScaleSearch};
use super::*;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 16 sub-blocks of 16 weights, each `x = d·sc·q - dmin·m` with `q` in 0..=3 and the 4-bit
/// `sc` (low nibble) and `m` (high nibble) packed in `scales`.
/// 84 bytes per 256 weights: effectively 2.625 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    /// Byte `32·h + i` holds, in bit pairs 0..4, the quants of elements
    /// `128·h + i + 32·p` for p = 0..4.
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

/// The 2-bit quant of element `e` (0..256) in `qs`.
#[inline]
fn q2(qs: &[u8; QK_K / 4], e: usize) -> u8 {
    let (h, p, i) = (e / 128, (e % 128) / 32, e % 32);
    (qs[32 * h + i] >> (2 * p)) & 3
}

/// Packs 256 levels (each 0..=3) the way `q2` reads them (shared with Q3_K's low bits).
pub(super) fn pack_2bit(l: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for h in 0..2 {
        for i in 0..32 {
            let e = 128 * h + i;
            qs[32 * h + i] = l[e] | (l[e + 32] << 2) | (l[e + 64] << 4) | (l[e + 96] << 6);
        }
    }
    qs
}

impl BlockQ2K {
    /// ggml's `quantize_row_q2_K_ref` for one block.
    fn from_f32(x: &[f32]) -> Self {
        const Q4SCALE: f32 = 15.0;
        let mut l = [0u8; QK_K];
        let mut weights = [0.0f32; 16];
        let mut mins = [0.0f32; QK_K / 16];
        let mut scales = [0.0f32; QK_K / 16];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..QK_K / 16 {
            let xj = &x[16 * j..16 * j + 16];
            for (w, v) in weights.iter_mut().zip(xj) {
                *w = v.abs();
            }
            let search = ScaleSearch {
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
            };
            let (scale, min) =
                make_qkx2_quants(3, xj, &weights, &mut l[16 * j..16 * j + 16], search, true);
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }

        let (mut sc, mut mn) = ([0u8; QK_K / 16], [0u8; QK_K / 16]);
        let (mut d, mut dmin) = (f16::ZERO, f16::ZERO);
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            sc = scales.map(|s| nearest_int(iscale * s) as u8);
            d = f16::from_f32(max_scale / Q4SCALE);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            mn = mins.map(|m| nearest_int(iscale * m) as u8);
            dmin = f16::from_f32(max_min / Q4SCALE);
        }
        let packed = Self::pack_scales(&sc, &mn);

        // Re-quantize against the scales as they will be decoded (4-bit, through f16).
        for (j, &s) in packed.iter().enumerate() {
            let dj = d.to_f32() * (s & 0xF) as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * (s >> 4) as f32;
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + dm) / dj);
                l[16 * j + ii] = q.clamp(0, 3) as u8;
            }
        }
        Self::from_levels(d, dmin, packed, &l)
    }

    /// The stored `scales`: sub-block scale `sc[j]` in the low nibble of byte `j`, min
    /// `mn[j]` in the high one.
    pub fn pack_scales(sc: &[u8; QK_K / 16], mn: &[u8; QK_K / 16]) -> [u8; QK_K / 16] {
        std::array::from_fn(|j| sc[j] | (mn[j] << 4))
    }

    /// The block of super-scales `d`, `dmin`, stored sub-block `scales` (`pack_scales`) and
    /// levels `l` (0..=3).
    pub fn from_levels(d: f16, dmin: f16, scales: [u8; QK_K / 16], l: &[u8; QK_K]) -> Self {
        Self {
            scales,
            qs: pack_2bit(l),
            d,
            dmin,
        }
    }
}

impl QuantBlock for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
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
            for (j, y16) in y.chunks_exact_mut(16).enumerate() {
                let sc = b.scales[j];
                let dl = d * (sc & 0xF) as f32;
                let ml = min * (sc >> 4) as f32;
                for (i, v) in y16.iter_mut().enumerate() {
                    *v = dl * q2(&b.qs, 16 * j + i) as f32 - ml;
                }
            }
        }
    }
}

impl VecDot for BlockQ2K {
    type Act = BlockQ8K;

    /// ggml's `ggml_vec_dot_q2_K_q8_K_generic`: integer sums per block, the min term
    /// through the activation's 16-element sums.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sumf = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let summs: i32 = (y.bsums.iter().zip(&x.scales))
                .map(|(&s, &sc)| s as i32 * (sc >> 4) as i32)
                .sum();
            let dall = y.d * x.d.to_f32();
            let dmin = y.d * x.dmin.to_f32();
            let mut isum = 0i32;
            for (j, q8) in y.qs.chunks_exact(16).enumerate() {
                let isuml: i32 = (q8.iter().enumerate())
                    .map(|(i, &q)| q as i32 * q2(&x.qs, 16 * j + i) as i32)
                    .sum();
                isum += (x.scales[j] & 0xF) as i32 * isuml;
            }
            sumf += dall * isum as f32 - dmin * summs as f32;
        }
        sumf
    }
}
