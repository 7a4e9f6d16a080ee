//! Q5_0 and Q5_1: 32 weights per block as 5-bit integers. The low four bits are packed like
//! Q4 (weight `j` in the low nibble of `qs[j]`, weight `j + 16` in the high nibble); the fifth
//! bit of weight `i` is bit `i` of the little-endian u32 `qh`. Layouts as ggml-common.h,
//! quantization as `quantize_row_q5_{0,1}_ref`, dots as `ggml_vec_dot_q5_{0,1}_q8_{0,1}_generic`.

use super::float::{c_float_to_int, f16_to_f32, f32_to_f16};
use super::q4::{inverse_or_zero, min_max, signed_absmax, trunc_clamp_u8};
use super::*;
use bytemuck::{Pod, Zeroable};

const QK: usize = 32;

/// Q5_0: `w = d * (q - 16)`, q in 0..32. 22 bytes per 32 weights: 5.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// Q5_1: `w = d * q + m`, q in 0..32. 24 bytes per 32 weights: 6 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// Packs 32 five-bit levels (in 0..32 after masking) into (qh, qs).
fn pack5(q: &[u8; QK]) -> ([u8; 4], [u8; QK / 2]) {
    let mut qh = 0u32;
    let mut qs = [0u8; QK / 2];
    for j in 0..QK / 2 {
        let (lo, hi) = (q[j], q[j + QK / 2]);
        qs[j] = (lo & 0x0F) | ((hi & 0x0F) << 4);
        qh |= (((lo & 0x10) >> 4) as u32) << j;
        qh |= (((hi & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    (qh.to_le_bytes(), qs)
}

/// The 32 unsigned levels (0..32) of a block.
#[inline]
fn unpack5(qh: [u8; 4], qs: &[u8; QK / 2]) -> [u8; QK] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + QK / 2)) & 1) as u8;
        q[j] = (qs[j] & 0x0F) | (h0 << 4);
        q[j + QK / 2] = (qs[j] >> 4) | (h1 << 4);
    }
    q
}

impl BlockQ5_0 {
    /// The block of scale `d` and levels `l` (0..32, value `d·(l − 16)`).
    pub fn from_levels(d: f16, l: &[u8; QK]) -> Self {
        let (qh, qs) = pack5(l);
        Self { d, qh, qs }
    }
}

impl BlockQ5_1 {
    /// The block of scale `d`, minimum `m` and levels `l` (0..32, value `d·l + m`).
    pub fn from_levels(d: f16, m: f16, l: &[u8; QK]) -> Self {
        let (qh, qs) = pack5(l);
        Self { d, m, qh, qs }
    }
}

impl QuantBlock for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_SIZE: usize = QK;

    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK);
        for (x, y) in src.chunks_exact(QK).zip(out.iter_mut()) {
            // As Q4_0: the signed extreme maps to level 0.
            let d = signed_absmax(x) / -16.0;
            let id = inverse_or_zero(d);
            let l = std::array::from_fn(|j| trunc_clamp_u8(x[j] * id + 16.5, 31));
            *y = Self::from_levels(f32_to_f16(d), &l);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = f16_to_f32(b.d);
            for (yj, q) in y.iter_mut().zip(unpack5(b.qh, &b.qs)) {
                *yj = (q as i32 - 16) as f32 * d;
            }
        }
    }
}

impl VecDot for BlockQ5_0 {
    type Act = BlockQ8_0;

    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let sumi: i32 = unpack5(x.qh, &x.qs)
                .iter()
                .zip(&y.qs)
                .map(|(&q, &qa)| (q as i32 - 16) * qa as i32)
                .sum();
            sum += f16_to_f32(x.d) * f16_to_f32(y.d) * sumi as f32;
        }
        sum
    }
}

impl QuantBlock for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK_SIZE: usize = QK;

    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK);
        for (x, y) in src.chunks_exact(QK).zip(out.iter_mut()) {
            let (min, max) = min_max(x);
            let d = (max - min) / 31.0;
            let id = inverse_or_zero(d);
            // ggml does not clamp here (unlike Q4_1); a level of 32 would lose its bit 5 in
            // packing, as it does in C.
            let l = std::array::from_fn(|j| c_float_to_int((x[j] - min) * id + 0.5) as u8);
            *y = Self::from_levels(f32_to_f16(d), f32_to_f16(min), &l);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = f16_to_f32(b.d);
            let m = f16_to_f32(b.m);
            for (yj, q) in y.iter_mut().zip(unpack5(b.qh, &b.qs)) {
                *yj = q as f32 * d + m;
            }
        }
    }
}

impl VecDot for BlockQ5_1 {
    type Act = BlockQ8_1;

    /// The minimum enters through Q8_1's `s = d_a Σ q_a`, as for Q4_1.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let sumi: i32 = unpack5(x.qh, &x.qs)
                .iter()
                .zip(&y.qs)
                .map(|(&q, &qa)| q as i32 * qa as i32)
                .sum();
            sum +=
                f16_to_f32(x.d) * f16_to_f32(y.d) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
        }
        sum
    }
}
