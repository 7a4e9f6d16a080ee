//! GPTQ and the importance-weighted quantizers: GPTQ lowers a layer's output error against
//! round-to-nearest when inputs are correlated; their bytes decode with ledge's reference
//! dequantizer; the CLI explains what GPTQ needs.

mod common;

use std::process::Command;

use ledge::convert::gptq::{quantize_rows, Hessian};
use ledge::convert::weighted::quantize_weighted;
use ledge::gguf::GgmlType;
use ledge::quant;

use common::Rng;

fn uniform(r: &mut Rng) -> f32 {
    (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

/// T positions of n correlated inputs: a smooth random walk across columns plus a few
/// shared directions, with column scales spread like real activations.
fn inputs(r: &mut Rng, t: usize, n: usize) -> Vec<f32> {
    let scale: Vec<f32> = (0..n).map(|_| 0.3 + 2.0 * uniform(r).abs()).collect();
    let dirs: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..n).map(|_| uniform(r)).collect())
        .collect();
    let mut x = vec![0f32; t * n];
    for p in 0..t {
        let c: Vec<f32> = (0..4).map(|_| 3.0 * uniform(r)).collect();
        let mut walk = 0f32;
        for j in 0..n {
            walk = 0.8 * walk + uniform(r);
            let shared: f32 = dirs.iter().zip(&c).map(|(d, k)| d[j] * k).sum();
            x[p * n + j] = scale[j] * (walk + shared);
        }
    }
    x
}

/// H = XᵀX / T.
fn moment(x: &[f32], t: usize, n: usize) -> Vec<f32> {
    let mut h = vec![0f64; n * n];
    for row in x.chunks_exact(n) {
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] += (row[i] * row[j]) as f64;
            }
        }
    }
    h.iter().map(|&v| (v / t as f64) as f32).collect()
}

/// Σ_rows Δwᵀ H Δw = ||X Wᵀ − X Ŵᵀ||² / T.
fn output_err(w: &[f32], q: &[f32], h: &[f32], n: usize) -> f64 {
    w.chunks_exact(n)
        .zip(q.chunks_exact(n))
        .map(|(a, b)| {
            let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y) as f64).collect();
            let mut s = 0f64;
            for i in 0..n {
                let hi = &h[i * n..(i + 1) * n];
                s += d[i]
                    * hi.iter()
                        .zip(&d)
                        .map(|(&hv, &dj)| hv as f64 * dj)
                        .sum::<f64>();
            }
            s
        })
        .sum()
}

fn decode(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    quant::dequantize_unaligned(ty, bytes, &mut y).unwrap();
    y
}

#[test]
fn gptq_beats_round_to_nearest_on_a_layer_with_correlated_inputs() {
    let mut r = Rng(42);
    let (n, rows, t) = (256, 24, 1024);
    let x = inputs(&mut r, t, n);
    let h = moment(&x, t, n);
    let w: Vec<f32> = (0..rows * n).map(|_| 0.05 * uniform(&mut r)).collect();
    let hess = Hessian::new(n, &h, 0.01).unwrap();
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::IQ4_NL,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        let rtn = decode(ty, &quant::quantize_to_vec(ty, &w).unwrap(), w.len());
        let g = quantize_rows(ty, &w, &hess).unwrap();
        assert_eq!(g.len(), rows * n / ty.block_size() * ty.type_size(), "{ty}");
        let gq = decode(ty, &g, w.len());
        let (e_rtn, e_gptq) = (output_err(&w, &rtn, &h, n), output_err(&w, &gq, &h, n));
        eprintln!("{ty}: output error gptq/rtn = {:.3}", e_gptq / e_rtn);
        assert!(
            e_gptq < 0.8 * e_rtn,
            "{ty}: gptq {e_gptq} vs round-to-nearest {e_rtn}"
        );
    }
}

#[test]
fn weighted_quantizers_decode_close_to_their_source() {
    let mut r = Rng(7);
    let row = 512;
    let x: Vec<f32> = (0..row * 8).map(|_| uniform(&mut r)).collect();
    let imp: Vec<f32> = (0..row).map(|_| 0.1 + uniform(&mut r).abs()).collect();
    for (ty, tol) in [
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q6_K, 0.02),
        (GgmlType::Q5_1, 0.04),
        (GgmlType::Q5_K, 0.04),
        (GgmlType::Q4_0, 0.09),
        (GgmlType::Q4_1, 0.08),
        (GgmlType::IQ4_NL, 0.09),
        (GgmlType::Q4_K, 0.08),
        (GgmlType::Q3_K, 0.16),
        (GgmlType::Q2_K, 0.3),
    ] {
        let q = quantize_weighted(ty, &x, &imp).unwrap();
        let y = decode(ty, &q, x.len());
        let rms =
            (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / x.len() as f32).sqrt();
        // The source is uniform on ±0.5 (rms 0.29).
        assert!(rms < tol, "{ty}: rms error {rms}");
    }
}

fn ledge(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ledge"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_explains_what_gptq_needs() {
    let dir = std::env::temp_dir().join(format!("ledge-gptq-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.gguf");
    let out = out.to_str().unwrap();
    let (ok, err) = ledge(&["quantize", "in.gguf", out, "Q4_0", "--method", "gptq"]);
    assert!(!ok);
    assert!(err.contains("--method gptq needs --gram"), "{err}");
    let (ok, err) = ledge(&["quantize", "in.gguf", out, "Q4_0", "--method", "obq"]);
    assert!(!ok);
    assert!(err.contains("expected rtn or gptq"), "{err}");
    let (ok, err) = ledge(&["quantize", "in.gguf", out, "Q4_0", "--gram", "x.gram.gguf"]);
    assert!(!ok);
    assert!(err.contains("only used by --method gptq"), "{err}");
    // A GGUF that is not a gram file.
    let fake = dir.join("fake.gram.gguf");
    let mut b = ledge::gguf::GgufBuilder::new();
    b.set("general.type", "imatrix").unwrap();
    b.create(&fake).unwrap().finish().unwrap();
    let (ok, err) = ledge(&[
        "quantize",
        "in.gguf",
        out,
        "Q4_0",
        "--method",
        "gptq",
        "--gram",
        fake.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("not a gram file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
