//! Q8_K: the activation format the K-quants and IQ4_XS are dotted against (ggml's
//! `block_q8_K`). Never stored in model files; it exists for `vec_dot`.

use super::kquant_util::{nearest_int, signed_absmax};
use super::*;
use bytemuck::{Pod, Zeroable};

/// 256 weights as `d · qs[i]`, with the sums of each 16 quants precomputed (`bsums`) so that
/// the min terms of Q2_K/Q4_K/Q5_K cost 16 multiplies, not 256.
/// 292 bytes: effectively 9.125 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale (an f32, unlike the stored formats).
    pub d: f32,
    pub qs: [i8; QK_K],
    /// Σ qs[16·j .. 16·j+16] for each j.
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl BlockQ8K {
    /// ggml's `quantize_row_q8_K_ref` for one block.
    pub fn from_f32(x: &[f32]) -> Self {
        let mut y = Self::zeroed();
        let (max, amax) = signed_absmax(&x[..QK_K]);
        if amax == 0.0 {
            return y;
        }
        // -127 rather than -128, as in ggml, keeps every quant in -127..=127.
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q16) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            *s = q16.iter().map(|&q| q as i16).sum();
        }
        y.d = 1.0 / iscale;
        y
    }
}

impl QuantBlock for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
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
            for (v, &q) in y.iter_mut().zip(&b.qs) {
                *v = b.d * q as f32;
            }
        }
    }
}
