//! Real chat templates (Qwen2.5, Qwen3, QwQ, DeepSeek-R1-Distill, Llama 3.1/3.2/3.3, Phi-3.5,
//! Gemma 2, Mistral-Nemo, SmolLM3 — the files llama.cpp ships for its own tests, fetched by
//! scripts/fetch-vocab.sh) rendered by ledge as llama.cpp's server renders them
//! (`--jinja`, /apply-template; tests/fixtures/chat_templates/renders.json, written by
//! scripts/reference/gen_chat_template_fixtures.py), with the bos/eos tokens of the family's
//! tiny model. A template that refuses a conversation (Gemma 2 has no system role) must be
//! refused by ledge too.

use std::path::PathBuf;

use ledge::generate::chat::{ChatTemplate, Message};
use ledge::gguf::GgufFile;
use ledge::tokenizer::Tokenizer;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Today's date as the Llama 3.1 templates print it ("07 Dec 2026").
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    ledge::generate::chat::strftime("%d %b %Y", secs)
}

#[test]
fn real_templates_render_as_llama_cpp_renders_them() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/chat_templates/renders.json"))
            .unwrap(),
    )
    .unwrap();
    let fixture_date = fx["date"].as_str().unwrap();
    let (mut failures, mut total) = (Vec::new(), 0);
    for t in fx["templates"].as_array().unwrap() {
        let (name, fam) = (t["name"].as_str().unwrap(), t["family"].as_str().unwrap());
        let path = root().join(format!("data/llamacpp-vocab/templates/{name}.jinja"));
        let src = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-vocab.sh)", path.display()));
        let model =
            GgufFile::open(root().join(format!("tests/fixtures/families/{fam}/{fam}.f32.gguf")))
                .unwrap();
        let tok = Tokenizer::from_gguf(&model).unwrap();
        let text = |id: Option<u32>| {
            id.and_then(|i| tok.token_text(i))
                .unwrap_or_default()
                .to_string()
        };
        let tpl = ChatTemplate::new(Some(src), text(tok.bos()), text(tok.eos()))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .strip_special(tok.add_bos(), tok.add_eos());
        for (i, case) in t["cases"].as_array().unwrap().iter().enumerate() {
            total += 1;
            let messages: Vec<Message> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let got = tpl.render(&messages, case["add_generation_prompt"].as_bool().unwrap());
            match (&got, case.get("prompt").and_then(|p| p.as_str())) {
                (Ok(g), Some(want)) => {
                    let want = want.replace(fixture_date, &today());
                    if *g != want {
                        failures.push(format!(
                            "{name} case {i}:\n  ledge:     {g:?}\n  llama.cpp: {want:?}"
                        ));
                    }
                }
                (Err(_), None) => {}
                (Ok(g), None) => failures.push(format!(
                    "{name} case {i}: llama.cpp refused ({}), ledge rendered {g:?}",
                    case["error"]
                )),
                (Err(e), Some(_)) => failures.push(format!("{name} case {i}: ledge: {e}")),
            }
        }
    }
    assert!(total >= 40, "only {total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} renderings differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
