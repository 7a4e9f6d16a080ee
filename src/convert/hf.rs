//! Llama-family Hugging Face checkpoints: config.json → hyperparameters, HF tensor names →
//! GGUF names, and the Q/K row order llama.cpp expects.
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

/// Architectures (config.json `architectures[0]`) the converter maps.
pub const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM";

/// Hyperparameters of a llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
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
    pub tied: bool,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
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
        if !SUPPORTED.split(", ").any(|s| s == arch) {
            return Err(ConvertError::UnknownArch {
                path: path.to_path_buf(),
                found: arch.to_string(),
                supported: SUPPORTED,
            });
        }
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
        let rope_linear = match j.get("rope_scaling") {
            None | Some(Json::Null) => None,
            Some(s) => {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                match ty {
                    "linear" => Some(
                        s.get("factor")
                            .and_then(|f| f.as_f64())
                            .ok_or_else(|| cfg_err("rope_scaling.factor", "missing"))?
                            as f32,
                    ),
                    "default" => None,
                    other => {
                        return Err(cfg_err(
                            "rope_scaling",
                            format!("RoPE scaling {other:?} is not supported (linear)"),
                        ))
                    }
                }
            }
        };
        if let Some(act) = j.get("hidden_act").and_then(|a| a.as_str()) {
            if act != "silu" {
                return Err(cfg_err("hidden_act", format!("{act:?} (only silu)")));
            }
        }
        for k in ["attention_bias", "mlp_bias"] {
            if j.get(k).and_then(|b| b.as_bool()) == Some(true) {
                return Err(cfg_err(k, "biases are not supported"));
            }
        }
        Ok(LlamaConfig {
            architecture: arch.to_string(),
            n_layer: uint("num_hidden_layers")?,
            n_embd,
            n_ff: uint("intermediate_size")?,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab: uint("vocab_size")?,
            ctx: uint_or("max_position_embeddings", 2048)?,
            rms_eps: float_or("rms_norm_eps", 1e-6)?,
            rope_theta: float_or("rope_theta", 10_000.0)?,
            rope_linear,
            tied: j
                .get("tie_word_embeddings")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
            bos_id: id("bos_token_id"),
            eos_id: id("eos_token_id"),
        })
    }

    /// The GGUF `llama.*` hyperparameter keys.
    pub fn gguf_metadata(&self) -> Vec<(String, crate::gguf::MetaValue)> {
        use crate::gguf::MetaValue::{String as S, F32, U32};
        let k = |s: &str| format!("llama.{s}");
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
            (k("rope.dimension_count"), U32(self.head_dim as u32)),
        ];
        if self.head_dim * self.n_head != self.n_embd {
            v.push((k("attention.key_length"), U32(self.head_dim as u32)));
            v.push((k("attention.value_length"), U32(self.head_dim as u32)));
        }
        if let Some(f) = self.rope_linear {
            v.push((k("rope.scaling.type"), S("linear".into())));
            v.push((k("rope.scaling.factor"), F32(f)));
        }
        v
    }
}

/// How one HF tensor becomes a GGUF tensor.
struct Mapping {
    gguf: String,
    /// PyTorch shape config.json implies.
    shape: Vec<usize>,
    /// Q/K: permute rows per head, with this many heads.
    permute_heads: Option<usize>,
}

fn mapping(c: &LlamaConfig, hf: &str) -> Option<Mapping> {
    let (d, hd) = (c.n_embd, c.head_dim);
    let m = |gguf: String, shape: Vec<usize>, permute_heads| {
        Some(Mapping {
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
    match part {
        "input_layernorm.weight" => m(b("attn_norm"), vec![d], None),
        "post_attention_layernorm.weight" => m(b("ffn_norm"), vec![d], None),
        "self_attn.q_proj.weight" => m(b("attn_q"), vec![c.n_head * hd, d], Some(c.n_head)),
        "self_attn.k_proj.weight" => m(b("attn_k"), vec![c.n_head_kv * hd, d], Some(c.n_head_kv)),
        "self_attn.v_proj.weight" => m(b("attn_v"), vec![c.n_head_kv * hd, d], None),
        "self_attn.o_proj.weight" => m(b("attn_output"), vec![d, c.n_head * hd], None),
        "mlp.gate_proj.weight" => m(b("ffn_gate"), vec![c.n_ff, d], None),
        "mlp.up_proj.weight" => m(b("ffn_up"), vec![c.n_ff, d], None),
        "mlp.down_proj.weight" => m(b("ffn_down"), vec![d, c.n_ff], None),
        _ => None,
    }
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
        for p in [
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            needed.push(format!("model.layers.{il}.{p}.weight"));
        }
    }
    for n in &needed {
        if ck.get(n).is_none() {
            return Err(ConvertError::MissingTensor(n.clone()));
        }
    }
    let rank = |g: &str| -> (usize, usize, String) {
        match g {
            "token_embd.weight" => (0, 0, String::new()),
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
    Ok(found
        .into_iter()
        .map(|(m, t)| {
            // GGUF dims: row length first.
            let dims: Vec<u64> = t.shape.iter().rev().map(|&x| x as u64).collect();
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
        .collect())
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
