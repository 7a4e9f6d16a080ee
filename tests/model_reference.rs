//! The forward pass against llama.cpp: fixtures from scripts/reference/gen_model_fixtures.sh
//! hold llama.cpp's token ids, top-20 logits at every prompt position, and its greedy
//! continuation. ledge, fed the same ids, must produce the same greedy tokens and logits
//! within a stated tolerance.

mod common;

use common::*;
use ledge::gguf::{GgmlType, GgufBuilder, GgufFile, MetaValue};
use ledge::model::{Logits, Model};
use serde_json::Value;

/// Largest |Δlogit| allowed on llama.cpp's top-20 tokens, each logit taken relative to
/// llama.cpp's top token (measured maxima: 1.15 SmolLM2, 0.85 Gemma 3). ledge's logits agree
/// with an f64 numpy forward pass over gguf-py's dequantized weights to ~0.02, while
/// llama.cpp's x86 Q4_1 kernels land up to ~0.9 away from that exact result at the prompt and ~1.25 by
/// step 30 (with the same
/// file converted to F32, llama.cpp and ledge agree with numpy). The tolerance covers
/// llama.cpp's own error, not ours.
const LOGIT_TOL: f32 = 1.5;

/// ledge's own implementation spread: the largest |Δlogit| (same top-20 measure) between two
/// valid kernel sets of ledge on the same file. Measured on the Gemma 3 fixture prompts
/// (65 positions) against `LEDGE_SIMD=scalar`, the reference for our numerics: AVX-512
/// unrepacked 0.64 (mean KLD 0.0046), blocked 32-block repacking 0.85 (0.0058), K-quant
/// repacking 0.94 (0.0053, top-1 64/65); on 1020 held-out Gemma tokens the K path is KLD
/// 0.0062 from scalar and the blocked path 0.0061. These are the Q8 activation roundings
/// that a 1-ulp kernel difference flips, amplified layer by layer.
const LEDGE_SPREAD: f32 = 1.0;

/// The tolerance against a quantized fixture: llama.cpp's own spread (its native and generic
/// builds' largest gap on the prompts' top-20, from the two fixtures: 1.41 Gemma 3, 0.73
/// SmolLM2) plus ledge's (`LEDGE_SPREAD`), at least `LOGIT_TOL`. With the K-quant repacking
/// ledge's Gemma 3 gap to the native fixture is 1.67 (prompt pos 2 of the first case), to the
/// generic one 0.90, while its gap to ledge's scalar run stays in the spread above: two
/// rounding spreads adding up, not an error of ours.
fn quantized_tol(stem: &str) -> f32 {
    let (a, b) = (fixture(stem), fixture(&format!("{stem}.generic")));
    let mut spread = 0f32;
    for (ca, cb) in a["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["cases"].as_array().unwrap())
    {
        for (ta, tb) in ca["prompt_top"]
            .as_array()
            .unwrap()
            .iter()
            .zip(cb["prompt_top"].as_array().unwrap())
        {
            let (ia, ib) = (ids(&ta["ids"]), ids(&tb["ids"]));
            let la = |i: usize| ta["logits"][i].as_f64().unwrap() as f32;
            let lb = |i: usize| tb["logits"][i].as_f64().unwrap() as f32;
            let Some(r) = ib.iter().position(|&x| x == ia[0]) else {
                continue;
            };
            for (i, id) in ia.iter().enumerate() {
                if let Some(j) = ib.iter().position(|x| x == id) {
                    spread = spread.max(((lb(j) - lb(r)) - (la(i) - la(0))).abs());
                }
            }
        }
    }
    eprintln!("{stem}: llama.cpp native vs generic spread {spread:.4}");
    LOGIT_TOL.max(spread + LEDGE_SPREAD)
}

fn fixture(stem: &str) -> Value {
    let p = format!(
        "{}/tests/fixtures/reference/{stem}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Checks one position's logits against llama.cpp's top-k; returns the largest difference.
fn compare_top(ours: &[f32], top: &Value, what: &str, tol: f32) -> f32 {
    let want_ids = ids(&top["ids"]);
    let want: Vec<f32> = top["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    // Logits are compared relative to llama.cpp's top token (softmax ignores a common
    // shift, and after a control token both sides sit near -60 where only shifts differ).
    let (our_ref, want_ref) = (ours[want_ids[0] as usize], want[0]);
    let mut worst = 0f32;
    for (&id, &l) in want_ids.iter().zip(&want) {
        let d = ((ours[id as usize] - our_ref) - (l - want_ref)).abs();
        worst = worst.max(d);
    }
    // Our argmax must be llama.cpp's, unless its top two are within the tolerance.
    let our_best = ledge::generate::sampler::argmax(ours);
    if our_best != want_ids[0] {
        assert!(
            want[0] - want[1] < tol,
            "{what}: argmax {our_best} vs llama.cpp's {} (margin {})",
            want_ids[0],
            want[0] - want[1]
        );
    }
    worst
}

/// Runs the fixture's prompts through `path`; returns how many greedy continuations equal
/// llama.cpp's in full, after checking every logit against `tol`.
fn check_model(path: &std::path::Path, stem: &str, tol: f32) -> usize {
    let name = stem;
    let f = GgufFile::open(path).unwrap();
    let m = Model::load(&f).unwrap();
    let fx = fixture(stem);
    let n_vocab = m.config.n_vocab;
    let mut worst = 0f32;
    let mut full_matches = 0;
    let cases = fx["cases"].as_array().unwrap();
    for case in cases {
        let prompt_ids = ids(&case["ids"]);
        let mut cache = m.new_cache(512);
        let logits = m.forward(&mut cache, &prompt_ids, Logits::All).unwrap();
        for (i, top) in case["prompt_top"].as_array().unwrap().iter().enumerate() {
            let row = &logits[i * n_vocab..(i + 1) * n_vocab];
            worst = worst.max(compare_top(
                row,
                top,
                &format!("{name} prompt pos {i}"),
                tol,
            ));
        }
        // Teacher-forced along llama.cpp's greedy tokens: at every step our logits must be
        // close to llama.cpp's and our argmax its token, unless llama.cpp's own top-two margin
        // is inside the tolerance (a near-tie that numerical noise may flip either way).
        let want = ids(&case["greedy"]);
        let tops = case["greedy_top"].as_array().unwrap();
        let mut last = logits[(prompt_ids.len() - 1) * n_vocab..].to_vec();
        let mut free_run_ok = true;
        let mut agreed = 0;
        for (step, (&tok, top)) in want.iter().zip(tops).enumerate() {
            worst = worst.max(compare_top(&last, top, &format!("{name} step {step}"), tol));
            let margin = top["logits"][0].as_f64().unwrap() - top["logits"][1].as_f64().unwrap();
            if ledge::generate::sampler::argmax(&last) == tok {
                if free_run_ok {
                    agreed += 1;
                }
            } else {
                assert!(
                    margin < LOGIT_TOL as f64,
                    "{name} step {step}: greedy token differs with margin {margin}"
                );
                free_run_ok = false;
            }
            last = m.forward(&mut cache, &[tok], Logits::Last).unwrap();
        }
        eprintln!(
            "{name}: {agreed}/{} greedy tokens equal llama.cpp's before any near-tie divergence",
            want.len()
        );
        full_matches += (agreed == want.len()) as usize;
    }
    assert!(
        worst < tol,
        "{name}: logits differ from llama.cpp by up to {worst}"
    );
    eprintln!(
        "{name}: max |Δlogit| on llama.cpp's top-20 = {worst:.4}; {full_matches}/{} continuations equal",
        cases.len()
    );
    full_matches
}

/// The same model with every tensor dequantized to F32, written by ledge's GGUF writer. It
/// equals llama-quantize's F32 conversion, which the `.f32` fixtures were made from, because
/// ledge's dequantization is bit-exact with ggml's.
fn f32_copy(name: &str) -> std::path::PathBuf {
    let src = GgufFile::open(model(name)).unwrap();
    let out = scratch(&format!("f32_{name}")).join("model.f32.gguf");
    let mut b = GgufBuilder::with_metadata_of(&src).unwrap();
    b.set("general.file_type", MetaValue::U32(0)).unwrap();
    for t in src.tensor_infos() {
        b.add_tensor(src.tensor_name(t), GgmlType::F32, &t.dims)
            .unwrap();
    }
    let mut w = b.create(&out).unwrap();
    for t in src.tensors() {
        w.write_tensor(bytemuck::cast_slice(&t.to_f32().unwrap()))
            .unwrap();
    }
    w.finish().unwrap()
}

/// With F32 weights no quantized kernel is involved: ledge and llama.cpp agree to rounding
/// and every greedy continuation is identical. This is the check on the architecture code.
const F32_TOL: f32 = 0.05;

#[test]
fn smollm2_f32_matches_llama_cpp_exactly() {
    let (path, stem) = (f32_copy(SMOLLM2), "SmolLM2-135M-Instruct.Q4_1.f32");
    assert_eq!(check_model(&path, stem, F32_TOL), 5);
    assert_eq!(check_model(&path, &format!("{stem}.generic"), F32_TOL), 5);
}

#[test]
fn gemma3_f32_matches_llama_cpp_exactly() {
    let (path, stem) = (f32_copy(GEMMA3), "gemma-3-270m-q4_k_m.f32");
    assert_eq!(check_model(&path, stem, F32_TOL), 5);
    assert_eq!(check_model(&path, &format!("{stem}.generic"), F32_TOL), 5);
}

/// How many of two fixtures' greedy continuations are identical: how often two builds of
/// llama.cpp (native AVX-512 and generic scalar) agree with each other on the same file.
fn llama_cpp_self_agreement(stem: &str) -> usize {
    let (a, b) = (fixture(stem), fixture(&format!("{stem}.generic")));
    let (ca, cb) = (
        a["cases"].as_array().unwrap(),
        b["cases"].as_array().unwrap(),
    );
    assert_eq!(ca.len(), cb.len());
    ca.iter()
        .zip(cb)
        .filter(|(x, y)| {
            assert_eq!(
                x["ids"], y["ids"],
                "{stem}: the builds tokenized differently"
            );
            x["greedy"] == y["greedy"]
        })
        .count()
}

/// On the quantized files the logits stay within `LOGIT_TOL`, and the greedy continuations
/// agree until llama.cpp's own top-two margin is inside that tolerance (`check_model` asserts
/// both at every step, teacher-forced along llama.cpp's tokens): from there the two runs may
/// take different, equally likely paths.
///
/// How many continuations agree in full is decided by which near-ties the summation order
/// breaks which way, and llama.cpp is no more consistent with itself: its native build
/// (AVX-512, repacked weights) and its generic build agree on 3 of 5 SmolLM2 and 1 of 5
/// Gemma 3 continuations (the committed `.generic` fixtures). ledge's counts move between 1
/// and 4 of 5 with any change of rounding anywhere in the model (e.g. rounding the attention
/// probabilities to f16 as ggml does, which brings the F32 agreement closer, changed them),
/// so they are reported beside llama.cpp's self-agreement, not asserted.
fn check_quantized(name: &str, stem: &str) {
    let path = model(name);
    let tol = quantized_tol(stem);
    let native = check_model(&path, stem, tol);
    let generic = check_model(&path, &format!("{stem}.generic"), tol);
    let both = llama_cpp_self_agreement(stem);
    eprintln!(
        "{stem}: continuations equal to llama.cpp native {native}/5, generic {generic}/5; \
         llama.cpp native vs generic {both}/5"
    );
}

#[test]
fn smollm2_quantized_matches_llama_cpp() {
    check_quantized(SMOLLM2, "SmolLM2-135M-Instruct.Q4_1");
}

#[test]
fn gemma3_quantized_matches_llama_cpp() {
    check_quantized(GEMMA3, "gemma-3-270m-q4_k_m");
}

/// The real-model checks above under every other kernel set this CPU has (`LEDGE_SIMD=avx2`,
/// `scalar`): the set is chosen once per process, so each runs in a child process of this
/// test binary. These are what a user without AVX-512 gets (AVX2 now includes the
/// sixteen-row repacked kernel) and the reference all SIMD sets are held to.
#[cfg(target_arch = "x86_64")]
#[test]
fn quantized_models_match_llama_cpp_under_avx2_and_scalar() {
    if std::env::var_os("LEDGE_SIMD").is_some() {
        // Already a child (or the user forced a set): the plain tests cover it.
        return;
    }
    let mut sets = vec!["scalar"];
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        sets.push("avx2");
    }
    let exe = std::env::current_exe().unwrap();
    for set in sets {
        for test in [
            "smollm2_quantized_matches_llama_cpp",
            "gemma3_quantized_matches_llama_cpp",
        ] {
            let out = std::process::Command::new(&exe)
                .args([test, "--exact", "--nocapture", "--test-threads", "1"])
                .env("LEDGE_SIMD", set)
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "LEDGE_SIMD={set} {test} failed:\n{}\n{log}",
                String::from_utf8_lossy(&out.stdout)
            );
            let summary: Vec<&str> = log.lines().filter(|l| l.contains("max |Δlogit|")).collect();
            eprintln!("LEDGE_SIMD={set} {test}: {}", summary.join("; "));
        }
    }
}
