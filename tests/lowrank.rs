//! `ledge quantize --lowrank-repair`: calibrate a model, quantize it with a rank-R repair of
//! the error written as a LoRA adapter, and check with `ledge eval` that applying the adapter
//! brings the quantized model closer to the original (KL divergence), and that the flags
//! explain what they need.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::scratch;

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
        .join(format!("{family}.f32.gguf"))
}

fn text() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/botchan-excerpt.txt")
}

fn ledge(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ledge"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// KL divergence of `model` (with `extra` flags) against `base` on the fixture text.
fn kld(model: &Path, base: &Path, extra: &[&str]) -> f64 {
    let t = text();
    let mut args = vec!["eval", "-m", s(model), "-f", s(&t), "--baseline", s(base)];
    args.extend(["-c", "128", "--json"]);
    args.extend(extra);
    let (ok, out, err) = ledge(&args);
    assert!(ok, "eval: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["kld"]["kld_mean"]["value"].as_f64().unwrap()
}

#[test]
fn repair_adapter_lowers_kld_and_loads() {
    let dir = scratch("lowrank-e2e");
    let base = fixture("llama");
    let (imx, gram) = (dir.join("x.imatrix"), dir.join("x.gram.gguf"));
    let t = text();
    let (ok, _, err) = ledge(&[
        "calibrate",
        "-m",
        s(&base),
        "--text",
        s(&t),
        "-o",
        s(&imx),
        "--gram",
        s(&gram),
        "-c",
        "128",
    ]);
    assert!(ok, "calibrate: {err}");
    let (q, a) = (dir.join("q.gguf"), dir.join("a.gguf"));
    let (ok, out, err) = ledge(&[
        "quantize",
        s(&base),
        s(&q),
        "Q4_0",
        "--gram",
        s(&gram),
        "--lowrank-repair",
        "8",
        "--adapter-out",
        s(&a),
    ]);
    assert!(ok, "quantize: {err}");
    assert!(
        out.contains("lowrank: 15 matrices repaired at rank 8"),
        "{out}"
    );
    let removed: f64 = out
        .split("weighted error removed ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no removed share in {out}"));
    assert!(removed > 20.0 && removed < 100.0, "{out}");

    // The adapter is llama.cpp's format, at the rank asked for, one pair per block matrix.
    let f = ledge::gguf::GgufFile::open(&a).unwrap();
    assert_eq!(f.get_str("general.type").unwrap(), "adapter");
    assert_eq!(f.get_f32("adapter.lora.alpha").unwrap(), 8.0);
    let ad = ledge::model::lora::LoraAdapter::open(&a).unwrap();
    assert_eq!(ad.pairs.len(), 15); // 2 blocks × 7 and the untied output
    assert!(ad.pairs.iter().all(|p| p.rank == 8));

    let plain = kld(&q, &base, &[]);
    let repaired = kld(&q, &base, &["--lora", s(&a)]);
    eprintln!("KLD from F32: Q4_0 {plain:.5}, with the rank-8 repair {repaired:.5}");
    assert!(
        repaired < 0.8 * plain,
        "KLD with the repair {repaired} vs without {plain}"
    );
    // A repair applied backwards makes things worse: the test can tell the sign.
    let wrong = kld(&q, &base, &["--lora", s(&a), "--lora-scale", "-1"]);
    assert!(
        wrong > plain,
        "KLD with the repair negated {wrong} vs {plain}"
    );

    // Under a byte budget: ranks differ per matrix, the adapter stays inside the budget,
    // and it still helps.
    let (qb, ab) = (dir.join("qb.gguf"), dir.join("ab.gguf"));
    let (ok, out, err) = ledge(&[
        "quantize",
        s(&base),
        s(&qb),
        "Q4_0",
        "--gram",
        s(&gram),
        "--lowrank-budget",
        "45",
        "--adapter-out",
        s(&ab),
    ]);
    assert!(ok, "quantize: {err}");
    assert!(out.contains("of at most 32"), "{out}");
    let (model_bytes, adapter_bytes) = (
        std::fs::metadata(&qb).unwrap().len(),
        std::fs::metadata(&ab).unwrap().len(),
    );
    assert!(
        adapter_bytes as f64 <= 0.45 * model_bytes as f64,
        "adapter {adapter_bytes} bytes for a {model_bytes}-byte model"
    );
    let ad = ledge::model::lora::LoraAdapter::open(&ab).unwrap();
    let ranks: Vec<usize> = ad.pairs.iter().map(|p| p.rank).collect();
    assert!(
        ranks.iter().min() != ranks.iter().max() && ranks.iter().all(|&r| r <= 32),
        "{ranks:?}"
    );
    let budgeted = kld(&qb, &base, &["--lora", s(&ab)]);
    eprintln!("KLD with the 45 % budget repair (ranks {ranks:?}): {budgeted:.5}");
    assert!(
        budgeted < 0.8 * plain,
        "KLD with the budgeted repair {budgeted} vs without {plain}"
    );
}

#[test]
fn cli_explains_what_the_repair_needs() {
    let dir = scratch("lowrank-cli");
    let base = fixture("llama");
    let out = dir.join("q.gguf");
    let (ok, _, err) = ledge(&[
        "quantize",
        s(&base),
        s(&out),
        "Q4_0",
        "--lowrank-repair",
        "8",
    ]);
    assert!(!ok && err.contains("needs --adapter-out"), "{err}");
    let a = dir.join("a.gguf");
    let (ok, _, err) = ledge(&[
        "quantize",
        s(&base),
        s(&out),
        "Q4_0",
        "--lowrank-repair",
        "8",
        "--adapter-out",
        s(&a),
    ]);
    assert!(!ok && err.contains("needs --gram"), "{err}");
    let (ok, _, err) = ledge(&[
        "quantize",
        s(&base),
        s(&out),
        "Q4_0",
        "--adapter-out",
        s(&a),
    ]);
    assert!(!ok && err.contains("--lowrank-repair"), "{err}");
    let (ok, _, err) = ledge(&[
        "quantize",
        s(&base),
        s(&out),
        "Q4_0",
        "--gram",
        s(&base),
        "--lowrank-repair",
        "0",
        "--adapter-out",
        s(&a),
    ]);
    assert!(!ok && err.contains("from 1 to 1024"), "{err}");
    let (ok, _, err) = ledge(&[
        "quantize",
        s(&base),
        s(&out),
        "Q4_0",
        "--gram",
        s(&base),
        "--lowrank-budget",
        "0",
        "--adapter-out",
        s(&a),
    ]);
    assert!(!ok && err.contains("--lowrank-budget"), "{err}");
    assert!(
        !out.exists() && !a.exists(),
        "nothing is written on a usage error"
    );
}
