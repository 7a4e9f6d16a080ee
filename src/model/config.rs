//! Hyperparameters from GGUF metadata: the one place that reads them.
//!
//! Keys live under the architecture's prefix (`llama.block_count`, `gemma3.rope.freq_base`).
//! Per-layer values (head counts, FFN length) may be a scalar or an array with one entry per
//! layer: pruned models write arrays, and every consumer reads the per-layer form.

use crate::gguf::{GgufError, GgufFile, Value};

/// The architectures ledge runs, with their quirks in one table (`ArchQuirks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
}

pub const SUPPORTED_ARCHS: &[&str] = &["llama", "gemma3"];

pub use crate::ops::rope::RopeStyle;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by the factor.
    Linear(f32),
}

/// Per-architecture facts that are not in the metadata (llama.cpp hard-codes them too).
#[derive(Clone, Copy, Debug)]
pub struct ArchQuirks {
    pub rope_style: RopeStyle,
    /// Embeddings multiplied by sqrt(n_embd) (Gemma).
    pub scale_embeddings: bool,
    /// Q and K get their own RMS norms per head (Gemma 3).
    pub qk_norm: bool,
    /// Extra RMS norms after attention and after the FFN (Gemma 2/3).
    pub post_norms: bool,
    /// FFN activation: SiLU-gated (llama) or GELU(tanh)-gated (Gemma).
    pub gelu_ffn: bool,
    /// Every n-th layer is global, the others use the sliding window (Gemma 3: 6).
    pub swa_period: Option<usize>,
    /// RoPE base of the sliding-window layers when the metadata does not say (Gemma 3: 10000).
    pub swa_rope_base: f32,
}

impl Arch {
    pub fn from_name(name: &str) -> Result<Arch, ConfigError> {
        match name {
            "llama" => Ok(Arch::Llama),
            "gemma3" => Ok(Arch::Gemma3),
            other => Err(ConfigError::UnsupportedArch(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
        }
    }

    pub fn quirks(self) -> ArchQuirks {
        match self {
            Arch::Llama => ArchQuirks {
                rope_style: RopeStyle::Norm,
                scale_embeddings: false,
                qk_norm: false,
                post_norms: false,
                gelu_ffn: false,
                swa_period: None,
                swa_rope_base: 10_000.0,
            },
            Arch::Gemma3 => ArchQuirks {
                rope_style: RopeStyle::Neox,
                scale_embeddings: true,
                qk_norm: true,
                post_norms: true,
                gelu_ffn: true,
                swa_period: Some(6),
                swa_rope_base: 10_000.0,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unsupported architecture {0:?}: ledge runs {list}", list = SUPPORTED_ARCHS.join(", "))]
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
    /// Positions are multiplied by this in RoPE (1 / linear scaling factor; sliding layers
    /// are never scaled, as in llama.cpp).
    pub rope_freq_scale: f32,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub quirks: ArchQuirks,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_vocab: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub n_rot: usize,
    pub rope_scaling: RopeScaling,
    pub rms_eps: f32,
    pub ctx_train: usize,
    pub sliding_window: Option<usize>,
    /// Attention logits are multiplied by this (1/sqrt(key length) unless the model says).
    pub attn_scale: f32,
    pub layers: Vec<LayerConfig>,
}

/// Reads keys under one architecture prefix, with errors naming the full key.
struct Keys<'a> {
    f: &'a GgufFile,
    prefix: &'static str,
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
        let arch = Arch::from_name(f.architecture()?)?;
        let keys = Keys {
            f,
            prefix: arch.name(),
        };
        let quirks = arch.quirks();
        let n_layer = keys.usize("block_count")?;
        let n_embd = keys.usize("embedding_length")?;
        let heads = keys.per_layer("attention.head_count", n_layer)?;
        let heads_kv = if keys.has("attention.head_count_kv") {
            keys.per_layer("attention.head_count_kv", n_layer)?
        } else {
            heads.clone()
        };
        let ffs = keys.per_layer("feed_forward_length", n_layer)?;
        let max_heads = heads.iter().copied().max().unwrap_or(0);
        if max_heads == 0 || n_embd % max_heads != 0 && !keys.has("attention.key_length") {
            return Err(ConfigError::Invalid {
                key: keys.key("attention.head_count"),
                reason: format!("{max_heads} heads do not divide embedding length {n_embd}"),
            });
        }
        let head_dim_k = keys.usize_or("attention.key_length", n_embd / max_heads)?;
        let head_dim_v = keys.usize_or("attention.value_length", head_dim_k)?;
        let n_rot = keys.usize_or("rope.dimension_count", head_dim_k)?;
        if n_rot > head_dim_k || n_rot % 2 != 0 {
            return Err(ConfigError::Invalid {
                key: keys.key("rope.dimension_count"),
                reason: format!("{n_rot} is odd or exceeds the head size {head_dim_k}"),
            });
        }
        for (i, (&h, &hkv)) in heads.iter().zip(&heads_kv).enumerate() {
            if hkv == 0 || h % hkv != 0 {
                return Err(ConfigError::Invalid {
                    key: keys.key("attention.head_count_kv"),
                    reason: format!("layer {i}: {hkv} KV heads do not divide {h} heads"),
                });
            }
        }
        let rope_base = keys.f32_or("rope.freq_base", 10_000.0)?;
        let rope_scaling = match f.get_str(&keys.key("rope.scaling.type")) {
            Err(GgufError::MissingKey(_)) => RopeScaling::None,
            Err(e) => return Err(e.into()),
            Ok("none") => RopeScaling::None,
            Ok("linear") => RopeScaling::Linear(keys.f32_or("rope.scaling.factor", 1.0)?),
            Ok(other) => {
                return Err(ConfigError::Invalid {
                    key: keys.key("rope.scaling.type"),
                    reason: format!("RoPE scaling {other:?} is not supported (none, linear)"),
                })
            }
        };
        let rms_eps = keys.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?;
        let ctx_train = keys.usize_or("context_length", 2048)?;
        let sliding_window = if keys.has("attention.sliding_window") {
            Some(keys.usize("attention.sliding_window")?)
        } else {
            None
        };
        let n_vocab = match f.get_array("tokenizer.ggml.tokens") {
            Ok(a) => a.len(),
            Err(_) => keys.usize("vocab_size")?,
        };
        let swa_base = keys.f32_or("rope.freq_base_swa", quirks.swa_rope_base)?;
        let layers = (0..n_layer)
            .map(|il| {
                // Gemma 3: layers 5, 11, 17, … are global; the others slide.
                let sliding = match (quirks.swa_period, sliding_window) {
                    (Some(p), Some(_)) => (il + 1) % p != 0,
                    _ => false,
                };
                LayerConfig {
                    n_head: heads[il],
                    n_head_kv: heads_kv[il],
                    n_ff: ffs[il],
                    sliding,
                    rope_base: if sliding { swa_base } else { rope_base },
                    rope_freq_scale: match rope_scaling {
                        RopeScaling::Linear(f) if !sliding && f > 0.0 => 1.0 / f,
                        _ => 1.0,
                    },
                }
            })
            .collect();
        Ok(ModelConfig {
            arch,
            quirks,
            n_layer,
            n_embd,
            n_vocab,
            head_dim_k,
            head_dim_v,
            n_rot,
            rope_scaling,
            rms_eps,
            ctx_train,
            sliding_window,
            attn_scale: 1.0 / (head_dim_k as f32).sqrt(),
            layers,
        })
    }
}
