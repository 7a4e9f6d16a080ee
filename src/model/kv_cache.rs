//! The KV cache: keys and values of every past position, per layer, preallocated for the
//! whole context. Stored as f16 like llama.cpp's default cache: half the memory, and the same
//! rounding llama.cpp applies.

use half::f16;
use half::slice::HalfFloatSliceExt;

pub struct KvCache {
    pub ctx: usize,
    /// Per layer: (ctx, n_head_kv · head_dim_k) keys and (ctx, n_head_kv · head_dim_v) values.
    pub k: Vec<Vec<f16>>,
    pub v: Vec<Vec<f16>>,
    pub k_width: Vec<usize>,
    pub v_width: Vec<usize>,
    /// Positions filled so far.
    pub len: usize,
}

impl KvCache {
    /// `widths[l]` = (n_head_kv · head_dim_k, n_head_kv · head_dim_v) of layer l.
    pub fn new(ctx: usize, widths: &[(usize, usize)]) -> KvCache {
        KvCache {
            ctx,
            // Zeroed allocations come from the OS untouched: a 4096-position cache costs no
            // time until positions are used (vec![f16::ZERO; n] would write every page).
            k: widths
                .iter()
                .map(|w| bytemuck::zeroed_vec(ctx * w.0))
                .collect(),
            v: widths
                .iter()
                .map(|w| bytemuck::zeroed_vec(ctx * w.1))
                .collect(),
            k_width: widths.iter().map(|w| w.0).collect(),
            v_width: widths.iter().map(|w| w.1).collect(),
            len: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.k.iter().map(Vec::len).sum::<usize>() + self.v.iter().map(Vec::len).sum::<usize>())
            * 2
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets positions from `len` on (e.g. to rewind to a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Layer `layer`'s key and value rows for positions pos .. pos + n, to be written.
    pub fn rows_mut(&mut self, layer: usize, pos: usize, n: usize) -> (&mut [f16], &mut [f16]) {
        let (kw, vw) = (self.k_width[layer], self.v_width[layer]);
        (
            &mut self.k[layer][pos * kw..(pos + n) * kw],
            &mut self.v[layer][pos * vw..(pos + n) * vw],
        )
    }

    /// Rounds f32 keys or values to the cache's f16.
    pub fn convert(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src);
    }

    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (kw, vw) = (self.k_width[layer], self.v_width[layer]);
        for (d, &s) in self.k[layer][pos * kw..(pos + 1) * kw].iter_mut().zip(k) {
            *d = f16::from_f32(s);
        }
        for (d, &s) in self.v[layer][pos * vw..(pos + 1) * vw].iter_mut().zip(v) {
            *d = f16::from_f32(s);
        }
    }
}
