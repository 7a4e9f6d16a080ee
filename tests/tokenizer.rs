//! The tokenizer against llama.cpp: tests/fixtures/tokenizer/*.json hold llama.cpp's token ids,
//! detokenizations, special ids and token pieces for the two real models and for variants of
//! their tokenizer metadata (written by scripts/reference/gen_tokenizer_fixtures.sh). Each
//! variant is rebuilt here from the real model the same way: its metadata copied, the
//! fixture's overrides applied, no tensors.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ledge::gguf::{GgufBuilder, GgufFile, MetaArray, MetaValue, ValueType};
use ledge::tokenizer::{Tokenizer, TokenizerError};
use serde_json::Value as Json;

const FIXTURES: &[&str] = &[
    "SmolLM2-135M-Instruct.Q4_1",
    "SmolLM2-135M-Instruct.Q4_1.pre-llama-bpe",
    "SmolLM2-135M-Instruct.Q4_1.pre-qwen2",
    "SmolLM2-135M-Instruct.Q4_1.pre-gpt-2",
    "SmolLM2-135M-Instruct.Q4_1.pre-default",
    "gemma-3-270m-q4_k_m",
    "gemma-3-270m-q4_k_m.space-prefix",
];

fn fixture_path(stem: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer")
        .join(format!("{stem}.json"))
}

struct Loaded {
    fx: Json,
    tok: Tokenizer,
}

/// The fixture and the tokenizer of its (possibly rewritten) model, built once per process.
fn load(stem: &str) -> Arc<Loaded> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Loaded>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // Build outside the lock would race on the scratch file; models are few, so hold it.
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = map.get(stem) {
        return l.clone();
    }
    let text = std::fs::read_to_string(fixture_path(stem))
        .unwrap_or_else(|e| panic!("{}: {e}", fixture_path(stem).display()));
    let fx: Json = serde_json::from_str(&text).unwrap();
    let model = common::model(fx["model"].as_str().unwrap());
    let file = GgufFile::open(&model).unwrap();
    let overrides = fx["overrides"].as_object().unwrap();
    let tok = if overrides.is_empty() {
        Tokenizer::from_gguf(&file).unwrap()
    } else {
        let mut b = GgufBuilder::with_metadata_of(&file).unwrap();
        for (k, v) in overrides {
            match v {
                Json::Null => {
                    b.remove(k);
                }
                Json::Bool(x) => {
                    b.set(k, *x).unwrap();
                }
                Json::String(s) => {
                    b.set(k, s.as_str()).unwrap();
                }
                other => panic!("override {k}: {other}"),
            }
        }
        let dir = common::scratch(&format!("tokenizer-{stem}"));
        let path = b.create(dir.join("vocab.gguf")).unwrap().finish().unwrap();
        Tokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap()
    };
    let l = Arc::new(Loaded { fx, tok });
    map.insert(stem.to_string(), l.clone());
    l
}

/// A fixture byte string: text, or {"hex": "..."} where the bytes are not UTF-8.
fn fx_bytes(v: &Json) -> Vec<u8> {
    match v {
        Json::String(s) => s.as_bytes().to_vec(),
        Json::Object(o) => hex(o["hex"].as_str().unwrap()),
        other => panic!("not a byte string: {other}"),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn cases(fx: &Json) -> &Vec<Json> {
    fx["encode"].as_array().unwrap()
}

/// Panics listing the first few failures, if any.
fn report(stem: &str, what: &str, failures: &[String], total: usize) {
    assert!(total > 0, "{stem}: no {what} cases");
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(8).collect();
        panic!(
            "{stem}: {} mismatches with llama.cpp over {total} {what} cases:\n{}",
            failures.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn check_encode(stem: &str) {
    let l = load(stem);
    let mut failures = Vec::new();
    for c in cases(&l.fx) {
        let text = c["text"].as_str().unwrap();
        let add = c["add_special"].as_bool().unwrap();
        let parse = c["parse_special"].as_bool().unwrap();
        let want = ids(&c["ids"]);
        let got = l.tok.encode(text, add, parse);
        if got != want {
            failures.push(format!(
                "  {text:?} add_special={add} parse_special={parse}\n    llama.cpp {want:?}\n    ledge     {got:?}"
            ));
        }
    }
    report(stem, "encode", &failures, cases(&l.fx).len());
}

#[test]
fn encode_smollm2() {
    check_encode(FIXTURES[0]);
}

#[test]
fn encode_smollm2_as_llama_bpe() {
    check_encode(FIXTURES[1]);
}

#[test]
fn encode_smollm2_as_qwen2() {
    check_encode(FIXTURES[2]);
}

#[test]
fn encode_smollm2_as_gpt2() {
    check_encode(FIXTURES[3]);
}

#[test]
fn encode_smollm2_as_default() {
    check_encode(FIXTURES[4]);
}

#[test]
fn encode_gemma3() {
    check_encode(FIXTURES[5]);
}

#[test]
fn encode_gemma3_with_space_prefix() {
    check_encode(FIXTURES[6]);
}

/// `detokenize` is llama_detokenize for (remove_special, unparse_special) = (false, false),
/// (false, true) and (true, false); `decode` is the first, as text.
#[test]
fn detokenize_matches_llama_cpp() {
    for stem in FIXTURES {
        let l = load(stem);
        let mut failures = Vec::new();
        for c in cases(&l.fx) {
            let ids = ids(&c["ids"]);
            for (key, rs, us) in [
                ("detok", false, false),
                ("detok_special", false, true),
                ("detok_removed", true, false),
            ] {
                let want = fx_bytes(&c[key]);
                let got = l.tok.detokenize(&ids, rs, us);
                if got != want {
                    failures.push(format!(
                        "  {ids:?} remove_special={rs} unparse_special={us}\n    llama.cpp {:?}\n    ledge     {:?}",
                        String::from_utf8_lossy(&want),
                        String::from_utf8_lossy(&got)
                    ));
                }
            }
            let want = String::from_utf8_lossy(&fx_bytes(&c["detok"])).into_owned();
            let got = l.tok.decode(&ids);
            if got != want {
                failures.push(format!(
                    "  decode {ids:?}\n    llama.cpp {want:?}\n    ledge     {got:?}"
                ));
            }
        }
        report(stem, "detokenize", &failures, cases(&l.fx).len());
    }
}

/// decode(encode(s)) == s wherever llama.cpp's own round trip gives s back.
#[test]
fn round_trip_where_llama_cpp_round_trips() {
    for stem in FIXTURES {
        let l = load(stem);
        let mut agreed = 0;
        for c in cases(&l.fx) {
            let text = c["text"].as_str().unwrap();
            if c["add_special"].as_bool().unwrap() || fx_bytes(&c["detok"]) != text.as_bytes() {
                continue;
            }
            let parse = c["parse_special"].as_bool().unwrap();
            let ids = l.tok.encode(text, false, parse);
            assert_eq!(
                l.tok.decode(&ids),
                text,
                "{stem}: {text:?} parse_special={parse}"
            );
            agreed += 1;
        }
        // Most texts round-trip; only special-token texts and clean-ups of spaces do not.
        assert!(
            agreed > cases(&l.fx).len() / 3,
            "{stem}: only {agreed} round trips"
        );
    }
}

#[test]
fn special_ids_and_flags_match_llama_cpp() {
    for stem in FIXTURES {
        let l = load(stem);
        let (fx, tok) = (&l.fx, &l.tok);
        let opt = |v: &Json| v.as_u64().map(|x| x as u32);
        assert_eq!(
            tok.n_vocab() as u64,
            fx["n_vocab"].as_u64().unwrap(),
            "{stem}"
        );
        assert_eq!(tok.bos(), opt(&fx["bos"]), "{stem}: bos");
        assert_eq!(tok.eos(), opt(&fx["eos"]), "{stem}: eos");
        assert_eq!(
            tok.add_bos(),
            fx["add_bos"].as_bool().unwrap(),
            "{stem}: add_bos"
        );
        assert_eq!(
            tok.add_eos(),
            fx["add_eos"].as_bool().unwrap(),
            "{stem}: add_eos"
        );
        assert_eq!(
            tok.eog_ids(),
            ids(&fx["eog"]).as_slice(),
            "{stem}: end-of-generation set"
        );
        for id in 0..tok.n_vocab() as u32 {
            assert_eq!(tok.is_eog(id), tok.eog_ids().contains(&id));
        }
        // llama.cpp takes the first end-of-turn text its hash map yields; with a single
        // candidate (Gemma's <end_of_turn>) that is deterministic, with several (SmolLM2's
        // <|im_end|> and <|endoftext|>) ledge prefers the chat one. Either way it ends
        // generation.
        let eot = tok.eot().expect("an end-of-turn token");
        assert!(tok.is_eog(eot), "{stem}: eot {eot}");
        if stem.starts_with("gemma") {
            assert_eq!(Some(eot), opt(&fx["eot"]), "{stem}: eot");
            assert_eq!(tok.token_text(eot), Some("<end_of_turn>"));
        } else {
            assert_eq!(tok.token_text(eot), Some("<|im_end|>"));
        }
    }
}

/// Pieces (special rendered and not) and attributes of a sample of every vocabulary: the
/// first 600 ids, 2000 random ones, and every token that is not NORMAL.
#[test]
fn pieces_and_attributes_match_llama_cpp() {
    for stem in ["SmolLM2-135M-Instruct.Q4_1", "gemma-3-270m-q4_k_m"] {
        let l = load(stem);
        let pieces = l.fx["pieces"].as_array().unwrap();
        assert!(pieces.len() > 600, "{stem}");
        let mut failures = Vec::new();
        for p in pieces {
            let id = p["id"].as_u64().unwrap() as u32;
            let attr = p["attr"].as_u64().unwrap() as u16;
            let special = hex(p["special"].as_str().unwrap());
            let plain = hex(p["plain"].as_str().unwrap());
            let got_attr = l.tok.token_attr(id).unwrap().bits();
            if l.tok.token_to_piece(id) != special.as_slice()
                || l.tok.piece(id, false) != plain.as_slice()
                || got_attr != attr
            {
                failures.push(format!(
                    "  id {id} ({:?}): llama.cpp attr {attr} piece {:?}/{:?}, ledge attr {got_attr} piece {:?}/{:?}",
                    l.tok.token_text(id),
                    String::from_utf8_lossy(&special),
                    String::from_utf8_lossy(&plain),
                    String::from_utf8_lossy(l.tok.token_to_piece(id)),
                    String::from_utf8_lossy(l.tok.piece(id, false)),
                ));
            }
        }
        report(stem, "piece", &failures, pieces.len());
    }
}

/// Streaming: every push returns only complete characters, what it returns is always a prefix
/// of the full decode, and everything returned plus `finish` is exactly `decode(ids)`.
#[test]
fn stream_decoder_yields_whole_characters_and_concatenates_to_decode() {
    for stem in FIXTURES {
        let l = load(stem);
        let mut held_back = 0;
        for c in cases(&l.fx) {
            let ids = ids(&c["ids"]);
            let full = l.tok.decode(&ids);
            let mut d = l.tok.stream_decoder();
            let mut so_far = String::new();
            for &id in &ids {
                let piece = l.tok.piece(id, false);
                let out = d.push(id);
                if !piece.is_empty() && out.is_empty() {
                    held_back += 1;
                }
                // A half character would show up as U+FFFD that the full text lacks.
                assert!(
                    !out.contains('\u{FFFD}') || full.contains('\u{FFFD}'),
                    "{stem}: {ids:?}: push({id}) gave a broken character"
                );
                so_far.push_str(&out);
                assert!(
                    full.starts_with(&so_far),
                    "{stem}: {ids:?}: {so_far:?} is not a prefix of {full:?}"
                );
            }
            so_far.push_str(&d.finish());
            assert_eq!(so_far, full, "{stem}: {ids:?}");
        }
        // Multi-byte characters split across tokens do occur in these texts (emoji, CJK).
        assert!(held_back > 0, "{stem}: no token was ever held back");
    }
}

/// A stream that continues a prompt keeps the first piece's space: what llama.cpp's
/// detokenizer gives once it has dropped a BOS (it then keeps the space too).
#[test]
fn stream_continuation_keeps_the_first_space() {
    let l = load("gemma-3-270m-q4_k_m.space-prefix");
    let (bos, eos) = (l.tok.bos().unwrap(), l.tok.eos().unwrap());
    let mut differs = 0;
    for c in cases(&l.fx) {
        let ids = ids(&c["ids"]);
        if !c["add_special"].as_bool().unwrap() || ids.len() < 3 {
            continue;
        }
        assert_eq!((ids[0], ids[ids.len() - 1]), (bos, eos));
        let body = &ids[1..ids.len() - 1];
        let mut d = l.tok.stream_decoder().continuation();
        let mut got: String = body.iter().map(|&id| d.push(id)).collect();
        got.push_str(&d.finish());
        let want = String::from_utf8_lossy(&fx_bytes(&c["detok_removed"])).into_owned();
        assert_eq!(got, want, "{body:?}");
        if got != l.tok.decode(body) {
            differs += 1;
        }
    }
    assert!(differs > 0, "no case where the first space mattered");
}

/// A character split over byte-level tokens: nothing comes out until its last byte arrives.
#[test]
fn stream_decoder_holds_a_split_emoji() {
    let l = load("SmolLM2-135M-Instruct.Q4_1");
    let ids = l.tok.encode("🎉", false, false);
    assert!(
        ids.len() > 1,
        "expected 🎉 to take several byte-level tokens: {ids:?}"
    );
    let mut d = l.tok.stream_decoder();
    for &id in &ids[..ids.len() - 1] {
        assert_eq!(d.push(id), "");
    }
    assert_eq!(d.push(ids[ids.len() - 1]), "🎉");
    assert_eq!(d.finish(), "");
    // Cut short, the partial character is reported as one U+FFFD, as decode does.
    let mut d = l.tok.stream_decoder();
    assert_eq!(d.push(ids[0]), "");
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(l.tok.decode(&ids[..1]), "\u{FFFD}");
}

// ---- errors ----

/// A minimal valid BPE vocabulary, as GGUF metadata.
fn tiny_bpe() -> GgufBuilder {
    let mut b = GgufBuilder::new();
    b.set("general.architecture", "llama").unwrap();
    b.set("tokenizer.ggml.model", "gpt2").unwrap();
    b.set("tokenizer.ggml.pre", "smollm").unwrap();
    b.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::strings(["a", "b", "ab", "Ġ", "<|end|>"])),
    )
    .unwrap();
    b.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::new(
            ValueType::I32,
            [1, 1, 1, 1, 3].into_iter().map(MetaValue::I32).collect(),
        )),
    )
    .unwrap();
    b.set(
        "tokenizer.ggml.merges",
        MetaValue::Array(MetaArray::strings(["a b"])),
    )
    .unwrap();
    b
}

fn build(name: &str, b: GgufBuilder) -> Result<Tokenizer, TokenizerError> {
    let dir = common::scratch(&format!("tokenizer-err-{name}"));
    let path = b.create(dir.join("t.gguf")).unwrap().finish().unwrap();
    Tokenizer::from_gguf(&GgufFile::open(path).unwrap())
}

#[test]
fn unknown_pre_tokenizer_is_an_error() {
    let mut b = tiny_bpe();
    b.set("tokenizer.ggml.pre", "no-such-pre").unwrap();
    let e = build("pre", b).err().expect("an error");
    assert!(
        matches!(&e, TokenizerError::UnknownPreTokenizer(p) if p == "no-such-pre"),
        "{e}"
    );
    assert!(e.to_string().contains("tokenizer.ggml.pre"), "{e}");
}

#[test]
fn missing_keys_are_named() {
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
    ] {
        let mut b = tiny_bpe();
        b.remove(key);
        let e = build(&format!("missing-{key}"), b).err().expect("an error");
        assert!(
            matches!(&e, TokenizerError::MissingKey(k) if k == key),
            "{key}: {e}"
        );
        assert!(e.to_string().contains(key), "{e}");
    }
}

#[test]
fn wrong_types_and_lengths_are_named() {
    let mut b = tiny_bpe();
    b.set("tokenizer.ggml.tokens", 7u32).unwrap();
    let e = build("type-tokens", b).err().expect("an error");
    assert!(
        matches!(&e, TokenizerError::WrongType { key, .. } if key == "tokenizer.ggml.tokens"),
        "{e}"
    );

    let mut b = tiny_bpe();
    b.set("tokenizer.ggml.add_bos_token", "yes").unwrap();
    let e = build("type-bos", b).err().expect("an error");
    assert!(
        matches!(&e, TokenizerError::WrongType { key, .. } if key == "tokenizer.ggml.add_bos_token"),
        "{e}"
    );

    let mut b = tiny_bpe();
    b.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::new(ValueType::I32, vec![MetaValue::I32(1)])),
    )
    .unwrap();
    let e = build("short-types", b).err().expect("an error");
    assert!(
        matches!(&e, TokenizerError::TooShort { key, len: 1, n_tokens: 5 } if key == "tokenizer.ggml.token_type"),
        "{e}"
    );

    let mut b = tiny_bpe();
    b.set("tokenizer.ggml.model", "bert").unwrap();
    let e = build("model", b).err().expect("an error");
    assert!(
        matches!(&e, TokenizerError::UnsupportedModel(m) if m == "bert"),
        "{e}"
    );

    let mut b = tiny_bpe();
    b.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::strings(["a", "b", "ab", "a", "<|end|>"])),
    )
    .unwrap();
    let e = build("dup", b).err().expect("an error");
    assert!(
        matches!(
            e,
            TokenizerError::DuplicateToken {
                id: 3,
                first: 0,
                ..
            }
        ),
        "{e}"
    );
}

/// A pre-tokenizer name llama.cpp handles with other regexes or rules is refused rather than
/// approximated.
#[test]
fn pre_tokenizers_llama_cpp_treats_differently_are_refused() {
    for name in [
        "deepseek-llm",
        "falcon",
        "chatglm-bpe",
        "tekken",
        "gpt-4o",
        "bloom",
    ] {
        let mut b = tiny_bpe();
        b.set("tokenizer.ggml.pre", name).unwrap();
        let e = build(&format!("refused-{name}"), b)
            .err()
            .expect("an error");
        assert!(
            matches!(&e, TokenizerError::UnknownPreTokenizer(p) if p == name),
            "{e}"
        );
    }
}
