//! STUB: to be replaced by the real block format.

use super::*;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub raw: [u8; 34],
}

impl QuantBlock for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_SIZE: usize = 32;
    fn quantize(_src: &[f32], _out: &mut [Self]) {
        todo!()
    }
    fn dequantize(_blocks: &[Self], _out: &mut [f32]) {
        todo!()
    }
}

impl VecDot for BlockQ8_0 {
    type Act = BlockQ8_0;
    fn vec_dot(_w: &[Self], _a: &[Self::Act]) -> f32 {
        todo!()
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub raw: [u8; 36],
}

impl QuantBlock for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const BLOCK_SIZE: usize = 32;
    fn quantize(_src: &[f32], _out: &mut [Self]) {
        todo!()
    }
    fn dequantize(_blocks: &[Self], _out: &mut [f32]) {
        todo!()
    }
}
