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
use crate::ops::{activation, attention, matmul, norm, rope, Input as SharedInput, Weight};
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
    pub wq: Weight<'a>,
    /// W (n_embd, n_kv·hd_k)
    pub wk: Weight<'a>,
    /// W (n_embd, n_kv·hd_v)
    pub wv: Weight<'a>,
    /// W (n_head·hd_v, n_embd)
    pub wo: Weight<'a>,
    pub q_norm: Option<Cow<'a, [f32]>>,
    pub k_norm: Option<Cow<'a, [f32]>>,
    pub post_attn_norm: Option<Cow<'a, [f32]>>,
    pub ffn_norm: Cow<'a, [f32]>,
    /// W (n_embd, n_ff)
    pub w_gate: Weight<'a>,
    /// W (n_embd, n_ff)
    pub w_up: Weight<'a>,
    /// W (n_ff, n_embd)
    pub w_down: Weight<'a>,
    pub post_ffn_norm: Option<Cow<'a, [f32]>>,
}

impl LayerWeights<'_> {
    /// [wq, wk, wv, wo, w_gate, w_up, w_down].
    pub fn matmul_weights(&self) -> [&Weight<'_>; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }
}

pub struct Model<'a> {
    pub config: ModelConfig,
    /// (n_embd, n_vocab): one row per token.
    pub tok_embd: TensorView<'a>,
    pub output_norm: Cow<'a, [f32]>,
    /// (n_embd, n_vocab); the embedding matrix itself when the file ties them.
    pub output: Weight<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    /// The size of the load-time packed copies among the weights.
    pub packed: PackedSize,
}

/// Bytes held by a model's load-time packed weight copies (`Weight::packed_bytes`).
#[derive(Clone, Copy, Debug, Default)]
pub struct PackedSize(pub usize);

impl PackedSize {
    pub fn size_bytes(&self) -> usize {
        self.0
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
        let output_view = if f.tensor_info("output.weight").is_some() {
            l.tensor("output.weight", &[d, nv])?
        } else {
            tok_embd.clone()
        };
        let q = config.quirks;
        let mut views = Vec::with_capacity(config.n_layer);
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
            views.push((
                [
                    l.tensor(&n("attn_q"), &[d, lc.n_head * hk])?,
                    l.tensor(&n("attn_k"), &[d, lc.n_head_kv * hk])?,
                    l.tensor(&n("attn_v"), &[d, lc.n_head_kv * hv])?,
                    l.tensor(&n("attn_output"), &[lc.n_head * hv, d])?,
                    l.tensor(&n("ffn_gate"), &[d, lc.n_ff])?,
                    l.tensor(&n("ffn_up"), &[d, lc.n_ff])?,
                    l.tensor(&n("ffn_down"), &[lc.n_ff, d])?,
                ],
                (
                    l.vector(&n("attn_norm"), d)?,
                    qk_norm("attn_q_norm")?,
                    qk_norm("attn_k_norm")?,
                    post("post_attention_norm")?,
                    l.vector(&n("ffn_norm"), d)?,
                    post("post_ffw_norm")?,
                ),
            ));
        }
        // Each weight's layout, chosen once; in parallel, as repacking a 7B model's 3.8 GB
        // takes a few seconds otherwise.
        let ks = crate::quant::simd::kernels();
        let layers: Vec<LayerWeights> = views
            .into_par_iter()
            .map(
                |(w, (attn_norm, q_norm, k_norm, post_attn_norm, ffn_norm, post_ffn_norm))| {
                    let [wq, wk, wv, wo, w_gate, w_up, w_down] = w.map(|v| Weight::load(v, ks));
                    LayerWeights {
                        attn_norm,
                        wq,
                        wk,
                        wv,
                        wo,
                        q_norm,
                        k_norm,
                        post_attn_norm,
                        ffn_norm,
                        w_gate,
                        w_up,
                        w_down,
                        post_ffn_norm,
                    }
                },
            )
            .collect();
        let output = Weight::load(output_view, ks);
        let packed = PackedSize(
            layers
                .iter()
                .flat_map(|l| l.matmul_weights())
                .chain(std::iter::once(&output))
                .map(|w| w.packed_bytes())
                .sum(),
        );
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
        // Activation buffers for the whole pass, sized for the widest layer: allocating them
        // per layer cost page faults and zeroing on every layer of a prompt.
        let widest = |f: &dyn Fn(&config::LayerConfig) -> usize| {
            c.layers.iter().map(f).max().unwrap_or(0) * n
        };
        let mut xn = vec![0f32; n * d];
        let mut qs_buf = vec![0f32; widest(&|l| l.n_head * hk)];
        let mut ks_buf = vec![0f32; widest(&|l| l.n_head_kv * hk)];
        let mut vs_buf = vec![0f32; widest(&|l| l.n_head_kv * hv)];
        let mut att_buf = vec![0f32; widest(&|l| l.n_head * hv)];
        let mut gate_buf = vec![0f32; widest(&|l| l.n_ff)];
        let mut up_buf = vec![0f32; widest(&|l| l.n_ff)];
        let mut o = vec![0f32; n * d];
        // One table per distinct (base, scale): Gemma 3's local and global layers differ.
        let mut ropes: Vec<rope::RopeTable> = Vec::new();
        for (il, (lw, lc)) in self.layers.iter().zip(&c.layers).enumerate() {
            let (nh, nkv) = (lc.n_head, lc.n_head_kv);
            // --- attention ---
            // The first layer norms the embeddings; later ones got their input from the
            // previous layer's fused residual add.
            if il == 0 {
                norm::rms_norm_into(&x, &mut xn, &lw.attn_norm, c.rms_eps);
            }
            observe(Some(il), MatmulInput::Attn, &xn);
            let qs = &mut qs_buf[..n * nh * hk]; // (n, n_head·hd_k)
            let ks = &mut ks_buf[..n * nkv * hk]; // (n, n_kv·hd_k)
            let vs = &mut vs_buf[..n * nkv * hv]; // (n, n_kv·hd_v)
            {
                let mut input = SharedInput::new(&xn, n);
                // W (d, n_head·hd_k) @ xn (n, d) -> qs (n, n_head·hd_k), and likewise k, v.
                matmul(&lw.wq, &mut input, qs)?;
                matmul(&lw.wk, &mut input, ks)?;
                matmul(&lw.wv, &mut input, vs)?;
            }
            if let Some(w) = &lw.q_norm {
                norm::rms_norm(qs, w, c.rms_eps);
            }
            if let Some(w) = &lw.k_norm {
                norm::rms_norm(ks, w, c.rms_eps);
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
            rope_and_store(
                rt,
                q.rope_style,
                (qs, ks, vs),
                (nh * hk, nkv * hk, nkv * hv, hk),
                cache,
                il,
                pos0,
            );
            let att = &mut att_buf[..n * nh * hv]; // (n, n_head·hd_v)
            let (kc, vc) = (&cache.k[il], &cache.v[il]);
            let window = if lc.sliding { c.sliding_window } else { None };
            let shape = attention::AttnShape {
                n_head: nh,
                n_kv: nkv,
                hd_k: hk,
                hd_v: hv,
                scale: c.attn_scale,
            };
            attention::attend_positions(qs, kc, vc, shape, pos0, n, window, att);
            observe(Some(il), MatmulInput::AttnOutput, att);
            // W (n_head·hd_v, d) @ att (n, n_head·hd_v) -> o (n, d)
            matmul(&lw.wo, &mut SharedInput::new(att, n), &mut o)?;
            if let Some(w) = &lw.post_attn_norm {
                norm::rms_norm(&mut o, w, c.rms_eps);
            }
            // x += o; xn = norm(x)
            norm::add_rms_norm(&mut x, &o, &mut xn, &lw.ffn_norm, c.rms_eps);

            // --- feed-forward ---
            observe(Some(il), MatmulInput::Ffn, &xn);
            let gate = &mut gate_buf[..n * lc.n_ff]; // (n, n_ff)
            let up = &mut up_buf[..n * lc.n_ff];
            {
                let mut input = SharedInput::new(&xn, n);
                // W (d, n_ff) @ xn (n, d) -> gate, up (n, n_ff)
                matmul(&lw.w_gate, &mut input, gate)?;
                matmul(&lw.w_up, &mut input, up)?;
            }
            activation::gated(gate, up, q.gelu_ffn);
            observe(Some(il), MatmulInput::FfnDown, gate);
            // W (n_ff, d) @ gate (n, n_ff) -> o (n, d)
            matmul(&lw.w_down, &mut SharedInput::new(gate, n), &mut o)?;
            if let Some(w) = &lw.post_ffn_norm {
                norm::rms_norm(&mut o, w, c.rms_eps);
            }
            // x += o, and the next layer's normed input in the same pass over x.
            match self.layers.get(il + 1) {
                Some(next) => norm::add_rms_norm(&mut x, &o, &mut xn, &next.attn_norm, c.rms_eps),
                None => norm::add(&mut x, &o),
            }
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
        // W (d, n_vocab) @ rows (m, d) -> out (m, n_vocab)
        matmul(&self.output, &mut SharedInput::new(rows, m), &mut out)?;
        Ok(out)
    }
}

/// Rotates each token's query and key heads and stores its keys and values in the cache,
/// tokens split across the pool for prompts (serially it was ~3 % of a two-thread prompt).
/// `widths` = (query row, key row, value row, key head).
fn rope_and_store(
    rt: &rope::RopeTable,
    style: config::RopeStyle,
    (qs, ks, vs): (&mut [f32], &mut [f32], &[f32]),
    (qw, kw, vw, hk): (usize, usize, usize, usize),
    cache: &mut KvCache,
    layer: usize,
    pos0: usize,
) {
    let n = qs.len() / qw;
    let (kc, vc) = cache.rows_mut(layer, pos0, n);
    let one = |t: usize,
               q: &mut [f32],
               k: &mut [f32],
               v: &[f32],
               kc: &mut [half::f16],
               vc: &mut [half::f16]| {
        for head in q.chunks_exact_mut(hk) {
            rt.apply(head, pos0 + t, style);
        }
        for head in k.chunks_exact_mut(hk) {
            rt.apply(head, pos0 + t, style);
        }
        KvCache::convert(k, kc);
        KvCache::convert(v, vc);
    };
    if n < 16 {
        for t in 0..n {
            one(
                t,
                &mut qs[t * qw..(t + 1) * qw],
                &mut ks[t * kw..(t + 1) * kw],
                &vs[t * vw..(t + 1) * vw],
                &mut kc[t * kw..(t + 1) * kw],
                &mut vc[t * vw..(t + 1) * vw],
            );
        }
        return;
    }
    qs.par_chunks_mut(qw)
        .zip(ks.par_chunks_mut(kw))
        .zip(vs.par_chunks(vw))
        .zip(kc.par_chunks_mut(kw).zip(vc.par_chunks_mut(vw)))
        .enumerate()
        .with_min_len(8)
        .for_each(|(t, (((q, k), v), (kc, vc)))| one(t, q, k, v, kc, vc));
}
