//! STUB: to be replaced by the real block format.

use super::*;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4K {
    pub raw: [u8; 144],
}

impl QuantBlock for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BLOCK_SIZE: usize = 256;
    fn quantize(_src: &[f32], _out: &mut [Self]) {
        todo!()
    }
    fn dequantize(_blocks: &[Self], _out: &mut [f32]) {
        todo!()
    }
}

impl VecDot for BlockQ4K {
    type Act = BlockQ8K;
    fn vec_dot(_w: &[Self], _a: &[Self::Act]) -> f32 {
        todo!()
    }
}
