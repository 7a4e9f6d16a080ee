//! The backward passes of `train::grad` against PyTorch autograd (float64) on the inputs
//! of tests/fixtures/train/grad_torch.json (scripts/reference/gen_grad_fixtures.py); the
//! finite-difference tests live beside the code.

use ledge::ggml_type::GgmlType;
use ledge::tensor::TensorView;
use ledge::train::grad::*;
use serde_json::Value;

fn fixture() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/train/grad_torch.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn v(x: &Value) -> Vec<f32> {
    x.as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_f64().unwrap() as f32)
        .collect()
}

fn u(x: &Value) -> usize {
    x.as_u64().unwrap() as usize
}

/// Largest |a − b| relative to the largest |b| (f32 arithmetic against float64).
fn rel(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale;
    assert!(
        worst < 1e-4,
        "{what}: {worst:.2e} of the largest value from PyTorch"
    );
}

#[test]
fn rms_norm_matches_autograd() {
    let r = &fixture()["rms_norm"];
    let (x, w, c) = (v(&r["x"]), v(&r["w"]), v(&r["c"]));
    let eps = r["eps"].as_f64().unwrap() as f32;
    rel(&rms_norm_forward(&x, &w, eps), &v(&r["y"]), "y");
    let mut dw = vec![0f32; w.len()];
    let dx = rms_norm_backward(&x, &w, eps, &c, &mut dw);
    rel(&dx, &v(&r["dx"]), "dx");
    rel(&dw, &v(&r["dw"]), "dw");
}

#[test]
fn swiglu_matches_autograd() {
    let r = &fixture()["swiglu"];
    let (g, uu, c) = (v(&r["g"]), v(&r["u"]), v(&r["c"]));
    rel(&swiglu_forward(&g, &uu), &v(&r["h"]), "h");
    let (dg, du) = swiglu_backward(&g, &uu, &c);
    rel(&dg, &v(&r["dg"]), "dg");
    rel(&du, &v(&r["du"]), "du");
}

#[test]
fn linear_with_lora_matches_autograd() {
    let r = &fixture()["linear"];
    let (k, m, n, rank) = (u(&r["k"]), u(&r["m"]), u(&r["n"]), u(&r["rank"]));
    let w = v(&r["w"]);
    let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    let wv = TensorView::borrowed("w", GgmlType::F32, vec![k, m], &bytes);
    let lora = LoraParams {
        rank,
        k,
        m,
        scale: r["scale"].as_f64().unwrap() as f32,
        a: v(&r["a"]),
        b: v(&r["b"]),
    };
    let (x, c) = (v(&r["x"]), v(&r["c"]));
    let (y, t) = linear_forward(&wv, Some(&lora), &x, n).unwrap();
    rel(&y, &v(&r["y"]), "y");
    let mut grads = LoraGrads {
        a: vec![0.0; rank * k],
        b: vec![0.0; m * rank],
    };
    let dx = linear_backward(&wv, Some((&lora, &t, &mut grads)), &x, &c, n).unwrap();
    rel(&dx, &v(&r["dx"]), "dx");
    rel(&grads.a, &v(&r["da"]), "dA");
    rel(&grads.b, &v(&r["db"]), "dB");
}

#[test]
fn distill_loss_matches_autograd() {
    let r = &fixture()["distill"];
    let ids: Vec<u32> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_u64().unwrap() as u32)
        .collect();
    let logp = v(&r["logp"]);
    let t = Target {
        ids: &ids,
        logp: &logp,
        tail: 0.0,
        next: r["next"].as_u64().unwrap() as u32,
    };
    for c in r["cases"].as_array().unwrap() {
        let (temp, alpha) = (
            c["temperature"].as_f64().unwrap() as f32,
            c["alpha"].as_f64().unwrap() as f32,
        );
        let (loss, dz) = distill_loss(&v(&c["z"]), &t, temp, alpha);
        let want = c["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - want).abs() < 1e-4 * want.abs().max(1.0),
            "T={temp} α={alpha}: loss {loss} vs {want}"
        );
        rel(&dz, &v(&c["dz"]), &format!("T={temp} α={alpha}: dz"));
    }
}

#[test]
fn attention_matches_autograd() {
    let r = &fixture()["attention"];
    let (n, nh, nkv, hd) = (u(&r["n"]), u(&r["nh"]), u(&r["nkv"]), u(&r["hd"]));
    let (q, k, vv, c) = (v(&r["q"]), v(&r["k"]), v(&r["v"]), v(&r["c"]));
    let (out, p) = attention_forward(&q, &k, &vv, n, nh, nkv, hd);
    rel(&out, &v(&r["out"]), "out");
    let (dq, dk, dv) = attention_backward(&q, &k, &vv, &p, &c, n, nh, nkv, hd);
    rel(&dq, &v(&r["dq"]), "dq");
    rel(&dk, &v(&r["dk"]), "dk");
    rel(&dv, &v(&r["dv"]), "dv");
}
