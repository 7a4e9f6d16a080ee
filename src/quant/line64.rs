//! The unit of the repacked weight layouts (`repack16`, `repack_k`): 64 bytes aligned to a
//! cache line, so that a kernel reads one with a single aligned zmm load (or two ymm, four
//! NEON registers) and a line never straddles two cache lines.

use bytemuck::{Pod, Zeroable};

/// 64 bytes, aligned to a cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Line64(pub [u8; 64]);
