//! tokenizer.json + tokenizer_config.json → llama.cpp's `tokenizer.ggml.*` keys, for
//! byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`), and SentencePiece's
//! tokenizer.model (`llama`, read by sp_model.rs).
//!
//! `tokenizer.ggml.pre` is found as llama.cpp's converter finds it: tokenize a fixed check
//! text, hash the ids, look the hash up (pre_hashes.rs). A vocabulary the table does not know
//! (a new model, a test vocabulary) is recognised by its pre-tokenizer's regexes instead, when
//! they are exactly one of the regex sets ledge's tokenizer implements.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::hf::read_json;
use super::pre_hashes::{CHECK_TEXT, PRE_HASHES};
use super::{ConvertError, Result};
use crate::gguf::{MetaArray, MetaValue, ValueType};
use crate::tokenizer::bpe::{PreConfig, GPT2};

/// llama.cpp's token types.
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;
pub const TOKEN_BYTE: i32 = 6;

fn tok_err(msg: impl Into<String>) -> ConvertError {
    ConvertError::Tokenizer(msg.into())
}

/// The tokenizer keys of a GGUF, ready to set.
#[derive(Clone, Debug)]
pub struct Vocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: &'static str,
    pub tokens: Vec<String>,
    /// SentencePiece scores (none for BPE).
    pub scores: Option<Vec<f32>>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub pre: String,
    /// How `pre` was found, for the log.
    pub pre_source: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Unset where the tokenizer files do not say (llama.cpp then uses the model's default).
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl Vocab {
    /// Reads `dir`'s tokenizer files; `n_vocab` is config.json's vocab_size (ids past the
    /// tokenizer's own become `[PAD{id}]` unused tokens, as in llama.cpp).
    pub fn from_dir(dir: &Path, n_vocab: usize, config_ids: &ConfigIds) -> Result<Vocab> {
        // As llama.cpp's converter: SentencePiece when the folder has its model file.
        if dir.join("tokenizer.model").exists() {
            return Self::from_sentencepiece(dir, n_vocab, config_ids);
        }
        let tj_path = dir.join("tokenizer.json");
        let tj = read_json(&tj_path)?;
        let model = tj
            .get("model")
            .ok_or_else(|| tok_err("tokenizer.json has no \"model\""))?;
        let kind = model.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if kind != "BPE" {
            return Err(tok_err(format!(
                "tokenizer.json model type {kind:?}: only byte-level BPE is supported"
            )));
        }
        let vocab = model
            .get("vocab")
            .and_then(|v| v.as_object())
            .ok_or_else(|| tok_err("tokenizer.json: model.vocab is not an object"))?;
        let mut by_id: Vec<Option<String>> = vec![None; n_vocab];
        let mut place = |text: &str, id: u64| -> Result<()> {
            let slot = by_id.get_mut(id as usize).ok_or_else(|| {
                tok_err(format!(
                    "token {text:?} has id {id}, past config.json's vocab_size {n_vocab}"
                ))
            })?;
            *slot = Some(text.to_string());
            Ok(())
        };
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| tok_err(format!("vocab entry {text:?} has no integer id")))?;
            place(text, id)?;
        }
        // Added tokens: (id → special?)
        let mut added: HashMap<u64, bool> = HashMap::new();
        for a in tj
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            let (Some(id), Some(text)) = (
                a.get("id").and_then(|i| i.as_u64()),
                a.get("content").and_then(|c| c.as_str()),
            ) else {
                return Err(tok_err(
                    "tokenizer.json: an added token lacks id or content",
                ));
            };
            place(text, id)?;
            added.insert(
                id,
                a.get("special").and_then(|s| s.as_bool()).unwrap_or(false),
            );
        }
        let mut tokens = Vec::with_capacity(n_vocab);
        let mut types = Vec::with_capacity(n_vocab);
        for (id, t) in by_id.into_iter().enumerate() {
            match t {
                None => {
                    tokens.push(format!("[PAD{id}]"));
                    types.push(TOKEN_UNUSED);
                }
                Some(text) => {
                    types.push(match added.get(&(id as u64)) {
                        Some(true) => TOKEN_CONTROL,
                        Some(false) => TOKEN_USER_DEFINED,
                        None => TOKEN_NORMAL,
                    });
                    tokens.push(text);
                }
            }
        }
        let merges = read_merges(model)?;
        let (pre, pre_source) = detect_pre(&tj_path, &tj)?;

        let cfg = tokenizer_config(dir)?;
        let lookup: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let (tpl_bos, tpl_eos) = template_adds(&tj, &lookup);
        let flag = |k: &str| cfg.get(k).and_then(|b| b.as_bool());
        let ids = special_ids(&cfg, &lookup, config_ids)?;
        drop(lookup);
        Ok(Vocab {
            model: "gpt2",
            tokens,
            scores: None,
            types,
            merges,
            pre,
            pre_source,
            bos: ids.bos,
            eos: ids.eos,
            unk: ids.unk,
            pad: ids.pad,
            add_bos: Some(flag("add_bos_token").unwrap_or(tpl_bos)),
            add_eos: Some(flag("add_eos_token").unwrap_or(tpl_eos)),
            add_space_prefix: None,
            chat_template: chat_template(dir, &cfg),
        })
    }

    /// A SentencePiece `tokenizer.model`, as llama.cpp's `_create_vocab_sentencepiece`
    /// reads it: the pieces in id order with their scores, user-defined pieces typed
    /// normal, ids up to config.json's vocab_size padded with `[PAD{id}]`, then the added
    /// tokens of added_tokens.json and tokenizer_config.json's `added_tokens_decoder`.
    fn from_sentencepiece(dir: &Path, n_vocab: usize, config_ids: &ConfigIds) -> Result<Vocab> {
        use super::sp_model::{piece_type as pt, SpModel};
        let path = dir.join("tokenizer.model");
        let bytes = std::fs::read(&path).map_err(super::io_err(&path))?;
        let sp = SpModel::parse(&bytes).map_err(|e| tok_err(e.to_string()))?;
        if sp.model_type != 1 && sp.model_type != 2 {
            return Err(tok_err(format!(
                "tokenizer.model: model type {} (only unigram and BPE SentencePiece models)",
                sp.model_type
            )));
        }
        let mut tokens: Vec<String> = (0..n_vocab).map(|i| format!("[PAD{i}]")).collect();
        let mut scores = vec![-10000.0f32; n_vocab];
        let mut types = vec![TOKEN_UNUSED; n_vocab];
        for (id, p) in sp.pieces.iter().enumerate().take(n_vocab) {
            tokens[id] = p.piece.clone();
            scores[id] = p.score;
            types[id] = match p.ty {
                pt::UNKNOWN => TOKEN_UNKNOWN,
                pt::CONTROL => TOKEN_CONTROL,
                pt::UNUSED => TOKEN_UNUSED,
                pt::BYTE => TOKEN_BYTE,
                _ => TOKEN_NORMAL,
            };
        }
        let added_path = dir.join("added_tokens.json");
        if added_path.exists() {
            let added = read_json(&added_path)?;
            for (text, id) in added.as_object().into_iter().flatten() {
                let id = id.as_u64().map(|i| i as usize).filter(|&i| i < n_vocab);
                let Some(id) = id else {
                    return Err(tok_err(format!(
                        "added_tokens.json: {text:?} has no id below vocab_size {n_vocab}"
                    )));
                };
                tokens[id] = text.clone();
                scores[id] = -1000.0;
                types[id] = TOKEN_USER_DEFINED;
            }
        }
        let cfg = tokenizer_config(dir)?;
        if let Some(dec) = cfg.get("added_tokens_decoder").and_then(|d| d.as_object()) {
            for (id, a) in dec {
                let id = id.parse::<usize>().ok().filter(|&i| i < n_vocab);
                let (Some(id), Some(text)) = (id, a.get("content").and_then(|c| c.as_str())) else {
                    return Err(tok_err(
                        "tokenizer_config.json: an added token has no content or an id past vocab_size",
                    ));
                };
                let special = a.get("special").and_then(|s| s.as_bool()) == Some(true);
                tokens[id] = text.to_string();
                (scores[id], types[id]) = if special {
                    (0.0, TOKEN_CONTROL)
                } else {
                    (-10000.0, TOKEN_USER_DEFINED)
                };
            }
        }
        let lookup: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let ids = special_ids(&cfg, &lookup, config_ids)?;
        drop(lookup);
        let flag = |k: &str| cfg.get(k).and_then(|b| b.as_bool());
        Ok(Vocab {
            model: "llama",
            tokens,
            scores: Some(scores),
            types,
            merges: Vec::new(),
            pre: "default".into(),
            pre_source: "SentencePiece model".into(),
            bos: ids.bos,
            eos: ids.eos,
            unk: ids.unk,
            pad: ids.pad,
            add_bos: flag("add_bos_token"),
            add_eos: flag("add_eos_token"),
            add_space_prefix: None,
            chat_template: chat_template(dir, &cfg),
        })
    }

    /// The `tokenizer.ggml.*` keys, in llama.cpp's order.
    pub fn gguf_metadata(&self) -> Vec<(String, MetaValue)> {
        let k = |s: &str| format!("tokenizer.ggml.{s}");
        let mut v = vec![
            (k("model"), MetaValue::String(self.model.into())),
            (k("pre"), MetaValue::String(self.pre.clone())),
            (
                k("tokens"),
                MetaValue::Array(MetaArray::strings(self.tokens.iter().cloned())),
            ),
        ];
        if let Some(scores) = &self.scores {
            v.push((
                k("scores"),
                MetaValue::Array(MetaArray::new(
                    ValueType::F32,
                    scores.iter().map(|&s| MetaValue::F32(s)).collect(),
                )),
            ));
        }
        v.push((
            k("token_type"),
            MetaValue::Array(MetaArray::new(
                ValueType::I32,
                self.types.iter().map(|&t| MetaValue::I32(t)).collect(),
            )),
        ));
        if self.model == "gpt2" {
            v.push((
                k("merges"),
                MetaValue::Array(MetaArray::strings(self.merges.iter().cloned())),
            ));
        }
        for (name, id) in [
            ("bos_token_id", self.bos),
            ("eos_token_id", self.eos),
            ("unknown_token_id", self.unk),
            ("padding_token_id", self.pad),
        ] {
            if let Some(id) = id {
                v.push((k(name), MetaValue::U32(id)));
            }
        }
        for (name, flag) in [
            ("add_bos_token", self.add_bos),
            ("add_eos_token", self.add_eos),
            ("add_space_prefix", self.add_space_prefix),
        ] {
            if let Some(f) = flag {
                v.push((k(name), MetaValue::Bool(f)));
            }
        }
        if let Some(t) = &self.chat_template {
            v.push((
                "tokenizer.chat_template".into(),
                MetaValue::String(t.clone()),
            ));
        }
        v
    }
}

/// Special-token ids config.json names (`bos_token_id`, …), used where the tokenizer files
/// do not name them, as llama.cpp's SpecialVocab does.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConfigIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
}

fn tokenizer_config(dir: &Path) -> Result<Json> {
    let path = dir.join("tokenizer_config.json");
    if path.exists() {
        read_json(&path)
    } else {
        Ok(Json::Null)
    }
}

/// tokenizer_config.json's special tokens (by text), else config.json's ids.
fn special_ids(
    cfg: &Json,
    lookup: &HashMap<&str, u32>,
    config_ids: &ConfigIds,
) -> Result<SpecialIds> {
    let special = |key: &str| -> Result<Option<u32>> {
        let text = match cfg.get(key) {
            Some(Json::String(s)) => Some(s.as_str()),
            Some(Json::Object(o)) => o.get("content").and_then(|c| c.as_str()),
            _ => None,
        };
        match text {
            None => Ok(None),
            Some(t) => lookup.get(t).copied().map(Some).ok_or_else(|| {
                tok_err(format!(
                    "tokenizer_config.json: {key} {t:?} is not in the vocabulary"
                ))
            }),
        }
    };
    let n = lookup.len() as u32;
    let valid = |id: Option<u32>| id.filter(|&i| i < n);
    Ok(SpecialIds {
        bos: special("bos_token")?.or(valid(config_ids.bos)),
        eos: special("eos_token")?.or(valid(config_ids.eos)),
        unk: special("unk_token")?,
        pad: special("pad_token")?.or(valid(config_ids.pad)),
    })
}

fn chat_template(dir: &Path, cfg: &Json) -> Option<String> {
    match cfg.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        // A list of named templates: the default one.
        Some(Json::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    }
}

/// Merges as "left right" strings: tokenizer.json stores them so, or as [left, right] pairs.
fn read_merges(model: &Json) -> Result<Vec<String>> {
    let list = model
        .get("merges")
        .and_then(|m| m.as_array())
        .ok_or_else(|| tok_err("tokenizer.json: model.merges is not a list"))?;
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                _ => Err(tok_err(format!("tokenizer.json: bad merge {m}"))),
            },
            _ => Err(tok_err(format!("tokenizer.json: bad merge {m}"))),
        })
        .collect()
}

/// Whether the post-processor's single-sequence template adds BOS / EOS.
fn template_adds(tj: &Json, lookup: &HashMap<&str, u32>) -> (bool, bool) {
    let Some(single) = tj
        .get("post_processor")
        .filter(|p| p.get("type").and_then(|t| t.as_str()) == Some("TemplateProcessing"))
        .and_then(|p| p.get("single"))
        .and_then(|s| s.as_array())
    else {
        return (false, false);
    };
    let is_special = |v: &Json| {
        v.get("SpecialToken")
            .and_then(|s| s.get("id"))
            .and_then(|i| i.as_str())
            .is_some_and(|t| lookup.contains_key(t))
    };
    (
        single.first().is_some_and(is_special),
        single.len() > 1 && single.last().is_some_and(is_special),
    )
}

/// llama.cpp's `chkhsh`: sha256 of Python's `str(list_of_ids)`.
pub fn check_hash(ids: &[u32]) -> String {
    let repr = format!(
        "[{}]",
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Sha256::digest(repr.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `tokenizer.ggml.pre` for this tokenizer.json, and how it was found.
fn detect_pre(path: &Path, tj: &Json) -> Result<(String, String)> {
    let tk = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
    let enc = tk
        .encode(CHECK_TEXT, true)
        .map_err(|e| tok_err(format!("tokenizing the check text: {e}")))?;
    let hash = check_hash(enc.get_ids());
    if let Some((_, name)) = PRE_HASHES.iter().find(|(h, _)| *h == hash) {
        if PreConfig::by_name(name).is_some() {
            return Ok((name.to_string(), format!("check-text hash {hash}")));
        }
    }
    let regexes = pre_regexes(tj.get("pre_tokenizer").unwrap_or(&Json::Null));
    if let Some(regexes) = regexes {
        if let Some(p) = PreConfig::all()
            .iter()
            .find(|p| p.regexes() == regexes.as_slice())
        {
            return Ok((
                p.name.to_string(),
                format!(
                    "pre-tokenizer regexes (check-text hash {hash} is not in llama.cpp's table)"
                ),
            ));
        }
    }
    Err(tok_err(format!(
        "the pre-tokenizer is not one ledge knows (check-text hash {hash}, not in llama.cpp's table, and its regexes match no known set)"
    )))
}

/// The regexes a `pre_tokenizer` applies, in llama.cpp's terms, or None if it does something
/// else (normalizes, uses Metaspace…).
fn pre_regexes(p: &Json) -> Option<Vec<&'static str>> {
    let mut out: Vec<&'static str> = Vec::new();
    let steps: Vec<&Json> = match p.get("type").and_then(|t| t.as_str())? {
        "Sequence" => p.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => vec![p],
    };
    for s in steps {
        match s.get("type").and_then(|t| t.as_str())? {
            "Digits" if s.get("individual_digits").and_then(|b| b.as_bool()) == Some(true) => {
                out.push(r"\p{N}")
            }
            "ByteLevel" => {
                if s.get("add_prefix_space").and_then(|b| b.as_bool()) == Some(true) {
                    return None;
                }
                if s.get("use_regex").and_then(|b| b.as_bool()).unwrap_or(true) {
                    out.push(GPT2);
                }
            }
            "Split" => {
                let re = s.get("pattern")?.get("Regex")?.as_str()?;
                let behavior = s.get("behavior").and_then(|b| b.as_str())?;
                if behavior != "Isolated" || s.get("invert").and_then(|b| b.as_bool()) == Some(true)
                {
                    return None;
                }
                // Only regexes ledge knows can be named; compare against its own strings.
                let known = PreConfig::all()
                    .iter()
                    .flat_map(|c| c.regexes().iter().copied())
                    .find(|k| *k == re)?;
                out.push(known);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_text_is_llama_cpps() {
        // sha256 of the chktxt string in llama.cpp's conversion/base.py.
        let h: String = Sha256::digest(CHECK_TEXT.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            h,
            "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
        );
    }

    #[test]
    fn hash_uses_python_list_repr() {
        // hashlib.sha256(str([1, 22, 333]).encode()).hexdigest()
        assert_eq!(
            check_hash(&[1, 22, 333]),
            "276d8737d9d5a80805e0731e8d5ae18972a8e3ba721f4988f67151c6e9159068"
        );
    }
}
