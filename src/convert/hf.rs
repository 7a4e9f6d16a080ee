//! Hugging Face checkpoints of the llama-like families (Llama/Mistral, Qwen2, Qwen3,
//! Qwen3-MoE, Phi-3, Gemma 2): config.json → hyperparameters, HF tensor names → GGUF names
//! (per-expert matrices stacked into llama.cpp's 3-D `*_exps`), Llama 3's RoPE factors as
//! the `rope_freqs` tensor, Phi-3's LongRoPE factors as `rope_factors_{long,short}`, Gemma's
//! norm weights stored as w − 1 written as w, and the Q/K row order llama.cpp expects for
//! Llama.
//!
//! HF stores each attention head's rotary pairs as two halves (x[i], x[i + d/2]) — the
//! "rotate_half" layout; llama.cpp's RoPE rotates adjacent pairs (x[2i], x[2i+1]). So the
//! rows of attn_q and attn_k are permuted per head: GGUF row h·d + 2i + s comes from HF row
//! h·d + s·d/2 + i (s ∈ {0, 1}, i < d/2), as llama.cpp's convert_hf_to_gguf.py does.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::safetensors::{Checkpoint, StTensor};
pub use super::source::hf_row_of_gguf_row;
use super::source::{SourceData, SourceTensor};
use super::{io_err, ConvertError, Result};
use crate::model::Arch;

/// Architectures (config.json `architectures[0]`) the converter maps.
pub const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
    Qwen3ForCausalLM, Qwen3MoeForCausalLM, Phi3ForCausalLM, Gemma2ForCausalLM";

fn family(hf_arch: &str) -> Option<Arch> {
    Some(match hf_arch {
        "LlamaForCausalLM" | "MistralForCausalLM" => Arch::Llama,
        "Qwen2ForCausalLM" => Arch::Qwen2,
        "Qwen3ForCausalLM" => Arch::Qwen3,
        "Qwen3MoeForCausalLM" => Arch::Qwen3Moe,
        "Phi3ForCausalLM" => Arch::Phi3,
        "Gemma2ForCausalLM" => Arch::Gemma2,
        _ => return None,
    })
}

/// A mixture-of-experts FFN (Qwen3-MoE).
#[derive(Clone, Debug, PartialEq)]
pub struct Experts {
    pub n_expert: usize,
    pub n_used: usize,
    pub n_ff: usize,
}

/// Phi-3's LongRoPE: per-dimension factors for contexts up to and past the original one.
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    pub long: Vec<f32>,
    pub short: Vec<f32>,
    pub attn_factor: f32,
    pub orig_ctx: usize,
}

/// Hyperparameters of a llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    /// The ledge family it converts to.
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub ctx: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// Linear RoPE scaling factor, when config.json asks for it.
    pub rope_linear: Option<f32>,
    /// Llama 3's per-dimension RoPE factors (`rope_type: llama3`), written as `rope_freqs`.
    pub rope_freqs: Option<Vec<f32>>,
    /// Q, K, V biases (Qwen2).
    pub qkv_bias: bool,
    /// Per-head Q/K RMS norms (Qwen3).
    pub qk_norm: bool,
    pub experts: Option<Experts>,
    pub tied: bool,
    /// Rotated dimensions per head (Phi-4-mini rotates 3/4 of them).
    pub n_rot: usize,
    pub longrope: Option<LongRope>,
    /// Phi-3's original training context, where config.json names one.
    pub orig_ctx: Option<usize>,
    /// Gemma 2: attention and final-logit soft-caps.
    pub softcap: Option<(f32, f32)>,
    pub sliding_window: Option<usize>,
    pub ids: super::vocab::ConfigIds,
}

fn cfg_err(key: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError::Config {
        key: key.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| ConvertError::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

impl LlamaConfig {
    pub fn from_dir(dir: &Path) -> Result<LlamaConfig> {
        let path = dir.join("config.json");
        Self::from_json(&read_json(&path)?, &path)
    }

    pub fn from_json(j: &Json, path: &Path) -> Result<LlamaConfig> {
        let arch = j
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .ok_or_else(|| {
                cfg_err(
                    "architectures",
                    "missing (expected e.g. [\"LlamaForCausalLM\"])",
                )
            })?;
        let Some(family) = family(arch) else {
            return Err(ConvertError::UnknownArch {
                path: path.to_path_buf(),
                found: arch.to_string(),
                supported: SUPPORTED,
            });
        };
        let uint = |k: &str| -> Result<usize> {
            j.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| cfg_err(k, "missing or not a non-negative integer"))
        };
        let uint_or = |k: &str, d: usize| -> Result<usize> {
            match j.get(k) {
                None | Some(Json::Null) => Ok(d),
                Some(_) => uint(k),
            }
        };
        let float_or = |k: &str, d: f64| -> Result<f32> {
            match j.get(k) {
                None | Some(Json::Null) => Ok(d as f32),
                Some(v) => v
                    .as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| cfg_err(k, "not a number")),
            }
        };
        let id = |k: &str| j.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let n_embd = uint("hidden_size")?;
        let n_head = uint("num_attention_heads")?;
        let n_head_kv = uint_or("num_key_value_heads", n_head)?;
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(cfg_err(
                "num_key_value_heads",
                format!("{n_head_kv} KV heads do not divide {n_head} heads"),
            ));
        }
        if n_embd % n_head != 0 && j.get("head_dim").is_none() {
            return Err(cfg_err(
                "num_attention_heads",
                format!("{n_head} heads do not divide hidden_size {n_embd}"),
            ));
        }
        let head_dim = uint_or("head_dim", n_embd / n_head)?;
        if head_dim % 2 != 0 || head_dim == 0 {
            return Err(cfg_err("head_dim", format!("{head_dim} is not even")));
        }
        // transformers 5 writes `rope_parameters` (with rope_theta inside); older files
        // `rope_scaling` and a top-level rope_theta.
        let rope = j
            .get("rope_scaling")
            .or_else(|| j.get("rope_parameters"))
            .filter(|v| !v.is_null());
        let rope_theta = match rope.and_then(|r| r.get("rope_theta")) {
            Some(t) if j.get("rope_theta").is_none() => t
                .as_f64()
                .ok_or_else(|| cfg_err("rope_parameters.rope_theta", "not a number"))?
                as f32,
            _ => float_or("rope_theta", 10_000.0)?,
        };
        let rope_num = |k: &str, d: Option<f64>| -> Result<f64> {
            rope.and_then(|r| r.get(k))
                .and_then(|v| v.as_f64())
                .or(d)
                .ok_or_else(|| cfg_err(&format!("rope_scaling.{k}"), "missing"))
        };
        let (mut rope_linear, mut rope_freqs, mut longrope) = (None, None, None);
        let orig_ctx = match j.get("original_max_position_embeddings") {
            Some(Json::Null) | None => rope
                .and_then(|r| r.get("original_max_position_embeddings"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize),
            Some(_) => Some(uint("original_max_position_embeddings")?),
        };
        let partial = match j.get("partial_rotary_factor") {
            Some(v) if !v.is_null() => v.as_f64(),
            _ => rope
                .and_then(|r| r.get("partial_rotary_factor"))
                .and_then(|v| v.as_f64()),
        }
        .unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(cfg_err(
                "partial_rotary_factor",
                format!("{partial} is not in (0, 1]"),
            ));
        }
        // llama.cpp: int(partial · n_embd) // n_head.
        let n_rot = if family == Arch::Phi3 {
            (partial * n_embd as f64) as usize / n_head
        } else {
            (partial * head_dim as f64) as usize
        };
        if n_rot % 2 != 0 || n_rot == 0 || n_rot > head_dim {
            return Err(cfg_err(
                "partial_rotary_factor",
                format!("{n_rot} rotated dimensions of {head_dim}"),
            ));
        }
        if let Some(r) = rope {
            let ty = r
                .get("rope_type")
                .or_else(|| r.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            match ty {
                "default" => {}
                "linear" => rope_linear = Some(rope_num("factor", None)? as f32),
                "longrope" | "su" if family == Arch::Phi3 => {
                    let factors = |k: &str| -> Result<Vec<f32>> {
                        r.get(k)
                            .and_then(|v| v.as_array())
                            .and_then(|a| {
                                a.iter()
                                    .map(|x| x.as_f64().map(|x| x as f32))
                                    .collect::<Option<Vec<f32>>>()
                            })
                            .ok_or_else(|| {
                                cfg_err(
                                    &format!("rope_scaling.{k}"),
                                    "missing or not a list of numbers",
                                )
                            })
                    };
                    let (long, short) = (factors("long_factor")?, factors("short_factor")?);
                    let orig = orig_ctx.ok_or_else(|| {
                        cfg_err(
                            "original_max_position_embeddings",
                            "missing (LongRoPE needs it)",
                        )
                    })?;
                    let max = uint_or("max_position_embeddings", orig)?;
                    let scale = max as f64 / orig as f64;
                    let attn_factor = if scale > 1.0 {
                        (1.0 + scale.ln() / (orig as f64).ln()).sqrt()
                    } else {
                        1.0
                    };
                    for (k, f) in [("long_factor", &long), ("short_factor", &short)] {
                        if f.len() != n_rot / 2 {
                            return Err(cfg_err(
                                &format!("rope_scaling.{k}"),
                                format!(
                                    "{} factors for {} rotated dimensions (expected half)",
                                    f.len(),
                                    n_rot
                                ),
                            ));
                        }
                    }
                    longrope = Some(LongRope {
                        long,
                        short,
                        attn_factor: attn_factor as f32,
                        orig_ctx: orig,
                    });
                }
                "llama3" if family == Arch::Llama => {
                    rope_freqs = Some(llama3_rope_factors(
                        rope_theta,
                        uint_or("head_dim", n_embd / n_head)?,
                        rope_num("factor", Some(8.0))?,
                        rope_num("low_freq_factor", Some(1.0))?,
                        rope_num("high_freq_factor", Some(4.0))?,
                        rope_num("original_max_position_embeddings", Some(8192.0))?,
                    ))
                }
                other => {
                    return Err(cfg_err(
                        "rope_scaling",
                        format!("RoPE scaling {other:?} is not supported (linear, llama3)"),
                    ))
                }
            }
        }
        let experts = match family {
            Arch::Qwen3Moe => {
                if j.get("norm_topk_prob").and_then(|b| b.as_bool()) == Some(false) {
                    return Err(cfg_err(
                        "norm_topk_prob",
                        "false is not supported (llama.cpp renormalises the top-k weights)",
                    ));
                }
                let sparse = uint_or("decoder_sparse_step", 1)?;
                let dense_layers = j.get("mlp_only_layers").and_then(|v| v.as_array());
                if sparse != 1 || dense_layers.is_some_and(|a| !a.is_empty()) {
                    return Err(cfg_err(
                        "mlp_only_layers",
                        "dense layers between MoE layers are not supported",
                    ));
                }
                Some(Experts {
                    // transformers 5 renamed num_experts.
                    n_expert: uint("num_experts").or_else(|_| uint("num_local_experts"))?,
                    n_used: uint("num_experts_per_tok")?,
                    n_ff: uint("moe_intermediate_size")?,
                })
            }
            _ => None,
        };
        let wanted = match family {
            Arch::Gemma2 => ["gelu_pytorch_tanh", "gelu_tanh"],
            _ => ["silu", "silu"],
        };
        for key in ["hidden_act", "hidden_activation"] {
            if let Some(act) = j.get(key).and_then(|a| a.as_str()) {
                if !wanted.contains(&act) {
                    return Err(cfg_err(
                        key,
                        format!("{act:?} (this family uses {})", wanted[0]),
                    ));
                }
            }
        }
        let float_opt = |k: &str| j.get(k).and_then(|v| v.as_f64()).map(|v| v as f32);
        let softcap = match family {
            Arch::Gemma2 => Some((
                float_opt("attn_logit_softcapping").unwrap_or(50.0),
                float_opt("final_logit_softcapping").unwrap_or(30.0),
            )),
            _ => None,
        };
        let sliding_window = match family {
            Arch::Gemma2 => Some(uint_or("sliding_window", 4096)?),
            Arch::Phi3 => Some(uint_or("sliding_window", 0)?),
            _ => None,
        };
        if family == Arch::Gemma2 {
            // llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(n_embd / n_head) for the
            // 46-layer 27B; a checkpoint asking for anything else would run differently.
            let n_layer = uint("num_hidden_layers")?;
            let used = if n_layer == 46 {
                n_embd / n_head
            } else {
                head_dim
            };
            if let Some(q) = float_opt("query_pre_attn_scalar") {
                if q != used as f32 {
                    eprintln!(
                        "convert: warning: query_pre_attn_scalar {q} differs from the {used} that llama.cpp and ledge scale queries by"
                    );
                }
            }
        }
        let bias = |k: &str| j.get(k).and_then(|b| b.as_bool()) == Some(true);
        if bias("mlp_bias") || family != Arch::Qwen2 && bias("attention_bias") {
            return Err(cfg_err("attention_bias", "biases are not supported here"));
        }
        Ok(LlamaConfig {
            architecture: arch.to_string(),
            arch: family,
            qkv_bias: family == Arch::Qwen2,
            qk_norm: matches!(family, Arch::Qwen3 | Arch::Qwen3Moe),
            experts,
            rope_freqs,
            n_layer: uint("num_hidden_layers")?,
            n_embd,
            n_ff: uint("intermediate_size")?,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab: uint("vocab_size")?,
            ctx: uint_or("max_position_embeddings", 2048)?,
            rms_eps: float_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_linear,
            tied: j
                .get("tie_word_embeddings")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
            n_rot,
            longrope,
            orig_ctx,
            softcap,
            sliding_window,
            ids: super::vocab::ConfigIds {
                bos: id("bos_token_id"),
                eos: id("eos_token_id"),
                pad: id("pad_token_id"),
            },
        })
    }

    /// The GGUF `<arch>.*` hyperparameter keys, as llama.cpp's converter writes them.
    pub fn gguf_metadata(&self) -> Vec<(String, crate::gguf::MetaValue)> {
        use crate::gguf::MetaValue::{String as S, F32, U32};
        let k = |s: &str| format!("{}.{s}", self.arch.name());
        let mut v = vec![
            (k("block_count"), U32(self.n_layer as u32)),
            (k("context_length"), U32(self.ctx as u32)),
            (k("embedding_length"), U32(self.n_embd as u32)),
            (k("feed_forward_length"), U32(self.n_ff as u32)),
            (k("attention.head_count"), U32(self.n_head as u32)),
            (k("attention.head_count_kv"), U32(self.n_head_kv as u32)),
            (k("rope.freq_base"), F32(self.rope_theta)),
            (k("attention.layer_norm_rms_epsilon"), F32(self.rms_eps)),
            (k("vocab_size"), U32(self.n_vocab as u32)),
            (k("rope.dimension_count"), U32(self.n_rot as u32)),
        ];
        if self.head_dim * self.n_head != self.n_embd || self.arch == Arch::Gemma2 {
            v.push((k("attention.key_length"), U32(self.head_dim as u32)));
            v.push((k("attention.value_length"), U32(self.head_dim as u32)));
        }
        if let Some(f) = self.rope_linear {
            v.push((k("rope.scaling.type"), S("linear".into())));
            v.push((k("rope.scaling.factor"), F32(f)));
        }
        if let Some(o) = self.orig_ctx.filter(|_| self.arch == Arch::Phi3) {
            v.push((k("rope.scaling.original_context_length"), U32(o as u32)));
        }
        if let Some(l) = &self.longrope {
            v.push((k("rope.scaling.attn_factor"), F32(l.attn_factor)));
        }
        if let Some((attn, fin)) = self.softcap {
            v.push((k("attn_logit_softcapping"), F32(attn)));
            v.push((k("final_logit_softcapping"), F32(fin)));
        }
        if let Some(w) = self.sliding_window {
            v.push((k("attention.sliding_window"), U32(w as u32)));
        }
        if let Some(e) = &self.experts {
            v.push((k("expert_count"), U32(e.n_expert as u32)));
            v.push((k("expert_used_count"), U32(e.n_used as u32)));
            v.push((k("expert_feed_forward_length"), U32(e.n_ff as u32)));
        }
        v
    }

    /// Llama's converter permutes Q/K rows for its adjacent-pair RoPE; the NEOX families
    /// keep HF's order.
    fn permute(&self, heads: usize) -> Option<usize> {
        (self.arch == Arch::Llama).then_some(heads)
    }
}

/// Llama 3.1's RoPE frequency factors, as llama.cpp's converter computes them: 1 for the
/// fast dimensions (wavelength under original_ctx / high_freq_factor), `factor` for the slow
/// ones (over original_ctx / low_freq_factor), a smooth blend between.
pub fn llama3_rope_factors(
    theta: f32,
    head_dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    orig_ctx: f64,
) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (orig_ctx / low, orig_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            // torch: 1 / base ** (arange(0, dim, 2, float32) / dim), in f32.
            let freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
            (if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (orig_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }) as f32
        })
        .collect()
}

/// How one HF tensor becomes a GGUF tensor.
struct Mapping {
    gguf: String,
    /// PyTorch shape config.json implies.
    shape: Vec<usize>,
    /// Q/K: permute rows per head, with this many heads.
    permute_heads: Option<usize>,
    /// Gemma stores RMSNorm weights as w − 1 (its norm multiplies by 1 + w).
    add_one: bool,
}

fn mapping(c: &LlamaConfig, hf: &str) -> Option<Mapping> {
    let (d, hd) = (c.n_embd, c.head_dim);
    let gemma = c.arch == Arch::Gemma2;
    let m = |gguf: String, shape: Vec<usize>, permute_heads| {
        Some(Mapping {
            add_one: gemma && gguf.ends_with("norm.weight"),
            gguf,
            shape,
            permute_heads,
        })
    };
    match hf {
        "model.embed_tokens.weight" => {
            return m("token_embd.weight".into(), vec![c.n_vocab, d], None)
        }
        "model.norm.weight" => return m("output_norm.weight".into(), vec![d], None),
        "lm_head.weight" => return m("output.weight".into(), vec![c.n_vocab, d], None),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let il: usize = layer.parse().ok()?;
    if il >= c.n_layer {
        return None;
    }
    let b = |s: &str| format!("blk.{il}.{s}.weight");
    let bias = |s: &str| format!("blk.{il}.{s}.bias");
    let (q, kv) = (c.n_head * hd, c.n_head_kv * hd);
    match (c.arch, part) {
        (Arch::Phi3, "self_attn.qkv_proj.weight") => {
            return m(b("attn_qkv"), vec![q + 2 * kv, d], None)
        }
        (Arch::Phi3, "mlp.gate_up_proj.weight") => {
            return m(b("ffn_up"), vec![2 * c.n_ff, d], None)
        }
        (Arch::Phi3, "mlp.down_proj.weight") => return m(b("ffn_down"), vec![d, c.n_ff], None),
        (Arch::Phi3, "self_attn.o_proj.weight") => {
            return m(b("attn_output"), vec![d, c.n_head * hd], None)
        }
        (Arch::Phi3, "input_layernorm.weight") => return m(b("attn_norm"), vec![d], None),
        (Arch::Phi3, "post_attention_layernorm.weight") => return m(b("ffn_norm"), vec![d], None),
        (Arch::Phi3, _) => return None,
        (Arch::Gemma2, "post_attention_layernorm.weight") => {
            return m(b("post_attention_norm"), vec![d], None)
        }
        (Arch::Gemma2, "pre_feedforward_layernorm.weight") => {
            return m(b("ffn_norm"), vec![d], None)
        }
        (Arch::Gemma2, "post_feedforward_layernorm.weight") => {
            return m(b("post_ffw_norm"), vec![d], None)
        }
        _ => {}
    }
    match part {
        "input_layernorm.weight" => m(b("attn_norm"), vec![d], None),
        "post_attention_layernorm.weight" => m(b("ffn_norm"), vec![d], None),
        "self_attn.q_proj.weight" => m(b("attn_q"), vec![q, d], c.permute(c.n_head)),
        "self_attn.k_proj.weight" => m(b("attn_k"), vec![kv, d], c.permute(c.n_head_kv)),
        "self_attn.v_proj.weight" => m(b("attn_v"), vec![kv, d], None),
        "self_attn.q_proj.bias" if c.qkv_bias => m(bias("attn_q"), vec![q], None),
        "self_attn.k_proj.bias" if c.qkv_bias => m(bias("attn_k"), vec![kv], None),
        "self_attn.v_proj.bias" if c.qkv_bias => m(bias("attn_v"), vec![kv], None),
        "self_attn.q_norm.weight" if c.qk_norm => m(b("attn_q_norm"), vec![hd], None),
        "self_attn.k_norm.weight" if c.qk_norm => m(b("attn_k_norm"), vec![hd], None),
        "mlp.gate.weight" => {
            let e = c.experts.as_ref()?;
            m(b("ffn_gate_inp"), vec![e.n_expert, d], None)
        }
        "self_attn.o_proj.weight" => m(b("attn_output"), vec![d, c.n_head * hd], None),
        "mlp.gate_proj.weight" if c.experts.is_none() => m(b("ffn_gate"), vec![c.n_ff, d], None),
        "mlp.up_proj.weight" if c.experts.is_none() => m(b("ffn_up"), vec![c.n_ff, d], None),
        "mlp.down_proj.weight" if c.experts.is_none() => m(b("ffn_down"), vec![d, c.n_ff], None),
        _ => None,
    }
}

/// An expert's matrix: (layer, expert, which of gate/up/down) of `mlp.experts.E.X_proj`.
fn expert_part(c: &LlamaConfig, hf: &str) -> Option<(usize, usize, usize)> {
    let e = c.experts.as_ref()?;
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once(".mlp.experts.")?;
    let (expert, which) = part.split_once('.')?;
    let (il, ie): (usize, usize) = (layer.parse().ok()?, expert.parse().ok()?);
    let k = ["gate_proj.weight", "up_proj.weight", "down_proj.weight"]
        .iter()
        .position(|&w| w == which)?;
    (il < c.n_layer && ie < e.n_expert).then_some((il, ie, k))
}

/// HF tensors that carry nothing llama.cpp needs.
fn ignored(hf: &str) -> bool {
    hf.ends_with(".rotary_emb.inv_freq")
}

/// The GGUF name and tensor of every checkpoint tensor, checked against the config, in
/// llama.cpp's order (embeddings, blocks, output norm, output).
pub fn plan_tensors<'a>(c: &LlamaConfig, ck: &'a Checkpoint) -> Result<Vec<SourceTensor<'a>>> {
    let mut found: Vec<(Mapping, &StTensor)> = Vec::new();
    for t in ck.tensors() {
        if ignored(&t.name) {
            continue;
        }
        // A tied model may still ship lm_head (a copy): llama.cpp drops it.
        if t.name == "lm_head.weight" && c.tied {
            continue;
        }
        if expert_part(c, &t.name).is_some() {
            continue;
        }
        let m = mapping(c, &t.name).ok_or_else(|| ConvertError::UnmappedTensor {
            name: t.name.clone(),
            file: PathBuf::from(ck.path(t)),
        })?;
        if t.shape != m.shape {
            return Err(ConvertError::BadShape {
                name: t.name.clone(),
                expected: m.shape,
                found: t.shape.clone(),
            });
        }
        found.push((m, t));
    }
    // Every tensor the model needs must be there.
    let mut needed = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".into(),
    ];
    if !c.tied {
        needed.push("lm_head.weight".into());
    }
    for il in 0..c.n_layer {
        let mut parts = vec!["input_layernorm.weight", "post_attention_layernorm.weight"];
        if c.arch == Arch::Phi3 {
            parts.extend([
                "self_attn.qkv_proj.weight",
                "self_attn.o_proj.weight",
                "mlp.gate_up_proj.weight",
                "mlp.down_proj.weight",
            ]);
            for p in parts {
                needed.push(format!("model.layers.{il}.{p}"));
            }
            continue;
        }
        if c.arch == Arch::Gemma2 {
            parts.extend([
                "pre_feedforward_layernorm.weight",
                "post_feedforward_layernorm.weight",
            ]);
        }
        parts.extend([
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
        ]);
        if c.qkv_bias {
            parts.extend([
                "self_attn.q_proj.bias",
                "self_attn.k_proj.bias",
                "self_attn.v_proj.bias",
            ]);
        }
        if c.qk_norm {
            parts.extend(["self_attn.q_norm.weight", "self_attn.k_norm.weight"]);
        }
        match &c.experts {
            None => parts.extend([
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
            ]),
            Some(_) => parts.push("mlp.gate.weight"),
        }
        for p in parts {
            needed.push(format!("model.layers.{il}.{p}"));
        }
    }
    for n in &needed {
        if ck.get(n).is_none() {
            return Err(ConvertError::MissingTensor(n.clone()));
        }
    }
    let rank = |g: &str| -> (usize, usize, String) {
        match g {
            "rope_freqs.weight" | "rope_factors_long.weight" | "rope_factors_short.weight" => {
                (0, 0, g.to_string())
            }
            "token_embd.weight" => (0, 1, String::new()),
            "output_norm.weight" => (2, 0, String::new()),
            "output.weight" => (3, 0, String::new()),
            _ => {
                let il = g
                    .strip_prefix("blk.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                (1, il, g.to_string())
            }
        }
    };
    found.sort_by_key(|(m, _)| rank(&m.gguf));
    let mut out: Vec<SourceTensor<'a>> = found
        .into_iter()
        .map(|(m, t)| {
            // GGUF dims: row length first.
            let dims: Vec<u64> = t.shape.iter().rev().map(|&x| x as u64).collect();
            if m.add_one {
                let mut v = vec![0f32; t.shape.iter().product()];
                t.dtype.to_f32(ck.data(t), &mut v);
                v.iter_mut().for_each(|x| *x += 1.0);
                return SourceTensor {
                    name: m.gguf,
                    dims,
                    pages: None,
                    data: SourceData::F32(v),
                };
            }
            SourceTensor {
                name: m.gguf,
                dims,
                pages: Some((ck.map(t), t.range.clone())),
                data: SourceData::St {
                    dtype: t.dtype,
                    data: ck.data(t),
                    row_len: *t.shape.last().unwrap_or(&1),
                    permute_heads: m.permute_heads,
                },
            }
        })
        .collect();
    if let Some(e) = &c.experts {
        out.extend(stack_experts(c, e, ck)?);
    }
    if let Some(f) = &c.rope_freqs {
        out.insert(
            0,
            SourceTensor {
                name: "rope_freqs.weight".into(),
                dims: vec![f.len() as u64],
                pages: None,
                data: SourceData::F32(f.clone()),
            },
        );
    }
    if let Some(l) = &c.longrope {
        for (name, f) in [
            ("rope_factors_long", &l.long),
            ("rope_factors_short", &l.short),
        ] {
            out.push(SourceTensor {
                name: format!("{name}.weight"),
                dims: vec![f.len() as u64],
                pages: None,
                data: SourceData::F32(f.clone()),
            });
        }
    }
    out.sort_by_key(|t| rank(&t.name));
    Ok(out)
}

/// Each layer's per-expert gate/up/down matrices as llama.cpp's 3-D stacks
/// `ffn_{gate,up,down}_exps` (expert-major: expert e's rows follow expert e−1's).
fn stack_experts<'a>(
    c: &LlamaConfig,
    e: &Experts,
    ck: &'a Checkpoint,
) -> Result<Vec<SourceTensor<'a>>> {
    let d = c.n_embd;
    let mut out = Vec::new();
    for il in 0..c.n_layer {
        for (k, (name, rows, cols)) in [("gate", e.n_ff, d), ("up", e.n_ff, d), ("down", d, e.n_ff)]
            .into_iter()
            .enumerate()
        {
            let mut parts = Vec::with_capacity(e.n_expert);
            for ie in 0..e.n_expert {
                let hf = format!("model.layers.{il}.mlp.experts.{ie}.{name}_proj.weight");
                let t = ck
                    .get(&hf)
                    .ok_or_else(|| ConvertError::MissingTensor(hf.clone()))?;
                debug_assert_eq!(expert_part(c, &hf), Some((il, ie, k)));
                if t.shape != [rows, cols] {
                    return Err(ConvertError::BadShape {
                        name: hf,
                        expected: vec![rows, cols],
                        found: t.shape.clone(),
                    });
                }
                parts.push((t.dtype, ck.data(t)));
            }
            out.push(SourceTensor {
                name: format!("blk.{il}.ffn_{name}_exps.weight"),
                dims: vec![cols as u64, rows as u64, e.n_expert as u64],
                pages: None,
                data: SourceData::Stack {
                    parts,
                    rows_per_part: rows,
                    row_len: cols,
                },
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_permutation_is_llama_cpps() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, …).swapaxes(1, 2).reshape(…): row
        // (h, i, s) of the result is row (h, s, i) of the input.
        let (rows, heads) = (12, 2);
        let got: Vec<usize> = (0..rows)
            .map(|r| hf_row_of_gguf_row(r, rows, heads))
            .collect();
        assert_eq!(got, vec![0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
    }

    #[test]
    fn unknown_architecture_is_named() {
        let j: Json = serde_json::json!({"architectures": ["GPTNeoXForCausalLM"]});
        let e = LlamaConfig::from_json(&j, Path::new("x/config.json")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("GPTNeoXForCausalLM") && msg.contains("LlamaForCausalLM"),
            "{msg}"
        );
    }
}
