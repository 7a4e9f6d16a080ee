//! GGUF → Hugging Face directory (`ledge export-hf`): the converter's test input, since no
//! real FP16 checkpoint is available offline. Writes config.json (LlamaForCausalLM),
//! model.safetensors (or shards + model.safetensors.index.json) in F32/F16/BF16 with HF names
//! and HF's Q/K row order, tokenizer.json (byte-level BPE with the model's merges and its
//! pre-tokenizer) and tokenizer_config.json (special tokens, chat template).
//!
//! Everything is written into `<out>.tmp/` and renamed to `<out>` when complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value as Json};

use super::hf::hf_row_of_gguf_row;
use super::safetensors::StDtype;
use super::vocab::{TOKEN_CONTROL, TOKEN_USER_DEFINED};
use super::{io_err, ConvertError, Result};
use crate::gguf::GgufFile;
use crate::model::{Arch, ModelConfig};
use crate::progress::Progress;
use crate::tokenizer::bpe::{PreConfig, GPT2};

#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    pub dtype: StDtype,
    /// Split the weights into shards of about this many bytes (with an index file).
    pub shard_bytes: Option<u64>,
    pub progress: bool,
}

/// A JSON number holding exactly the f32's shortest decimal form (1e-5, not 9.99999e-6).
fn f32_json(x: f32) -> Json {
    let v: f64 = format!("{x}").parse().unwrap_or(x as f64);
    json!(v)
}

/// The HF name of a GGUF tensor, and the head count of Q/K (whose rows are reordered).
fn hf_name(name: &str, c: &ModelConfig) -> Option<(String, Option<usize>)> {
    match name {
        "token_embd.weight" => return Some(("model.embed_tokens.weight".into(), None)),
        "output_norm.weight" => return Some(("model.norm.weight".into(), None)),
        "output.weight" => return Some(("lm_head.weight".into(), None)),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (il, part) = rest.split_once('.')?;
    let il: usize = il.parse().ok()?;
    let l = c.layers.get(il)?;
    let (hf, heads) = match part {
        "attn_norm.weight" => ("input_layernorm", None),
        "ffn_norm.weight" => ("post_attention_layernorm", None),
        "attn_q.weight" => ("self_attn.q_proj", Some(l.n_head)),
        "attn_k.weight" => ("self_attn.k_proj", Some(l.n_head_kv)),
        "attn_v.weight" => ("self_attn.v_proj", None),
        "attn_output.weight" => ("self_attn.o_proj", None),
        "ffn_gate.weight" => ("mlp.gate_proj", None),
        "ffn_up.weight" => ("mlp.up_proj", None),
        "ffn_down.weight" => ("mlp.down_proj", None),
        _ => return None,
    };
    Some((format!("model.layers.{il}.{hf}.weight"), heads))
}

struct Planned {
    gguf: String,
    hf: String,
    heads: Option<usize>,
    shape: Vec<usize>,
    bytes: u64,
}

/// Exports `f` into the directory `out`; returns the files written.
pub fn export_hf(f: &GgufFile, out: &Path, opts: &ExportOptions) -> Result<Vec<PathBuf>> {
    let c = ModelConfig::from_gguf(f).map_err(|e| ConvertError::Usage(e.to_string()))?;
    if c.arch != Arch::Llama {
        return Err(ConvertError::Usage(format!(
            "export-hf writes LlamaForCausalLM; this model is {}",
            c.arch.name()
        )));
    }
    let l0 = c.layers[0].clone();
    if c.layers
        .iter()
        .any(|l| l.n_head != l0.n_head || l.n_head_kv != l0.n_head_kv || l.n_ff != l0.n_ff)
    {
        return Err(ConvertError::Usage(
            "layers of different shapes cannot be written as a LlamaForCausalLM config".into(),
        ));
    }
    let mut planned = Vec::new();
    for info in f.tensor_infos() {
        let name = f.tensor_name(info);
        let (hf, heads) = hf_name(name, &c).ok_or_else(|| {
            ConvertError::Usage(format!("tensor {name:?} has no LlamaForCausalLM name"))
        })?;
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let n: usize = shape.iter().product();
        planned.push(Planned {
            gguf: name.to_string(),
            hf,
            heads,
            shape,
            bytes: (n * opts.dtype.size()) as u64,
        });
    }
    let tied = f.tensor_info("output.weight").is_none();

    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map_err(io_err(out))?
            .next()
            .is_none();
        if !empty {
            return Err(ConvertError::Usage(format!(
                "{} exists and is not empty",
                out.display()
            )));
        }
    }
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = write_all(f, &c, tied, &planned, &tmp, opts);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir(out).map_err(io_err(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(io_err(out))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    Ok(files)
}

fn write_all(
    f: &GgufFile,
    c: &ModelConfig,
    tied: bool,
    planned: &[Planned],
    dir: &Path,
    opts: &ExportOptions,
) -> Result<()> {
    let tok = TokenizerMeta::read(f)?;
    let write_json = |name: &str, v: &Json| -> Result<()> {
        let p = dir.join(name);
        let s = serde_json::to_string_pretty(v).map_err(|e| ConvertError::Json {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        std::fs::write(&p, s + "\n").map_err(io_err(&p))
    };
    write_json("config.json", &config_json(c, tied, &tok, opts.dtype))?;
    write_json("tokenizer.json", &tok.tokenizer_json()?)?;
    write_json("tokenizer_config.json", &tok.tokenizer_config(c.ctx_train))?;

    // Shards: consecutive tensors until the size limit.
    let limit = opts.shard_bytes.unwrap_or(u64::MAX).max(1);
    let mut shards: Vec<Vec<&Planned>> = vec![Vec::new()];
    let mut size = 0u64;
    for p in planned {
        if size > 0 && size + p.bytes > limit {
            shards.push(Vec::new());
            size = 0;
        }
        size += p.bytes;
        shards.last_mut().expect("one shard").push(p);
    }
    let n = shards.len();
    let mut weight_map = Map::new();
    let mut progress = Tally {
        bar: opts.progress.then(|| Progress::new("export-hf", "tensors")),
        done: 0,
        total: planned.len(),
    };
    for (si, shard) in shards.iter().enumerate() {
        let name = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", si + 1)
        };
        for p in shard {
            weight_map.insert(p.hf.clone(), json!(name));
        }
        write_safetensors(f, shard, &dir.join(&name), opts, &mut progress)?;
    }
    if n > 1 {
        let total: u64 = planned.iter().map(|p| p.bytes).sum();
        write_json(
            "model.safetensors.index.json",
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }
    Ok(())
}

/// Tensors written so far, across the shards, and the bar that shows them.
struct Tally {
    bar: Option<Progress>,
    done: usize,
    total: usize,
}

fn write_safetensors(
    f: &GgufFile,
    tensors: &[&Planned],
    path: &Path,
    opts: &ExportOptions,
    progress: &mut Tally,
) -> Result<()> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for p in tensors {
        header.insert(
            p.hf.clone(),
            json!({"dtype": opts.dtype.name(), "shape": p.shape, "data_offsets": [offset, offset + p.bytes]}),
        );
        offset += p.bytes;
    }
    let mut head = serde_json::to_vec(&Json::Object(header)).map_err(|e| ConvertError::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    // The format pads the header with spaces so the data starts 8-aligned.
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let werr = io_err(path);
    let mut put = |b: &[u8]| w.write_all(b);
    put(&(head.len() as u64).to_le_bytes())
        .and_then(|_| put(&head))
        .map_err(werr)?;
    for p in tensors {
        let view = f.tensor(&p.gguf)?;
        let vals = view.to_f32().map_err(|source| ConvertError::Quant {
            name: p.gguf.clone(),
            source,
        })?;
        let row = *p.shape.last().unwrap_or(&1);
        let rows = vals.len() / row.max(1);
        let mut bytes = Vec::with_capacity(p.bytes as usize);
        // HF row order: HF row hf_row_of_gguf_row(g) holds GGUF row g.
        let mut order = vec![0usize; rows];
        for g in 0..rows {
            let h = match p.heads {
                Some(heads) => hf_row_of_gguf_row(g, rows, heads),
                None => g,
            };
            order[h] = g;
        }
        for &g in &order {
            for &x in &vals[g * row..(g + 1) * row] {
                match opts.dtype {
                    StDtype::F32 => bytes.extend_from_slice(&x.to_le_bytes()),
                    StDtype::F16 => bytes.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
                    StDtype::BF16 => {
                        bytes.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes())
                    }
                }
            }
        }
        put(&bytes).map_err(io_err(path))?;
        progress.done += 1;
        if let Some(bar) = &mut progress.bar {
            bar.update(progress.done, progress.total);
        }
    }
    w.flush().map_err(io_err(path))?;
    Ok(())
}

fn config_json(c: &ModelConfig, tied: bool, tok: &TokenizerMeta, dtype: StDtype) -> Json {
    let l = &c.layers[0];
    let mut j = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.n_embd,
        "intermediate_size": l.n_ff,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": l.n_head,
        "num_key_value_heads": l.n_head_kv,
        "head_dim": c.head_dim_k,
        "hidden_act": "silu",
        "max_position_embeddings": c.ctx_train,
        "rms_norm_eps": f32_json(c.rms_eps),
        "rope_theta": f32_json(l.rope_base),
        "vocab_size": c.n_vocab,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": match dtype {
            StDtype::F32 => "float32",
            StDtype::F16 => "float16",
            StDtype::BF16 => "bfloat16",
        },
    });
    if let crate::model::config::RopeScaling::Linear(f) = c.rope_scaling {
        j["rope_scaling"] = json!({"rope_type": "linear", "factor": f32_json(f)});
    }
    if let Some(b) = tok.bos {
        j["bos_token_id"] = json!(b);
    }
    if let Some(e) = tok.eos {
        j["eos_token_id"] = json!(e);
    }
    j
}

/// The GGUF's tokenizer keys, as exported.
struct TokenizerMeta {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    pre: PreConfig,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl TokenizerMeta {
    fn read(f: &GgufFile) -> Result<TokenizerMeta> {
        let bad = |m: String| ConvertError::Tokenizer(m);
        let model = f.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(bad(format!(
                "export-hf writes byte-level BPE tokenizers; this one is {model:?}"
            )));
        }
        let pre_name = f.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let pre = PreConfig::by_name(pre_name)
            .ok_or_else(|| bad(format!("pre-tokenizer {pre_name:?} is not one ledge knows")))?;
        let strings = |k: &str| -> Result<Vec<String>> {
            let a = f.get_array(k)?;
            Ok(a.strings()
                .ok_or_else(|| bad(format!("{k} is not an array of strings")))?
                .map(str::to_string)
                .collect())
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types = match f.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .and_then(|a| a.to_i64_vec())
                .ok_or_else(|| bad("tokenizer.ggml.token_type is not integers".into()))?
                .into_iter()
                .map(|t| t as i32)
                .collect(),
            None => vec![1; tokens.len()],
        };
        let id = |k: &str| f.get_u64(k).ok().map(|v| v as u32);
        let flag = |k: &str, d: bool| f.get_bool(k).unwrap_or(d);
        Ok(TokenizerMeta {
            merges: strings("tokenizer.ggml.merges")?,
            pre,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            unk: id("tokenizer.ggml.unknown_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token", pre.add_bos),
            add_eos: flag("tokenizer.ggml.add_eos_token", false),
            chat_template: f
                .get_str("tokenizer.chat_template")
                .ok()
                .map(str::to_string),
            tokens,
            types,
        })
    }

    fn added_tokens(&self) -> Vec<(usize, &str, bool)> {
        self.tokens
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter(|(_, (_, &ty))| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED)
            .map(|(i, (t, &ty))| (i, t.as_str(), ty == TOKEN_CONTROL))
            .collect()
    }

    fn text(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }

    fn tokenizer_json(&self) -> Result<Json> {
        let added: Vec<Json> = self
            .added_tokens()
            .into_iter()
            .map(|(id, content, special)| {
                json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": special})
            })
            .collect();
        // llama.cpp's regexes as HF pre-tokenizers: single digits are `Digits`, GPT-2's
        // pattern last is ByteLevel's own regex; anything else is an isolated Split.
        let regexes = self.pre.regexes();
        let mut steps: Vec<Json> = Vec::new();
        let byte_level_regex = regexes.last() == Some(&GPT2);
        let body = if byte_level_regex {
            &regexes[..regexes.len() - 1]
        } else {
            regexes
        };
        for re in body {
            if *re == r"\p{N}" {
                steps.push(json!({"type": "Digits", "individual_digits": true}));
            } else {
                steps.push(json!({"type": "Split", "pattern": {"Regex": re},
                                  "behavior": "Isolated", "invert": false}));
            }
        }
        steps.push(json!({"type": "ByteLevel", "add_prefix_space": false,
                          "trim_offsets": true, "use_regex": byte_level_regex}));
        let post = match (self.add_bos, self.text(self.bos)) {
            (true, Some(bos)) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [self.bos], "tokens": [bos]}}
            }),
            _ => json!({"type": "ByteLevel", "add_prefix_space": true,
                        "trim_offsets": false, "use_regex": true}),
        };
        let vocab: Map<String, Json> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        if vocab.len() != self.tokens.len() {
            return Err(ConvertError::Tokenizer(
                "the vocabulary has duplicate token texts".into(),
            ));
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": self.pre.ignore_merges(),
                "vocab": vocab, "merges": self.merges,
            }
        }))
    }

    fn tokenizer_config(&self, ctx: usize) -> Json {
        let mut decoder = Map::new();
        for (id, content, special) in self.added_tokens() {
            decoder.insert(
                id.to_string(),
                json!({"content": content, "lstrip": false, "normalized": false,
                       "rstrip": false, "single_word": false, "special": special}),
            );
        }
        let mut j = json!({
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "added_tokens_decoder": decoder,
            "clean_up_tokenization_spaces": false,
            "model_max_length": ctx,
            "tokenizer_class": "GPT2Tokenizer",
        });
        for (k, id) in [
            ("bos_token", self.bos),
            ("eos_token", self.eos),
            ("unk_token", self.unk),
            ("pad_token", self.pad),
        ] {
            if let Some(t) = self.text(id) {
                j[k] = json!(t);
            }
        }
        if let Some(t) = &self.chat_template {
            j["chat_template"] = json!(t);
        }
        j
    }
}
