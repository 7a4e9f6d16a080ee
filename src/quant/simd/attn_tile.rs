//! What the tiled prompt-attention kernels of every ISA share: the keys of one KV group
//! transposed to f32 columns (built once per layer and prompt), and a tile's scratch buffers.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::HeadLayout;

/// The largest key head size the tiled kernels handle.
pub const MAX_HD_K: usize = 512;

/// One KV group's keys as f32 columns: `data[d·stride + p]` is dimension d of position p.
/// Columns are padded with zeros to `stride` (≥ positions + 32) so 32-key blocks never read
/// past the end.
pub struct KeysT {
    pub(crate) data: Vec<f32>,
    pub(crate) stride: usize,
    pub(crate) hd_k: usize,
    pub(crate) npos: usize,
}

impl KeysT {
    /// Positions 0..npos of the group laid out by `l` (key rows of hd_k f16).
    pub fn new(k_cache: &[f16], l: HeadLayout, hd_k: usize, npos: usize) -> KeysT {
        assert!(hd_k.is_multiple_of(8) && hd_k <= MAX_HD_K);
        assert!(npos == 0 || (npos - 1) * l.k_stride + l.k_off + hd_k <= k_cache.len());
        let stride = npos.next_multiple_of(16) + 32;
        let mut data = vec![0f32; hd_k * stride];
        let mut row = [0f32; MAX_HD_K];
        for p in 0..npos {
            let src = &k_cache[p * l.k_stride + l.k_off..][..hd_k];
            // `half` converts with F16C where the CPU has it.
            src.convert_to_f32_slice(&mut row[..hd_k]);
            for (d, &v) in row[..hd_k].iter().enumerate() {
                data[d * stride + p] = v;
            }
        }
        KeysT {
            data,
            stride,
            hd_k,
            npos,
        }
    }
}

/// Reusable buffers of a tile kernel.
#[derive(Default)]
pub struct TileScratch {
    pub(crate) q: Vec<f32>,
    pub(crate) scores: Vec<f32>,
}

/// The checks and set-up every tile kernel starts with: the queries rounded through f16
/// (as ggml does) and padded with zero rows to a multiple of 4, score rows of `width` (the
/// range lo..=hi in 32-key blocks) zeroed. Returns (lo, hi, width, hd_v), or `None` for an
/// empty tile.
pub(crate) fn prepare(
    q: &[f32],
    ranges: &[(usize, usize)],
    kt: &KeysT,
    v_len: usize,
    l: HeadLayout,
    out_len: usize,
    scratch: &mut TileScratch,
) -> Option<(usize, usize, usize, usize)> {
    let nq = ranges.len();
    let hd_k = kt.hd_k;
    assert_eq!(q.len(), nq * hd_k);
    if nq == 0 {
        assert_eq!(out_len, 0);
        return None;
    }
    let hd_v = out_len / nq;
    assert_eq!(out_len, nq * hd_v);
    assert!(ranges.iter().all(|&(f, p)| f <= p && p < kt.npos));
    let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
    let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    assert!(
        hi * l.v_stride + l.v_off + hd_v <= v_len,
        "attend_tile: values too short"
    );
    let width = (hi + 1 - lo).next_multiple_of(32);
    let nq4 = nq.next_multiple_of(4);
    let TileScratch { q: qr, scores } = scratch;
    qr.clear();
    qr.extend(q.iter().map(|&x| f16::from_f32(x).to_f32()));
    qr.resize(nq4 * hd_k, 0.0);
    scores.clear();
    scores.resize(nq4 * width, 0.0);
    Some((lo, hi, width, hd_v))
}
