//! Llama 3.1+ files carry `rope_freqs.weight`, per-dimension RoPE frequency factors. ledge
//! once ignored it and ran such files with the wrong RoPE, silently. The fixture
//! (scripts/reference/gen_rope_freqs_fixture.py) holds llama.cpp's greedy text on an F32 copy of
//! SmolLM2 with the factors 1 + 7·i/31 added, and without them; this test builds the same
//! file and asks for llama.cpp's text with the tensor and a different one without.

mod common;

use common::*;
use ledge::gguf::{GgmlType, GgufBuilder, GgufFile, MetaValue};
use ledge::model::{Logits, Model};
use serde_json::Value;

fn f32_copy(with_freqs: Option<&[f32]>) -> std::path::PathBuf {
    let src = GgufFile::open(model(SMOLLM2)).unwrap();
    let name = if with_freqs.is_some() {
        "with"
    } else {
        "without"
    };
    let out = scratch(&format!("rope_freqs_{name}")).join("model.gguf");
    let mut b = GgufBuilder::with_metadata_of(&src).unwrap();
    b.set("general.file_type", MetaValue::U32(0)).unwrap();
    for t in src.tensor_infos() {
        b.add_tensor(src.tensor_name(t), GgmlType::F32, &t.dims)
            .unwrap();
    }
    if let Some(f) = with_freqs {
        b.add_tensor("rope_freqs.weight", GgmlType::F32, &[f.len() as u64])
            .unwrap();
    }
    let mut w = b.create(&out).unwrap();
    for t in src.tensors() {
        w.write_tensor(bytemuck::cast_slice(&t.to_f32().unwrap()))
            .unwrap();
    }
    if let Some(f) = with_freqs {
        w.write_tensor(bytemuck::cast_slice(f)).unwrap();
    }
    w.finish().unwrap()
}

fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(512);
    let mut last = model.forward(&mut cache, prompt, Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = last
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0 as u32;
        out.push(t);
        last = model.forward(&mut cache, &[t], Logits::Last).unwrap();
    }
    out
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn rope_freqs_change_the_text_as_in_llama_cpp() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/rope_freqs/smollm2.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let factors: Vec<f32> = fx["rope_freqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let (with_path, without_path) = (f32_copy(Some(&factors)), f32_copy(None));
    let (fw, fo) = (
        GgufFile::open(&with_path).unwrap(),
        GgufFile::open(&without_path).unwrap(),
    );
    let (with, without) = (Model::load(&fw).unwrap(), Model::load(&fo).unwrap());
    assert_eq!(with.rope_factors_for(512), Some(&factors[..]));
    let mut differs = 0;
    for (cw, co) in fx["with"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fx["without"].as_array().unwrap())
    {
        let prompt = ids(&cw["ids"]);
        let n = cw["greedy"].as_array().unwrap().len();
        let (gw, go) = (greedy(&with, &prompt, n), greedy(&without, &prompt, n));
        for (got, case) in [(&gw, cw), (&go, co)] {
            let k = case["decisive_prefix"].as_u64().unwrap() as usize;
            assert_eq!(got[..k], ids(&case["greedy"])[..k], "{}", cw["prompt"]);
        }
        differs += usize::from(gw != go);
    }
    assert_eq!(differs, 3, "rope_freqs must change every continuation");
}
