//! Models: hyperparameters (config.rs), the KV cache, and the decoder-only transformer that
//! runs both supported families. Llama and Gemma 3 share one explicit per-layer forward pass;
//! their differences are the flags of `ArchQuirks` in config.rs, in one commented table.
//!
//! A model holds TensorViews into the GGUF map: loading copies no weights.

pub mod config;
pub mod kv_cache;
pub mod synth;

use std::borrow::Cow;

use rayon::prelude::*;

use crate::gguf::{GgmlType, GgufFile};
use crate::ops::{self, activation, attention, norm, rope};
use crate::quant::repack::{self, PackedMatrix};
use crate::quant::repack16::{self, Packed16};
use crate::quant::QuantError;
use crate::tensor::TensorView;
pub use config::{Arch, ConfigError, ModelConfig};
pub use kv_cache::KvCache;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("tensor {0:?} is missing from the model file")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    BadShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {name:?} has type {ty}, which ledge cannot compute with")]
    UnsupportedType { name: String, ty: GgmlType },
    #[error("the context is full: {needed} positions needed, the KV cache holds {ctx} (use a larger --ctx)")]
    ContextFull { needed: usize, ctx: usize },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },
    #[error(transparent)]
    Quant(#[from] QuantError),
}

/// One transformer block's weights, borrowed from the file.
pub struct LayerWeights<'a> {
    pub attn_norm: Cow<'a, [f32]>,
    /// W (n_embd, n_head·hd_k)
    pub wq: TensorView<'a>,
    /// W (n_embd, n_kv·hd_k)
    pub wk: TensorView<'a>,
    /// W (n_embd, n_kv·hd_v)
    pub wv: TensorView<'a>,
    /// W (n_head·hd_v, n_embd)
    pub wo: TensorView<'a>,
    pub q_norm: Option<Cow<'a, [f32]>>,
    pub k_norm: Option<Cow<'a, [f32]>>,
    pub post_attn_norm: Option<Cow<'a, [f32]>>,
    pub ffn_norm: Cow<'a, [f32]>,
    /// W (n_embd, n_ff)
    pub w_gate: TensorView<'a>,
    /// W (n_embd, n_ff)
    pub w_up: TensorView<'a>,
    /// W (n_ff, n_embd)
    pub w_down: TensorView<'a>,
    pub post_ffn_norm: Option<Cow<'a, [f32]>>,
}

pub struct Model<'a> {
    pub config: ModelConfig,
    /// (n_embd, n_vocab): one row per token.
    pub tok_embd: TensorView<'a>,
    pub output_norm: Cow<'a, [f32]>,
    /// (n_embd, n_vocab); the embedding matrix itself when the file ties them.
    pub output: TensorView<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    /// Load-time repacked copies of the matmul weights (`quant::repack`), used instead of the
    /// mapped blocks where present; empty when repacking is off or the CPU has no kernel.
    pub packed: PackedWeights,
}

/// The repacked matrices of a model: per layer [wq, wk, wv, wo, w_gate, w_up, w_down], and
/// the output matrix. `None` where a matrix keeps its GGUF blocks.
#[derive(Default)]
pub struct PackedWeights {
    pub layers: Vec<[Option<PackedMatrix>; 7]>,
    pub output: Option<PackedMatrix>,
    /// Sixteen-row copies (`quant::repack16`), preferred where a weight has one; a weight
    /// has at most one packed copy.
    pub layers16: Vec<[Option<Packed16>; 7]>,
    pub output16: Option<Packed16>,
}

impl PackedWeights {
    /// Repacks every matmul weight that has a packed layout for this CPU (in parallel: a
    /// 7B model's 3.8 GB take a few seconds otherwise).
    fn build(layers: &[LayerWeights], output: &TensorView) -> PackedWeights {
        if !repack::enabled() {
            return PackedWeights::default();
        }
        let layers16: Vec<[Option<Packed16>; 7]> = layers
            .par_iter()
            .map(|l| {
                let m = [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down];
                std::array::from_fn(|i| repack16::maybe_repack(m[i]))
            })
            .collect();
        let output16 = repack16::maybe_repack(output);
        let layers = layers
            .par_iter()
            .zip(&layers16)
            .map(|(l, p16)| {
                let m = [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down];
                std::array::from_fn(|i| {
                    p16[i]
                        .is_none()
                        .then(|| repack::maybe_repack(m[i]))
                        .flatten()
                })
            })
            .collect();
        let output = output16
            .is_none()
            .then(|| repack::maybe_repack(output))
            .flatten();
        PackedWeights {
            layers,
            output,
            layers16,
            output16,
        }
    }

    /// Bytes held by the packed copies.
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .chain(std::iter::once(&self.output))
            .flatten()
            .map(|p| p.size_bytes())
            .sum::<usize>()
            + self
                .layers16
                .iter()
                .flatten()
                .chain(std::iter::once(&self.output16))
                .flatten()
                .map(|p| p.size_bytes())
                .sum::<usize>()
    }
}

/// out = x · Wᵀ with W's packed copy where it has one, else its GGUF blocks.
fn matmul(
    w: &TensorView,
    (packed, packed16): (Option<&PackedMatrix>, Option<&Packed16>),
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    if let (Some(p), Some(kernel)) = (packed16, repack16::kernel()) {
        ops::matmul::matmul_packed16(p, kernel, x, n, out);
        return Ok(());
    }
    match (packed, repack::kernel()) {
        (Some(p), Some(kernel)) => {
            ops::matmul::matmul_packed(p, kernel, x, n, out);
            Ok(())
        }
        _ => ops::matmul(w, x, n, out),
    }
}

/// The activations entering a group of matmuls, as a calibration observer sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulInput {
    /// Normed input of attn_q, attn_k, attn_v.
    Attn,
    /// Input of attn_output.
    AttnOutput,
    /// Normed input of ffn_gate, ffn_up.
    Ffn,
    /// Input of ffn_down.
    FfnDown,
    /// Normed input of the output matrix (layer is None).
    Output,
}

/// Sees each matmul input: (layer, or None for the output matrix; which; rows of the input).
pub type Observer<'o> = dyn FnMut(Option<usize>, MatmulInput, &[f32]) + Send + 'o;

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

struct Loader<'a> {
    f: &'a GgufFile,
}

impl<'a> Loader<'a> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<TensorView<'a>, ModelError> {
        let t = self
            .f
            .tensor(name)
            .map_err(|_| ModelError::MissingTensor(name.to_string()))?;
        if t.shape != shape {
            return Err(ModelError::BadShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        if !crate::quant::is_supported(t.ty) {
            return Err(ModelError::UnsupportedType {
                name: name.to_string(),
                ty: t.ty,
            });
        }
        Ok(t)
    }

    /// A norm weight vector: borrowed when it is aligned F32, else dequantized (tiny).
    fn vector(&self, name: &str, len: usize) -> Result<Cow<'a, [f32]>, ModelError> {
        let t = self.tensor(name, &[len])?;
        if t.ty == GgmlType::F32 {
            if let Cow::Borrowed(bytes) = t.data {
                if let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
                    return Ok(Cow::Borrowed(v));
                }
            }
        }
        Ok(Cow::Owned(t.to_f32()?))
    }

    fn optional_vector(
        &self,
        name: &str,
        len: usize,
    ) -> Result<Option<Cow<'a, [f32]>>, ModelError> {
        match self.f.tensor_info(name) {
            None => Ok(None),
            Some(_) => self.vector(name, len).map(Some),
        }
    }
}

impl<'a> Model<'a> {
    /// Builds the model over an open GGUF file, checking every tensor's presence and shape.
    pub fn load(f: &'a GgufFile) -> Result<Model<'a>, ModelError> {
        let config = ModelConfig::from_gguf(f)?;
        let l = Loader { f };
        let (d, nv) = (config.n_embd, config.n_vocab);
        let tok_embd = l.tensor("token_embd.weight", &[d, nv])?;
        let output = if f.tensor_info("output.weight").is_some() {
            l.tensor("output.weight", &[d, nv])?
        } else {
            tok_embd.clone()
        };
        let q = config.quirks;
        let mut layers = Vec::with_capacity(config.n_layer);
        for (i, lc) in config.layers.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let (hk, hv) = (config.head_dim_k, config.head_dim_v);
            let qk_norm = |s: &str| -> Result<_, ModelError> {
                if q.qk_norm {
                    Ok(Some(l.vector(&n(s), hk)?))
                } else {
                    l.optional_vector(&n(s), hk)
                }
            };
            let post = |s: &str| -> Result<_, ModelError> {
                if q.post_norms {
                    Ok(Some(l.vector(&n(s), d)?))
                } else {
                    Ok(None)
                }
            };
            layers.push(LayerWeights {
                attn_norm: l.vector(&n("attn_norm"), d)?,
                wq: l.tensor(&n("attn_q"), &[d, lc.n_head * hk])?,
                wk: l.tensor(&n("attn_k"), &[d, lc.n_head_kv * hk])?,
                wv: l.tensor(&n("attn_v"), &[d, lc.n_head_kv * hv])?,
                wo: l.tensor(&n("attn_output"), &[lc.n_head * hv, d])?,
                q_norm: qk_norm("attn_q_norm")?,
                k_norm: qk_norm("attn_k_norm")?,
                post_attn_norm: post("post_attention_norm")?,
                ffn_norm: l.vector(&n("ffn_norm"), d)?,
                w_gate: l.tensor(&n("ffn_gate"), &[d, lc.n_ff])?,
                w_up: l.tensor(&n("ffn_up"), &[d, lc.n_ff])?,
                w_down: l.tensor(&n("ffn_down"), &[lc.n_ff, d])?,
                post_ffn_norm: post("post_ffw_norm")?,
            });
        }
        let packed = PackedWeights::build(&layers, &output);
        Ok(Model {
            packed,
            tok_embd,
            output_norm: l.vector("output_norm.weight", d)?,
            output,
            layers,
            config,
        })
    }

    /// A KV cache for `ctx` positions.
    pub fn new_cache(&self, ctx: usize) -> KvCache {
        let c = &self.config;
        let widths: Vec<(usize, usize)> = c
            .layers
            .iter()
            .map(|l| (l.n_head_kv * c.head_dim_k, l.n_head_kv * c.head_dim_v))
            .collect();
        KvCache::new(ctx, &widths)
    }

    /// Runs `tokens` at positions `cache.len ..`, appends their keys and values to the cache,
    /// and returns logits (n_vocab per returned position).
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        self.forward_observed(cache, tokens, logits, &mut |_, _, _| {})
    }

    /// `forward`, showing `observe(layer, which, x)` every matmul input `x` (rows of the
    /// matrix's input length, one per position): how calibration collects statistics.
    pub fn forward_observed(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits: Logits,
        observe: &mut Observer<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        if rayon::current_thread_index().is_none() {
            // Run the whole pass on a pool thread: its many parallel loops then start on a
            // worker that takes part in them, instead of each one waking the pool from the
            // outside and putting the caller to sleep (two context switches per loop,
            // ~15% of decode time with one thread).
            return rayon::scope(|_| self.forward_in_pool(cache, tokens, logits, observe));
        }
        self.forward_in_pool(cache, tokens, logits, observe)
    }

    fn forward_in_pool(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits: Logits,
        observe: &mut Observer<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let q = c.quirks;
        let (n, d) = (tokens.len(), c.n_embd);
        let pos0 = cache.len;
        if n == 0 {
            return Ok(Vec::new());
        }
        if pos0 + n > cache.ctx {
            return Err(ModelError::ContextFull {
                needed: pos0 + n,
                ctx: cache.ctx,
            });
        }
        // x (n, d): token embeddings.
        let mut x = vec![0f32; n * d];
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= c.n_vocab {
                return Err(ModelError::BadToken {
                    id,
                    n_vocab: c.n_vocab,
                });
            }
            self.tok_embd
                .dequantize_into(id as usize, &mut x[t * d..(t + 1) * d])?;
        }
        if q.scale_embeddings {
            let s = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }

        let (hk, hv) = (c.head_dim_k, c.head_dim_v);
        let mut xn = vec![0f32; n * d];
        // One table per distinct (base, scale): Gemma 3's local and global layers differ.
        let mut ropes: Vec<rope::RopeTable> = Vec::new();
        for (il, (lw, lc)) in self.layers.iter().zip(&c.layers).enumerate() {
            let (nh, nkv) = (lc.n_head, lc.n_head_kv);
            // [wq, wk, wv, wo, w_gate, w_up, w_down]'s packed copies, if any.
            let pk = |i: usize| {
                (
                    self.packed.layers.get(il).and_then(|l| l[i].as_ref()),
                    self.packed.layers16.get(il).and_then(|l| l[i].as_ref()),
                )
            };
            // --- attention ---
            xn.copy_from_slice(&x);
            norm::rms_norm(&mut xn, &lw.attn_norm, c.rms_eps);
            observe(Some(il), MatmulInput::Attn, &xn);
            let mut qs = vec![0f32; n * nh * hk]; // (n, n_head·hd_k)
            let mut ks = vec![0f32; n * nkv * hk]; // (n, n_kv·hd_k)
            let mut vs = vec![0f32; n * nkv * hv]; // (n, n_kv·hd_v)
            matmul(&lw.wq, pk(0), &xn, n, &mut qs)?;
            matmul(&lw.wk, pk(1), &xn, n, &mut ks)?;
            matmul(&lw.wv, pk(2), &xn, n, &mut vs)?;
            if let Some(w) = &lw.q_norm {
                norm::rms_norm(&mut qs, w, c.rms_eps);
            }
            if let Some(w) = &lw.k_norm {
                norm::rms_norm(&mut ks, w, c.rms_eps);
            }
            let rt = match ropes
                .iter()
                .position(|r| r.base == lc.rope_base && r.freq_scale == lc.rope_freq_scale)
            {
                Some(i) => &ropes[i],
                None => {
                    ropes.push(rope::RopeTable::new(
                        pos0,
                        n,
                        c.n_rot,
                        lc.rope_base,
                        lc.rope_freq_scale,
                    ));
                    ropes.last().unwrap()
                }
            };
            for t in 0..n {
                let pos = pos0 + t;
                for head in qs[t * nh * hk..(t + 1) * nh * hk].chunks_exact_mut(hk) {
                    rt.apply(head, pos, q.rope_style);
                }
                for head in ks[t * nkv * hk..(t + 1) * nkv * hk].chunks_exact_mut(hk) {
                    rt.apply(head, pos, q.rope_style);
                }
                cache.store(
                    il,
                    pos,
                    &ks[t * nkv * hk..(t + 1) * nkv * hk],
                    &vs[t * nkv * hv..(t + 1) * nkv * hv],
                );
            }
            let mut att = vec![0f32; n * nh * hv]; // (n, n_head·hd_v)
            let (kc, vc) = (&cache.k[il], &cache.v[il]);
            let window = if lc.sliding { c.sliding_window } else { None };
            let shape = attention::AttnShape {
                n_head: nh,
                n_kv: nkv,
                hd_k: hk,
                hd_v: hv,
                scale: c.attn_scale,
            };
            attention::attend_positions(&qs, kc, vc, shape, pos0, n, window, &mut att);
            let mut o = vec![0f32; n * d];
            observe(Some(il), MatmulInput::AttnOutput, &att);
            matmul(&lw.wo, pk(3), &att, n, &mut o)?;
            if let Some(w) = &lw.post_attn_norm {
                norm::rms_norm(&mut o, w, c.rms_eps);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            // --- feed-forward ---
            xn.copy_from_slice(&x);
            norm::rms_norm(&mut xn, &lw.ffn_norm, c.rms_eps);
            observe(Some(il), MatmulInput::Ffn, &xn);
            let mut gate = vec![0f32; n * lc.n_ff]; // (n, n_ff)
            let mut up = vec![0f32; n * lc.n_ff];
            matmul(&lw.w_gate, pk(4), &xn, n, &mut gate)?;
            matmul(&lw.w_up, pk(5), &xn, n, &mut up)?;
            activation::gated(&mut gate, &up, q.gelu_ffn);
            observe(Some(il), MatmulInput::FfnDown, &gate);
            matmul(&lw.w_down, pk(6), &gate, n, &mut o)?;
            if let Some(w) = &lw.post_ffn_norm {
                norm::rms_norm(&mut o, w, c.rms_eps);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        cache.len = pos0 + n;

        let rows = match logits {
            Logits::All => &mut x[..],
            Logits::Last => &mut x[(n - 1) * d..],
        };
        let m = rows.len() / d;
        norm::rms_norm(rows, &self.output_norm, c.rms_eps);
        observe(None, MatmulInput::Output, rows);
        let mut out = vec![0f32; m * c.n_vocab];
        let po = (self.packed.output.as_ref(), self.packed.output16.as_ref());
        matmul(&self.output, po, rows, m, &mut out)?;
        Ok(out)
    }
}
