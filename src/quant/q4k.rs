//! Q4_K: 4-bit weights with a 6-bit scale and a 6-bit min per 32 (ggml's `block_q4_K`).

use super::kquant_util::{
    get_scale_min_k4, inv_scale, lane_dot16, make_qkx2_quants, nearest_int, pack_scale_min_k4,
    ScaleSearch,
};
use super::*;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 8 sub-blocks of 32 weights, each `x = d·sc·q - dmin·m` with `q` in 0..=15 and the 6-bit
/// `sc`, `m` packed in `scales` (see `get_scale_min_k4`).
/// 144 bytes per 256 weights: effectively 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    /// Byte `32·c + i` holds element `64·c + i` (low nibble) and `64·c + 32 + i` (high).
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// The low 4 bits of element `e`, as Q4_K and Q5_K lay them out.
#[inline]
pub(super) fn nibble(qs: &[u8; QK_K / 2], e: usize) -> u8 {
    let b = qs[32 * (e / 64) + e % 32];
    if e % 64 < 32 {
        b & 0xF
    } else {
        b >> 4
    }
}

/// Packs 256 levels' low 4 bits the way `nibble` reads them (Q4_K's levels, Q5_K's low bits).
pub(super) fn pack_k_nibbles(l: &[u8; QK_K]) -> [u8; QK_K / 2] {
    let mut qs = [0u8; QK_K / 2];
    for (e, &le) in l.iter().enumerate() {
        qs[32 * (e / 64) + e % 32] |= (le & 0xF) << (4 * ((e % 64) / 32));
    }
    qs
}

/// The asymmetric super-block fit shared by Q4_K and Q5_K: per-32 `make_qkx2_quants` with
/// weights `rms + |x|`, then 6-bit scales and mins against f16 super-scales. Returns
/// `(d, dmin, scales, levels)` with levels re-quantized against the decoded scales.
pub(super) fn quantize_asym_k(
    x: &[f32],
    nmax: i32,
    search: ScaleSearch,
) -> (f16, f16, [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; QK_K / 32];
    let mut scales = [0.0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 32 {
        let xj = &x[32 * j..32 * j + 32];
        let sum_x2 = xj.iter().fold(0.0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xj) {
            *w = av_x + v.abs();
        }
        let lj = &mut l[32 * j..32 * j + 32];
        let (scale, min) = make_qkx2_quants(nmax, xj, &weights, lj, search, false);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let inv_s = inv_scale(max_scale, 63.0);
    let inv_m = inv_scale(max_min, 63.0);
    // ggml narrows to u8 before capping at 63.
    let ls = scales.map(|s| (nearest_int(inv_s * s) as u8).min(63));
    let lm = mins.map(|m| (nearest_int(inv_m * m) as u8).min(63));
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);

    // Re-quantize against the scales as they will be decoded (6-bit, through f16).
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

/// The generic Q4_K/Q5_K dot with Q8_K for one block pair, given the block's levels `q`:
/// adds the scaled lanes to `sums` and returns the min term to subtract.
pub(super) fn dot_asym_k(
    d: f16,
    dmin: f16,
    packed: &[u8; 12],
    q: &[i8; QK_K],
    y: &BlockQ8K,
    sums: &mut [f32; 8],
) -> f32 {
    let sm: [(u8, u8); 8] = std::array::from_fn(|j| get_scale_min_k4(j, packed));
    let sumi: i32 = (y.bsums.iter().enumerate())
        .map(|(j, &s)| s as i32 * sm[j / 2].1 as i32)
        .sum();
    let scales: [i32; 16] = std::array::from_fn(|j| sm[j / 2].0 as i32);
    let lanes = lane_dot16(q, &y.qs, &scales);
    let dd = d.to_f32() * y.d;
    for (s, &lane) in sums.iter_mut().zip(&lanes) {
        *s += dd * lane as f32;
    }
    dmin.to_f32() * y.d * sumi as f32
}

impl BlockQ4K {
    /// ggml's `quantize_row_q4_K_ref` for one block.
    fn from_f32(x: &[f32]) -> Self {
        let search = ScaleSearch {
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
        };
        let (d, dmin, scales, l) = quantize_asym_k(x, 15, search);
        Self::from_levels(d, dmin, scales, &l)
    }

    /// The block of super-scales `d`, `dmin`, stored `scales` (`pack_scale_min_k4`) and
    /// levels `l` (0..=15).
    pub fn from_levels(d: f16, dmin: f16, scales: [u8; 12], l: &[u8; QK_K]) -> Self {
        Self {
            d,
            dmin,
            scales,
            qs: pack_k_nibbles(l),
        }
    }
}

impl QuantBlock for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BLOCK_SIZE: usize = QK_K;

    fn quantize(src: &[f32], out: &mut [Self]) {
        debug_assert_eq!(src.len(), out.len() * QK_K);
        for (x, y) in src.chunks_exact(QK_K).zip(out) {
            *y = Self::from_f32(x);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            let min = b.dmin.to_f32();
            for (j, y32) in y.chunks_exact_mut(32).enumerate() {
                let (sc, m) = get_scale_min_k4(j, &b.scales);
                let (dl, ml) = (d * sc as f32, min * m as f32);
                for (i, v) in y32.iter_mut().enumerate() {
                    *v = dl * nibble(&b.qs, 32 * j + i) as f32 - ml;
                }
            }
        }
    }
}

impl VecDot for BlockQ4K {
    type Act = BlockQ8K;

    /// ggml's `ggml_vec_dot_q4_K_q8_K_generic`.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        let mut sums = [0.0f32; 8];
        let mut sumf = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let q: [i8; QK_K] = std::array::from_fn(|e| nibble(&x.qs, e) as i8);
            sumf -= dot_asym_k(x.d, x.dmin, &x.scales, &q, y, &mut sums);
        }
        sums.iter().fold(sumf, |acc, &s| acc + s)
    }
}
