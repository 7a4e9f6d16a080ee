//! Q4_0 and Q4_1: 32 weights per block as 4-bit integers with one f16 scale (Q4_0, symmetric
//! around 8) or a scale and a minimum (Q4_1). Weight `j` is in the low nibble of `qs[j]` and
//! weight `j + 16` in the high nibble. Layouts as ggml-common.h, quantization as ggml's
//! `quantize_row_q4_{0,1}_ref`, dot products as `ggml_vec_dot_q4_{0,1}_q8_{0,1}_generic`.

use super::float::{c_float_to_int, f16_to_f32, f32_to_f16};
use super::*;
use bytemuck::{Pod, Zeroable};

const QK: usize = 32;

/// Q4_0: `w = d * (q - 8)`, q in 0..16. 18 bytes per 32 weights: 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// Q4_1: `w = d * q + m`, q in 0..16. 20 bytes per 32 weights: 5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// The value of largest magnitude, sign kept; the first one wins a tie, and NaN never wins
/// (ggml's strict `amax < |v|`). The symmetric formats map it to the most negative level, so
/// a block's extreme value is represented exactly up to the f16 rounding of the scale.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// (min, max) as ggml's asymmetric quantizers find them: starting from ±FLT_MAX, NaNs skipped.
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `1/d`, or 0 for an all-zero block so that every weight quantizes to the zero level.
#[inline]
pub(crate) fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Packs 32 levels two to a byte: level `j` in the low nibble of byte `j`, level `j + 16` in
/// the high one (Q4_0, Q4_1, IQ4_NL and each IQ4_XS sub-block). Not masked, as ggml's
/// packing is not: a level above 15 corrupts its neighbour there too.
pub(crate) fn pack_nibbles(l: &[u8; QK]) -> [u8; QK / 2] {
    std::array::from_fn(|j| l[j] | (l[j + QK / 2] << 4))
}

/// C's `MIN(max, (int8_t)v)` stored into a `uint8_t`: truncate, clamp from above only, wrap.
#[inline]
pub(crate) fn trunc_clamp_u8(v: f32, max: i32) -> u8 {
    (c_float_to_int(v) as i8 as i32).min(max) as u8
}

impl BlockQ4_0 {
    /// The block of scale `d` and levels `l` (0..16, value `d·(l − 8)`).
    pub fn from_levels(d: f16, l: &[u8; QK]) -> Self {
        Self {
            d,
            qs: pack_nibbles(l),
        }
    }
}

impl BlockQ4_1 {
    /// The block of scale `d`, minimum `m` and levels `l` (0..16, value `d·l + m`).
    pub fn from_levels(d: f16, m: f16, l: &[u8; QK]) -> Self {
        Self {
            d,
            m,
            qs: pack_nibbles(l),
        }
    }
}

impl QuantBlock for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_SIZE: usize = QK;

    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK);
        for (x, y) in src.chunks_exact(QK).zip(out.iter_mut()) {
            // -8 rather than 8: the extreme value lands on level 0, which has no positive twin.
            let d = signed_absmax(x) / -8.0;
            // ggml scales by the inverse of the f32 scale, not of its f16 rounding.
            let id = inverse_or_zero(d);
            let l = std::array::from_fn(|j| trunc_clamp_u8(x[j] * id + 8.5, 15));
            *y = Self::from_levels(f32_to_f16(d), &l);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = f16_to_f32(b.d);
            for (j, &q) in b.qs.iter().enumerate() {
                y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                y[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
    }
}

impl VecDot for BlockQ4_0 {
    type Act = BlockQ8_0;

    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sumi = 0i32;
            for (j, &q) in x.qs.iter().enumerate() {
                sumi += ((q & 0x0F) as i32 - 8) * y.qs[j] as i32;
                sumi += ((q >> 4) as i32 - 8) * y.qs[j + QK / 2] as i32;
            }
            sum += sumi as f32 * f16_to_f32(x.d) * f16_to_f32(y.d);
        }
        sum
    }
}

impl QuantBlock for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_SIZE: usize = QK;

    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK);
        for (x, y) in src.chunks_exact(QK).zip(out.iter_mut()) {
            let (min, max) = min_max(x);
            let d = (max - min) / 15.0;
            let id = inverse_or_zero(d);
            // Offsets are taken from the f32 minimum; only the stored m is rounded to f16.
            let l = std::array::from_fn(|j| trunc_clamp_u8((x[j] - min) * id + 0.5, 15));
            *y = Self::from_levels(f32_to_f16(d), f32_to_f16(min), &l);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            let d = f16_to_f32(b.d);
            let m = f16_to_f32(b.m);
            for (j, &q) in b.qs.iter().enumerate() {
                // Separate multiply and add (no FMA), as ggml's x86 reference build rounds.
                y[j] = (q & 0x0F) as f32 * d + m;
                y[j + QK / 2] = (q >> 4) as f32 * d + m;
            }
        }
    }
}

impl VecDot for BlockQ4_1 {
    type Act = BlockQ8_1;

    /// Σ (d_w q_w + m_w)(d_a q_a) = d_w d_a Σ q_w q_a + m_w (d_a Σ q_a), and Q8_1 stores the
    /// last factor as `s`, so the minimum costs one multiply per block.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sumi = 0i32;
            for (j, &q) in x.qs.iter().enumerate() {
                sumi += (q & 0x0F) as i32 * y.qs[j] as i32;
                sumi += (q >> 4) as i32 * y.qs[j + QK / 2] as i32;
            }
            sum +=
                f16_to_f32(x.d) * f16_to_f32(y.d) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
        }
        sum
    }
}
