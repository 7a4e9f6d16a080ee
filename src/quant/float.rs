//! F32, F16 and BF16 as one-element "blocks", so they share the block-format traits.
//! Their dot products are against the same type (ggml's vec_dot_type for them), with f32
//! products summed in f64 as ggml's scalar path does.

use super::*;

impl QuantBlock for f32 {
    const TYPE: GgmlType = GgmlType::F32;
    const BLOCK_SIZE: usize = 1;
    fn quantize(src: &[f32], out: &mut [Self]) {
        out.copy_from_slice(src);
    }
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        out.copy_from_slice(blocks);
    }
}

impl VecDot for f32 {
    type Act = f32;
    fn vec_dot(w: &[Self], a: &[Self]) -> f32 {
        w.iter().zip(a).map(|(&x, &y)| (x * y) as f64).sum::<f64>() as f32
    }
}

/// F16: IEEE half, rounded to nearest even (ggml's GGML_FP32_TO_FP16, F16C or software).
impl QuantBlock for f16 {
    const TYPE: GgmlType = GgmlType::F16;
    const BLOCK_SIZE: usize = 1;
    fn quantize(src: &[f32], out: &mut [Self]) {
        for (o, &x) in out.iter_mut().zip(src) {
            *o = f16::from_f32(x);
        }
    }
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (o, &h) in out.iter_mut().zip(blocks) {
            *o = h.to_f32();
        }
    }
}

impl VecDot for f16 {
    type Act = f16;
    fn vec_dot(w: &[Self], a: &[Self]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(&x, &y)| (x.to_f32() * y.to_f32()) as f64)
            .sum::<f64>() as f32
    }
}

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even; NaN stays NaN, made quiet.
pub fn f32_to_bf16(x: f32) -> bf16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    bf16::from_bits(((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16)
}

/// BF16: the top 16 bits of an f32.
impl QuantBlock for bf16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const BLOCK_SIZE: usize = 1;
    fn quantize(src: &[f32], out: &mut [Self]) {
        for (o, &x) in out.iter_mut().zip(src) {
            *o = f32_to_bf16(x);
        }
    }
    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (o, &h) in out.iter_mut().zip(blocks) {
            *o = f32::from_bits((h.to_bits() as u32) << 16);
        }
    }
}

impl VecDot for bf16 {
    type Act = bf16;
    fn vec_dot(w: &[Self], a: &[Self]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(&x, &y)| (x.to_f32() * y.to_f32()) as f64)
            .sum::<f64>() as f32
    }
}
