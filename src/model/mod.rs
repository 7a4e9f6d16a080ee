//! Models: the families (arch/, one `ArchSpec` each), hyperparameters (config.rs), the KV
//! cache, and the one decoder-only forward pass that runs every family by reading its spec.
//!
//! A model holds TensorViews into the GGUF map: loading copies no weights. Every tensor of
//! the file must be read by the loader; one it does not know is an error, never ignored.

pub mod arch;
pub mod config;
pub mod kv_cache;
pub mod lora;
pub mod moe;
pub mod synth;

use std::borrow::Cow;

use rayon::prelude::*;

use crate::gguf::{GgmlType, GgufFile};
use crate::ops::{
    activation, attention, matmul, matmul_many, norm, rope, Input as SharedInput, Weight,
};
use crate::quant::QuantError;
use crate::tensor::TensorView;
use arch::{Activation, AttnScale, FfnKind, Presence, RopeFactors};
pub use config::{Arch, ConfigError, ModelConfig};
use kv_cache::KvLayerMut;
pub use kv_cache::{KvCache, KvType};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("tensor {0:?} is missing from the model file")]
    MissingTensor(String),
    #[error("tensor {name:?} is not part of a {arch} model as ledge knows it: refusing to run without it")]
    UnknownTensor { name: String, arch: &'static str },
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

/// Attention weights. Shapes as (input, output) per token.
pub struct Attention<'a> {
    /// W (n_embd, n_head·hd_k)
    pub wq: Weight<'a>,
    /// W (n_embd, n_kv·hd_k)
    pub wk: Weight<'a>,
    /// W (n_embd, n_kv·hd_v)
    pub wv: Weight<'a>,
    /// Biases of q, k, v (Qwen2).
    pub bias: Option<[Cow<'a, [f32]>; 3]>,
    /// W (n_head·hd_v, n_embd)
    pub wo: Weight<'a>,
    /// (hd_k): per-head RMS norm weights of q and k.
    pub q_norm: Option<Cow<'a, [f32]>>,
    pub k_norm: Option<Cow<'a, [f32]>>,
}

/// A gated FFN: down(act(gate·x) ⊙ up·x).
pub struct Mlp<'a> {
    /// W (n_embd, n_ff)
    pub gate: Weight<'a>,
    /// W (n_embd, n_ff)
    pub up: Weight<'a>,
    /// W (n_ff, n_embd)
    pub down: Weight<'a>,
}

// One per layer: the size difference costs nothing, a box would cost a pointer chase.
#[allow(clippy::large_enum_variant)]
pub enum Ffn<'a> {
    Dense(Mlp<'a>),
    /// A router W (n_embd, n_expert) and the experts, each a 2-D slice of the 3-D stacks.
    Experts {
        router: Weight<'a>,
        experts: Vec<Mlp<'a>>,
        n_used: usize,
    },
}

/// One transformer block's weights, borrowed from the file.
pub struct LayerWeights<'a> {
    pub attn_norm: Cow<'a, [f32]>,
    pub attn: Attention<'a>,
    pub post_attn_norm: Option<Cow<'a, [f32]>>,
    pub ffn_norm: Cow<'a, [f32]>,
    pub ffn: Ffn<'a>,
    pub post_ffn_norm: Option<Cow<'a, [f32]>>,
}

impl Mlp<'_> {
    fn weights(&self) -> [&Weight<'_>; 3] {
        [&self.gate, &self.up, &self.down]
    }
}

impl LayerWeights<'_> {
    /// Every matrix of the block: q, k, v, o, then the FFN's (router first for experts).
    pub fn matmul_weights(&self) -> Vec<&Weight<'_>> {
        let a = &self.attn;
        let mut v = vec![&a.wq, &a.wk, &a.wv, &a.wo];
        match &self.ffn {
            Ffn::Dense(m) => v.extend(m.weights()),
            Ffn::Experts {
                router, experts, ..
            } => {
                v.push(router);
                v.extend(experts.iter().flat_map(|m| m.weights()));
            }
        }
        v
    }

    /// Weight bytes one decoded token reads: for experts, the router and `n_used` experts.
    pub fn read_bytes_per_token(&self) -> usize {
        let a = &self.attn;
        let attn: usize = [&a.wq, &a.wk, &a.wv, &a.wo]
            .iter()
            .map(|w| w.read_bytes())
            .sum();
        let mlp = |m: &Mlp| m.weights().iter().map(|w| w.read_bytes()).sum::<usize>();
        attn + match &self.ffn {
            Ffn::Dense(m) => mlp(m),
            Ffn::Experts {
                router,
                experts,
                n_used,
            } => {
                let all: usize = experts.iter().map(mlp).sum();
                router.read_bytes() + all / experts.len().max(1) * n_used
            }
        }
    }
}

/// RoPE frequency factors from the file (`RopeFactors` of the family).
pub enum RopeFactorSet<'a> {
    None,
    /// `rope_freqs.weight`, at every context length.
    Fixed(Cow<'a, [f32]>),
    /// LongRoPE: the long set for caches longer than `n_ctx_orig`.
    LongShort {
        short: Cow<'a, [f32]>,
        long: Cow<'a, [f32]>,
    },
}

pub struct Model<'a> {
    pub config: ModelConfig,
    /// (n_embd, n_vocab): one row per token.
    pub tok_embd: TensorView<'a>,
    pub output_norm: Cow<'a, [f32]>,
    /// (n_embd, n_vocab); the embedding matrix itself when the file ties them.
    pub output: Weight<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    pub rope_factors: RopeFactorSet<'a>,
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
    /// Normed input of one expert's ffn_gate_exps / ffn_up_exps rows: only the `rows`
    /// tokens the router sent to it.
    ExpertIn { expert: usize, rows: usize },
    /// Input of one expert's ffn_down_exps rows, for those `rows` tokens.
    ExpertDown { expert: usize, rows: usize },
}

/// Sees each matmul input: (layer, or None for the output matrix; which; rows of the input).
pub type Observer<'o> = dyn FnMut(Option<usize>, MatmulInput, &[f32]) + Send + 'o;

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

/// Reads tensors by name, checking shape and type, and remembers which it read so that
/// `unread` can name any tensor the family does not use.
struct Loader<'a> {
    f: &'a GgufFile,
    read: std::cell::RefCell<std::collections::HashSet<String>>,
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
        self.read.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    fn has(&self, name: &str) -> bool {
        self.f.tensor_info(name).is_some()
    }

    /// A tensor cut into consecutive row groups (fused matrices, expert stacks).
    fn split(
        &self,
        name: &str,
        shape: &[usize],
        rows: &[usize],
    ) -> Result<Vec<TensorView<'a>>, ModelError> {
        let t = self.tensor(name, shape)?;
        t.split_rows(rows).ok_or_else(|| ModelError::BadShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            found: t.shape.clone(),
        })
    }

    /// A norm weight or bias vector: borrowed when it is aligned F32, else dequantized (tiny).
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

    /// A vector the family requires, may have, or must not have.
    fn vector_if(
        &self,
        p: Presence,
        name: &str,
        len: usize,
    ) -> Result<Option<Cow<'a, [f32]>>, ModelError> {
        match p {
            Presence::Required => self.vector(name, len).map(Some),
            Presence::Optional if self.has(name) => self.vector(name, len).map(Some),
            _ => Ok(None),
        }
    }

    /// The first tensor of the file that was not read, if any.
    fn unread(&self) -> Option<String> {
        let read = self.read.borrow();
        self.f
            .tensor_infos()
            .iter()
            .map(|i| self.f.tensor_name(i))
            .find(|n| !read.contains(*n))
            .map(str::to_string)
    }
}

/// One block's tensors before the matrices get their layouts: the norms and biases as
/// vectors, the matrices as views in the order `LayerWeights::matmul_weights` lists them.
struct LayerViews<'a> {
    attn_norm: Cow<'a, [f32]>,
    bias: Option<[Cow<'a, [f32]>; 3]>,
    q_norm: Option<Cow<'a, [f32]>>,
    k_norm: Option<Cow<'a, [f32]>>,
    post_attn_norm: Option<Cow<'a, [f32]>>,
    ffn_norm: Cow<'a, [f32]>,
    post_ffn_norm: Option<Cow<'a, [f32]>>,
    matrices: Vec<TensorView<'a>>,
}

impl<'a> LayerViews<'a> {
    /// Finds block `il`'s tensors as the family names and shapes them.
    fn find(l: &Loader<'a>, c: &ModelConfig, il: usize) -> Result<LayerViews<'a>, ModelError> {
        let spec = c.spec;
        let lc = &c.layers[il];
        let n = |s: &str| format!("blk.{il}.{s}.weight");
        let b = |s: &str| format!("blk.{il}.{s}.bias");
        let (d, hk, hv) = (c.n_embd, c.head_dim_k, c.head_dim_v);
        let (q_rows, k_rows, v_rows) = (lc.n_head * hk, lc.n_head_kv * hk, lc.n_head_kv * hv);
        let mut matrices = Vec::new();
        // Q, K, V: three matrices, or one fused `attn_qkv` (Phi-3) cut into three.
        let fused_qkv = spec.fused && l.has(&n("attn_qkv"));
        if fused_qkv {
            let shape = [d, q_rows + k_rows + v_rows];
            matrices.extend(l.split(&n("attn_qkv"), &shape, &[q_rows, k_rows, v_rows])?);
        } else {
            matrices.push(l.tensor(&n("attn_q"), &[d, q_rows])?);
            matrices.push(l.tensor(&n("attn_k"), &[d, k_rows])?);
            matrices.push(l.tensor(&n("attn_v"), &[d, v_rows])?);
        }
        let bias = match spec.qkv_bias {
            Presence::Absent => None,
            p if p == Presence::Required || l.has(&b("attn_q")) => Some([
                l.vector(&b("attn_q"), q_rows)?,
                l.vector(&b("attn_k"), k_rows)?,
                l.vector(&b("attn_v"), v_rows)?,
            ]),
            _ => None,
        };
        matrices.push(l.tensor(&n("attn_output"), &[lc.n_head * hv, d])?);
        let ff = lc.n_ff;
        match spec.ffn {
            // Gate and up: two matrices, or Phi-3's one `ffn_up` of 2·n_ff rows, gate first.
            FfnKind::Dense if spec.fused && !l.has(&n("ffn_gate")) => {
                matrices.extend(l.split(&n("ffn_up"), &[d, 2 * ff], &[ff, ff])?);
                matrices.push(l.tensor(&n("ffn_down"), &[ff, d])?);
            }
            FfnKind::Dense => {
                matrices.push(l.tensor(&n("ffn_gate"), &[d, ff])?);
                matrices.push(l.tensor(&n("ffn_up"), &[d, ff])?);
                matrices.push(l.tensor(&n("ffn_down"), &[ff, d])?);
            }
            // The experts' stacks (n_expert, rows, cols) cut into one 2-D view per expert,
            // then listed expert by expert: gate, up, down.
            FfnKind::Experts => {
                let ne = c.n_expert;
                matrices.push(l.tensor(&n("ffn_gate_inp"), &[d, ne])?);
                let gate = l.split(&n("ffn_gate_exps"), &[d, ff, ne], &vec![ff; ne])?;
                let up = l.split(&n("ffn_up_exps"), &[d, ff, ne], &vec![ff; ne])?;
                let down = l.split(&n("ffn_down_exps"), &[ff, d, ne], &vec![d; ne])?;
                for ((g, u), dn) in gate.into_iter().zip(up).zip(down) {
                    matrices.extend([g, u, dn]);
                }
            }
        }
        let post = |s: &str| -> Result<_, ModelError> {
            match spec.post_norms {
                true => l.vector(&n(s), d).map(Some),
                false => Ok(None),
            }
        };
        Ok(LayerViews {
            attn_norm: l.vector(&n("attn_norm"), d)?,
            bias,
            q_norm: l.vector_if(spec.qk_norm, &n("attn_q_norm"), hk)?,
            k_norm: l.vector_if(spec.qk_norm, &n("attn_k_norm"), hk)?,
            post_attn_norm: post("post_attention_norm")?,
            ffn_norm: l.vector(&n("ffn_norm"), d)?,
            post_ffn_norm: post("post_ffw_norm")?,
            matrices,
        })
    }

    /// Gives each matrix its layout (`Weight::load`) and assembles the block.
    fn load(
        self,
        f: &GgufFile,
        ks: &crate::quant::simd::KernelSet,
        n_used: usize,
    ) -> LayerWeights<'a> {
        let mut w = self.matrices.into_iter().map(|v| load_weight(f, v, ks));
        let mut take = move || w.next();
        let mlp = |take: &mut dyn FnMut() -> Option<Weight<'a>>| {
            Some(Mlp {
                gate: take()?,
                up: take()?,
                down: take()?,
            })
        };
        const LISTED: &str = "LayerViews::find lists every matrix";
        let (wq, wk, wv, wo) = (
            take().expect(LISTED),
            take().expect(LISTED),
            take().expect(LISTED),
            take().expect(LISTED),
        );
        let ffn = if n_used == 0 {
            Ffn::Dense(mlp(&mut take).expect(LISTED))
        } else {
            let router = take().expect(LISTED);
            let experts = std::iter::from_fn(|| mlp(&mut take)).collect();
            Ffn::Experts {
                router,
                experts,
                n_used,
            }
        };
        LayerWeights {
            attn_norm: self.attn_norm,
            attn: Attention {
                wq,
                wk,
                wv,
                bias: self.bias,
                wo,
                q_norm: self.q_norm,
                k_norm: self.k_norm,
            },
            post_attn_norm: self.post_attn_norm,
            ffn_norm: self.ffn_norm,
            ffn,
            post_ffn_norm: self.post_ffn_norm,
        }
    }
}

/// `Weight::load`, then the mapped pages a packed copy replaced are given back, so that peak
/// memory is about one copy of the weights, not two (a tied output shares the embedding's
/// pages: the few rows a token lookup reads fault back in).
fn load_weight<'a>(
    f: &GgufFile,
    v: crate::tensor::TensorView<'a>,
    ks: &crate::quant::simd::KernelSet,
) -> Weight<'a> {
    let data = match &v.data {
        std::borrow::Cow::Borrowed(d) => Some(*d),
        std::borrow::Cow::Owned(_) => None,
    };
    let w = Weight::load(v, ks);
    if let (Some(d), true) = (data, w.packed_bytes() > 0) {
        f.release_pages(d);
    }
    w
}

impl<'a> Model<'a> {
    /// Builds the model over an open GGUF file, checking every tensor's presence and shape,
    /// and that the file holds no tensor the family does not use.
    pub fn load(f: &'a GgufFile) -> Result<Model<'a>, ModelError> {
        let config = ModelConfig::from_gguf(f)?;
        let l = Loader {
            f,
            read: Default::default(),
        };
        let (d, nv) = (config.n_embd, config.n_vocab);
        let tok_embd = l.tensor("token_embd.weight", &[d, nv])?;
        let output_view = if l.has("output.weight") {
            l.tensor("output.weight", &[d, nv])?
        } else {
            tok_embd.clone()
        };
        let half_rot = config.n_rot / 2;
        let rope_factors = match config.spec.rope_factors {
            RopeFactors::Freqs if l.has("rope_freqs.weight") => {
                RopeFactorSet::Fixed(l.vector("rope_freqs.weight", half_rot)?)
            }
            RopeFactors::LongShort if l.has("rope_factors_long.weight") => {
                RopeFactorSet::LongShort {
                    short: l.vector("rope_factors_short.weight", half_rot)?,
                    long: l.vector("rope_factors_long.weight", half_rot)?,
                }
            }
            _ => RopeFactorSet::None,
        };
        let views = (0..config.n_layer)
            .map(|il| LayerViews::find(&l, &config, il))
            .collect::<Result<Vec<_>, _>>()?;
        let output_norm = l.vector("output_norm.weight", d)?;
        if let Some(name) = l.unread() {
            return Err(ModelError::UnknownTensor {
                name,
                arch: config.arch.name(),
            });
        }
        // Each weight's layout, chosen once; in parallel, as repacking a 7B model's 3.8 GB
        // takes a few seconds otherwise.
        let ks = crate::quant::simd::kernels();
        let layers: Vec<LayerWeights> = views
            .into_par_iter()
            .map(|v| v.load(f, ks, config.n_expert_used))
            .collect();
        let output = load_weight(f, output_view, ks);
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
            output_norm,
            output,
            layers,
            rope_factors,
            config,
        })
    }

    /// Every matrix of the model, mutably: each layer's in `matmul_weights` order, then the
    /// output.
    fn weights_mut(&mut self) -> Vec<&mut Weight<'a>> {
        let mut v: Vec<&mut Weight<'a>> = Vec::new();
        for l in &mut self.layers {
            let a = &mut l.attn;
            v.extend([&mut a.wq, &mut a.wk, &mut a.wv, &mut a.wo]);
            match &mut l.ffn {
                Ffn::Dense(m) => v.extend([&mut m.gate, &mut m.up, &mut m.down]),
                Ffn::Experts {
                    router, experts, ..
                } => {
                    v.push(router);
                    for m in experts {
                        v.extend([&mut m.gate, &mut m.up, &mut m.down]);
                    }
                }
            }
        }
        v.push(&mut self.output);
        v
    }

    /// Attaches every pair of `adapter`, scaled by `scale`, to the matrices it adapts; returns
    /// how many matrices got one. Everything is checked before anything is attached, so an
    /// error leaves the model as it was.
    pub fn attach_lora(
        &mut self,
        adapter: &lora::LoraAdapter,
        scale: f32,
    ) -> Result<usize, lora::LoraError> {
        let path = || adapter.path.clone();
        let arch = self.config.arch.name();
        if adapter.arch != arch {
            return Err(lora::LoraError::ArchMismatch {
                path: path(),
                adapter: adapter.arch.clone(),
                model: arch.to_string(),
            });
        }
        let mut ws = self.weights_mut();
        let parts = lora::parts_of(
            ws.iter()
                .enumerate()
                .map(|(i, w)| (i, w.name.as_str(), w.shape.1)),
        );
        let mut plan: Vec<(usize, lora::LoraDelta)> = Vec::new();
        for pair in &adapter.pairs {
            let unsupported = |why| lora::LoraError::Unsupported {
                path: path(),
                name: pair.base.clone(),
                why,
            };
            if pair.base == "token_embd.weight" {
                return Err(unsupported(
                    "adapters of the token embedding are not applied",
                ));
            }
            if pair.base.contains("_exps.") {
                return Err(unsupported("adapters of expert stacks are not applied"));
            }
            let Some(ps) = parts.get(&pair.base) else {
                return Err(lora::LoraError::NoBaseTensor {
                    path: path(),
                    name: pair.base.clone(),
                });
            };
            let rows: usize = ps.iter().map(|p| p.2).sum();
            let k = ws[ps[0].0].shape.0;
            if k != pair.k || rows != pair.m {
                return Err(lora::LoraError::BadShape {
                    path: path(),
                    name: pair.base.clone(),
                    what: format!(
                        "the pair is [{}, {}] · [{}, {}] but the matrix is [{k}, {rows}]",
                        pair.k, pair.rank, pair.rank, pair.m
                    ),
                });
            }
            let a = std::sync::Arc::new(pair.a.clone());
            let s = adapter.effective_scale(pair.rank, scale);
            let mut row0 = 0;
            for &(i, _, r) in ps {
                plan.push((i, lora::LoraDelta::new(pair, a.clone(), row0..row0 + r, s)));
                row0 += r;
            }
        }
        let n = plan.len();
        for (i, d) in plan {
            ws[i].loras.push(d);
        }
        Ok(n)
    }

    /// The RoPE factors for a cache of `ctx` positions (llama.cpp picks LongRoPE's long set
    /// by the context size, not by position).
    pub fn rope_factors_for(&self, ctx: usize) -> Option<&[f32]> {
        match &self.rope_factors {
            RopeFactorSet::None => None,
            RopeFactorSet::Fixed(f) => Some(f),
            RopeFactorSet::LongShort { short, long } => Some(if ctx > self.config.n_ctx_orig {
                long
            } else {
                short
            }),
        }
    }

    /// Weight bytes one decoded token reads: every layer's (active experts only) and the
    /// output matrix's.
    pub fn read_bytes_per_token(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.read_bytes_per_token())
            .sum::<usize>()
            + self.output.read_bytes()
    }

    /// A KV cache for `ctx` positions, in f16.
    pub fn new_cache(&self, ctx: usize) -> KvCache {
        self.new_cache_typed(ctx, KvType::F16)
    }

    /// A KV cache for `ctx` positions, of type `ty`.
    pub fn new_cache_typed(&self, ctx: usize, ty: KvType) -> KvCache {
        let c = &self.config;
        let widths: Vec<(usize, usize)> = c
            .layers
            .iter()
            .map(|l| (l.n_head_kv * c.head_dim_k, l.n_head_kv * c.head_dim_v))
            .collect();
        KvCache::with_type(ctx, &widths, ty)
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
        let spec = c.spec;
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
        if spec.scale_embeddings {
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
        let factors = self.rope_factors_for(cache.ctx);
        // One table per distinct RoPE: Gemma 3's local and global layers differ.
        let mut ropes: Vec<rope::RopeTable> = Vec::new();
        for (il, (lw, lc)) in self.layers.iter().zip(&c.layers).enumerate() {
            let (nh, nkv) = (lc.n_head, lc.n_head_kv);
            let a = &lw.attn;
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
                matmul(&a.wq, &mut input, qs)?;
                matmul(&a.wk, &mut input, ks)?;
                matmul(&a.wv, &mut input, vs)?;
            }
            if let Some([bq, bk, bv]) = &a.bias {
                add_bias(qs, bq);
                add_bias(ks, bk);
                add_bias(vs, bv);
            }
            if let Some(w) = &a.q_norm {
                norm::rms_norm(qs, w, c.rms_eps);
            }
            if let Some(w) = &a.k_norm {
                norm::rms_norm(ks, w, c.rms_eps);
            }
            let params = rope::RopeParams {
                n_rot: c.n_rot,
                base: lc.rope_base,
                freq_scale: lc.rope_freq_scale,
                factors: factors.filter(|_| lc.rope_scaled),
                attn_factor: if lc.rope_scaled {
                    c.rope_attn_factor
                } else {
                    1.0
                },
                yarn: c.yarn.filter(|_| lc.rope_scaled),
            };
            let rt = match ropes.iter().position(|r| r.params == params) {
                Some(i) => &ropes[i],
                None => {
                    ropes.push(rope::RopeTable::new(pos0, n, params));
                    ropes.last().unwrap()
                }
            };
            rope_and_store(
                rt,
                spec.rope_style,
                (qs, ks, vs),
                (nh * hk, nkv * hk, nkv * hv, hk),
                cache,
                il,
                pos0,
            );
            // Phi-3 and Gemma 2 scale the rotated queries before the product (llama.cpp's
            // order, which decides the f16 rounding of q); the others scale the scores.
            let scale = if spec.attn_scale == AttnScale::InSoftmax {
                c.attn_scale
            } else {
                qs.iter_mut().for_each(|v| *v *= c.attn_scale);
                1.0
            };
            let att = &mut att_buf[..n * nh * hv]; // (n, n_head·hd_v)
            let kv = cache.layer(il);
            let window = if lc.sliding { c.sliding_window } else { None };
            let shape = attention::AttnShape {
                n_head: nh,
                n_kv: nkv,
                hd_k: hk,
                hd_v: hv,
                scale,
                softcap: c.attn_softcap,
            };
            attention::attend_positions(qs, kv, shape, pos0, n, window, att);
            observe(Some(il), MatmulInput::AttnOutput, att);
            // W (n_head·hd_v, d) @ att (n, n_head·hd_v) -> o (n, d)
            matmul(&a.wo, &mut SharedInput::new(att, n), &mut o)?;
            if let Some(w) = &lw.post_attn_norm {
                norm::rms_norm(&mut o, w, c.rms_eps);
            }
            // x += o; xn = norm(x)
            norm::add_rms_norm(&mut x, &o, &mut xn, &lw.ffn_norm, c.rms_eps);

            // --- feed-forward ---
            observe(Some(il), MatmulInput::Ffn, &xn);
            let bufs = (&mut gate_buf[..], &mut up_buf[..]);
            match &lw.ffn {
                Ffn::Dense(m) => {
                    let (gate, up) = (&mut bufs.0[..n * lc.n_ff], &mut bufs.1[..n * lc.n_ff]);
                    mlp(m, spec.activation, &xn, n, gate, up, &mut o, &mut |g| {
                        observe(Some(il), MatmulInput::FfnDown, g)
                    })?;
                }
                Ffn::Experts {
                    router,
                    experts,
                    n_used,
                } => {
                    let moe = Moe {
                        router,
                        experts,
                        n_used: *n_used,
                        n_ff: lc.n_ff,
                    };
                    moe.forward(spec.activation, &xn, n, &mut o, &mut |w, x| {
                        observe(Some(il), w, x)
                    })?;
                }
            }
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
        if let Some(cap) = c.final_softcap {
            out.iter_mut()
                .for_each(|v| *v = (*v * (1.0 / cap)).tanh() * cap);
        }
        Ok(out)
    }
}

/// rows (n, len) += b (len).
fn add_bias(rows: &mut [f32], b: &[f32]) {
    for r in rows.chunks_exact_mut(b.len()) {
        r.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
    }
}

/// A gated FFN over x (n, d): out (n, d) = down(act(gate·x) ⊙ up·x); `gate` and `up` are
/// (n, n_ff) scratch; `observe_down` sees the down matrix's input.
#[allow(clippy::too_many_arguments)]
fn mlp(
    m: &Mlp,
    act: Activation,
    x: &[f32],
    n: usize,
    gate: &mut [f32],
    up: &mut [f32],
    out: &mut [f32],
    observe_down: &mut dyn FnMut(&[f32]),
) -> Result<(), ModelError> {
    {
        let mut input = SharedInput::new(x, n);
        // W (d, n_ff) @ x (n, d) -> gate, up (n, n_ff)
        matmul(&m.gate, &mut input, gate)?;
        matmul(&m.up, &mut input, up)?;
    }
    activation::gated(gate, up, act == Activation::GeluTanh);
    observe_down(gate);
    // W (n_ff, d) @ gate (n, n_ff) -> out (n, d)
    matmul(&m.down, &mut SharedInput::new(gate, n), out)?;
    Ok(())
}

/// Tokens up to which a mixture's experts run as one parallel loop (`experts_together`).
const FEW_TOKENS: usize = 8;

/// One expert's pass over its tokens: (output, its inputs, its down matrix's inputs).
type ExpertOut = (Vec<f32>, Vec<f32>, Vec<f32>);

/// A mixture-of-experts FFN over x (n, d) into out (n, d): the router picks `n_used`
/// experts per token; each chosen expert runs once over all the tokens routed to it (its
/// rows streamed once per pass), and each token sums its experts' outputs times their
/// weights in rank order, as llama.cpp adds them.
struct Moe<'w, 'a> {
    router: &'w Weight<'a>,
    experts: &'w [Mlp<'a>],
    n_used: usize,
    n_ff: usize,
}

impl Moe<'_, '_> {
    fn forward(
        &self,
        act: Activation,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        observe: &mut dyn FnMut(MatmulInput, &[f32]),
    ) -> Result<(), ModelError> {
        let Moe {
            router,
            experts,
            n_used,
            ..
        } = *self;
        let (d, ne) = (x.len() / n, experts.len());
        // W (d, n_expert) @ x (n, d) -> logits (n, n_expert)
        let mut logits = vec![0f32; n * ne];
        matmul(router, &mut SharedInput::new(x, n), &mut logits)?;
        let routes = moe::route(&logits, ne, n_used);
        // ys (n, n_used, d): each token's expert outputs by rank.
        let mut ys = vec![0f32; n * n_used * d];
        // Decode: all chosen experts' matrices as one parallel loop (one token's 24 small
        // matmuls each split across the threads cost more in fork/join than they stream:
        // 0.7× of llama.cpp that way). Prompts: each expert over its tokens, side by side.
        let groups = routes.by_expert(ne);
        let active: Vec<(usize, &Vec<(usize, usize)>)> = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect();
        let outputs = if n <= FEW_TOKENS {
            self.experts_together(act, x, d, &active)?
        } else {
            self.experts_apart(act, x, d, &active)?
        };
        for (&(e, group), (_, xs, gate)) in active.iter().zip(&outputs) {
            let rows = group.len();
            observe(MatmulInput::ExpertIn { expert: e, rows }, xs);
            observe(MatmulInput::ExpertDown { expert: e, rows }, gate);
        }
        for (&(_, group), (y, _, _)) in active.iter().zip(&outputs) {
            for (&(t, r), yr) in group.iter().zip(y.chunks_exact(d)) {
                ys[(t * n_used + r) * d..][..d].copy_from_slice(yr);
            }
        }
        for (t, o) in out.chunks_exact_mut(d).enumerate() {
            o.fill(0.0);
            for r in 0..n_used {
                let w = routes.weights[t * n_used + r];
                let yr = &ys[(t * n_used + r) * d..][..d];
                o.iter_mut().zip(yr).for_each(|(o, &v)| *o += v * w);
            }
        }
        Ok(())
    }

    /// Few tokens (decode): every chosen expert's gate and up as one parallel loop, then
    /// every down, so the threads share all the experts' rows (as llama.cpp's mul_mat_id),
    /// with two fork-joins per layer.
    fn experts_together(
        &self,
        act: Activation,
        x: &[f32],
        d: usize,
        active: &[(usize, &Vec<(usize, usize)>)],
    ) -> Result<Vec<ExpertOut>, ModelError> {
        let n_ff = self.n_ff;
        let xs: Vec<Vec<f32>> = active
            .iter()
            .map(|(_, group)| {
                group
                    .iter()
                    .flat_map(|&(t, _)| x[t * d..(t + 1) * d].iter().copied())
                    .collect()
            })
            .collect();
        let mut gates: Vec<Vec<f32>> = active
            .iter()
            .map(|(_, g)| vec![0f32; g.len() * n_ff])
            .collect();
        let mut ups = gates.clone();
        {
            let mut inputs: Vec<SharedInput> = xs
                .iter()
                .zip(active)
                .map(|(xs, (_, g))| SharedInput::new(xs, g.len()))
                .collect();
            let mut jobs: Vec<(&Weight, usize, &mut [f32])> = Vec::new();
            for (a, ((&(e, _), gate), up)) in
                active.iter().zip(&mut gates).zip(&mut ups).enumerate()
            {
                // W (d, n_ff) @ x (m, d) -> gate, up (m, n_ff)
                jobs.push((&self.experts[e].gate, a, &mut gate[..]));
                jobs.push((&self.experts[e].up, a, &mut up[..]));
            }
            matmul_many(&mut inputs, &mut jobs)?;
        }
        for (gate, up) in gates.iter_mut().zip(&ups) {
            activation::gated(gate, up, act == Activation::GeluTanh);
        }
        let mut ys: Vec<Vec<f32>> = active
            .iter()
            .map(|(_, g)| vec![0f32; g.len() * d])
            .collect();
        {
            let mut inputs: Vec<SharedInput> = gates
                .iter()
                .zip(active)
                .map(|(g, (_, grp))| SharedInput::new(g, grp.len()))
                .collect();
            // W (n_ff, d) @ gate (m, n_ff) -> y (m, d)
            let mut jobs: Vec<(&Weight, usize, &mut [f32])> = active
                .iter()
                .zip(&mut ys)
                .enumerate()
                .map(|(a, (&(e, _), y))| (&self.experts[e].down, a, &mut y[..]))
                .collect();
            matmul_many(&mut inputs, &mut jobs)?;
        }
        Ok(ys
            .into_iter()
            .zip(xs)
            .zip(gates)
            .map(|((y, xs), g)| (y, xs, g))
            .collect())
    }

    /// A prompt batch: each chosen expert runs over its tokens on its own, the experts side
    /// by side (each splits its rows further when it has the pool alone).
    fn experts_apart(
        &self,
        act: Activation,
        x: &[f32],
        d: usize,
        active: &[(usize, &Vec<(usize, usize)>)],
    ) -> Result<Vec<ExpertOut>, ModelError> {
        let (experts, n_ff) = (self.experts, self.n_ff);
        active
            .par_iter()
            .map(|&(e, group)| -> Result<ExpertOut, ModelError> {
                let m = group.len();
                let xs: Vec<f32> = group
                    .iter()
                    .flat_map(|&(t, _)| x[t * d..(t + 1) * d].iter().copied())
                    .collect();
                let (mut gate, mut up, mut y) = (
                    vec![0f32; m * n_ff],
                    vec![0f32; m * n_ff],
                    vec![0f32; m * d],
                );
                mlp(
                    &experts[e],
                    act,
                    &xs,
                    m,
                    &mut gate,
                    &mut up,
                    &mut y,
                    &mut |_| {},
                )?;
                // The inputs go back too, for a calibration observer (which is not Sync).
                Ok((y, xs, gate))
            })
            .collect::<Result<Vec<_>, _>>()
    }
}

/// Rotates each token's query and key heads and stores its keys and values in the cache,
/// tokens split across the pool for prompts (serially it was ~3 % of a two-thread prompt).
/// `widths` = (query row, key row, value row, key head).
fn rope_and_store(
    rt: &rope::RopeTable<'_>,
    style: config::RopeStyle,
    (qs, ks, vs): (&mut [f32], &mut [f32], &[f32]),
    (qw, kw, vw, hk): (usize, usize, usize, usize),
    cache: &mut KvCache,
    layer: usize,
    pos0: usize,
) {
    let n = qs.len() / qw;
    let rotate = |t: usize, q: &mut [f32], k: &mut [f32]| {
        for head in q.chunks_exact_mut(hk) {
            rt.apply(head, pos0 + t, style);
        }
        for head in k.chunks_exact_mut(hk) {
            rt.apply(head, pos0 + t, style);
        }
    };
    let (kc, vc) = match cache.rows_mut(layer, pos0, n) {
        KvLayerMut::F16(kc, vc) => (kc, vc),
        KvLayerMut::F32(kc, vc) => {
            // The unrounded cache is a reference mode: plain serial code.
            for t in 0..n {
                rotate(
                    t,
                    &mut qs[t * qw..(t + 1) * qw],
                    &mut ks[t * kw..(t + 1) * kw],
                );
            }
            kc.copy_from_slice(ks);
            vc.copy_from_slice(vs);
            return;
        }
    };
    let one = |t: usize,
               q: &mut [f32],
               k: &mut [f32],
               v: &[f32],
               kc: &mut [half::f16],
               vc: &mut [half::f16]| {
        rotate(t, q, k);
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
