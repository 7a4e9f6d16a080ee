//! Load-time repacked layouts for the K-quants Q4_K, Q5_K and Q6_K and for IQ4_XS: four rows
//! interleaved per 256-weight super-block, so that one 512-bit load feeds four rows, with the
//! 6-bit scales and mins decoded to bytes at load time.
//!
//! A `PackedK` keeps its data indexed by super-block `i = group·(k/256) + sb`:
//! - Q4_K (9 lines per super-block, 576 + 16 bytes per 4×256 weights, as the GGUF blocks'
//!   576 + 16): `d[i]`, `m[i]` = the four rows' d and dmin; line `9i + s` (s = 0..8, the
//!   32-weight sub-block) holds in 128-bit lane r row r's 16 bytes with byte j's low nibble =
//!   weight 32s + j, high nibble = weight 32s + 16 + j; line `9i + 8` holds the sub-block
//!   scales as bytes `[8r + s]` and the mins as bytes `[32 + 8r + s]`.
//! - Q6_K (13 lines per super-block, the GGUF blocks' 840 bytes for 4×256 weights): `d[i]`
//!   = the rows' d; lines `13i + c` (c = 0..8) the low nibbles as for Q4_K; line
//!   `13i + 8 + p` (p = 0..4) the high bit pairs of weights 64p.. 64p+64: byte j of lane r
//!   holds those of weight 64p + j in bits 0-1, 64p + 16 + j in bits 2-3, 64p + 32 + j in
//!   bits 4-5, 64p + 48 + j in bits 6-7; line `13i + 12` the sixteen-weight sub-block scales
//!   (i8) as bytes `[8r + j]` for j < 8 and `[32 + 8r + j - 8]` for j ≥ 8.
//! - Q5_K (11 lines, the GGUF blocks' 704 bytes): Q4_K's nine lines, then the fifth bits in
//!   lines `11i + 9 + c/4`: bit 2(c%4) of byte j of lane r is that of weight 32c + j, bit
//!   2(c%4) + 1 that of weight 32c + 16 + j. The stored value 0..=31 is nibble | bit << 4.
//! - IQ4_XS (9 lines, 576 bytes for the GGUF blocks' 544): `d[i]`; lines `9i + c` the level
//!   indices as Q4_K's nibbles (the GGUF sub-block's own 16 bytes); line `9i + 8` the
//!   sub-block scales ls − 32 (i8) as bytes `[8r + c]`. Weights are `KVALUES_IQ4NL[index]`,
//!   signed: the kernels take |w| times the activation with w's sign (`vpsignb`), which is
//!   exact because Q8_K quants are within ±127; per 32-weight chunk and lane the sum of eight
//!   such products (at most 8·127·127) is multiplied by the scale in i32.
//!
//! The activations are Q8_K (`ActK`: its quants, scale, per-16 sums and per-32 sums). The
//! kernels take 4-byte dot products of the unsigned weights (Q4_K's nibble, Q6_K's q + 32)
//! with the int8 activations (`vpdpbusd`), per 32-weight sub-block (Q4_K: at most
//! 8·15·128 per i32 lane) or sixteen (Q6_K: 4·63·128), which therefore fit i16: two such
//! sums are packed to i16 (`vpackssdw`, no saturation) and multiplied by their sub-blocks'
//! scales into four i32 lanes per row and super-block (`vpdpwssd`; see `gemm_ref` for
//! which weights each lane holds), all exact integer arithmetic, two multiply uops per 64
//! weights and token fewer than `vpmaddubsw` + `vpdpwssd`. The min (Q4_K) and offset (Q6_K)
//! terms come from the activation sums, also in integers. Per super-block and lane, then
//! acc += isum·(d·dy) (and acc −= imin·(dmin·dy) for Q4_K) in f32; each row's four lanes are
//! summed at the end. `gemm_ref` does exactly this in scalar (bit-identical to the kernel);
//! both are also checked against the canonical `vec_dot` within rounding.
//!
//! Rows past the last multiple of four are padded with zero rows (scales 0).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f16_to_f32;
use super::iq4::KVALUES_IQ4NL;
use super::kquant_util::get_scale_min_k4;
use super::line64::Line64;
use super::{cast_blocks, BlockIQ4XS, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
use crate::ggml_type::GgmlType;
use crate::tensor::TensorView;

/// Which weight type a four-row K matrix holds.
#[allow(non_camel_case_types)] // the GGUF type names
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindK {
    /// 592 bytes per 4×256 weights (4.625 bits per weight).
    Q4_K,
    /// 720 bytes per 4×256 weights (5.625 bits per weight).
    Q5_K,
    /// 840 bytes per 4×256 weights (6.5625 bits per weight).
    Q6_K,
    /// 584 bytes per 4×256 weights (4.5625 bits per weight; the GGUF blocks' 4.25).
    IQ4_XS,
}

impl KindK {
    /// Every kind, for the kernel sets that handle them all.
    pub const ALL: &'static [KindK] = &[KindK::Q4_K, KindK::Q5_K, KindK::Q6_K, KindK::IQ4_XS];

    /// 64-byte lines per group and super-block.
    pub const fn lines(self) -> usize {
        match self {
            KindK::Q4_K | KindK::IQ4_XS => 9,
            KindK::Q5_K => 11,
            KindK::Q6_K => 13,
        }
    }

    /// The kind a GGUF weight type packs to, if any.
    pub fn of(ty: GgmlType) -> Option<KindK> {
        match ty {
            GgmlType::Q4_K => Some(KindK::Q4_K),
            GgmlType::Q5_K => Some(KindK::Q5_K),
            GgmlType::Q6_K => Some(KindK::Q6_K),
            GgmlType::IQ4_XS => Some(KindK::IQ4_XS),
            _ => None,
        }
    }

    /// Whether the kind has a min (dmin, Q4_K and Q5_K).
    pub const fn has_min(self) -> bool {
        matches!(self, KindK::Q4_K | KindK::Q5_K)
    }
}

/// A Q4_K, Q5_K, Q6_K or IQ4_XS weight matrix W (k, rows) in the four-row interleaved layout.
pub struct PackedK {
    pub kind: KindK,
    /// Row length (weights per row), a multiple of 256.
    pub k: usize,
    /// Real rows (the last group may be padded).
    pub rows: usize,
    /// `[group·nsb + sb]`: the four rows' super-block scales d.
    pub d: Vec<[f16; 4]>,
    /// `[group·nsb + sb]`: the four rows' dmin (Q4_K and Q5_K, else empty).
    pub m: Vec<[f16; 4]>,
    /// `[(group·nsb + sb)·lines + line]`.
    pub qs: Vec<Line64>,
}

impl PackedK {
    /// Groups of four rows (the last one possibly padded).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(4)
    }

    /// Bytes of the packed copy.
    pub fn size_bytes(&self) -> usize {
        (self.d.len() + self.m.len()) * 8 + self.qs.len() * 64
    }
}

/// One Q8_K activation super-block for the packed K kernels: the int8 quants, the sums of each
/// 16 (`bsums`, for Q6_K's offset) and of each 32 (`sums32`, for Q4_K's mins), the scale.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ActK {
    pub qs: [i8; QK_K],
    pub bsums: [i16; 16],
    pub sums32: [i16; 8],
    pub d: f32,
    pub _pad: [f32; 3],
}
const _: () = assert!(std::mem::size_of::<ActK>() == 320);

impl ActK {
    pub fn from_q8_k(a: &BlockQ8K) -> ActK {
        ActK {
            qs: a.qs,
            bsums: a.bsums,
            sums32: std::array::from_fn(|s| a.bsums[2 * s] + a.bsums[2 * s + 1]),
            d: a.d,
            _pad: [0.0; 3],
        }
    }
}

/// The packed K kernel's signature: group `g` of `p` against `t` tokens' activations
/// (`acts`: t·(k/256) super-blocks, token-major), writing `out[token][row in group]`.
pub type GemmKFn = fn(&PackedK, usize, &[ActK], &mut [[f32; 4]]);

impl PackedK {
    /// Repacks a Q4_K, Q5_K, Q6_K or IQ4_XS tensor whose rows are whole super-blocks; `None`
    /// otherwise.
    #[allow(clippy::needless_range_loop)] // c, p, j index several arrays at once
    pub fn from_view(w: &TensorView) -> Option<PackedK> {
        let (k, rows) = (w.row_len(), w.n_rows());
        let kind = KindK::of(w.ty)?;
        if k % QK_K != 0 || w.shape.len() > 2 {
            return None;
        }
        let nsb = k / QK_K;
        let groups = rows.div_ceil(4);
        let nl = kind.lines();
        let mut d = vec![[f16::ZERO; 4]; groups * nsb];
        let mut m = if kind.has_min() {
            vec![[f16::ZERO; 4]; groups * nsb]
        } else {
            Vec::new()
        };
        let mut qs = super::line64::filled(groups * nsb * nl, 0);
        // Each row's super-blocks go to super-block `i`'s lines, row r's lanes.
        let mut each = |f: &mut SbFn| {
            for row in 0..rows {
                let (g, r) = (row / 4, row % 4);
                for sb in 0..nsb {
                    let i = g * nsb + sb;
                    let mi = m.get_mut(i);
                    f(
                        row * nsb + sb,
                        r,
                        &mut d[i],
                        mi,
                        &mut qs[nl * i..nl * (i + 1)],
                    );
                }
            }
        };
        match kind {
            KindK::Q4_K => {
                let blocks = blocks_of::<BlockQ4K>(&w.data);
                each(&mut |b, r, d, m, lines| {
                    let x = &blocks[b];
                    d[r] = x.d;
                    m.expect("Q4_K has mins")[r] = x.dmin;
                    pack_q4_nibbles(&x.qs, &x.scales, r, lines);
                });
            }
            KindK::Q5_K => {
                let blocks = blocks_of::<BlockQ5K>(&w.data);
                each(&mut |b, r, d, m, lines| {
                    let x = &blocks[b];
                    d[r] = x.d;
                    m.expect("Q5_K has mins")[r] = x.dmin;
                    pack_q4_nibbles(&x.qs, &x.scales, r, lines);
                    // Weight 32c + j's fifth bit is bit c of qh[j] (j < 32).
                    for u in 0..2 {
                        let dst = &mut lines[9 + u].0[16 * r..16 * r + 16];
                        for (j, o) in dst.iter_mut().enumerate() {
                            let (lo, hi) = (x.qh[j] >> (4 * u), x.qh[16 + j] >> (4 * u));
                            let mut v = 0u8;
                            for q in 0..4 {
                                v |= ((lo >> q) & 1) << (2 * q) | ((hi >> q) & 1) << (2 * q + 1);
                            }
                            *o = v;
                        }
                    }
                });
            }
            KindK::IQ4_XS => {
                let blocks = blocks_of::<BlockIQ4XS>(&w.data);
                each(&mut |b, r, d, _, lines| {
                    let x = &blocks[b];
                    d[r] = x.d;
                    for (c, q) in x.qs.chunks_exact(16).enumerate() {
                        lines[c].0[16 * r..16 * r + 16].copy_from_slice(q);
                        let ls = (x.scales_l[c / 2] >> (4 * (c % 2))) & 0xF
                            | (((x.scales_h >> (2 * c)) & 3) as u8) << 4;
                        lines[8].0[8 * r + c] = (ls as i8 - 32) as u8;
                    }
                });
            }
            KindK::Q6_K => {
                let blocks = blocks_of::<BlockQ6K>(&w.data);
                each(&mut |b, r, d, _, lines| {
                    let x = &blocks[b];
                    d[r] = x.d;
                    // The unsigned stored value q + 32 (0..=63) is the GGUF block's
                    // nibble | high pair << 4 (`q6k::q6_pos`), so its low nibbles and bit
                    // pairs are moved over in whole 16-byte runs (the loops vectorize).
                    // Chunk c's weights 32c + j and 32c + 16 + j: the low (c % 4 < 2) or
                    // high nibbles of ql[64(c/4) + 32(c%2) + j] and + 16.
                    for c in 0..8 {
                        let base = 64 * (c / 4) + 32 * (c % 2);
                        let (a, b) = x.ql[base..base + 32].split_at(16);
                        let dst = &mut lines[c].0[16 * r..16 * r + 16];
                        if c % 4 < 2 {
                            for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
                                *d = (a & 0xF) | (b << 4);
                            }
                        } else {
                            for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
                                *d = (a >> 4) | (b & 0xF0);
                            }
                        }
                    }
                    // Weight 64p + o + j's pair: qh[32(p/2) + o%32 + j] at bit
                    // 4(p%2) + 2(o/32).
                    for p in 0..4 {
                        let qh = &x.qh[32 * (p / 2)..32 * (p / 2) + 32];
                        let sh = 4 * (p % 2);
                        let dst = &mut lines[8 + p].0[16 * r..16 * r + 16];
                        for (j, d) in dst.iter_mut().enumerate() {
                            let (x0, x1) = (qh[j], qh[16 + j]);
                            *d = ((x0 >> sh) & 3)
                                | ((x1 >> sh) & 3) << 2
                                | ((x0 >> (sh + 2)) & 3) << 4
                                | ((x1 >> (sh + 2)) & 3) << 6;
                        }
                    }
                    for j in 0..16 {
                        let at = if j < 8 { 8 * r + j } else { 32 + 8 * r + j - 8 };
                        lines[12].0[at] = x.scales[j] as u8;
                    }
                });
            }
        }
        Some(PackedK {
            kind,
            k,
            rows,
            d,
            m,
            qs,
        })
    }
}

/// What `from_view` does per row super-block: (block index, row in group, the group's d,
/// its dmin if the kind has one, the super-block's lines).
type SbFn<'f> = dyn FnMut(usize, usize, &mut [f16; 4], Option<&mut [f16; 4]>, &mut [Line64]) + 'f;

/// The tensor's bytes as blocks: borrowed where aligned, else copied.
fn blocks_of<B: super::QuantBlock>(data: &[u8]) -> std::borrow::Cow<'_, [B]> {
    match cast_blocks(data) {
        Ok(b) => std::borrow::Cow::Borrowed(b),
        Err(_) => std::borrow::Cow::Owned(bytemuck::pod_collect_to_vec::<u8, B>(data)),
    }
}

/// Q4_K's (and Q5_K's) nibbles, scales and mins of one super-block into row r's lanes of
/// lines 0..9.
fn pack_q4_nibbles(q: &[u8; QK_K / 2], scales: &[u8; 12], r: usize, lines: &mut [Line64]) {
    for s in 0..8 {
        // Chunk s's weights 32s + j and 32s + 16 + j are the low (s even) or high (s odd)
        // nibbles of GGUF bytes 32(s/2) + j and + 16 + j (`q4k::nibble`); whole 16-byte
        // runs, so the loop vectorizes (the per-weight version was a quarter of a 7B
        // model's load).
        let (a, b) = q[32 * (s / 2)..32 * (s / 2) + 32].split_at(16);
        let dst = &mut lines[s].0[16 * r..16 * r + 16];
        if s % 2 == 0 {
            for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
                *d = (a & 0xF) | (b << 4);
            }
        } else {
            for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
                *d = (a >> 4) | (b & 0xF0);
            }
        }
        let (sc, mn) = get_scale_min_k4(s, scales);
        lines[8].0[8 * r + s] = sc;
        lines[8].0[32 + 8 * r + s] = mn;
    }
}

/// The stored value of weight `e` (0..256) of row `r` in super-block lines `l`: unsigned
/// for the K-quants (Q6_K's q + 32), the signed level for IQ4_XS.
fn stored(kind: KindK, l: &[Line64], r: usize, e: usize) -> i32 {
    let (c, j) = (e / 32, e % 32);
    let byte = l[c].0[16 * r + j % 16];
    let nib = if j < 16 { byte & 0xF } else { byte >> 4 };
    match kind {
        KindK::Q4_K => nib as i32,
        KindK::IQ4_XS => KVALUES_IQ4NL[nib as usize] as i32,
        KindK::Q5_K => {
            let h = l[9 + c / 4].0[16 * r + j % 16];
            let bit = (h >> (2 * (c % 4) + j / 16)) & 1;
            (nib | bit << 4) as i32
        }
        KindK::Q6_K => {
            let h = l[8 + e / 64].0[16 * r + j % 16];
            let shift = 2 * ((e % 64) / 16);
            (nib | ((h >> shift) & 3) << 4) as i32
        }
    }
}

/// The scale of row `r`'s sub-block `s` (Q6_K: of 16 weights; the others: of 32).
fn sub_scale(kind: KindK, l: &[Line64], r: usize, s: usize) -> i32 {
    match kind {
        KindK::Q6_K => {
            let at = if s < 8 { 8 * r + s } else { 32 + 8 * r + s - 8 };
            l[12].0[at] as i8 as i32
        }
        KindK::IQ4_XS => l[8].0[8 * r + s] as i8 as i32,
        KindK::Q4_K | KindK::Q5_K => l[8].0[8 * r + s] as i32,
    }
}

/// The scalar reference of the packed K kernels: the same integer lanes and the same f32
/// operations in the same order as the kernels (`simd::avx512_repack_k`, `avx2_repack_k`,
/// the NEON ones), so the results are bit-identical.
pub fn gemm_ref(p: &PackedK, g: usize, acts: &[ActK], out: &mut [[f32; 4]]) {
    let nsb = p.k / QK_K;
    let nl = p.kind.lines();
    assert_eq!(
        acts.len(),
        out.len() * nsb,
        "packed K gemm: activations for the wrong k"
    );
    for (t, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; 16];
        for sb in 0..nsb {
            let i = g * nsb + sb;
            let l = &p.qs[nl * i..nl * (i + 1)];
            let a = &acts[t * nsb + sb];
            for (lane, acc) in acc.iter_mut().enumerate() {
                let (r, q) = (lane / 4, lane % 4);
                // Lane q of row r sums, per 32-weight chunk c, some of its weights times
                // their sub-block's scale: Q6_K weights 32c + 8q.. + 8 (sixteen-block
                // 2c + q/2); IQ4_XS weights 32c + 4q.. + 4 and 16 further; Q4_K and Q5_K,
                // whose chunks go in pairs (lanes 0-1 the even chunk, 2-3 the odd one),
                // weights 32c + 8·(q%2).. + 8 and 16 further, of chunks c with c % 2 = q / 2.
                let mut isum = 0i32;
                for c in 0..8 {
                    let (s, n, es) = match p.kind {
                        KindK::Q6_K => (2 * c + q / 2, 4, [32 * c + 8 * q, 32 * c + 8 * q + 4]),
                        KindK::IQ4_XS => (c, 4, [32 * c + 4 * q, 32 * c + 16 + 4 * q]),
                        _ if c % 2 != q / 2 => continue,
                        _ => (c, 8, [32 * c + 8 * (q % 2), 32 * c + 16 + 8 * (q % 2)]),
                    };
                    let mut dot = 0i32;
                    for e0 in es {
                        for e in e0..e0 + n {
                            dot += stored(p.kind, l, r, e) * a.qs[e] as i32;
                        }
                    }
                    isum += sub_scale(p.kind, l, r, s) * dot;
                }
                let dd = f16_to_f32(p.d[i][r]) * a.d;
                match p.kind {
                    KindK::Q6_K => {
                        let mut ioff = 0i32;
                        for h in 0..2 {
                            for jj in [2 * q, 2 * q + 1] {
                                let s = 8 * h + jj;
                                ioff += sub_scale(p.kind, l, r, s) * a.bsums[s] as i32;
                            }
                        }
                        *acc = ((isum - 32 * ioff) as f32).mul_add(dd, *acc);
                    }
                    KindK::IQ4_XS => *acc = (isum as f32).mul_add(dd, *acc),
                    KindK::Q4_K | KindK::Q5_K => {
                        let imin = (l[8].0[32 + 8 * r + 2 * q] as i32) * a.sums32[2 * q] as i32
                            + (l[8].0[32 + 8 * r + 2 * q + 1] as i32) * a.sums32[2 * q + 1] as i32;
                        *acc = (isum as f32).mul_add(dd, *acc);
                        let dm = f16_to_f32(p.m[i][r]) * a.d;
                        *acc = (-(imin as f32)).mul_add(dm, *acc);
                    }
                }
            }
        }
        for (r, v) in o.iter_mut().enumerate() {
            *v = ((acc[4 * r] + acc[4 * r + 1]) + acc[4 * r + 2]) + acc[4 * r + 3];
        }
    }
}
