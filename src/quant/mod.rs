//! GGML block formats: byte-identical `#[repr(C)]` blocks, scalar reference quantize,
//! dequantize, and the reference dot product of each weight type against its activation type.
//!
//! One file per family. Everything here is the *reference*: plain scalar Rust that the SIMD
//! kernels (later, in `simd/`) are tested against. Quantize functions follow ggml's
//! `quantize_row_*_ref` step by step so their output is bit-exact with ggml's.

#![allow(non_camel_case_types)]

pub mod float;
pub mod iq4;
pub mod kquant_util;
pub mod line64;
pub mod q2k;
pub mod q3k;
pub mod q4;
pub mod q4k;
pub mod q5;
pub mod q5k;
pub mod q6k;
pub mod q8;
pub mod q8k;
pub mod repack16;
pub mod repack_k;
pub mod simd;

pub use iq4::{BlockIQ4NL, BlockIQ4XS};
pub use q2k::BlockQ2K;
pub use q3k::BlockQ3K;
pub use q4::{BlockQ4_0, BlockQ4_1};
pub use q4k::BlockQ4K;
pub use q5::{BlockQ5_0, BlockQ5_1};
pub use q5k::BlockQ5K;
pub use q6k::BlockQ6K;
pub use q8::{BlockQ8_0, BlockQ8_1};
pub use q8k::BlockQ8K;

use crate::ggml_type::GgmlType;
use half::{bf16, f16};

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// One block of a GGML format: `BLOCK_SIZE` weights in `size_of::<Self>()` bytes.
pub trait QuantBlock: bytemuck::Pod + Send + Sync {
    const TYPE: GgmlType;
    const BLOCK_SIZE: usize;

    /// Reference quantization of `src` (a multiple of `BLOCK_SIZE` long) into `out`
    /// (`src.len() / BLOCK_SIZE` blocks). Bit-exact with ggml's `quantize_row_*_ref`.
    fn quantize(src: &[f32], out: &mut [Self]);

    /// Expands `blocks` into `out` (`blocks.len() * BLOCK_SIZE` values).
    fn dequantize(blocks: &[Self], out: &mut [f32]);
}

/// A weight format with a reference dot product against its activation format
/// (Q8_0 for most 32-blocks, Q8_1 for the `_1` types, Q8_K for the 256-blocks).
pub trait VecDot: QuantBlock {
    type Act: QuantBlock;

    /// Σ w·a over one row: `w` and `a` cover the same number of elements.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32;
}

/// Errors from the byte-level entry points, where block counts and alignment are checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{ty}: {n} elements is not a multiple of the block size {block}")]
    NotBlockMultiple {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    #[error("{ty}: expected {expected} bytes for {n} elements, got {got}")]
    WrongByteLength {
        ty: GgmlType,
        n: usize,
        expected: usize,
        got: usize,
    },
    #[error("{ty}: data is not aligned for its block type")]
    Misaligned { ty: GgmlType },
    #[error("{ty}: {what} is not supported for this type")]
    Unsupported { ty: GgmlType, what: &'static str },
}

/// Calls `$body` with `$B` bound to the block type of `$ty`, or evaluates `$other` for types
/// without a block implementation.
macro_rules! with_block {
    ($ty:expr, $B:ident => $body:expr, _ => $other:expr) => {
        match $ty {
            GgmlType::F32 => {
                type $B = f32;
                $body
            }
            GgmlType::F16 => {
                type $B = f16;
                $body
            }
            GgmlType::BF16 => {
                type $B = bf16;
                $body
            }
            GgmlType::Q4_0 => {
                type $B = BlockQ4_0;
                $body
            }
            GgmlType::Q4_1 => {
                type $B = BlockQ4_1;
                $body
            }
            GgmlType::Q5_0 => {
                type $B = BlockQ5_0;
                $body
            }
            GgmlType::Q5_1 => {
                type $B = BlockQ5_1;
                $body
            }
            GgmlType::Q8_0 => {
                type $B = BlockQ8_0;
                $body
            }
            GgmlType::Q8_1 => {
                type $B = BlockQ8_1;
                $body
            }
            GgmlType::Q2_K => {
                type $B = BlockQ2K;
                $body
            }
            GgmlType::Q3_K => {
                type $B = BlockQ3K;
                $body
            }
            GgmlType::Q4_K => {
                type $B = BlockQ4K;
                $body
            }
            GgmlType::Q5_K => {
                type $B = BlockQ5K;
                $body
            }
            GgmlType::Q6_K => {
                type $B = BlockQ6K;
                $body
            }
            GgmlType::Q8_K => {
                type $B = BlockQ8K;
                $body
            }
            GgmlType::IQ4_NL => {
                type $B = BlockIQ4NL;
                $body
            }
            GgmlType::IQ4_XS => {
                type $B = BlockIQ4XS;
                $body
            }
            _ => $other,
        }
    };
}

/// True if ledge can dequantize (and so run) tensors of this type.
pub fn is_supported(ty: GgmlType) -> bool {
    with_block!(ty, B => { let _ = std::mem::size_of::<B>(); true }, _ => false)
}

fn check_len(ty: GgmlType, n: usize, bytes: usize) -> Result<(), QuantError> {
    let block = ty.block_size();
    if !n.is_multiple_of(block) {
        return Err(QuantError::NotBlockMultiple { ty, n, block });
    }
    let expected = n / block * ty.type_size();
    if bytes != expected {
        return Err(QuantError::WrongByteLength {
            ty,
            n,
            expected,
            got: bytes,
        });
    }
    Ok(())
}

/// Views raw tensor bytes as blocks without copying.
pub fn cast_blocks<B: QuantBlock>(bytes: &[u8]) -> Result<&[B], QuantError> {
    bytemuck::try_cast_slice(bytes).map_err(|_| QuantError::Misaligned { ty: B::TYPE })
}

fn cast_blocks_mut<B: QuantBlock>(bytes: &mut [u8]) -> Result<&mut [B], QuantError> {
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| QuantError::Misaligned { ty: B::TYPE })
}

/// Dequantizes `data` (raw bytes of type `ty`) into `out`; `out.len()` elements are expected.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_len(ty, out.len(), data.len())?;
    with_block!(ty, B => {
        B::dequantize(cast_blocks::<B>(data)?, out);
        Ok(())
    }, _ => Err(QuantError::Unsupported { ty, what: "dequantize" }))
}

/// Reference-quantizes `src` into `out` (raw bytes of type `ty`).
pub fn quantize(ty: GgmlType, src: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    check_len(ty, src.len(), out.len())?;
    with_block!(ty, B => {
        B::quantize(src, cast_blocks_mut::<B>(out)?);
        Ok(())
    }, _ => Err(QuantError::Unsupported { ty, what: "quantize" }))
}

/// Quantizes into a new byte vector (quantized in an 8-aligned scratch buffer, then copied).
pub fn quantize_to_vec(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    let block = ty.block_size();
    if !src.len().is_multiple_of(block) {
        return Err(QuantError::NotBlockMultiple {
            ty,
            n: src.len(),
            block,
        });
    }
    let nbytes = src.len() / block * ty.type_size();
    let mut words = vec![0u64; nbytes.div_ceil(8)];
    quantize(
        ty,
        src,
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..nbytes],
    )?;
    let mut bytes = bytemuck::cast_slice::<u64, u8>(&words).to_vec();
    bytes.truncate(nbytes);
    Ok(bytes)
}

/// Copies bytes into an 8-aligned buffer and dequantizes: for data whose alignment is unknown
/// (a test fixture, a slice at an arbitrary offset).
pub fn dequantize_unaligned(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let mut words = vec![0u64; data.len().div_ceil(8)];
    let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..data.len()];
    buf.copy_from_slice(data);
    dequantize(ty, buf, out)
}
