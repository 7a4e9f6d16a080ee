//! Hyperparameters from GGUF metadata: the one place that reads them.
//!
//! Keys live under the architecture's prefix (`llama.block_count`, `gemma3.rope.freq_base`).
//! Per-layer values (head counts, FFN length) may be a scalar or an array with one entry per
//! layer: pruned models write arrays, and every consumer reads the per-layer form.

use crate::gguf::{GgufError, GgufFile, Value};

pub use super::arch::{Arch, ArchSpec, FfnKind, RopeStyle};
use crate::ops::rope::Yarn;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by the factor.
    Linear(f32),
    /// YaRN: interpolation by the factor on the slow pairs, extrapolation on the fast ones.
    Yarn(f32),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unsupported architecture {0:?}: ledge runs {list}", list = super::arch::supported_list())]
    UnsupportedArch(String),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("metadata key {key:?}: {reason}")]
    Invalid { key: String, reason: String },
}

/// One layer's shape (they can differ in pruned models and in Gemma 3's attention kinds).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerConfig {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    /// Sliding-window attention layer (attends to the last `sliding_window` positions).
    pub sliding: bool,
    pub rope_base: f32,
    /// Positions are multiplied by this in RoPE (1 / the scaling factor).
    pub rope_freq_scale: f32,
    /// The model's RoPE scaling (frequency factors, YaRN, magnitude) applies to this layer;
    /// Gemma 3's sliding layers have their own plain RoPE.
    pub rope_scaled: bool,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    /// What the family does differently (arch/*.rs).
    pub spec: &'static ArchSpec,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_vocab: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub n_rot: usize,
    pub rope_scaling: RopeScaling,
    /// The context the model was trained at before its RoPE was stretched
    /// (`rope.scaling.original_context_length`; the training context otherwise): LongRoPE
    /// switches to its long factors above it.
    pub n_ctx_orig: usize,
    /// sin/cos magnitude of the scaled RoPE (`rope.scaling.attn_factor`; LongRoPE's
    /// sqrt(1 + ln(s)/ln(n_ctx_orig)) correction).
    pub rope_attn_factor: f32,
    pub yarn: Option<Yarn>,
    pub rms_eps: f32,
    pub ctx_train: usize,
    pub sliding_window: Option<usize>,
    /// Attention logits are multiplied by this (where: `spec.attn_scale`).
    pub attn_scale: f32,
    /// cap · tanh(x / cap) on attention scores and on the final logits (Gemma 2).
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    /// Mixture of experts: experts per layer and how many each token uses (0 if dense).
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub layers: Vec<LayerConfig>,
}

/// Reads keys under one architecture prefix, with errors naming the full key.
struct Keys<'a> {
    f: &'a GgufFile,
    prefix: &'static str,
}

fn invalid(key: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Keys<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.prefix)
    }

    fn has(&self, k: &str) -> bool {
        self.f.get(&self.key(k)).is_some()
    }

    fn usize(&self, k: &str) -> Result<usize, ConfigError> {
        Ok(self.f.get_u64(&self.key(k))? as usize)
    }

    fn usize_or(&self, k: &str, default: usize) -> Result<usize, ConfigError> {
        if self.has(k) {
            self.usize(k)
        } else {
            Ok(default)
        }
    }

    fn f32_or(&self, k: &str, default: f32) -> Result<f32, ConfigError> {
        if self.has(k) {
            Ok(self.f.get_f32(&self.key(k))?)
        } else {
            Ok(default)
        }
    }

    /// Which layers slide: `attention.sliding_window_pattern` as one flag per layer or as a
    /// period, else the family's period (every period-th layer global, as llama.cpp).
    fn swa_pattern(&self, period: usize, n_layer: usize) -> Result<Vec<bool>, ConfigError> {
        let key = self.key("attention.sliding_window_pattern");
        let period = match self.f.get(&key) {
            None => period,
            Some(Value::Array(a)) => {
                let v: Option<Vec<bool>> = a
                    .iter()
                    .map(|v| match v {
                        Value::Bool(b) => Some(b),
                        _ => None,
                    })
                    .collect();
                return match v {
                    Some(v) if v.len() == n_layer => Ok(v),
                    _ => Err(invalid(key, format!("not {n_layer} booleans"))),
                };
            }
            Some(_) => self.usize("attention.sliding_window_pattern")?,
        };
        Ok((0..n_layer)
            .map(|il| period == 0 || il % period < period - 1)
            .collect())
    }

    /// A scalar applied to every layer, or an array with one value per layer.
    fn per_layer(&self, k: &str, n_layer: usize) -> Result<Vec<usize>, ConfigError> {
        let key = self.key(k);
        match self.f.get(&key) {
            None => Err(GgufError::MissingKey(key).into()),
            Some(Value::Array(a)) => {
                let v = a.to_i64_vec().ok_or_else(|| ConfigError::Invalid {
                    key: key.clone(),
                    reason: format!("array of {} is not integers", a.elem_type()),
                })?;
                if v.len() != n_layer {
                    return Err(ConfigError::Invalid {
                        key,
                        reason: format!("{} entries for {n_layer} layers", v.len()),
                    });
                }
                v.into_iter()
                    .map(|x| {
                        usize::try_from(x).map_err(|_| ConfigError::Invalid {
                            key: key.clone(),
                            reason: format!("negative value {x}"),
                        })
                    })
                    .collect()
            }
            Some(_) => Ok(vec![self.usize(k)?; n_layer]),
        }
    }
}

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig, ConfigError> {
        let name = f.architecture()?;
        let arch =
            Arch::from_name(name).ok_or_else(|| ConfigError::UnsupportedArch(name.into()))?;
        let spec = arch.spec();
        let keys = Keys {
            f,
            prefix: arch.name(),
        };
        let n_layer = keys.usize("block_count")?;
        let n_embd = keys.usize("embedding_length")?;
        let heads = keys.per_layer("attention.head_count", n_layer)?;
        let heads_kv = if keys.has("attention.head_count_kv") {
            keys.per_layer("attention.head_count_kv", n_layer)?
        } else {
            heads.clone()
        };
        let max_heads = heads.iter().copied().max().unwrap_or(0);
        if max_heads == 0 || n_embd % max_heads != 0 && !keys.has("attention.key_length") {
            return Err(invalid(
                keys.key("attention.head_count"),
                format!("{max_heads} heads do not divide embedding length {n_embd}"),
            ));
        }
        let head_dim_k = keys.usize_or("attention.key_length", n_embd / max_heads)?;
        let head_dim_v = keys.usize_or("attention.value_length", head_dim_k)?;
        let n_rot = keys.usize_or("rope.dimension_count", head_dim_k)?;
        if n_rot > head_dim_k || n_rot % 2 != 0 {
            return Err(invalid(
                keys.key("rope.dimension_count"),
                format!("{n_rot} is odd or exceeds the head size {head_dim_k}"),
            ));
        }
        for (i, (&h, &hkv)) in heads.iter().zip(&heads_kv).enumerate() {
            if hkv == 0 || h % hkv != 0 {
                return Err(invalid(
                    keys.key("attention.head_count_kv"),
                    format!("layer {i}: {hkv} KV heads do not divide {h} heads"),
                ));
            }
        }
        let (n_expert, n_expert_used) = (
            keys.usize_or("expert_count", 0)?,
            keys.usize_or("expert_used_count", 0)?,
        );
        let ffs = match spec.ffn {
            FfnKind::Dense if n_expert > 0 => {
                return Err(invalid(
                    keys.key("expert_count"),
                    format!("{n_expert} experts, but {name} models have a dense FFN"),
                ))
            }
            FfnKind::Dense => keys.per_layer("feed_forward_length", n_layer)?,
            FfnKind::Experts => {
                if n_expert == 0 || n_expert_used == 0 || n_expert_used > n_expert {
                    return Err(invalid(
                        keys.key("expert_used_count"),
                        format!("{n_expert_used} of {n_expert} experts per token"),
                    ));
                }
                if keys.has("expert_feed_forward_length") {
                    keys.per_layer("expert_feed_forward_length", n_layer)?
                } else {
                    let dense = keys.per_layer("feed_forward_length", n_layer)?;
                    dense.into_iter().map(|v| v / n_expert_used).collect()
                }
            }
        };
        let rope_base = keys.f32_or("rope.freq_base", 10_000.0)?;
        let ctx_train = keys.usize_or("context_length", 2048)?;
        let n_ctx_orig = keys.usize_or("rope.scaling.original_context_length", ctx_train)?;
        let factor = if keys.has("rope.scaling.factor") {
            keys.f32_or("rope.scaling.factor", 1.0)?
        } else {
            keys.f32_or("rope.scale_linear", 1.0)?
        };
        let rope_scaling = match f.get_str(&keys.key("rope.scaling.type")) {
            Err(GgufError::MissingKey(_)) if factor != 1.0 && factor > 0.0 => {
                RopeScaling::Linear(factor)
            }
            Err(GgufError::MissingKey(_)) => RopeScaling::None,
            Err(e) => return Err(e.into()),
            // LongRoPE's factors come as tensors (`rope_factors_*`), read by the loader.
            Ok("none") | Ok("longrope") => RopeScaling::None,
            Ok("linear") => RopeScaling::Linear(factor),
            Ok("yarn") => RopeScaling::Yarn(factor),
            Ok(other) => {
                return Err(invalid(
                    keys.key("rope.scaling.type"),
                    format!(
                        "RoPE scaling {other:?} is not supported (none, linear, yarn, longrope; \
                         llama3 scaling comes as the rope_freqs tensor)"
                    ),
                ))
            }
        };
        let mut rope_attn_factor = keys.f32_or("rope.scaling.attn_factor", 1.0)?;
        let yarn = match rope_scaling {
            RopeScaling::Yarn(factor) if factor > 1.0 => {
                if keys.f32_or("rope.scaling.yarn_log_multiplier", 0.0)? != 0.0 {
                    return Err(invalid(
                        keys.key("rope.scaling.yarn_log_multiplier"),
                        "YaRN with a log multiplier (DeepSeek's) is not supported",
                    ));
                }
                // llama.cpp's magnitude: yarn_attn_factor · rope_attn_factor, the table
                // multiplying in 1 + 0.1·ln(factor) itself.
                rope_attn_factor *= keys.f32_or("rope.scaling.yarn_attn_factor", 1.0)?;
                let mut y = Yarn::new(
                    n_rot,
                    n_ctx_orig,
                    rope_base,
                    keys.f32_or("rope.scaling.yarn_beta_fast", 32.0)?,
                    keys.f32_or("rope.scaling.yarn_beta_slow", 1.0)?,
                );
                y.ext_factor = keys.f32_or("rope.scaling.yarn_ext_factor", 1.0)?;
                Some(y)
            }
            _ => None,
        };
        let freq_scale = match rope_scaling {
            RopeScaling::Linear(f) | RopeScaling::Yarn(f) if f > 0.0 => 1.0 / f,
            _ => 1.0,
        };
        let rms_eps = keys.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?;
        let n_vocab = match f.get_array("tokenizer.ggml.tokens") {
            Ok(a) => a.len(),
            Err(_) => keys.usize("vocab_size")?,
        };
        // Sliding windows only where the family has them (Phi-3 files carry a window that
        // llama.cpp ignores, and so do we).
        let (sliding_window, sliding) = match spec.swa {
            None => (None, vec![false; n_layer]),
            Some(swa) => {
                let window = if keys.has("attention.sliding_window") {
                    Some(keys.usize("attention.sliding_window")?)
                } else {
                    swa.default_window
                };
                match window {
                    None | Some(0) => (None, vec![false; n_layer]),
                    Some(w) => (Some(w), keys.swa_pattern(swa.period, n_layer)?),
                }
            }
        };
        let layers = (0..n_layer)
            .map(|il| {
                let local_base = spec.swa.and_then(|s| s.local_rope_base);
                let own_rope = sliding[il] && local_base.is_some();
                Ok(LayerConfig {
                    n_head: heads[il],
                    n_head_kv: heads_kv[il],
                    n_ff: ffs[il],
                    sliding: sliding[il],
                    rope_base: match local_base {
                        Some(b) if own_rope => keys.f32_or("rope.freq_base_swa", b)?,
                        _ => rope_base,
                    },
                    rope_freq_scale: if own_rope { 1.0 } else { freq_scale },
                    rope_scaled: !own_rope,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let attn_scale = match spec.attn_scale {
            super::arch::AttnScale::Gemma2 if n_layer == 46 => {
                1.0 / ((n_embd / max_heads) as f32).sqrt()
            }
            _ => 1.0 / (head_dim_k as f32).sqrt(),
        };
        let (attn_softcap, final_softcap) = match spec.softcap {
            None => (None, None),
            Some(d) => (
                Some(keys.f32_or("attn_logit_softcapping", d.attn)?),
                Some(keys.f32_or("final_logit_softcapping", d.final_logits)?),
            ),
        };
        Ok(ModelConfig {
            arch,
            spec,
            n_layer,
            n_embd,
            n_vocab,
            head_dim_k,
            head_dim_v,
            n_rot,
            rope_scaling,
            n_ctx_orig,
            rope_attn_factor,
            yarn,
            rms_eps,
            ctx_train,
            sliding_window,
            attn_scale,
            attn_softcap,
            final_softcap,
            n_expert,
            n_expert_used,
            layers,
        })
    }
}
