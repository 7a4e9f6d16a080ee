//! LoRA adapters (llama.cpp's GGUF format) applied at run time: the same logits as the
//! adapter folded into the weights, for plain and fused (Phi-3) matrices; the file format
//! round trip; and each malformed adapter refused by name.

mod common;

use std::path::{Path, PathBuf};

use common::{scratch, Rng};
use ledge::gguf::{GgmlType, GgufBuilder, GgufFile, MetaValue};
use ledge::model::lora::{write_adapter, LoraAdapter, LoraPair};
use ledge::model::{Logits, Model};

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
        .join(format!("{family}.f32.gguf"))
}

fn uniform(rng: &mut Rng, n: usize, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp)
        .collect()
}

/// Random rank-`rank` pairs for every 2-D tensor whose name ends with one of `targets`.
fn random_pairs(f: &GgufFile, targets: &[&str], rank: usize, seed: u64) -> Vec<LoraPair> {
    let mut rng = Rng(seed);
    f.tensors()
        .filter(|v| v.shape.len() == 2 && targets.iter().any(|t| v.name.ends_with(t)))
        .map(|v| {
            let (k, m) = (v.shape[0], v.shape[1]);
            LoraPair {
                base: v.name.to_string(),
                rank,
                k,
                m,
                a: uniform(&mut rng, rank * k, 1.0 / (k as f32).sqrt()),
                b: uniform(&mut rng, m * rank, 0.5),
            }
        })
        .collect()
}

/// The model with W + s·B·A folded into each adapted (F32) matrix.
fn merged(base: &Path, pairs: &[LoraPair], s: f32, out: &Path) {
    let f = GgufFile::open(base).unwrap();
    let mut b = GgufBuilder::with_metadata_of(&f).unwrap();
    for v in f.tensors() {
        let dims: Vec<u64> = v.shape.iter().map(|&d| d as u64).collect();
        b.add_tensor(&v.name, v.ty, &dims).unwrap();
    }
    let mut st = b.create(out).unwrap();
    for v in f.tensors() {
        match pairs.iter().find(|p| p.base == v.name) {
            Some(p) => {
                assert_eq!(v.ty, GgmlType::F32, "{}: the fixture is F32", v.name);
                let mut w = v.to_f32().unwrap();
                for i in 0..p.m {
                    for j in 0..p.k {
                        let d: f64 = (0..p.rank)
                            .map(|r| p.b[i * p.rank + r] as f64 * p.a[r * p.k + j] as f64)
                            .sum();
                        w[i * p.k + j] += (s as f64 * d) as f32;
                    }
                }
                let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
                st.write_tensor(&bytes).unwrap();
            }
            None => st.write_tensor(&v.data).unwrap(),
        }
    }
    st.finish().unwrap();
}

fn logits(model: &Path, adapters: &[&Path], scale: f32, tokens: &[u32]) -> Vec<f32> {
    let f = GgufFile::open(model).unwrap();
    let mut m = Model::load(&f).unwrap();
    for a in adapters {
        let ad = LoraAdapter::open(a).unwrap();
        assert!(m.attach_lora(&ad, scale).unwrap() > 0);
    }
    let mut cache = m.new_cache(64);
    m.forward(&mut cache, tokens, Logits::All).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const TOKENS: [u32; 7] = [1, 17, 42, 99, 3, 250, 7];

/// The adapter at run time gives the logits of the merged weights, over a prompt (several
/// tokens in one pass) and per token.
fn check_family(family: &str, targets: &[&str]) {
    let dir = scratch(&format!("lora-{family}"));
    let base = fixture(family);
    let f = GgufFile::open(&base).unwrap();
    let arch = f.architecture().unwrap().to_string();
    let pairs = random_pairs(&f, targets, 4, 7);
    assert!(
        pairs.len() >= targets.len(),
        "{family}: {} pairs",
        pairs.len()
    );
    let (alpha, scale) = (6.0, 0.5); // s = 0.5 · 6 / 4 = 0.75
    let adapter = write_adapter(&dir.join("a.gguf"), &arch, alpha, &pairs, GgmlType::F32).unwrap();
    merged(&base, &pairs, 0.75, &dir.join("merged.gguf"));

    let plain = logits(&base, &[], 1.0, &TOKENS);
    let with = logits(&base, &[&adapter], scale, &TOKENS);
    let folded = logits(&dir.join("merged.gguf"), &[], 1.0, &TOKENS);
    let effect = max_diff(&plain, &with);
    let err = max_diff(&with, &folded);
    assert!(
        effect > 0.05,
        "{family}: the adapter changed the logits by only {effect}"
    );
    assert!(
        err < 2e-3 * effect.max(1.0),
        "{family}: adapter vs merged weights differ by {err} (the adapter's effect: {effect})"
    );
    // Token by token (the decode path) matches the prompt pass.
    let ff = GgufFile::open(&base).unwrap();
    let mut m = Model::load(&ff).unwrap();
    m.attach_lora(&LoraAdapter::open(&adapter).unwrap(), scale)
        .unwrap();
    let mut cache = m.new_cache(64);
    let nv = m.config.n_vocab;
    for (t, &id) in TOKENS.iter().enumerate() {
        let l = m.forward(&mut cache, &[id], Logits::Last).unwrap();
        let d = max_diff(&l, &with[t * nv..(t + 1) * nv]);
        assert!(
            d < 2e-3 * effect.max(1.0),
            "{family}: token {t} differs by {d}"
        );
    }
    // Scale 0 is the base model.
    let off = logits(&base, &[&adapter], 0.0, &TOKENS);
    assert_eq!(max_diff(&off, &plain), 0.0, "{family}: --lora-scale 0");
}

#[test]
fn llama_adapter_equals_merged_weights() {
    check_family(
        "llama",
        &[
            "attn_q.weight",
            "attn_v.weight",
            "attn_output.weight",
            "ffn_down.weight",
            "ffn_gate.weight",
        ],
    );
}

#[test]
fn phi3_fused_adapter_equals_merged_weights() {
    // attn_qkv and Phi-3's gate+up ffn_up are cut into parts at load: B's rows follow them.
    check_family(
        "phi3",
        &["attn_qkv.weight", "ffn_up.weight", "ffn_down.weight"],
    );
}

#[test]
fn two_adapters_add() {
    let dir = scratch("lora-two");
    let base = fixture("llama");
    let f = GgufFile::open(&base).unwrap();
    let p1 = random_pairs(&f, &["attn_q.weight"], 2, 1);
    let p2 = random_pairs(&f, &["attn_q.weight", "ffn_up.weight"], 3, 2);
    let a1 = write_adapter(&dir.join("1.gguf"), "llama", 0.0, &p1, GgmlType::F32).unwrap();
    let a2 = write_adapter(&dir.join("2.gguf"), "llama", 0.0, &p2, GgmlType::F32).unwrap();
    // alpha 0: the scale alone, as llama.cpp; merge both into one file step by step.
    merged(&base, &p1, 1.0, &dir.join("m1.gguf"));
    merged(&dir.join("m1.gguf"), &p2, 1.0, &dir.join("m12.gguf"));
    let both = logits(&base, &[&a1, &a2], 1.0, &TOKENS);
    let folded = logits(&dir.join("m12.gguf"), &[], 1.0, &TOKENS);
    let d = max_diff(&both, &folded);
    assert!(d < 5e-3, "two adapters vs merged: {d}");
}

#[test]
fn adapter_file_round_trip() {
    let dir = scratch("lora-roundtrip");
    let f = GgufFile::open(fixture("llama")).unwrap();
    let pairs = random_pairs(&f, &["attn_k.weight"], 5, 3);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let p = write_adapter(&dir.join(format!("{ty}.gguf")), "llama", 10.0, &pairs, ty).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.get_str("general.type").unwrap(), "adapter");
        assert_eq!(g.get_str("adapter.type").unwrap(), "lora");
        assert_eq!(g.get_f32("adapter.lora.alpha").unwrap(), 10.0);
        let name = format!("{}.lora_a", pairs[0].base);
        let info = g.tensor_info(&name).unwrap();
        assert_eq!(info.ty, ty);
        let back = LoraAdapter::open(&p).unwrap();
        assert_eq!(back.pairs.len(), pairs.len());
        let tol = match ty {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 1e-3,
            _ => 8e-3,
        };
        for (x, y) in back.pairs.iter().zip(&pairs) {
            assert_eq!(
                (x.base.as_str(), x.k, x.rank, x.m),
                (y.base.as_str(), y.k, y.rank, y.m)
            );
            let d = max_diff(&x.a, &y.a).max(max_diff(&x.b, &y.b));
            assert!(d <= tol, "{ty}: values differ by {d}");
        }
        assert_eq!(back.effective_scale(5, 1.0), 2.0);
    }
}

/// A hand-built adapter file: `keys` as metadata, tensors (name, dims) filled with 0.01.
fn raw_adapter(path: &Path, keys: &[(&str, MetaValue)], tensors: &[(&str, Vec<u64>)]) -> PathBuf {
    let mut b = GgufBuilder::new();
    for (k, v) in keys {
        b.set(k, v.clone()).unwrap();
    }
    for (n, d) in tensors {
        b.add_tensor(n, GgmlType::F32, d).unwrap();
    }
    let mut s = b.create(path).unwrap();
    for (_, d) in tensors {
        let n: u64 = d.iter().product();
        let bytes: Vec<u8> = (0..n).flat_map(|_| 0.01f32.to_le_bytes()).collect();
        s.write_tensor(&bytes).unwrap();
    }
    s.finish().unwrap()
}

#[test]
fn malformed_adapters_are_refused_by_name() {
    let dir = scratch("lora-bad");
    let base = fixture("llama");
    let f = GgufFile::open(&base).unwrap();
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    let (k, m) = (q.shape[0] as u64, q.shape[1] as u64);
    let good = |arch: &str| {
        vec![
            ("general.architecture", MetaValue::from(arch)),
            ("general.type", MetaValue::from("adapter")),
            ("adapter.type", MetaValue::from("lora")),
            ("adapter.lora.alpha", MetaValue::F32(4.0)),
        ]
    };
    let qa = ("blk.0.attn_q.weight.lora_a", vec![k, 4]);
    let qb = ("blk.0.attn_q.weight.lora_b", vec![4, m]);
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, MetaValue)>,
        Vec<(&'a str, Vec<u64>)>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "model",
            {
                let mut g = good("llama");
                g[1].1 = MetaValue::from("model");
                g
            },
            vec![qa.clone(), qb.clone()],
            "is not a LoRA adapter",
        ),
        (
            "notlora",
            {
                let mut g = good("llama");
                g[2].1 = MetaValue::from("control_vector");
                g
            },
            vec![qa.clone(), qb.clone()],
            "\"control_vector\"",
        ),
        (
            "arch",
            good("qwen2"),
            vec![qa.clone(), qb.clone()],
            "architecture \"qwen2\"",
        ),
        (
            "unpaired",
            good("llama"),
            vec![qa.clone()],
            "has no .lora_b partner",
        ),
        (
            "rank",
            good("llama"),
            vec![qa.clone(), ("blk.0.attn_q.weight.lora_b", vec![3, m])],
            "the ranks differ",
        ),
        (
            "shape",
            good("llama"),
            vec![("blk.0.attn_q.weight.lora_a", vec![k + 1, 4]), qb.clone()],
            "but the matrix is",
        ),
        (
            "nobase",
            good("llama"),
            vec![
                ("blk.99.attn_q.weight.lora_a", vec![k, 4]),
                ("blk.99.attn_q.weight.lora_b", vec![4, m]),
            ],
            "has no matrix \"blk.99.attn_q.weight\"",
        ),
        (
            "stray",
            good("llama"),
            vec![qa.clone(), qb.clone(), ("blk.0.attn_q.weight", vec![k, m])],
            "neither a .lora_a/.lora_b",
        ),
        (
            "embd",
            good("llama"),
            vec![
                ("token_embd.weight.lora_a", vec![k, 4]),
                ("token_embd.weight.lora_b", vec![4, 8]),
            ],
            "token embedding",
        ),
    ];
    for (name, keys, tensors, want) in cases {
        let p = raw_adapter(&dir.join(format!("{name}.gguf")), &keys, &tensors);
        let mut model = Model::load(&f).unwrap();
        let err = match LoraAdapter::open(&p) {
            Err(e) => e.to_string(),
            Ok(ad) => match model.attach_lora(&ad, 1.0) {
                Err(e) => e.to_string(),
                Ok(n) => panic!("{name}: accepted ({n} matrices)"),
            },
        };
        assert!(err.contains(want), "{name}: {err:?} does not say {want:?}");
        assert!(
            err.contains(&p.display().to_string()),
            "{name}: {err:?} does not name the file"
        );
        // Nothing was attached: the model's logits are the base's.
        let mut cache = model.new_cache(8);
        let l = model
            .forward(&mut cache, &TOKENS[..2], Logits::Last)
            .unwrap();
        let mut c2 = model.new_cache(8);
        let fresh = Model::load(&f).unwrap();
        assert_eq!(
            l,
            fresh.forward(&mut c2, &TOKENS[..2], Logits::Last).unwrap(),
            "{name}"
        );
    }
    // Not a GGUF at all.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"not a gguf").unwrap();
    let e = LoraAdapter::open(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.gguf"), "{e}");
}

#[test]
fn cli_applies_adapter_and_reports_errors() {
    let dir = scratch("lora-cli");
    let base = fixture("llama");
    let f = GgufFile::open(&base).unwrap();
    let pairs = random_pairs(&f, &["attn_q.weight", "ffn_down.weight"], 4, 11);
    let a = write_adapter(&dir.join("a.gguf"), "llama", 4.0, &pairs, GgmlType::F16).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ledge"))
            .args(["run", "-m"])
            .arg(&base)
            .args(["-p", "hello", "-n", "4", "--temp", "0", "-v"])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = run(&["--lora", a.to_str().unwrap(), "--lora-scale", "0.5"]);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    assert!(
        stderr.contains("lora: ") && stderr.contains("on 4 matrices"),
        "{stderr}"
    );
    let bad = run(&["--lora", base.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(stderr.contains("is not a LoRA adapter"), "{stderr}");
    let nan = run(&["--lora", a.to_str().unwrap(), "--lora-scale", "nan"]);
    assert!(!nan.status.success());
    let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_ledge"))
        .arg("inspect")
        .arg(&a)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("a LoRA adapter for llama models"), "{text}");
}

/// Largest |Δlogit| / logit range over a reference's top-20 at every prompt position.
fn worst_rel(logits: &[f32], n_vocab: usize, reference: &serde_json::Value) -> f32 {
    let mut worst = 0f32;
    for (pos, top) in reference["prompt_top"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let row = &logits[pos * n_vocab..(pos + 1) * n_vocab];
        let range = top["range"].as_f64().unwrap() as f32;
        for (id, l) in top["ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(top["logits"].as_array().unwrap())
        {
            let (id, l) = (id.as_u64().unwrap() as usize, l.as_f64().unwrap() as f32);
            worst = worst.max((row[id] - l).abs() / range);
        }
    }
    worst
}

/// An adapter made by peft and converted by llama.cpp's convert_lora_to_gguf.py gives the
/// logits transformers+peft and llama.cpp compute with it (scripts/reference/
/// gen_lora_fixtures.py), on the plain llama and on Phi-3's fused matrices.
fn matches_peft(family: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{family}.json"))).unwrap())
            .unwrap();
    let f = GgufFile::open(fixture(family)).unwrap();
    let mut m = Model::load(&f).unwrap();
    let ad = LoraAdapter::open(&dir.join(format!("{family}.lora.gguf"))).unwrap();
    assert_eq!(ad.alpha, 8.0);
    m.attach_lora(&ad, 1.0).unwrap();
    let nv = m.config.n_vocab;
    for (i, ids) in r["ids"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // llama.cpp keeps the KV cache in f16, as ledge by default; transformers in f32.
        let mut cache = m.new_cache(128);
        let l = m.forward(&mut cache, &ids, Logits::All).unwrap();
        let mut cache = m.new_cache_typed(128, ledge::model::KvType::F32);
        let l32 = m.forward(&mut cache, &ids, Logits::All).unwrap();
        let wt = worst_rel(&l32, nv, &r["transformers"][i]);
        let wl = worst_rel(&l, nv, &r["llamacpp"][i]);
        let effect = worst_rel(&l, nv, &r["base_llamacpp"][i]);
        eprintln!(
            "{family} case {i}: vs transformers+peft {wt:.2e}, vs llama.cpp {wl:.2e}, vs llama.cpp without the adapter {effect:.2e}"
        );
        assert!(
            effect > 0.05,
            "{family} case {i}: the adapter changed little ({effect})"
        );
        // Measured ≤ 1.3e-5 of the logit range from transformers (f32 cache) and ≤ 1.6e-4
        // from llama.cpp; 5e-4 is tests/families.rs's bound against llama.cpp.
        assert!(wt < 1e-4, "{family} case {i}: {wt} from transformers+peft");
        assert!(wl < 5e-4, "{family} case {i}: {wl} from llama.cpp");
    }
}

#[test]
fn llama_peft_adapter_matches_transformers_and_llama_cpp() {
    matches_peft("llama");
}

#[test]
fn phi3_peft_adapter_matches_transformers_and_llama_cpp() {
    matches_peft("phi3");
}
