//! Tokenizers built from GGUF metadata, matching llama.cpp token for token.
//!
//! Two vocabulary kinds (`tokenizer.ggml.model`):
//! - `gpt2`: byte-level BPE (the `tokenizers` crate, built in code from the GGUF's tokens and
//!   merges) behind the pre-tokenizer named by `tokenizer.ggml.pre` (see `bpe.rs`).
//! - `llama`: SentencePiece, llama.cpp's score-ordered bigram merge with byte fallback
//!   (see `spm.rs`).
//!
//! Both share llama.cpp's handling of special tokens (`partition.rs`), its token-to-piece rules
//! and its detokenizer (`detok.rs`), and a streaming detokenizer (`stream.rs`).
//!
//! llama.cpp (src/llama-vocab.cpp) is the reference throughout: where it has a quirk, ledge
//! keeps it, because a model's prompts were tokenized that way when it was evaluated there.

pub(crate) mod bpe;
mod detok;
mod partition;
mod spm;
mod stream;

use std::collections::HashMap;

use crate::gguf::{GgufError, GgufFile, Value};

pub use stream::StreamDecoder;

/// What is wrong with a GGUF file's tokenizer metadata. Every variant names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata key {0:?} is missing")]
    MissingKey(String),
    #[error("tokenizer metadata key {key:?} is {found}, expected {expected}")]
    WrongType {
        key: String,
        found: String,
        expected: &'static str,
    },
    #[error("tokenizer.ggml.model = {0:?} is not supported (ledge reads \"gpt2\" and \"llama\")")]
    UnsupportedModel(String),
    #[error("tokenizer.ggml.pre = {0:?} is not a pre-tokenizer ledge knows; refusing to guess its regexes")]
    UnknownPreTokenizer(String),
    #[error(
        "tokenizer metadata key {key:?} has {len} entries but tokenizer.ggml.tokens has {n_tokens}"
    )]
    TooShort {
        key: String,
        len: usize,
        n_tokens: usize,
    },
    #[error("tokenizer.ggml.tokens: token {id} ({text:?}) repeats token {first}")]
    DuplicateToken { id: usize, first: u32, text: String },
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    #[error("tokenizer.ggml.merges: {0}")]
    BadMerges(String),
    #[error("tokenizer.ggml.pre = {pre:?}: {reason}")]
    BadPreTokenizer { pre: String, reason: String },
    #[error(transparent)]
    Gguf(GgufError),
}

/// Token attributes, as llama.cpp derives them from `tokenizer.ggml.token_type` and its
/// name-based fix-ups (bit values are llama.cpp's `llama_token_attr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenAttr(u16);

impl TokenAttr {
    pub const UNDEFINED: TokenAttr = TokenAttr(0);
    pub const UNKNOWN: TokenAttr = TokenAttr(1 << 0);
    pub const UNUSED: TokenAttr = TokenAttr(1 << 1);
    pub const NORMAL: TokenAttr = TokenAttr(1 << 2);
    pub const CONTROL: TokenAttr = TokenAttr(1 << 3);
    pub const USER_DEFINED: TokenAttr = TokenAttr(1 << 4);
    pub const BYTE: TokenAttr = TokenAttr(1 << 5);
    pub const LSTRIP: TokenAttr = TokenAttr(1 << 7);
    pub const RSTRIP: TokenAttr = TokenAttr(1 << 8);

    /// From a GGUF token type (llama.cpp's `llama_token_type`); unknown types are UNDEFINED.
    fn from_token_type(t: i64) -> TokenAttr {
        match t {
            1 => Self::NORMAL,
            2 => Self::UNKNOWN,
            3 => Self::CONTROL,
            4 => Self::USER_DEFINED,
            5 => Self::UNUSED,
            6 => Self::BYTE,
            _ => Self::UNDEFINED,
        }
    }

    /// Whether any bit of `other` is set.
    pub fn intersects(self, other: TokenAttr) -> bool {
        self.0 & other.0 != 0
    }

    pub fn bits(self) -> u16 {
        self.0
    }

    fn set(&mut self, other: TokenAttr, on: bool) {
        if on {
            self.0 |= other.0;
        } else {
            self.0 &= !other.0;
        }
    }
}

impl std::ops::BitOr for TokenAttr {
    type Output = TokenAttr;
    fn bitor(self, rhs: TokenAttr) -> TokenAttr {
        TokenAttr(self.0 | rhs.0)
    }
}

/// Control and unknown tokens: what `parse_special` and `unparse_special` switch on and off.
const ATTR_SPECIAL: TokenAttr = TokenAttr(TokenAttr::CONTROL.0 | TokenAttr::UNKNOWN.0);

#[derive(Clone, Debug)]
struct TokenData {
    text: String,
    score: f32,
    attr: TokenAttr,
}

enum Model {
    Spm,
    Bpe(Box<bpe::BpeModel>),
}

/// Special token ids. `None` where the vocabulary has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End of turn: `<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`… (from the GGUF, or found by
    /// its text as llama.cpp does).
    pub eot: Option<u32>,
    /// End of message (`<|eom_id|>`).
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// A tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata.
pub struct Tokenizer {
    model: Model,
    model_name: String,
    pre: String,
    tokens: Vec<TokenData>,
    token_to_id: HashMap<String, u32>,
    /// Each token's piece with special tokens rendered (llama.cpp's `cache_token_to_piece`),
    /// all in one buffer: piece `i` is `pieces[piece_ends[i-1]..piece_ends[i]]`.
    pieces: Vec<u8>,
    piece_ends: Vec<u32>,
    /// Control, user-defined and unknown tokens, longest text first: the order in which
    /// `partition` cuts them out of the text.
    special_order: Vec<u32>,
    special: SpecialIds,
    /// Sorted.
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
}

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// Converts the reader's errors on a `get_*` call into ours (same key, same meaning).
fn from_gguf_err(e: GgufError) -> TokenizerError {
    match e {
        GgufError::MissingKey(k) => TokenizerError::MissingKey(k),
        GgufError::WrongType {
            key,
            found,
            expected,
        } => TokenizerError::WrongType {
            key,
            found,
            expected,
        },
        other => TokenizerError::Gguf(other),
    }
}

fn opt_bool(gguf: &GgufFile, key: &str) -> Result<Option<bool>, TokenizerError> {
    match gguf.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(v) => Err(TokenizerError::WrongType {
            key: key.to_string(),
            found: v.describe(),
            expected: "a bool",
        }),
    }
}

/// A special-token id key: any non-negative integer, or absent.
fn opt_id(gguf: &GgufFile, key: &str) -> Result<Option<u64>, TokenizerError> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => match v.to_i64() {
            Some(i) if i >= 0 => Ok(Some(i as u64)),
            _ => Err(TokenizerError::WrongType {
                key: key.to_string(),
                found: v.describe(),
                expected: "a non-negative integer",
            }),
        },
    }
}

/// Texts llama.cpp takes for an end-of-turn token when the GGUF names none, in the order
/// ledge prefers them (llama.cpp takes whichever its hash map yields first).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Every token with one of these texts ends generation (llama.cpp's list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

impl Tokenizer {
    /// Builds the tokenizer described by `gguf`'s `tokenizer.ggml.*` keys, with llama.cpp's
    /// defaults wherever an optional key is absent.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let model_name = gguf.get_str(KEY_MODEL).map_err(from_gguf_err)?.to_string();
        let d = KindDefaults::of(gguf, &model_name)?;
        let tokens = load_tokens(gguf)?;
        let n = tokens.len();
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            if let Some(&first) = token_to_id.get(t.text.as_str()) {
                return Err(TokenizerError::DuplicateToken {
                    id: i,
                    first,
                    text: t.text.clone(),
                });
            }
            token_to_id.insert(t.text.clone(), i as u32);
        }
        let mut special = read_special_ids(gguf, n, &d)?;
        let mut tok = Tokenizer {
            model: Model::Spm,
            model_name,
            pre: d.pre.map(|c| c.name.to_string()).unwrap_or_default(),
            tokens,
            token_to_id,
            pieces: Vec::new(),
            piece_ends: Vec::new(),
            special_order: Vec::new(),
            special: SpecialIds::default(),
            eog: Vec::new(),
            add_bos: opt_bool(gguf, KEY_ADD_BOS)?.unwrap_or(d.add_bos),
            add_eos: opt_bool(gguf, KEY_ADD_EOS)?.unwrap_or(false),
            add_space_prefix: opt_bool(gguf, KEY_ADD_SPACE_PREFIX)?.unwrap_or(d.add_space_prefix),
            clean_spaces: d.clean_spaces,
        };

        // The order matters: llama.cpp fixes attributes up by text, then lists the special
        // tokens, then fills its piece cache, then applies its per-model rules.
        tok.detect_special_by_text(&mut special);
        tok.special = special;
        tok.build_eog();

        // Cut-out order for `partition`: longest text first. llama.cpp's std::sort leaves ties
        // in an unspecified order; ties only matter for overlapping equal-length texts.
        let mut order: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                tok.tokens[i as usize]
                    .attr
                    .intersects(TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN)
            })
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tok.tokens[i as usize].text.len()));
        tok.special_order = order;

        if let Some(cfg) = d.pre {
            let merges = gguf.get_array(KEY_MERGES).map_err(from_gguf_err)?;
            let merges = merges.strings().ok_or_else(|| TokenizerError::WrongType {
                key: KEY_MERGES.to_string(),
                found: format!("array of {}", merges.elem_type()),
                expected: "an array of strings",
            })?;
            let vocab = tok
                .tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.text.clone(), i as u32));
            tok.model = Model::Bpe(Box::new(bpe::BpeModel::new(vocab, merges, cfg)?));
        }
        tok.build_pieces();

        let general_name = gguf
            .get("general.name")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        tok.apply_name_rules(general_name);
        Ok(tok)
    }

    /// llama.cpp's text-based fix-ups: finds EOT/EOM/FIM tokens the GGUF does not name and
    /// marks them (and every end-of-generation text) as control tokens; flags control tokens
    /// named "unused…".
    fn detect_special_by_text(&mut self, sp: &mut SpecialIds) {
        let slots: [(&mut Option<u32>, &[&str]); 8] = [
            (&mut sp.eot, EOT_TEXTS),
            (&mut sp.eom, EOM_TEXTS),
            (&mut sp.fim_pre, FIM_PRE_TEXTS),
            (&mut sp.fim_suf, FIM_SUF_TEXTS),
            (&mut sp.fim_mid, FIM_MID_TEXTS),
            (&mut sp.fim_pad, FIM_PAD_TEXTS),
            (&mut sp.fim_rep, FIM_REP_TEXTS),
            (&mut sp.fim_sep, FIM_SEP_TEXTS),
        ];
        for (slot, texts) in slots {
            if slot.is_some() {
                continue;
            }
            if let Some(id) = texts.iter().find_map(|t| self.token_to_id.get(*t).copied()) {
                *slot = Some(id);
                self.tokens[id as usize].attr.set(TokenAttr::CONTROL, true);
            }
        }
        for t in &mut self.tokens {
            if t.attr.intersects(TokenAttr::CONTROL) && t.text.contains("unused") {
                t.attr.set(TokenAttr::UNUSED, true);
            }
        }
    }

    /// The end-of-generation set, built as llama.cpp builds it.
    fn build_eog(&mut self) {
        let sp = self.special;
        let mut eog: Vec<u32> = [sp.fim_pad, sp.fim_rep, sp.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for text in EOG_TEXTS {
            if let Some(&id) = self.token_to_id.get(*text) {
                eog.push(id);
                self.tokens[id as usize].attr.set(TokenAttr::CONTROL, true);
            }
        }
        // gpt-oss: these are always rendered, so they are not control tokens.
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = self.token_to_id.get(text) {
                self.tokens[id as usize].attr = TokenAttr::USER_DEFINED;
            }
        }
        eog.extend([sp.eos, sp.eot, sp.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        let texts: Vec<&str> = eog
            .iter()
            .map(|&id| self.tokens[id as usize].text.as_str())
            .collect();
        let has = |text: &str| texts.contains(&text);
        // o200k_harmony and solar-open: "<|end|>" ends a message, not the generation.
        let has_call = has("<|call|>") || has("<|calls|>");
        let drop_end = has("<|end|>") && has_call && (has("<|return|>") || has("<|flush|>"));
        // gemma4 and plamo2: "</s>" is an ordinary token there.
        let drop_s = has("</s>") && (has("<|tool_response>") || has("<|plamo:eos|>"));
        if drop_end {
            let id = self.token_to_id["<|end|>"];
            eog.retain(|&e| e != id);
            self.tokens[id as usize].attr = TokenAttr::USER_DEFINED;
        }
        if drop_s {
            let id = self.token_to_id["</s>"];
            eog.retain(|&e| e != id);
            self.tokens[id as usize].attr = TokenAttr::NORMAL;
        }
        self.eog = eog;
    }

    /// llama.cpp's per-model attribute rules keyed on `general.name` (only Phi-3's apply to
    /// the vocabularies ledge reads): its special tokens swallow the whitespace after them.
    fn apply_name_rules(&mut self, general_name: &str) {
        let name = general_name.to_ascii_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &self.special_order {
                self.tokens[id as usize].attr.set(TokenAttr::RSTRIP, true);
            }
            for (text, on) in [
                ("</s>", true),
                ("<unk>", false),
                ("<s>", false),
                ("<|endoftext|>", false),
            ] {
                if let Some(&id) = self.token_to_id.get(text) {
                    self.tokens[id as usize].attr.set(TokenAttr::RSTRIP, on);
                }
            }
        }
    }

    fn build_pieces(&mut self) {
        let mut pieces = Vec::new();
        let mut ends = Vec::with_capacity(self.tokens.len());
        for id in 0..self.tokens.len() {
            detok::append_piece(self, id, &mut pieces);
            ends.push(pieces.len() as u32);
        }
        self.pieces = pieces;
        self.piece_ends = ends;
    }

    // ---- encoding ----

    /// Token ids for `text`, as llama.cpp's `llama_tokenize` gives them.
    ///
    /// `add_special` adds BOS/EOS where the vocabulary asks for them
    /// (`tokenizer.ggml.add_bos_token` / `add_eos_token`, llama.cpp's defaults when absent).
    /// `parse_special` turns control tokens written in the text (`<|im_start|>`) into their
    /// ids; user-defined tokens are always matched, as in llama.cpp.
    ///
    /// Cannot fail: should the BPE pre-tokenizer's regex engine ever give up on a text (its
    /// backtracking limit), that fragment is spelled one byte token at a time instead.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let fragments = partition::partition(self, text, parse_special);
        let mut out = Vec::new();
        match &self.model {
            Model::Spm => {
                if add_special && self.add_bos {
                    out.extend(self.special.bos);
                }
                // A fragment that follows a special token (or starts the text) gets the
                // space prefix, so "<s>Hi" tokenizes "Hi" as it would at the start.
                let mut prev_special = true;
                let mut buf = String::new();
                for f in &fragments {
                    match *f {
                        partition::Fragment::Text(ref r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(&text[r.clone()]);
                            let escaped = buf.replace(' ', "\u{2581}");
                            spm::tokenize(self, &escaped, &mut out);
                            prev_special = false;
                        }
                        partition::Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
                if add_special && self.add_eos {
                    out.extend(self.special.eos);
                }
            }
            Model::Bpe(bpe) => {
                if add_special && self.add_bos {
                    out.extend(self.special.bos);
                }
                for f in &fragments {
                    match *f {
                        partition::Fragment::Text(ref r) => {
                            bpe.tokenize(self, &text[r.clone()], &mut out)
                        }
                        partition::Fragment::Token(id) => out.push(id),
                    }
                }
                if add_special && self.add_eos {
                    out.extend(self.special.eos);
                }
            }
        }
        out
    }

    // ---- decoding ----

    /// The bytes token `id` stands for, special tokens rendered as their text (llama.cpp's
    /// `token_to_piece(id, special = true)`). Empty for an id outside the vocabulary.
    pub fn token_to_piece(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i >= self.piece_ends.len() {
            return &[];
        }
        let start = if i == 0 {
            0
        } else {
            self.piece_ends[i - 1] as usize
        };
        &self.pieces[start..self.piece_ends[i] as usize]
    }

    /// The piece as llama.cpp's `token_to_piece(id, special)` gives it: control and unknown
    /// tokens are empty unless `special`.
    pub fn piece(&self, id: u32, special: bool) -> &[u8] {
        match self.tokens.get(id as usize) {
            Some(t) if special || !t.attr.intersects(ATTR_SPECIAL) => self.token_to_piece(id),
            _ => &[],
        }
    }

    /// llama.cpp's `llama_detokenize`: the bytes of `ids`, with BOS/EOS dropped when
    /// `remove_special`, control tokens rendered only when `unparse_special`, and the
    /// vocabulary's clean-up of spaces before punctuation. Ids outside the vocabulary yield
    /// nothing.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        detok::detokenize(self, ids, remove_special, unparse_special)
    }

    /// The text of `ids` (control tokens not rendered), as llama.cpp's
    /// `common_detokenize(ids, special = false)`. Invalid UTF-8 (a byte token cut from its
    /// character) becomes U+FFFD, as `StreamDecoder` yields it.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut d = StreamDecoder::new(self);
        let mut s = String::new();
        for &id in ids {
            s.push_str(&d.push(id));
        }
        s.push_str(&d.finish());
        s
    }

    /// A streaming detokenizer over this vocabulary.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    // ---- vocabulary ----

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// `tokenizer.ggml.model`: "gpt2" or "llama".
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// `tokenizer.ggml.pre` for a BPE vocabulary ("" for SentencePiece).
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre
    }

    /// The token's text as stored in the GGUF (`▁` for spaces in SentencePiece, GPT-2's byte
    /// alphabet in BPE).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    pub fn token_score(&self, id: u32) -> Option<f32> {
        self.tokens.get(id as usize).map(|t| t.score)
    }

    pub fn token_attr(&self, id: u32) -> Option<TokenAttr> {
        self.tokens.get(id as usize).map(|t| t.attr)
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub fn special_ids(&self) -> &SpecialIds {
        &self.special
    }

    pub fn bos(&self) -> Option<u32> {
        self.special.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.special.eos
    }

    pub fn eot(&self) -> Option<u32> {
        self.special.eot
    }

    /// Whether generating `id` ends the generation (EOS, EOT, `<|im_end|>`, `<end_of_turn>`…).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Every end-of-generation id, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.token_attr(id)
            .is_some_and(|a| a.intersects(TokenAttr::CONTROL))
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Whether decoding removes spaces before punctuation (llama.cpp's `clean_spaces`).
    pub fn clean_spaces(&self) -> bool {
        self.clean_spaces
    }
}

/// What llama.cpp assumes for a vocabulary kind before it reads the optional keys.
struct KindDefaults {
    add_space_prefix: bool,
    add_bos: bool,
    clean_spaces: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    /// The pre-tokenizer, for BPE.
    pre: Option<bpe::PreConfig>,
}

impl KindDefaults {
    fn of(gguf: &GgufFile, model_name: &str) -> Result<KindDefaults, TokenizerError> {
        match model_name {
            "llama" => Ok(KindDefaults {
                add_space_prefix: true,
                add_bos: true,
                clean_spaces: false,
                bos: Some(1),
                eos: Some(2),
                unk: Some(0),
                pre: None,
            }),
            "gpt2" => {
                // llama.cpp falls back to "default" (with a loud warning) when the key is
                // absent; an unknown name is refused.
                let pre = match gguf.get(KEY_PRE) {
                    None => "default",
                    Some(v) => v.as_str().ok_or_else(|| TokenizerError::WrongType {
                        key: KEY_PRE.to_string(),
                        found: v.describe(),
                        expected: "a string",
                    })?,
                };
                let cfg = bpe::PreConfig::by_name(pre)
                    .ok_or_else(|| TokenizerError::UnknownPreTokenizer(pre.to_string()))?;
                Ok(KindDefaults {
                    add_space_prefix: false,
                    add_bos: cfg.add_bos,
                    clean_spaces: cfg.clean_spaces,
                    bos: Some(11),
                    eos: Some(11),
                    unk: None,
                    pre: Some(cfg),
                })
            }
            other => Err(TokenizerError::UnsupportedModel(other.to_string())),
        }
    }
}

/// The special ids: the GGUF's where it names one inside the vocabulary, else the kind's
/// default if that is inside the vocabulary (llama.cpp warns and does the same).
fn read_special_ids(
    gguf: &GgufFile,
    n: usize,
    d: &KindDefaults,
) -> Result<SpecialIds, TokenizerError> {
    let read = |name: &str, default: Option<u32>| -> Result<Option<u32>, TokenizerError> {
        let default = default.filter(|&i| (i as usize) < n);
        Ok(match opt_id(gguf, &format!("tokenizer.ggml.{name}"))? {
            Some(v) if v < n as u64 => Some(v as u32),
            _ => default,
        })
    };
    let mut sp = SpecialIds {
        bos: read("bos_token_id", d.bos)?,
        eos: read("eos_token_id", d.eos)?,
        eot: read("eot_token_id", None)?,
        eom: read("eom_token_id", None)?,
        unk: read("unknown_token_id", d.unk)?,
        sep: read("seperator_token_id", None)?, // sic: llama.cpp's spelling
        pad: read("padding_token_id", None)?,
        mask: read("mask_token_id", None)?,
        fim_pre: read("fim_pre_token_id", None)?,
        fim_suf: read("fim_suf_token_id", None)?,
        fim_mid: read("fim_mid_token_id", None)?,
        fim_pad: read("fim_pad_token_id", None)?,
        fim_rep: read("fim_rep_token_id", None)?,
        fim_sep: read("fim_sep_token_id", None)?,
    };
    // Deprecated names of three FIM ids, read after the new ones as llama.cpp does.
    sp.fim_pre = read("prefix_token_id", sp.fim_pre)?;
    sp.fim_suf = read("suffix_token_id", sp.fim_suf)?;
    sp.fim_mid = read("middle_token_id", sp.fim_mid)?;
    Ok(sp)
}

/// Reads tokens, scores and token types.
fn load_tokens(gguf: &GgufFile) -> Result<Vec<TokenData>, TokenizerError> {
    let arr = gguf.get_array(KEY_TOKENS).map_err(from_gguf_err)?;
    let texts = arr.strings().ok_or_else(|| TokenizerError::WrongType {
        key: KEY_TOKENS.to_string(),
        found: format!("array of {}", arr.elem_type()),
        expected: "an array of strings",
    })?;
    let n = arr.len();
    if n == 0 {
        return Err(TokenizerError::EmptyVocab);
    }
    // One optional per-token array, each element converted by `conv`.
    fn per_token<T>(
        gguf: &GgufFile,
        key: &str,
        n: usize,
        expected: &'static str,
        conv: impl Fn(&Value<'_>) -> Option<T>,
    ) -> Result<Option<Vec<T>>, TokenizerError> {
        let Some(v) = gguf.get(key) else {
            return Ok(None);
        };
        let wrong = || TokenizerError::WrongType {
            key: key.to_string(),
            found: v.describe(),
            expected,
        };
        let a = v.as_array().ok_or_else(wrong)?;
        let vals: Vec<T> = a
            .iter()
            .map(|x| conv(&x))
            .collect::<Option<_>>()
            .ok_or_else(wrong)?;
        if vals.len() < n {
            return Err(TokenizerError::TooShort {
                key: key.to_string(),
                len: vals.len(),
                n_tokens: n,
            });
        }
        Ok(Some(vals))
    }
    let scores = per_token(gguf, KEY_SCORES, n, "an array of numbers", |x| {
        x.to_f64().map(|f| f as f32)
    })?;
    let types = per_token(gguf, KEY_TOKEN_TYPE, n, "an array of integers", |x| {
        x.to_i64()
    })?;
    Ok(texts
        .enumerate()
        .map(|(i, text)| TokenData {
            // llama.cpp cannot key an empty text; it names the token instead.
            text: if text.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                text.to_string()
            },
            score: scores.as_ref().map_or(0.0, |s| s[i]),
            attr: types
                .as_ref()
                .map_or(TokenAttr::NORMAL, |t| TokenAttr::from_token_type(t[i])),
        })
        .collect())
}
