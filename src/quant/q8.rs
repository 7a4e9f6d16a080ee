//! Q8_0 and Q8_1: 32 weights per block as signed bytes with one f16 scale. Q8_0 is both a
//! weight format and the activation format the symmetric 32-blocks dot against; Q8_1 exists
//! only as the activation format of Q4_1/Q5_1, carrying `s = d * Σq` so that their minimum
//! folds into one multiply per block. Layouts as ggml-common.h, quantization as
//! `quantize_row_q8_{0,1}_ref`, the dot as `ggml_vec_dot_q8_0_q8_0_generic`.

use super::float::{c_float_to_int, c_max, f16_to_f32, f32_to_f16};
use super::q4::inverse_or_zero;
use super::*;
use bytemuck::{Pod, Zeroable};

const QK: usize = 32;

/// Q8_0: `w = d * q`, q in -127..=127. 34 bytes per 32 weights: 8.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Q8_1: `w = d * q` plus `s = d * Σq` (rounded to f16). 36 bytes per 32 weights: 9 bits
/// per weight.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// The shared step of both formats: the f32 scale `amax / 127` and the rounded levels.
fn quantize_q8(x: &[f32], qs: &mut [i8; QK]) -> f32 {
    // ggml's MAX macro, not f32::max: the NaN behaviour is part of the reference.
    let amax = x.iter().fold(0.0f32, |m, &v| c_max(m, v.abs()));
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    for (q, &v) in qs.iter_mut().zip(x) {
        // C's roundf (half away from zero) is f32::round; the store into int8_t truncates.
        *q = c_float_to_int((v * id).round()) as i8;
    }
    d
}

impl BlockQ8_0 {
    /// The block of scale `d` and levels `l` offset by 128 (value `d·(l − 128)`), the
    /// unsigned form the importance-weighted quantizer works in.
    pub fn from_levels(d: f16, l: &[u8; QK]) -> Self {
        Self {
            d,
            qs: l.map(|v| (v as i32 - 128) as i8),
        }
    }
}

fn dequantize_q8(d: f16, qs: &[i8; QK], y: &mut [f32]) {
    let d = f16_to_f32(d);
    for (yj, &q) in y.iter_mut().zip(qs) {
        *yj = q as f32 * d;
    }
}

impl QuantBlock for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_SIZE: usize = QK;

    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK);
        for (x, y) in src.chunks_exact(QK).zip(out.iter_mut()) {
            let d = quantize_q8(x, &mut y.qs);
            y.d = f32_to_f16(d);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            dequantize_q8(b.d, &b.qs, y);
        }
    }
}

impl VecDot for BlockQ8_0 {
    type Act = BlockQ8_0;

    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let sumi: i32 =
                x.qs.iter()
                    .zip(&y.qs)
                    .map(|(&p, &q)| p as i32 * q as i32)
                    .sum();
            // ggml multiplies the two scales first here (unlike Q4_0·Q8_0).
            sum += sumi as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
        }
        sum
    }
}

impl QuantBlock for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const BLOCK_SIZE: usize = QK;

    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK);
        for (x, y) in src.chunks_exact(QK).zip(out.iter_mut()) {
            let d = quantize_q8(x, &mut y.qs);
            let sum: i32 = y.qs.iter().map(|&q| q as i32).sum();
            y.d = f32_to_f16(d);
            // From the f32 scale, as ggml does, not from the stored f16 d.
            y.s = f32_to_f16(sum as f32 * d);
        }
    }

    /// ggml has no Q8_1 dequantizer (it is never stored in files); this is the obvious
    /// `d * q`, with `s` ignored.
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
            dequantize_q8(b.d, &b.qs, y);
        }
    }
}
