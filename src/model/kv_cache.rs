//! The KV cache: keys and values of every past position, per layer, preallocated for the
//! whole context. Stored as f16 by default, like llama.cpp's default cache: half the memory,
//! and the same rounding llama.cpp applies. An f32 cache (llama.cpp's `--cache-type-k f32`)
//! keeps keys and values unrounded: slower attention (the portable path), but logits that
//! equal an f32 reference such as transformers to ~1e-6 instead of the f16 cache's ~1e-3.

use half::f16;
use half::slice::HalfFloatSliceExt;

pub use crate::ops::attention::KvLayer;

/// How keys and values are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F16,
    F32,
}

/// One layer's keys or values, (ctx, width) row-major.
pub enum KvRows {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvRows {
    fn zeroed(ty: KvType, n: usize) -> KvRows {
        // Zeroed allocations come from the OS untouched: a 4096-position cache costs no
        // time until positions are used (vec![f16::ZERO; n] would write every page).
        match ty {
            KvType::F16 => KvRows::F16(bytemuck::zeroed_vec(n)),
            KvType::F32 => KvRows::F32(bytemuck::zeroed_vec(n)),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            KvRows::F16(v) => v.len() * 2,
            KvRows::F32(v) => v.len() * 4,
        }
    }
}

/// Some positions' key and value rows of one layer, to write.
pub enum KvLayerMut<'a> {
    F16(&'a mut [f16], &'a mut [f16]),
    F32(&'a mut [f32], &'a mut [f32]),
}

pub struct KvCache {
    pub ctx: usize,
    pub ty: KvType,
    /// Per layer: (ctx, n_head_kv · head_dim_k) keys and (ctx, n_head_kv · head_dim_v) values.
    k: Vec<KvRows>,
    v: Vec<KvRows>,
    pub k_width: Vec<usize>,
    pub v_width: Vec<usize>,
    /// Positions filled so far.
    pub len: usize,
}

impl KvCache {
    /// `widths[l]` = (n_head_kv · head_dim_k, n_head_kv · head_dim_v) of layer l.
    pub fn new(ctx: usize, widths: &[(usize, usize)]) -> KvCache {
        Self::with_type(ctx, widths, KvType::F16)
    }

    pub fn with_type(ctx: usize, widths: &[(usize, usize)], ty: KvType) -> KvCache {
        KvCache {
            ctx,
            ty,
            k: widths
                .iter()
                .map(|w| KvRows::zeroed(ty, ctx * w.0))
                .collect(),
            v: widths
                .iter()
                .map(|w| KvRows::zeroed(ty, ctx * w.1))
                .collect(),
            k_width: widths.iter().map(|w| w.0).collect(),
            v_width: widths.iter().map(|w| w.1).collect(),
            len: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(KvRows::bytes).sum()
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets positions from `len` on (e.g. to rewind to a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Layer `layer`'s keys and values (all `ctx` positions).
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        match (&self.k[layer], &self.v[layer]) {
            (KvRows::F16(k), KvRows::F16(v)) => KvLayer::F16(k, v),
            (KvRows::F32(k), KvRows::F32(v)) => KvLayer::F32(k, v),
            _ => unreachable!("keys and values share one type"),
        }
    }

    /// Layer `layer`'s key and value rows for positions pos .. pos + n, to be written.
    pub fn rows_mut(&mut self, layer: usize, pos: usize, n: usize) -> KvLayerMut<'_> {
        let (kw, vw) = (self.k_width[layer], self.v_width[layer]);
        let (kr, vr) = (pos * kw..(pos + n) * kw, pos * vw..(pos + n) * vw);
        match (&mut self.k[layer], &mut self.v[layer]) {
            (KvRows::F16(k), KvRows::F16(v)) => KvLayerMut::F16(&mut k[kr], &mut v[vr]),
            (KvRows::F32(k), KvRows::F32(v)) => KvLayerMut::F32(&mut k[kr], &mut v[vr]),
            _ => unreachable!("keys and values share one type"),
        }
    }

    /// Rounds f32 keys or values to the cache's f16.
    pub fn convert(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src);
    }

    /// Stores one position's keys and values.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        match self.rows_mut(layer, pos, 1) {
            KvLayerMut::F16(kc, vc) => {
                Self::convert(k, kc);
                Self::convert(v, vc);
            }
            KvLayerMut::F32(kc, vc) => {
                kc.copy_from_slice(k);
                vc.copy_from_slice(v);
            }
        }
    }
}
