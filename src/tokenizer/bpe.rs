//! Byte-level BPE (`tokenizer.ggml.model = gpt2`): the `tokenizers` crate's BPE model, built
//! from the GGUF's tokens and merges, behind the pre-tokenizer llama.cpp uses for
//! `tokenizer.ggml.pre`.
//!
//! llama.cpp splits the text with a list of regexes applied one after another, each
//! splitting the pieces the previous one left, matches and the text between them all kept
//! (the `tokenizers` crate's `Split` with `Isolated`). Each piece is then mapped to GPT-2's
//! byte alphabet and merged by rank. The regexes below are llama.cpp's
//! (src/llama-vocab.cpp, `llm_tokenizer_bpe`), written for a regex engine with look-ahead.

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::{Tokenizer, TokenizerError};

/// GPT-2's pattern. llama.cpp's string omits the final `|\s+`, but its hand-written matcher
/// for this pattern (unicode.cpp) has it, and without it a lone `\s` before a non-space
/// would be left unmatched, which `Isolated` keeps as its own piece anyway.
pub(crate) const GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pattern (contractions spelled case-insensitively as llama.cpp adapts them).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const RE_DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];
const RE_GPT2: &[&str] = &[GPT2];
const RE_LLAMA3: &[&str] = &[LLAMA3];
const RE_QWEN2: &[&str] = &[QWEN2];
/// StarCoder, SmolLM and relatives: every digit on its own, then GPT-2's pattern.
const RE_STARCODER: &[&str] = &[r"\p{N}", GPT2];

/// What llama.cpp does for one `tokenizer.ggml.pre` name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreConfig {
    pub name: &'static str,
    regexes: &'static [&'static str],
    /// Decoding removes spaces before punctuation (llama.cpp's `clean_spaces`).
    pub clean_spaces: bool,
    /// A whole pre-token that is in the vocabulary is emitted as is, without merging.
    ignore_merges: bool,
    /// The default for `add_bos_token` when the GGUF does not say.
    pub add_bos: bool,
}

const fn pre(
    name: &'static str,
    regexes: &'static [&'static str],
    clean_spaces: bool,
    ignore_merges: bool,
    add_bos: bool,
) -> PreConfig {
    PreConfig {
        name,
        regexes,
        clean_spaces,
        ignore_merges,
        add_bos,
    }
}

/// The pre-tokenizer names ledge knows: those llama.cpp maps to one of the regex sets above,
/// with the flags it sets for each name. Names llama.cpp treats with other regexes or extra
/// rules are left out, so they fail to load rather than tokenize differently.
const PRE_TOKENIZERS: &[PreConfig] = &[
    pre("default", RE_DEFAULT, true, false, false),
    // LLAMA_VOCAB_PRE_TYPE_LLAMA3
    pre("llama3", RE_LLAMA3, true, true, true),
    pre("llama-v3", RE_LLAMA3, true, true, true),
    pre("llama-bpe", RE_LLAMA3, true, true, true),
    pre("falcon3", RE_LLAMA3, true, true, true),
    pre("falcon-h1", RE_LLAMA3, true, true, true),
    pre("pixtral", RE_LLAMA3, true, true, true),
    pre("midm-2.0", RE_LLAMA3, true, true, true),
    pre("lfm2", RE_LLAMA3, true, true, true),
    // DBRX and Smaug use Llama 3's regex without its other settings.
    pre("dbrx", RE_LLAMA3, true, false, false),
    pre("smaug-bpe", RE_LLAMA3, true, false, false),
    // LLAMA_VOCAB_PRE_TYPE_GPT2 (and MPT, OLMO, JAIS, TRILLION, GRANITE_DOCLING: same regex)
    pre("gpt-2", RE_GPT2, true, false, false),
    pre("phi-2", RE_GPT2, true, false, false),
    pre("gigachat", RE_GPT2, true, false, false),
    pre("a.x-4.0", RE_GPT2, true, false, false),
    pre("mellum", RE_GPT2, true, false, false),
    pre("exaone4", RE_GPT2, true, false, false),
    pre("mpt", RE_GPT2, true, false, false),
    pre("olmo", RE_GPT2, true, false, false),
    pre("jais", RE_GPT2, true, false, false),
    pre("trillion", RE_GPT2, false, false, false),
    pre("granite-docling", RE_GPT2, false, false, false),
    // LLAMA_VOCAB_PRE_TYPE_QWEN2 and STABLELM2 (same regex)
    pre("qwen2", RE_QWEN2, false, false, false),
    pre("deepseek-r1-qwen", RE_QWEN2, false, false, false),
    pre("kormo", RE_QWEN2, false, false, false),
    pre("f2llmv2", RE_QWEN2, false, false, false),
    pre("megrez", RE_QWEN2, true, false, false),
    pre("stablelm2", RE_QWEN2, true, false, false),
    // STARCODER, REFACT, COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA, MELLUM2 (same regexes)
    pre("smollm", RE_STARCODER, false, false, false),
    pre("starcoder", RE_STARCODER, true, false, false),
    pre("refact", RE_STARCODER, true, false, false),
    pre("command-r", RE_STARCODER, false, false, false),
    pre("codeshell", RE_STARCODER, true, false, false),
    pre("exaone", RE_STARCODER, true, false, false),
    pre("minerva-7b", RE_STARCODER, true, false, false),
    pre("mellum2", RE_STARCODER, true, false, false),
];

impl PreConfig {
    pub(crate) fn by_name(name: &str) -> Option<PreConfig> {
        PRE_TOKENIZERS.iter().find(|p| p.name == name).copied()
    }

    /// Every name ledge knows, in table order.
    pub(crate) fn all() -> &'static [PreConfig] {
        PRE_TOKENIZERS
    }

    /// The regexes llama.cpp applies for this name, one after another.
    pub(crate) fn regexes(&self) -> &'static [&'static str] {
        self.regexes
    }

    pub(crate) fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }
}

pub(crate) struct BpeModel {
    inner: tokenizers::Tokenizer,
}

impl BpeModel {
    /// `vocab`: (text, id) for every token; `merges`: "left right" strings in rank order.
    pub(crate) fn new<'a>(
        vocab: impl Iterator<Item = (String, u32)>,
        merges: impl Iterator<Item = &'a str>,
        cfg: PreConfig,
    ) -> Result<BpeModel, TokenizerError> {
        let vocab: tokenizers::models::bpe::Vocab = vocab.collect();
        let mut pairs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for m in merges {
            // llama.cpp splits at the first space after the first byte, so a merge may
            // start with a space.
            let Some(at) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue; // llama.cpp keeps it as a merge of "" and "", which never applies
            };
            let (a, b) = (&m[..at], &m[at + 1..]);
            // The `tokenizers` crate refuses a merge whose parts or result are not tokens, so
            // such a merge (only a broken vocabulary has one; llama.cpp would apply it and then
            // spell the result byte by byte) is dropped. A repeated merge keeps its first
            // rank, as in llama.cpp's map.
            if !(vocab.contains_key(a)
                && vocab.contains_key(b)
                && vocab.contains_key(&format!("{a}{b}")))
            {
                continue;
            }
            let pair = (a.to_string(), b.to_string());
            if seen.insert(pair.clone()) {
                pairs.push(pair);
            }
        }
        let model = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .ignore_merges(cfg.ignore_merges)
            .build()
            .map_err(|e| TokenizerError::BadMerges(e.to_string()))?;

        let bad = |e: tokenizers::Error| TokenizerError::BadPreTokenizer {
            pre: cfg.name.to_string(),
            reason: e.to_string(),
        };
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for re in cfg.regexes {
            let split = Split::new(
                SplitPattern::Regex((*re).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(bad)?;
            steps.push(split.into());
        }
        // Only the byte-to-alphabet mapping: the splitting was done above.
        steps.push(ByteLevel::new(false, false, false).into());
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(Sequence::new(steps)));
        Ok(BpeModel { inner })
    }

    /// Appends the tokens of one text fragment to `out`.
    pub(crate) fn tokenize(&self, tok: &Tokenizer, text: &str, out: &mut Vec<u32>) {
        match self.inner.encode_fast(text, false) {
            Ok(enc) => out.extend_from_slice(enc.get_ids()),
            // The regex engine gave up (its backtracking limit): fall back to one token per
            // byte, which decodes to the same text.
            Err(_) => out.extend(
                text.bytes()
                    .filter_map(|b| tok.token_id(byte_to_char(b).encode_utf8(&mut [0; 4]))),
            ),
        }
    }
}

/// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// for U+0100 onwards, in byte order.
pub(crate) fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + rank).unwrap_or('\u{FFFD}')
}

/// The byte a character of GPT-2's alphabet stands for.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    match cp {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(cp as u8),
        0x100..=0x143 => {
            let rank = (cp - 0x100) as usize;
            (0..=255u8)
                .filter(|&b| !matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
                .nth(rank)
        }
        _ => None,
    }
}

/// A BPE token's text back to bytes (llama.cpp's `llama_decode_text`), including its marker
/// for a character outside the byte alphabet.
pub(crate) fn decode_token_text(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        // GPT-2's well-known images: space is 'Ġ', newline 'Ċ'.
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(char_to_byte('Ā'), Some(0));
    }

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        for p in PRE_TOKENIZERS {
            for re in p.regexes {
                fancy_regex_compiles(re);
            }
        }
    }

    fn fancy_regex_compiles(re: &str) {
        Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .unwrap_or_else(|e| panic!("{re}: {e}"));
    }
}
