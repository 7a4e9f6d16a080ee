//! `ledge convert` of the tiny Hugging Face checkpoints of each family
//! (tests/fixtures/families/<fam>/hf) against llama.cpp's own conversion of the same
//! checkpoint (<fam>.f32.gguf): the same hyperparameters as ledge reads them, the same
//! tensors (names, shapes, values), the same vocabulary (byte-level BPE from tokenizer.json,
//! SentencePiece from tokenizer.model), and so the same greedy text as llama.cpp's fixture.

mod common;

use ledge::gguf::GgufFile;
use ledge::model::{Logits, Model, ModelConfig};
use std::process::Command;

fn dir(fam: &str) -> String {
    format!(
        "{}/tests/fixtures/families/{fam}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn convert(fam: &str) -> GgufFile {
    let out = common::scratch(&format!("convert_{fam}")).join("m.gguf");
    let st = Command::new(env!("CARGO_BIN_EXE_ledge"))
        .args([
            "convert",
            &format!("{}/hf", dir(fam)),
            "--type",
            "F32",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    GgufFile::open(&out).unwrap()
}

/// The hyperparameters as the model reads them, without the name.
fn config(f: &GgufFile) -> String {
    let c = ModelConfig::from_gguf(f).unwrap();
    format!(
        "{:?} {:?}",
        (
            c.arch,
            c.n_layer,
            c.n_embd,
            c.n_vocab,
            c.head_dim_k,
            c.head_dim_v,
            c.n_rot
        ),
        (
            c.rope_scaling,
            c.rms_eps,
            c.ctx_train,
            c.attn_scale,
            c.n_expert,
            c.n_expert_used,
            &c.layers
        )
    )
}

fn check(fam: &str) {
    let ours = convert(fam);
    let theirs = GgufFile::open(format!("{}/{fam}.f32.gguf", dir(fam))).unwrap();
    assert_eq!(ours.architecture().unwrap(), theirs.architecture().unwrap());
    assert_eq!(config(&ours), config(&theirs), "{fam}: hyperparameters");
    let mut names: Vec<&str> = theirs
        .tensor_infos()
        .iter()
        .map(|t| theirs.tensor_name(t))
        .collect();
    let mut our_names: Vec<&str> = ours
        .tensor_infos()
        .iter()
        .map(|t| ours.tensor_name(t))
        .collect();
    names.sort();
    our_names.sort();
    assert_eq!(our_names, names, "{fam}: tensor names");
    for name in names {
        let (a, b) = (ours.tensor(name).unwrap(), theirs.tensor(name).unwrap());
        assert_eq!(a.shape, b.shape, "{fam}: {name}");
        let (va, vb) = (a.to_f32().unwrap(), b.to_f32().unwrap());
        let worst = va
            .iter()
            .zip(&vb)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{fam}: {name} differs by {worst} (relative)");
    }
    // The BPE fixtures' tokenizers split with GPT-2's regex; the fixture script made
    // llama.cpp label them llama-bpe / qwen2 (their families' names), which ledge's converter,
    // reading the regexes, rightly does not. SentencePiece's `pre` is "default" on both.
    let sentencepiece = matches!(fam, "phi3" | "gemma2");
    for key in [
        "tokenizer.ggml.model",
        if sentencepiece {
            "tokenizer.ggml.pre"
        } else {
            "tokenizer.ggml.model"
        },
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_space_prefix",
    ] {
        assert_eq!(
            format!("{:?}", ours.get(key)),
            format!("{:?}", theirs.get(key)),
            "{fam}: {key}"
        );
    }
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
    ] {
        let (a, b) = (ours.get_array(key), theirs.get_array(key));
        match (a, b) {
            (Ok(a), Ok(b)) => assert!(a.iter().eq(b.iter()), "{fam}: {key}"),
            (a, b) => assert_eq!(a.is_ok(), b.is_ok(), "{fam}: {key}"),
        }
    }
    // And the text: llama.cpp's greedy continuation of the fixture's first prompt.
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/reference.json", dir(fam))).unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let model = Model::load(&ours).unwrap();
    let mut cache = model.new_cache(128);
    let mut last = model
        .forward(&mut cache, &ids(&r["ids"][0]), Logits::Last)
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..16 {
        let t = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap() as u32;
        got.push(t);
        last = model.forward(&mut cache, &[t], Logits::Last).unwrap();
    }
    assert_eq!(
        got,
        ids(&r["llamacpp"]["f32"][0]["greedy"]),
        "{fam}: greedy text"
    );
}

#[test]
fn llama_with_llama3_rope_scaling_converts_like_llama_cpp() {
    check("llama");
}

#[test]
fn qwen2_converts_like_llama_cpp() {
    check("qwen2");
}

#[test]
fn qwen3_converts_like_llama_cpp() {
    check("qwen3");
}

#[test]
fn qwen3moe_converts_like_llama_cpp() {
    check("qwen3moe");
}

#[test]
fn phi3_with_longrope_converts_like_llama_cpp() {
    check("phi3");
}

#[test]
fn gemma2_converts_like_llama_cpp() {
    check("gemma2");
}

/// Pruning what ledge cannot prune yet is refused with the reason, and writes nothing:
/// FFN channels of a mixture of experts, and Phi-3's fused matrices.
#[test]
fn pruning_experts_and_fused_matrices_is_refused() {
    for (fam, flag, why) in [
        ("qwen3moe", "--prune-ffn", "mixture-of-experts"),
        ("phi3", "--prune-heads", "fused"),
        ("phi3", "--prune-ffn", "fused"),
    ] {
        let out = common::scratch(&format!("prune_refused_{fam}")).join("m.gguf");
        let value = if flag == "--prune-ffn" { "0.25" } else { "1" };
        let st = Command::new(env!("CARGO_BIN_EXE_ledge"))
            .args([
                "convert",
                &format!("{}/{fam}.f32.gguf", dir(fam)),
                "--type",
                "F16",
            ])
            .args([flag, value, "--calib"])
            .arg(format!("{}/README.md", env!("CARGO_MANIFEST_DIR")))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(
            !st.status.success() && err.contains(why) && err.contains(fam),
            "{err}"
        );
        assert!(!out.exists());
    }
}

/// Calibration names the weights each family has: Phi-3's fused attn_qkv and Qwen3-MoE's
/// router get statistics, and no entry names a tensor the file lacks (llama-quantize would
/// warn about it).
#[test]
fn calibration_covers_fused_and_router_weights() {
    use ledge::convert::imatrix::Imatrix;
    for (fam, want) in [
        ("phi3", "blk.1.attn_qkv.weight"),
        ("qwen3moe", "blk.1.ffn_gate_inp.weight"),
        ("qwen2", "blk.1.attn_k.weight"),
    ] {
        let model = format!("{}/{fam}.f32.gguf", dir(fam));
        let out = common::scratch(&format!("calibrate_{fam}")).join("x.imatrix");
        let st = Command::new(env!("CARGO_BIN_EXE_ledge"))
            .args(["calibrate", "-m", &model, "--text"])
            .arg(format!("{}/README.md", env!("CARGO_MANIFEST_DIR")))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let im = Imatrix::load(&out).unwrap();
        assert!(
            im.importance(want).is_some(),
            "{fam}: no statistics for {want}"
        );
        let f = GgufFile::open(&model).unwrap();
        for name in im.entries.keys() {
            assert!(
                f.tensor_info(name).is_some(),
                "{fam}: imatrix entry {name} is not a tensor of the model"
            );
        }
    }
}

/// `ledge convert --type Q8_0` of each checkpoint writes llama.cpp's Q8_0 file (its
/// converter's F32, then llama-quantize) tensor for tensor: the same types (norms and MoE
/// routers kept F32) and the same bytes (F32 tensors within 1e-6).
#[test]
fn q8_0_conversion_equals_llama_cpps_bytes() {
    for fam in ["llama", "qwen2", "qwen3", "qwen3moe", "phi3", "gemma2"] {
        let out = common::scratch(&format!("convert_q8_{fam}")).join("m.gguf");
        let st = Command::new(env!("CARGO_BIN_EXE_ledge"))
            .args([
                "convert",
                &format!("{}/hf", dir(fam)),
                "--type",
                "Q8_0",
                "-o",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let ours = GgufFile::open(&out).unwrap();
        let theirs = GgufFile::open(format!("{}/{fam}.q8_0.gguf", dir(fam))).unwrap();
        assert_eq!(
            ours.tensor_infos().len(),
            theirs.tensor_infos().len(),
            "{fam}"
        );
        for info in theirs.tensor_infos() {
            let name = theirs.tensor_name(info);
            let (a, b) = (ours.tensor(name).unwrap(), theirs.tensor(name).unwrap());
            assert_eq!(a.ty, b.ty, "{fam}: {name} type");
            if a.ty == ledge::gguf::GgmlType::F32 {
                // Llama 3's rope_freqs are computed, not copied: the last bit may differ.
                let (va, vb) = (a.to_f32().unwrap(), b.to_f32().unwrap());
                let worst = va
                    .iter()
                    .zip(&vb)
                    .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
                    .fold(0f32, f32::max);
                assert!(worst <= 1e-6, "{fam}: {name} differs by {worst}");
            } else {
                assert!(a.data == b.data, "{fam}: {name} bytes differ");
            }
        }
    }
}
