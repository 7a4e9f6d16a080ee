//! Sixteen-row interleaved layouts of the legacy 32-weight types (Q4_0, Q4_1, Q5_0, Q8_0)
//! for the AVX-512 VNNI kernels of `simd::avx512_repack16`.
//!
//! Why sixteen rows: a zmm register has sixteen 32-bit lanes, and `vpdpbusd` adds four
//! byte products into each. If lane r holds four consecutive weights of row r, one
//! instruction whose other operand is a broadcast of the matching four activation bytes
//! (an embedded `{1to16}` memory broadcast, no extra instruction) advances sixteen rows by
//! four weights, and the sixteen sums come out one per row: no horizontal reduction, and
//! the per-block scaling (convert, scale, accumulate) is done once per row instead of once
//! per quarter-row as with the four-row layout ledge had first (one row per 128-bit lane).
//!
//! Layout of group g (rows 16g..16g+16) and block b (weights 32b..32b+32 of each row):
//! - `d[g·nb + b]` = the sixteen rows' f16 scales (`m`: Q4_1's minimums, likewise);
//! - Q4_0 / Q4_1 / Q5_0: four lines; bytes 4r..4r+4 of line j are row r's stored quant bytes
//!   4j..4j+4, whose low nibbles are weights 4j..4j+4 and high nibbles weights 16+4j..;
//! - Q5_0: `qh[g·nb + b]` = eight 64-bit masks, mask 2j (2j+1) holding in bit 4r+i the fifth
//!   bit of row r's weight 4j+i (16+4j+i), so a masked byte move puts them in place;
//! - Q8_0: eight lines; bytes 4r..4r+4 of line j are row r's quants 4j..4j+4, each + 128
//!   (XOR 0x80) so they can be the unsigned operand of `vpdpbusd`.
//!
//! Every lane computes the exact integer Σ u·a over its row's block (u the unsigned stored
//! value, a the activation's int8 quants) plus the activation block's `bias`
//! (= −offset·Σa, undoing the weights' offset), then acc = (sum as f32)·(d_w·d_a) + acc;
//! Q4_1 adds m_w·s_a (s = d·Σa of its Q8_1 activation block). `gemm_ref` does exactly that
//! in scalar code, so it equals the kernel bit for bit; both are checked against the
//! canonical dot within rounding (tests/simd_repack16.rs).
//!
//! Rows past the last multiple of sixteen are padded with zero rows (scale 0) whose
//! results are never written out.
//!
//! Measured against that four-row layout before it was retired (one thread, min of 20
//! runs, machine under load, so ratios only): Q4_0 576×1536 at 64 tokens 51 vs 30 GMAC/s,
//! at one token 22 vs 15; Q8_0 22 vs 8 and 13 vs 11; 4096×4096 Q4_0 30 vs 20 and 15 vs 14.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f16_to_f32;
use super::line64::Line64;
use super::{cast_blocks, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, BlockQ8_1};
use crate::ggml_type::GgmlType;
use crate::tensor::TensorView;

/// Rows per group.
pub const ROWS: usize = 16;

/// Which weight type a sixteen-row matrix holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind16 {
    /// 4 lines + 32 bytes of scales per 16×32 weights (4.5 bits per weight).
    Q4_0,
    /// As Q4_0 plus 32 bytes of minimums (5 bits per weight).
    Q4_1,
    /// As Q4_0 plus 64 bytes of fifth bits (5.5 bits per weight).
    Q5_0,
    /// 8 lines + 32 bytes of scales (8.5 bits per weight).
    Q8_0,
}

impl Kind16 {
    /// 64-byte quant lines per group and block.
    pub const fn lines(self) -> usize {
        match self {
            Kind16::Q8_0 => 8,
            _ => 4,
        }
    }

    /// What the unsigned stored value exceeds the signed weight quant by.
    pub const fn offset(self) -> i32 {
        match self {
            Kind16::Q4_0 => 8,
            Kind16::Q4_1 => 0,
            Kind16::Q5_0 => 16,
            Kind16::Q8_0 => 128,
        }
    }

    /// Whether the activations are Q8_1 (with s = d·Σa, for the minimum) instead of Q8_0.
    pub const fn needs_sum(self) -> bool {
        matches!(self, Kind16::Q4_1)
    }
}

/// A weight matrix W (k, rows) in the sixteen-row interleaved layout.
pub struct Packed16 {
    pub kind: Kind16,
    /// Row length, a multiple of 32.
    pub k: usize,
    /// Real rows (the last group may be padded).
    pub rows: usize,
    /// `[group·nb + block]`: the sixteen rows' scales.
    pub d: Vec<[f16; ROWS]>,
    /// `[group·nb + block]`: the minimums (Q4_1 only, else empty).
    pub m: Vec<[f16; ROWS]>,
    /// `[group·nb + block]`: the fifth-bit masks (Q5_0 only, else empty).
    pub qh: Vec<[u64; 8]>,
    /// `[(group·nb + block)·lines + line]`.
    pub qs: Vec<Line64>,
}

impl Packed16 {
    /// Blocks per row.
    pub fn nb(&self) -> usize {
        self.k / 32
    }

    /// Groups of sixteen rows (the last one possibly padded).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(ROWS)
    }

    /// Group `g`'s blocks as the kernels read them (checked against the matrix's groups).
    pub fn group(&self, g: usize) -> Group<'_> {
        assert!(g < self.groups(), "gemm16: group {g} out of range");
        let (nb, lines) = (self.nb(), self.kind.lines());
        Group {
            kind: self.kind,
            d: &self.d[g * nb..(g + 1) * nb],
            m: &self.m,
            qh: &self.qh,
            i0: g * nb,
            qs: &self.qs[g * nb * lines..(g + 1) * nb * lines],
        }
    }

    /// Bytes of the packed copy.
    pub fn size_bytes(&self) -> usize {
        (self.d.len() + self.m.len()) * 32 + self.qh.len() * 64 + self.qs.len() * 64
    }

    /// Repacks a Q4_0, Q4_1, Q5_0 or Q8_0 matrix; `None` for other types or shapes.
    pub fn from_view(w: &TensorView) -> Option<Packed16> {
        let (k, rows) = (w.row_len(), w.n_rows());
        if k == 0 || rows == 0 || k % 32 != 0 || w.shape.len() > 2 {
            return None;
        }
        let nb = k / 32;
        match w.ty {
            GgmlType::Q4_0 => {
                let blocks = owned_blocks::<BlockQ4_0>(&w.data);
                Some(Self::pack(Kind16::Q4_0, k, rows, |row, b, out| {
                    let x = &blocks[row * nb + b];
                    out[..16].copy_from_slice(&x.qs);
                    (x.d, f16::ZERO, 0)
                }))
            }
            GgmlType::Q4_1 => {
                let blocks = owned_blocks::<BlockQ4_1>(&w.data);
                Some(Self::pack(Kind16::Q4_1, k, rows, |row, b, out| {
                    let x = &blocks[row * nb + b];
                    out[..16].copy_from_slice(&x.qs);
                    (x.d, x.m, 0)
                }))
            }
            GgmlType::Q5_0 => {
                let blocks = owned_blocks::<BlockQ5_0>(&w.data);
                Some(Self::pack(Kind16::Q5_0, k, rows, |row, b, out| {
                    let x = &blocks[row * nb + b];
                    out[..16].copy_from_slice(&x.qs);
                    (x.d, f16::ZERO, u32::from_le_bytes(x.qh))
                }))
            }
            GgmlType::Q8_0 => {
                let blocks = owned_blocks::<BlockQ8_0>(&w.data);
                Some(Self::pack(Kind16::Q8_0, k, rows, |row, b, out| {
                    let x = &blocks[row * nb + b];
                    for (o, &q) in out.iter_mut().zip(&x.qs) {
                        *o = (q as u8) ^ 0x80;
                    }
                    (x.d, f16::ZERO, 0)
                }))
            }
            _ => None,
        }
    }

    /// Builds the layout from `block(row, b, out)`, which writes row `row`'s block `b` as 16
    /// (Q4_x, Q5_0) or 32 (Q8_0) stored bytes and returns its scale, minimum and fifth bits.
    fn pack(
        kind: Kind16,
        k: usize,
        rows: usize,
        block: impl Fn(usize, usize, &mut [u8; 32]) -> (f16, f16, u32) + Sync,
    ) -> Packed16 {
        use rayon::prelude::*;
        let nb = k / 32;
        let groups = rows.div_ceil(ROWS);
        let lines = kind.lines();
        let mut d = vec![[f16::ZERO; ROWS]; groups * nb];
        let mut m = if kind == Kind16::Q4_1 {
            vec![[f16::ZERO; ROWS]; groups * nb]
        } else {
            Vec::new()
        };
        let mut qh = if kind == Kind16::Q5_0 {
            vec![[0u64; 8]; groups * nb]
        } else {
            Vec::new()
        };
        // Padding rows: quants equal to the offset (weight 0) and scale 0.
        let pad = match kind {
            Kind16::Q4_0 | Kind16::Q4_1 => 0x88,
            Kind16::Q5_0 => 0x00,
            Kind16::Q8_0 => 0x80,
        };
        let mut qs = super::line64::filled(groups * nb * lines, pad);
        let has_m = !m.is_empty();
        let has_qh = !qh.is_empty();
        // One group of sixteen rows per task: its slices of d, m, qh and qs.
        let mut m_chunks: Vec<&mut [[f16; ROWS]]> = if has_m {
            m.chunks_mut(nb).collect()
        } else {
            (0..groups).map(|_| &mut [][..]).collect()
        };
        let mut qh_chunks: Vec<&mut [[u64; 8]]> = if has_qh {
            qh.chunks_mut(nb).collect()
        } else {
            (0..groups).map(|_| &mut [][..]).collect()
        };
        d.par_chunks_mut(nb)
            .zip(qs.par_chunks_mut(nb * lines))
            .zip(m_chunks.par_iter_mut())
            .zip(qh_chunks.par_iter_mut())
            .enumerate()
            .for_each(|(g, (((d, qs), m), qh))| {
                let mut buf = [0u8; 32];
                for r in 0..ROWS.min(rows - g * ROWS) {
                    for b in 0..nb {
                        let (dr, mr, hr) = block(g * ROWS + r, b, &mut buf);
                        d[b][r] = dr;
                        if has_m {
                            m[b][r] = mr;
                        }
                        if has_qh {
                            for j in 0..4 {
                                let lo = (hr >> (4 * j)) & 0xF;
                                let hi = (hr >> (16 + 4 * j)) & 0xF;
                                qh[b][2 * j] |= (lo as u64) << (4 * r);
                                qh[b][2 * j + 1] |= (hi as u64) << (4 * r);
                            }
                        }
                        for j in 0..lines {
                            qs[b * lines + j].0[4 * r..4 * r + 4]
                                .copy_from_slice(&buf[4 * j..4 * j + 4]);
                        }
                    }
                }
            });
        Packed16 {
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

/// `data` as blocks of `B`, copied once if it is not aligned for them.
fn owned_blocks<B: super::QuantBlock>(data: &[u8]) -> std::borrow::Cow<'_, [B]> {
    match cast_blocks::<B>(data) {
        Ok(b) => std::borrow::Cow::Borrowed(b),
        Err(_) => std::borrow::Cow::Owned(bytemuck::pod_collect_to_vec::<u8, B>(data)),
    }
}

/// One activation block for the sixteen-row kernels: the int8 quants (as Q8_0 stores
/// them), `bias` = −offset·Σqs, the scale `d` (rounded through f16, as stored) and `s`
/// (Q8_1's d·Σqs rounded through f16; 0 from Q8_0). 48 bytes.
#[repr(C, align(16))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Act16 {
    pub qs: [i8; 32],
    pub bias: i32,
    pub d: f32,
    pub s: f32,
    pub _pad: f32,
}
const _: () = assert!(std::mem::size_of::<Act16>() == 48);

impl Act16 {
    /// From a Q8_0 activation block, for weights of `kind`.
    pub fn from_q8_0(a: &BlockQ8_0, kind: Kind16) -> Act16 {
        let sum: i32 = a.qs.iter().map(|&q| q as i32).sum();
        Act16 {
            qs: a.qs,
            bias: -kind.offset() * sum,
            d: f16_to_f32(a.d),
            s: 0.0,
            _pad: 0.0,
        }
    }

    /// From a Q8_1 activation block (for Q4_1 weights: no offset).
    pub fn from_q8_1(a: &BlockQ8_1) -> Act16 {
        Act16 {
            qs: a.qs,
            bias: 0,
            d: f16_to_f32(a.d),
            s: f16_to_f32(a.s),
            _pad: 0.0,
        }
    }
}

/// The kernel's signature: group `g` of `p` against `out.len()` tokens' activations
/// (`acts`: token-major, nb blocks each), writing `out[token][row in group]`.
pub type Gemm16Fn = fn(&Packed16, usize, &[Act16], &mut [[f32; ROWS]]);

/// One group of sixteen rows: `d` and `qs` hold its nb blocks; `m` and `qh` are the whole
/// matrix's (empty for kinds without them), the group's blocks from index `i0`.
#[derive(Clone, Copy)]
pub struct Group<'a> {
    pub kind: Kind16,
    pub d: &'a [[f16; ROWS]],
    pub m: &'a [[f16; ROWS]],
    pub qh: &'a [[u64; 8]],
    pub i0: usize,
    pub qs: &'a [Line64],
}

/// The frame every ISA's sixteen-row GEMM shares, so that an ISA file holds only its tile
/// kernel: checks the arguments, takes group `g`, and calls `tile` on consecutive tiles of
/// at most `t` tokens (their activation blocks and output rows), in order. Inlined into each
/// kernel so the tile call stays a direct one.
#[inline(always)]
pub fn for_each_tile(
    p: &Packed16,
    g: usize,
    acts: &[Act16],
    out: &mut [[f32; ROWS]],
    t: usize,
    mut tile: impl FnMut(Group, &[Act16], &mut [[f32; ROWS]]),
) {
    let nb = p.nb();
    assert_eq!(
        acts.len(),
        out.len() * nb,
        "gemm16: activations for the wrong k"
    );
    let group = p.group(g);
    for (chunk, o) in acts.chunks(t * nb).zip(out.chunks_mut(t)) {
        tile(group, chunk, o);
    }
}

/// The scalar reference: the kernel's arithmetic in the kernel's order, bit for bit.
pub fn gemm_ref(p: &Packed16, g: usize, acts: &[Act16], out: &mut [[f32; ROWS]]) {
    let nb = p.nb();
    let lines = p.kind.lines();
    assert_eq!(
        acts.len(),
        out.len() * nb,
        "gemm16: activations for the wrong k"
    );
    assert!(g < p.groups(), "gemm16: group {g} out of range");
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; ROWS];
        for b in 0..nb {
            let i = g * nb + b;
            let a = &acts[t * nb + b];
            for (r, acc) in acc.iter_mut().enumerate() {
                let mut s = a.bias;
                for j in 0..lines {
                    for e in 0..4 {
                        let byte = p.qs[i * lines + j].0[4 * r + e];
                        if p.kind == Kind16::Q8_0 {
                            s += byte as i32 * a.qs[4 * j + e] as i32;
                        } else {
                            let bit = |mask: u64| ((mask >> (4 * r + e)) & 1) as i32 * 16;
                            let (mut lo, mut hi) = ((byte & 0xF) as i32, (byte >> 4) as i32);
                            if p.kind == Kind16::Q5_0 {
                                lo |= bit(p.qh[i][2 * j]);
                                hi |= bit(p.qh[i][2 * j + 1]);
                            }
                            s += lo * a.qs[4 * j + e] as i32 + hi * a.qs[16 + 4 * j + e] as i32;
                        }
                    }
                }
                let scale = f16_to_f32(p.d[i][r]) * a.d;
                *acc = (s as f32).mul_add(scale, *acc);
                if p.kind == Kind16::Q4_1 {
                    *acc = f16_to_f32(p.m[i][r]).mul_add(a.s, *acc);
                }
            }
        }
        *o = acc;
    }
}
