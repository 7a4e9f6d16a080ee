//! STUB: F32, F16, BF16 as one-element "blocks".

use super::*;

macro_rules! stub_float {
    ($t:ty, $ty:ident) => {
        impl QuantBlock for $t {
            const TYPE: GgmlType = GgmlType::$ty;
            const BLOCK_SIZE: usize = 1;
            fn quantize(_src: &[f32], _out: &mut [Self]) {
                todo!()
            }
            fn dequantize(_blocks: &[Self], _out: &mut [f32]) {
                todo!()
            }
        }
    };
}
stub_float!(f32, F32);
stub_float!(f16, F16);
stub_float!(bf16, BF16);
