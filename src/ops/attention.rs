//! Scaled dot-product attention over the KV cache, one (query position, head) at a time so
//! the caller can spread heads and positions over threads.

use half::f16;
use rayon::prelude::*;

use crate::quant::simd;

/// One layer's cached keys and values (all positions), as the cache stores them.
#[derive(Clone, Copy)]
pub enum KvLayer<'a> {
    F16(&'a [f16], &'a [f16]),
    F32(&'a [f32], &'a [f32]),
}

/// Shapes of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv: usize,
    pub hd_k: usize,
    pub hd_v: usize,
    pub scale: f32,
    /// Scores soft-capped to cap·tanh(score/cap) before the softmax (Gemma 2). Only the
    /// portable path does it; the kernel sets' attention kernels are for uncapped scores.
    pub softcap: Option<f32>,
}

/// Attention of query head `h` at position `pos` against cached positions `first..=pos`.
///
/// q (hd_k) · K (positions, n_kv, hd_k)ᵀ[kv head] · scale → softmax → · V (positions, n_kv,
/// hd_v)[kv head] → out (hd_v). Head h reads KV head h / (n_head / n_kv) (grouped-query
/// attention). As in ggml, q is rounded to f16 before the dot with the f16 keys, the softmax
/// sum is f64, and the probabilities are rounded to f16 before the product with the f16
/// values. `q16` and `scores` are scratch space.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    s: AttnShape,
    h: usize,
    first: usize,
    pos: usize,
    q16: &mut Vec<f16>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let ks = simd::kernels();
    let g = h / (s.n_head / s.n_kv);
    let (kw, vw) = (s.n_kv * s.hd_k, s.n_kv * s.hd_v);
    if let Some(a) = fast_path(s) {
        let l = simd::HeadLayout {
            k_stride: kw,
            k_off: g * s.hd_k,
            v_stride: vw,
            v_off: g * s.hd_v,
        };
        (a.head)(q, k_cache, v_cache, l, s.scale, first, pos, scores, out);
        return;
    }
    q16.clear();
    q16.extend(q.iter().map(|&x| f16::from_f32(x)));
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for p in first..=pos {
        let kr = &k_cache[p * kw + g * s.hd_k..p * kw + (g + 1) * s.hd_k];
        let mut v = (ks.f16)(kr, q16) * s.scale;
        if let Some(cap) = s.softcap {
            v = (v * (1.0 / cap)).tanh() * cap;
        }
        max = max.max(v);
        scores.push(v);
    }
    let mut sum = 0f64;
    for v in scores.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    out.fill(0.0);
    for (i, &p_un) in scores.iter().enumerate() {
        let p = first + i;
        let w = f16::from_f32(p_un * inv).to_f32();
        let vr = &v_cache[p * vw + g * s.hd_v..p * vw + (g + 1) * s.hd_v];
        (ks.axpy_f16)(out, w, vr);
    }
}

/// `attend_head` over an f32 cache, nothing rounded: q · k and p · v in f32, the softmax
/// sum in f64.
#[allow(clippy::too_many_arguments)]
pub fn attend_head_f32(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    s: AttnShape,
    h: usize,
    first: usize,
    pos: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let ks = simd::kernels();
    let g = h / (s.n_head / s.n_kv);
    let (kw, vw) = (s.n_kv * s.hd_k, s.n_kv * s.hd_v);
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for p in first..=pos {
        let kr = &k_cache[p * kw + g * s.hd_k..p * kw + (g + 1) * s.hd_k];
        let mut v = (ks.f32)(kr, q) * s.scale;
        if let Some(cap) = s.softcap {
            v = (v * (1.0 / cap)).tanh() * cap;
        }
        max = max.max(v);
        scores.push(v);
    }
    let mut sum = 0f64;
    for v in scores.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    out.fill(0.0);
    for (i, &p_un) in scores.iter().enumerate() {
        let p = first + i;
        let w = p_un * inv;
        let vr = &v_cache[p * vw + g * s.hd_v..p * vw + (g + 1) * s.hd_v];
        out.iter_mut().zip(vr).for_each(|(o, &x)| *o += w * x);
    }
}

/// Attention of positions pos0..pos0+n for every head: `qs` is (n, n_head·hd_k), `att`
/// (n, n_head·hd_v); position p attends to max(0, p+1−window)..=p, whose keys and values
/// are in the caches. A prompt on AVX-512 goes through the tiled kernel (keys transposed
/// once, tiles of positions × a KV group's query heads); otherwise, and for a few tokens
/// (where the tiles would leave threads idle), one task per (position, head).
///
/// An f32 cache takes the unrounded path (`attend_head_f32`).
#[allow(clippy::too_many_arguments)]
pub fn attend_positions(
    qs: &[f32],
    kv: KvLayer<'_>,
    s: AttnShape,
    pos0: usize,
    n: usize,
    window: Option<usize>,
    att: &mut [f32],
) {
    let (nh, hk, hv) = (s.n_head, s.hd_k, s.hd_v);
    assert_eq!(qs.len(), n * nh * hk);
    assert_eq!(att.len(), n * nh * hv);
    let first = |pos: usize| window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let (k_cache, v_cache) = match kv {
        KvLayer::F16(k, v) => (k, v),
        KvLayer::F32(k, v) => {
            att.par_chunks_mut(hv)
                .enumerate()
                .for_each_init(Vec::new, |scores, (i, out)| {
                    let (t, h) = (i / nh, i % nh);
                    let pos = pos0 + t;
                    let qh = &qs[(t * nh + h) * hk..(t * nh + h + 1) * hk];
                    attend_head_f32(qh, k, v, s, h, first(pos), pos, scores, out);
                });
            return;
        }
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(tile) = fast_path(s)
        .and_then(|a| a.tile)
        .filter(|_| n >= TILED_MIN_TOKENS)
    {
        tiled(tile, qs, k_cache, v_cache, s, pos0, n, &first, att);
        return;
    }
    att.par_chunks_mut(hv).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(q16, scores), (i, out)| {
            let (t, h) = (i / nh, i % nh);
            let pos = pos0 + t;
            let qh = &qs[(t * nh + h) * hk..(t * nh + h + 1) * hk];
            attend_head(
                qh,
                k_cache,
                v_cache,
                s,
                h,
                first(pos),
                pos,
                q16,
                scores,
                out,
            );
        },
    );
}

/// Fewest tokens for the tiled kernel: below it, per-(position, head) tasks keep every
/// thread busy and the per-layer key transposition would not pay.
#[cfg(target_arch = "x86_64")]
const TILED_MIN_TOKENS: usize = 4;

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn tiled(
    attend_tile: simd::TileAttnFn,
    qs: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    s: AttnShape,
    pos0: usize,
    n: usize,
    first: &(dyn Fn(usize) -> usize + Sync),
    att: &mut [f32],
) {
    use simd::attn_tile::{KeysT, TileScratch};
    use simd::HeadLayout;
    let (nh, nkv, hk, hv) = (s.n_head, s.n_kv, s.hd_k, s.hd_v);
    let group = nh / nkv;
    let layout = |g: usize| HeadLayout {
        k_stride: nkv * hk,
        k_off: g * hk,
        v_stride: nkv * hv,
        v_off: g * hv,
    };
    let keys: Vec<KeysT> = (0..nkv)
        .into_par_iter()
        .map(|g| KeysT::new(k_cache, layout(g), hk, pos0 + n))
        .collect();
    // Up to 8 positions per tile, fewer when that would leave under ~4 tasks per thread.
    let per_tile = (n * nkv / (4 * rayon::current_num_threads())).clamp(1, 8);
    let tiles: Vec<(usize, usize)> = (0..nkv)
        .flat_map(|g| (0..n).step_by(per_tile).map(move |t0| (g, t0)))
        .collect();
    let outs: Vec<Vec<f32>> = tiles
        .par_iter()
        .map_init(
            || (TileScratch::default(), Vec::new(), Vec::new()),
            |(scratch, q, ranges), &(g, t0)| {
                let t1 = (t0 + per_tile).min(n);
                q.clear();
                ranges.clear();
                for t in t0..t1 {
                    let pos = pos0 + t;
                    for h in g * group..(g + 1) * group {
                        q.extend_from_slice(&qs[(t * nh + h) * hk..(t * nh + h + 1) * hk]);
                        ranges.push((first(pos), pos));
                    }
                }
                let mut out = vec![0f32; ranges.len() * hv];
                attend_tile(
                    q,
                    ranges,
                    &keys[g],
                    v_cache,
                    layout(g),
                    s.scale,
                    scratch,
                    &mut out,
                );
                out
            },
        )
        .collect();
    for (&(g, t0), out) in tiles.iter().zip(&outs) {
        for (i, o) in out.chunks_exact(hv).enumerate() {
            let (t, h) = (t0 + i / group, g * group + i % group);
            att[(t * nh + h) * hv..(t * nh + h + 1) * hv].copy_from_slice(o);
        }
    }
}

/// The kernel set's attention kernel, where it handles these head sizes and no soft-cap
/// (`LEDGE_SIMD=avx2|scalar` have none: the portable path).
fn fast_path(s: AttnShape) -> Option<simd::AttnKernel> {
    if s.softcap.is_some() {
        return None;
    }
    simd::kernels()
        .attn
        .filter(|a| (a.supports)(s.hd_k, s.hd_v))
}
