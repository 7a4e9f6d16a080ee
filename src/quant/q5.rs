//! Q5_0 and Q5_1: 32 weights per block as 5-bit codes: the low 4 bits packed in nibbles like
//! Q4 (code j low, code j+16 high), the fifth bits of all 32 codes in a little-endian u32 `qh`
//! (bit j for code j).

use bytemuck::{Pod, Zeroable};

use super::q4::{min_max, signed_absmax};
use super::*;

/// Q5_0: w = d·(q − 16). 22 bytes per 32 weights: effectively 5.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// Q5_1: w = d·q + m. 24 bytes per 32 weights: effectively 6 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// Packs 32 five-bit codes (`code(j)` for j in 0..32) into nibbles and high bits.
fn pack5(code: impl Fn(usize) -> u8, qs: &mut [u8; 16], qh: &mut [u8; 4]) {
    let mut h = 0u32;
    for (j, q) in qs.iter_mut().enumerate() {
        let (lo, hi) = (code(j), code(j + 16));
        *q = (lo & 0x0F) | ((hi & 0x0F) << 4);
        h |= (((lo & 0x10) >> 4) as u32) << j;
        h |= (((hi & 0x10) >> 4) as u32) << (j + 16);
    }
    *qh = h.to_le_bytes();
}

/// The 5-bit codes j and j+16 of a block.
#[inline]
fn unpack5(qs: &[u8; 16], qh: &[u8; 4], j: usize) -> (i32, i32) {
    let h = u32::from_le_bytes(*qh);
    let lo = (qs[j] & 0x0F) as u32 | (((h >> j) << 4) & 0x10);
    let hi = (qs[j] >> 4) as u32 | ((h >> (j + 12)) & 0x10);
    (lo as i32, hi as i32)
}

impl QuantBlock for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_SIZE: usize = 32;

    fn quantize(src: &[f32], out: &mut [Self]) {
        for (x, y) in src.chunks_exact(32).zip(out) {
            let d = signed_absmax(x) / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y.d = f16::from_f32(d);
            pack5(
                |j| ((x[j] * id + 16.5) as i8).min(31) as u8,
                &mut y.qs,
                &mut y.qh,
            );
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
            let d = b.d.to_f32();
            for j in 0..16 {
                let (lo, hi) = unpack5(&b.qs, &b.qh, j);
                y[j] = (lo - 16) as f32 * d;
                y[j + 16] = (hi - 16) as f32 * d;
            }
        }
    }
}

impl VecDot for BlockQ5_0 {
    type Act = BlockQ8_0;
    fn vec_dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        let mut sumf = 0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sumi = 0i32;
            for j in 0..16 {
                let (lo, hi) = unpack5(&x.qs, &x.qh, j);
                sumi += (lo - 16) * y.qs[j] as i32 + (hi - 16) * y.qs[j + 16] as i32;
            }
            sumf += (x.d.to_f32() * y.d.to_f32()) * sumi as f32;
        }
        sumf
    }
}

impl QuantBlock for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK_SIZE: usize = 32;

    fn quantize(src: &[f32], out: &mut [Self]) {
        for (x, y) in src.chunks_exact(32).zip(out) {
            let (min, max) = min_max(x);
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y.d = f16::from_f32(d);
            y.m = f16::from_f32(min);
            // ggml casts straight to uint8 here, with no clamp to 31.
            pack5(|j| ((x[j] - min) * id + 0.5) as u8, &mut y.qs, &mut y.qh);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
            let (d, m) = (b.d.to_f32(), b.m.to_f32());
            for j in 0..16 {
                let (lo, hi) = unpack5(&b.qs, &b.qh, j);
                y[j] = lo as f32 * d + m;
                y[j + 16] = hi as f32 * d + m;
            }
        }
    }
}

impl VecDot for BlockQ5_1 {
    type Act = BlockQ8_1;
    fn vec_dot(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        let mut sumf = 0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sumi = 0i32;
            for j in 0..16 {
                let (lo, hi) = unpack5(&x.qs, &x.qh, j);
                sumi += lo * y.qs[j] as i32 + hi * y.qs[j + 16] as i32;
            }
            sumf += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
        }
        sumf
    }
}
