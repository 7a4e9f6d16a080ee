//! Q4_0 and Q4_1: 32 weights per block as 4-bit codes, with a scale (and, for Q4_1, a
//! minimum). Code j sits in the low nibble of byte j, code j+16 in its high nibble.

use bytemuck::{Pod, Zeroable};

use super::*;

/// Q4_0: w = d·(q − 8). 18 bytes per 32 weights: effectively 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// Q4_1: w = d·q + m. 20 bytes per 32 weights: effectively 5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// The signed value of largest magnitude (the first one wins ties), as ggml picks it.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

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

impl QuantBlock for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_SIZE: usize = 32;

    fn quantize(src: &[f32], out: &mut [Self]) {
        for (x, y) in src.chunks_exact(32).zip(out) {
            // The extreme value maps to −8 exactly; the other side gets up to +7.
            let d = signed_absmax(x) / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y.d = f16::from_f32(d);
            for j in 0..16 {
                let lo = ((x[j] * id + 8.5) as i8).min(15) as u8;
                let hi = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
                y.qs[j] = lo | (hi << 4);
            }
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
            let d = b.d.to_f32();
            for j in 0..16 {
                y[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
                y[j + 16] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
    }
}

impl VecDot for BlockQ4_0 {
    type Act = BlockQ8_0;
    fn vec_dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        let mut sumf = 0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sumi = 0i32;
            for j in 0..16 {
                sumi += ((x.qs[j] & 0x0F) as i32 - 8) * y.qs[j] as i32;
                sumi += ((x.qs[j] >> 4) as i32 - 8) * y.qs[j + 16] as i32;
            }
            sumf += sumi as f32 * x.d.to_f32() * y.d.to_f32();
        }
        sumf
    }
}

impl QuantBlock for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_SIZE: usize = 32;

    fn quantize(src: &[f32], out: &mut [Self]) {
        for (x, y) in src.chunks_exact(32).zip(out) {
            let (min, max) = min_max(x);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y.d = f16::from_f32(d);
            y.m = f16::from_f32(min);
            for j in 0..16 {
                let lo = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
                let hi = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
                y.qs[j] = lo | (hi << 4);
            }
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
            let (d, m) = (b.d.to_f32(), b.m.to_f32());
            for j in 0..16 {
                y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
                y[j + 16] = (b.qs[j] >> 4) as f32 * d + m;
            }
        }
    }
}

impl VecDot for BlockQ4_1 {
    type Act = BlockQ8_1;
    fn vec_dot(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        let mut sumf = 0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sumi = 0i32;
            for j in 0..16 {
                sumi += (x.qs[j] & 0x0F) as i32 * y.qs[j] as i32;
                sumi += (x.qs[j] >> 4) as i32 * y.qs[j + 16] as i32;
            }
            // The minimum times Σa comes from the activation block's precomputed s = d·Σq.
            sumf += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
        }
        sumf
    }
}
