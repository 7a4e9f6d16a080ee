//! `ledge synth`: random-weight models in real shapes load and run, with the planned types.

mod common;

use common::scratch;
use ledge::gguf::{GgmlType, GgufFile};
use ledge::model::synth::{self, SynthOptions, TypePlan};
use ledge::model::{Logits, Model};

fn make(shape: &str, ty: &str, layers: usize, name: &str) -> std::path::PathBuf {
    let opts = SynthOptions {
        shape: synth::shape(shape).unwrap().clone(),
        plan: TypePlan::parse(ty).unwrap(),
        layers: Some(layers),
        seed: 3,
    };
    let mut calls = 0;
    let p = synth::write(&opts, &scratch(name).join("m.gguf"), &mut |_, _, _| {
        calls += 1
    })
    .unwrap();
    assert_eq!(calls, 3 + 9 * layers, "one progress call per tensor");
    p
}

#[test]
fn synthetic_model_loads_and_runs() {
    let p = make("135m", "Q4_0", 2, "synth_q4_0");
    let f = GgufFile::open(&p).unwrap();
    let m = Model::load(&f).unwrap();
    assert_eq!(
        (m.config.n_embd, m.config.n_vocab, m.layers.len()),
        (576, 49152, 2)
    );
    assert_eq!(
        f.tensor("blk.1.ffn_down.weight").unwrap().ty,
        GgmlType::Q4_0
    );
    // Q6_K cannot hold 576-wide rows: llama.cpp's fallback is Q8_0.
    assert_eq!(f.tensor("output.weight").unwrap().ty, GgmlType::Q8_0);
    let mut cache = m.new_cache(64);
    let logits = m
        .forward(&mut cache, &[1, 300, 301, 302], Logits::All)
        .unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
    // Random weights at std 0.02 give small but non-degenerate logits.
    let spread = logits.iter().fold(0f32, |a, &x| a.max(x.abs()));
    assert!(spread > 1e-3 && spread < 100.0, "logit range {spread}");
    let tok = ledge::tokenizer::Tokenizer::from_gguf(&f).unwrap();
    assert_eq!(tok.encode("hi", true, false)[0], 1);
}

#[test]
fn mixed_plan_gives_more_bits_where_llama_cpp_does() {
    let p = make("1b", "Q4_K_M", 8, "synth_q4_k_m");
    let f = GgufFile::open(&p).unwrap();
    let ty = |n: &str| f.tensor(n).unwrap().ty;
    // 8 layers: the first and last eighth (layers 0 and 7) and every third from layer 1 (3, 6).
    for l in 0..8 {
        let want = if [0, 3, 6, 7].contains(&l) {
            GgmlType::Q6_K
        } else {
            GgmlType::Q4_K
        };
        assert_eq!(ty(&format!("blk.{l}.attn_v.weight")), want, "layer {l}");
        assert_eq!(ty(&format!("blk.{l}.ffn_down.weight")), want, "layer {l}");
        assert_eq!(ty(&format!("blk.{l}.attn_q.weight")), GgmlType::Q4_K);
    }
    Model::load(&f).unwrap();
}

#[test]
fn bad_requests_are_errors() {
    assert!(synth::shape("70b").is_none());
    let e = TypePlan::parse("Q9_9").unwrap_err().to_string();
    assert!(e.contains("Q9_9"), "{e}");
    // 135m rows are 576 wide: K-quants fall back to 32-block types, as in llama.cpp.
    assert_eq!(synth::fallback(GgmlType::Q4_K, 576), GgmlType::Q5_0);
    assert_eq!(synth::fallback(GgmlType::Q6_K, 576), GgmlType::Q8_0);
    assert_eq!(synth::fallback(GgmlType::Q4_K, 2048), GgmlType::Q4_K);
}
