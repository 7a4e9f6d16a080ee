//! STUB: to be replaced by the real block format.

use super::*;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIQ4NL {
    pub raw: [u8; 18],
}

impl QuantBlock for BlockIQ4NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const BLOCK_SIZE: usize = 32;
    fn quantize(_src: &[f32], _out: &mut [Self]) {
        todo!()
    }
    fn dequantize(_blocks: &[Self], _out: &mut [f32]) {
        todo!()
    }
}

impl VecDot for BlockIQ4NL {
    type Act = BlockQ8_0;
    fn vec_dot(_w: &[Self], _a: &[Self::Act]) -> f32 {
        todo!()
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIQ4XS {
    pub raw: [u8; 136],
}

impl QuantBlock for BlockIQ4XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const BLOCK_SIZE: usize = 256;
    fn quantize(_src: &[f32], _out: &mut [Self]) {
        todo!()
    }
    fn dequantize(_blocks: &[Self], _out: &mut [f32]) {
        todo!()
    }
}

impl VecDot for BlockIQ4XS {
    type Act = BlockQ8K;
    fn vec_dot(_w: &[Self], _a: &[Self::Act]) -> f32 {
        todo!()
    }
}
