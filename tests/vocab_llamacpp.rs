//! Token ids against llama.cpp's own tokenizer tests: the vocabulary-only GGUFs of real models
//! that llama.cpp ships (Qwen2/2.5/3 and DeepSeek-R1-Distill-Qwen's `qwen2`, Llama 3's
//! `llama-bpe`, Phi-3's and Llama 2's SentencePiece, GPT-2's) with llama.cpp's
//! inputs — code, digits, CJK, emoji, accents, whitespace runs — and the ids its
//! test-tokenizer-0 expects (`add_special = false`, `parse_special = false`). The files come
//! from PyPI's llama-cpp-python source (scripts/fetch-vocab.sh, run by scripts/test.sh).

use std::path::PathBuf;

use ledge::gguf::GgufFile;
use ledge::tokenizer::Tokenizer;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/llamacpp-vocab")
}

/// llama.cpp's test-tokenizer-0 reading of `.inp` / `.out`.
fn cases(vocab: &str) -> Vec<(String, Vec<u32>)> {
    let base = dir().join(format!("ggml-vocab-{vocab}.gguf"));
    let read = |ext: &str| {
        let p = base.with_extension(format!("gguf.{ext}"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/fetch-vocab.sh; scripts/test.sh does)",
                p.display()
            )
        })
    };
    let (inp, out) = (read("inp"), read("out"));
    // As llama.cpp splits: a separator at the very end starts no further case.
    let sep = "\n__ggml_vocab_test__\n";
    let texts: Vec<String> = inp
        .strip_suffix(sep)
        .unwrap_or(&inp)
        .split(sep)
        .map(str::to_string)
        .collect();
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{vocab}: .inp and .out differ in length"
    );
    texts.into_iter().zip(ids).collect()
}

fn check(vocab: &str) {
    let path = dir().join(format!("ggml-vocab-{vocab}.gguf"));
    let file = GgufFile::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-vocab.sh)", path.display()));
    let tok = Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{vocab}: {e}"));
    let cases = cases(vocab);
    assert!(cases.len() >= 30, "{vocab}: only {} cases", cases.len());
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let got = tok.encode(text, false, false);
        if &got != want {
            failures.push(format!(
                "{text:?}\n    ledge     {got:?}\n    llama.cpp {want:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{vocab}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn qwen2_vocab_matches_llama_cpp() {
    check("qwen2");
}

#[test]
fn llama3_vocab_matches_llama_cpp() {
    check("llama-bpe");
}

#[test]
fn phi3_vocab_matches_llama_cpp() {
    check("phi-3");
}

#[test]
fn llama2_spm_vocab_matches_llama_cpp() {
    check("llama-spm");
}

#[test]
fn gpt2_vocab_matches_llama_cpp() {
    check("gpt-2");
}
