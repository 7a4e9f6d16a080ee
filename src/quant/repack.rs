//! Load-time repacked weight layouts: four rows interleaved so that one 512-bit load feeds
//! four rows, for the AVX-512 VNNI kernels of `simd::avx512_repack`.
//!
//! Files on disk stay standard GGUF (style lesson 5): a `PackedMatrix` is built from the
//! canonical blocks when a model loads, and the matmul then reads it instead of the mapped
//! blocks. Only types with a packed kernel on this CPU are repacked (Q4_0, Q4_1, Q5_0, Q8_0).
//!
//! Layout of a group of four rows (r = 0..4) for block b (32 weights of each row):
//! - `d[g·nb + b]` = the four rows' f16 scales;
//! - Q4_0x4: one 64-byte line whose 128-bit lane r holds row r's 16 quant bytes unchanged
//!   (low nibbles = weights 0..16, high nibbles = weights 16..32);
//! - Q4_1x4: as Q4_0x4, plus the rows' f16 minimums in `m[g·nb + b]`;
//! - Q5_0x4: as Q4_0x4, plus the fifth bits as two 64-bit masks in `qh[g·nb + b]`: bit
//!   16·r + i of the first is weight i's (i < 16) of row r, of the second weight 16 + i's,
//!   so that masked byte moves put them in place;
//! - Q8_0x4: two lines; lane r of the first holds row r's quants 0..16, of the second 16..32,
//!   each byte XOR 0x80 (= q + 128, so it can be the unsigned operand of `vpdpbusd`).
//!
//! Both therefore compute, per 32-bit lane j of row r's 128-bit lane, the integer
//! Σᵢ u[4j+i]·a[4j+i] + u[16+4j+i]·a[16+4j+i] with u the unsigned stored value (nibble, or
//! q + 128) and a the activation's int8 quants; the offset (8 or 128) times the same sums of
//! `a` is subtracted through the activation block's `bias` (Q4_1 has no offset: its minimum
//! term m·s, with s = d·Σa of the Q8_1 activation block, is added to each row's first lane). The scalar reference here does
//! exactly the kernel's arithmetic (same lanes, same f32 operations in the same order), so
//! the two are compared bit for bit; both are also checked against the canonical `vec_dot`.
//!
//! Rows past the last multiple of four are padded with zero rows (scale 0): their results
//! are never written out.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f16_to_f32;
use super::{cast_blocks, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, BlockQ8_1};
use crate::ggml_type::GgmlType;
use crate::tensor::TensorView;

/// 64 bytes, aligned to a cache line: one zmm load.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Line64(pub [u8; 64]);

/// Which packed layout a matrix has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedKind {
    /// Q4_0 weights, four rows per group: 72 bytes per 4×32 weights (4.5 bits per weight).
    Q4_0x4,
    /// Q4_1 weights, four rows per group: 80 bytes per 4×32 weights (5 bits per weight).
    Q4_1x4,
    /// Q5_0 weights, four rows per group: 88 bytes per 4×32 weights (5.5 bits per weight).
    Q5_0x4,
    /// Q8_0 weights, four rows per group: 136 bytes per 4×32 weights (8.5 bits per weight).
    Q8_0x4,
    /// Q4_K weights, four rows per super-block (`repack_k`): 592 bytes per 4×256 weights
    /// (4.625 bits per weight).
    Q4_Kx4,
    /// Q6_K weights, four rows per super-block (`repack_k`): 840 bytes per 4×256 weights
    /// (6.5625 bits per weight).
    Q6_Kx4,
}

impl PackedKind {
    /// 64-byte quant lines per group and block.
    pub const fn lines(self) -> usize {
        match self {
            PackedKind::Q4_0x4 | PackedKind::Q4_1x4 | PackedKind::Q5_0x4 => 1,
            PackedKind::Q8_0x4 => 2,
            PackedKind::Q4_Kx4 | PackedKind::Q6_Kx4 => super::repack_k::lines(self),
        }
    }

    /// What the unsigned stored value exceeds the signed weight quant by.
    pub const fn offset(self) -> i32 {
        match self {
            PackedKind::Q4_0x4 => 8,
            PackedKind::Q4_1x4 => 0,
            PackedKind::Q5_0x4 => 16,
            PackedKind::Q8_0x4 => 128,
            PackedKind::Q4_Kx4 => 0,
            PackedKind::Q6_Kx4 => 32,
        }
    }
}

/// A weight matrix W (k, rows) in a four-row interleaved layout.
pub struct PackedMatrix {
    pub kind: PackedKind,
    /// Row length (weights per row), a multiple of 32.
    pub k: usize,
    /// Real rows (the last group may be padded).
    pub rows: usize,
    /// `[group·nb + block]`: the four rows' scales.
    pub d: Vec<[f16; 4]>,
    /// `[group·nb + block]`: the four rows' minimums (Q4_1 only, else empty).
    pub m: Vec<[f16; 4]>,
    /// `[group·nb + block]`: the fifth bits (Q5_0 only, else empty).
    pub qh: Vec<[u64; 2]>,
    /// `[(group·nb + block)·lines + line]`.
    pub qs: Vec<Line64>,
}

impl PackedMatrix {
    /// Blocks per row.
    pub fn nb(&self) -> usize {
        // (For the K layouts: 32-weight sub-blocks; they index by k/256 super-blocks.)
        self.k / 32
    }

    /// Groups of four rows (the last one possibly padded).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(4)
    }

    /// Bytes of the packed copy.
    pub fn size_bytes(&self) -> usize {
        (self.d.len() + self.m.len()) * 8 + self.qh.len() * 16 + self.qs.len() * 64
    }

    /// Repacks a Q4_0, Q4_1, Q5_0 or Q8_0 tensor; `None` for other types (they keep their blocks).
    pub fn from_view(w: &TensorView) -> Option<PackedMatrix> {
        let (k, rows) = (w.row_len(), w.n_rows());
        if k % 32 != 0 || w.shape.len() > 2 {
            return None;
        }
        match w.ty {
            GgmlType::Q4_0 => {
                let owned;
                let blocks: &[BlockQ4_0] = match cast_blocks(&w.data) {
                    Ok(b) => b,
                    Err(_) => {
                        owned = bytemuck::pod_collect_to_vec::<u8, BlockQ4_0>(&w.data);
                        &owned
                    }
                };
                Some(Self::pack(PackedKind::Q4_0x4, k, rows, |row, b, out| {
                    let x = &blocks[row * (k / 32) + b];
                    out[..16].copy_from_slice(&x.qs);
                    (x.d, f16::ZERO, 0)
                }))
            }
            GgmlType::Q5_0 => {
                let owned;
                let blocks: &[BlockQ5_0] = match cast_blocks(&w.data) {
                    Ok(b) => b,
                    Err(_) => {
                        owned = bytemuck::pod_collect_to_vec::<u8, BlockQ5_0>(&w.data);
                        &owned
                    }
                };
                Some(Self::pack(PackedKind::Q5_0x4, k, rows, |row, b, out| {
                    let x = &blocks[row * (k / 32) + b];
                    out[..16].copy_from_slice(&x.qs);
                    (x.d, f16::ZERO, u32::from_le_bytes(x.qh))
                }))
            }
            GgmlType::Q4_1 => {
                let owned;
                let blocks: &[BlockQ4_1] = match cast_blocks(&w.data) {
                    Ok(b) => b,
                    Err(_) => {
                        owned = bytemuck::pod_collect_to_vec::<u8, BlockQ4_1>(&w.data);
                        &owned
                    }
                };
                Some(Self::pack(PackedKind::Q4_1x4, k, rows, |row, b, out| {
                    let x = &blocks[row * (k / 32) + b];
                    out[..16].copy_from_slice(&x.qs);
                    (x.d, x.m, 0)
                }))
            }
            GgmlType::Q8_0 => {
                let owned;
                let blocks: &[BlockQ8_0] = match cast_blocks(&w.data) {
                    Ok(b) => b,
                    Err(_) => {
                        owned = bytemuck::pod_collect_to_vec::<u8, BlockQ8_0>(&w.data);
                        &owned
                    }
                };
                Some(Self::pack(PackedKind::Q8_0x4, k, rows, |row, b, out| {
                    let x = &blocks[row * (k / 32) + b];
                    for (o, &q) in out.iter_mut().zip(&x.qs) {
                        *o = (q as u8) ^ 0x80;
                    }
                    (x.d, f16::ZERO, 0)
                }))
            }
            GgmlType::Q4_K | GgmlType::Q6_K => super::repack_k::from_view(w),
            _ => None,
        }
    }

    /// Builds the layout from `block(row, b, out)`, which writes row `row`'s block `b` as
    /// 16 (Q4_x, Q5_0) or 32 (Q8_0) stored bytes into `out` and returns its scale, minimum
    /// and fifth bits.
    fn pack(
        kind: PackedKind,
        k: usize,
        rows: usize,
        block: impl Fn(usize, usize, &mut [u8; 32]) -> (f16, f16, u32),
    ) -> PackedMatrix {
        let nb = k / 32;
        let groups = rows.div_ceil(4);
        let lines = kind.lines();
        let mut d = vec![[f16::ZERO; 4]; groups * nb];
        let mut m = if kind == PackedKind::Q4_1x4 {
            vec![[f16::ZERO; 4]; groups * nb]
        } else {
            Vec::new()
        };
        let mut qh = if kind == PackedKind::Q5_0x4 {
            vec![[0u64; 2]; groups * nb]
        } else {
            Vec::new()
        };
        let mut qs = vec![Line64([0; 64]); groups * nb * lines];
        let mut buf = [0u8; 32];
        for g in 0..groups {
            for b in 0..nb {
                let i = g * nb + b;
                for r in 0..4 {
                    let row = g * 4 + r;
                    if row >= rows {
                        // Padding row: scale 0, and quants equal to the offset (weight 0).
                        let z = match kind {
                            PackedKind::Q4_0x4 | PackedKind::Q4_1x4 => 0x88,
                            PackedKind::Q5_0x4 => 0x00, // scale 0 makes it irrelevant
                            PackedKind::Q8_0x4 => 0x80,
                            PackedKind::Q4_Kx4 | PackedKind::Q6_Kx4 => 0x00, // not built here
                        };
                        for l in 0..lines {
                            qs[i * lines + l].0[r * 16..r * 16 + 16].fill(z);
                        }
                        continue;
                    }
                    let (dr, mr, hr) = block(row, b, &mut buf);
                    d[i][r] = dr;
                    if let Some(m) = m.get_mut(i) {
                        m[r] = mr;
                    }
                    if let Some(qh) = qh.get_mut(i) {
                        qh[0] |= ((hr & 0xFFFF) as u64) << (16 * r);
                        qh[1] |= ((hr >> 16) as u64) << (16 * r);
                    }
                    for l in 0..lines {
                        qs[i * lines + l].0[r * 16..r * 16 + 16]
                            .copy_from_slice(&buf[l * 16..l * 16 + 16]);
                    }
                }
            }
        }
        PackedMatrix {
            kind,
            k,
            rows,
            d,
            m,
            qh,
            qs,
        }
    }
}

/// One activation block for the packed kernels: the int8 quants and scale of a Q8_0 block
/// (the scale already rounded through f16, as Q8_0 stores it), and `bias[j]` =
/// −offset · Σᵢ (qs[4j+i] + qs[16+4j+i]), the lane sums that undo the weights' offset, and
/// `s` = Q8_1's d·Σqs (rounded through f16; 0 from Q8_0). 64 bytes: one cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ActQ8x4 {
    pub qs: [i8; 32],
    pub bias: [i32; 4],
    pub d: f32,
    pub s: f32,
    pub _pad: [f32; 2],
}
const _: () = assert!(std::mem::size_of::<ActQ8x4>() == 64);

impl ActQ8x4 {
    /// From a Q8_0 activation block, for weights of `kind`.
    pub fn from_q8_0(a: &BlockQ8_0, kind: PackedKind) -> ActQ8x4 {
        let mut bias = [0i32; 4];
        for (j, b) in bias.iter_mut().enumerate() {
            let s: i32 = (0..4)
                .map(|i| a.qs[4 * j + i] as i32 + a.qs[16 + 4 * j + i] as i32)
                .sum();
            *b = -kind.offset() * s;
        }
        ActQ8x4 {
            qs: a.qs,
            bias,
            d: f16_to_f32(a.d),
            s: 0.0,
            _pad: [0.0; 2],
        }
    }

    /// From a Q8_1 activation block (for Q4_1 weights: no offset).
    pub fn from_q8_1(a: &BlockQ8_1) -> ActQ8x4 {
        ActQ8x4 {
            qs: a.qs,
            bias: [0; 4],
            d: f16_to_f32(a.d),
            s: f16_to_f32(a.s),
            _pad: [0.0; 2],
        }
    }
}

/// The packed GEMM kernel's signature: group `g` of `p` against `t` tokens' activations
/// (`acts`: t·nb blocks, token-major), writing `out[token][row in group]`.
pub type PackedGemmFn = fn(&PackedMatrix, usize, &[ActQ8x4], &mut [[f32; 4]]);

/// The scalar reference of the packed kernels: the same lanes and the same f32 operations in
/// the same order as `simd::avx512_repack`, so the results are bit-identical.
pub fn gemm_ref(p: &PackedMatrix, g: usize, acts: &[ActQ8x4], out: &mut [[f32; 4]]) {
    let nb = p.nb();
    let lines = p.kind.lines();
    assert_eq!(
        acts.len(),
        out.len() * nb,
        "packed gemm: activations for the wrong k"
    );
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; 16];
        for b in 0..nb {
            let i = g * nb + b;
            let a = &acts[t * nb + b];
            let unsigned = |r: usize, idx: usize| -> i32 {
                match p.kind {
                    PackedKind::Q4_0x4 | PackedKind::Q4_1x4 => {
                        let byte = p.qs[i].0[r * 16 + idx % 16];
                        (if idx < 16 { byte & 0x0F } else { byte >> 4 }) as i32
                    }
                    PackedKind::Q5_0x4 => {
                        let byte = p.qs[i].0[r * 16 + idx % 16];
                        let nib = if idx < 16 { byte & 0x0F } else { byte >> 4 };
                        let bit = (p.qh[i][idx / 16] >> (16 * r + idx % 16)) & 1;
                        nib as i32 | (bit as i32) << 4
                    }
                    PackedKind::Q8_0x4 => p.qs[i * lines + idx / 16].0[r * 16 + idx % 16] as i32,
                    // K layouts have their own reference, `repack_k::gemm_k_ref`.
                    PackedKind::Q4_Kx4 | PackedKind::Q6_Kx4 => 0,
                }
            };
            for (lane, acc) in acc.iter_mut().enumerate() {
                let (r, j) = (lane / 4, lane % 4);
                let mut s = a.bias[j];
                for i4 in 0..4 {
                    s += unsigned(r, 4 * j + i4) * a.qs[4 * j + i4] as i32;
                }
                for i4 in 0..4 {
                    s += unsigned(r, 16 + 4 * j + i4) * a.qs[16 + 4 * j + i4] as i32;
                }
                let scale = f16_to_f32(p.d[i][r]) * a.d;
                *acc = (s as f32).mul_add(scale, *acc);
                if p.kind == PackedKind::Q4_1x4 {
                    let m = if j == 0 { f16_to_f32(p.m[i][r]) } else { 0.0 };
                    *acc = m.mul_add(a.s, *acc);
                }
            }
        }
        for (r, v) in o.iter_mut().enumerate() {
            *v = ((acc[4 * r] + acc[4 * r + 1]) + acc[4 * r + 2]) + acc[4 * r + 3];
        }
    }
}

/// The four-row kernel of the kernel set in use: none any more, the sixteen-row layout
/// (`repack16`) covers the same types and is faster; kept for its tests only.
pub fn kernel() -> Option<PackedGemmFn> {
    None
}

/// Repacks `w` into a K layout where the kernel set has the packed K kernel; the four-row
/// 32-block layouts are no longer built (see `kernel`).
pub fn maybe_repack(w: &TensorView) -> Option<PackedMatrix> {
    if super::simd::kernels().gemm_k.is_some() {
        super::repack_k::from_view(w)
    } else {
        None
    }
}
