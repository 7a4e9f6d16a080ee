//! STUB: to be replaced by the real block format.

use super::*;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8K {
    pub raw: [u8; 292],
}

impl QuantBlock for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const BLOCK_SIZE: usize = 256;
    fn quantize(_src: &[f32], _out: &mut [Self]) {
        todo!()
    }
    fn dequantize(_blocks: &[Self], _out: &mut [f32]) {
        todo!()
    }
}
