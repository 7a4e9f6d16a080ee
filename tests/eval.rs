//! `ledge eval` on the real models: perplexity and KL divergence against numbers
//! llama-perplexity printed for the same files, text and context
//! (tests/fixtures/eval/llama_perplexity.json, made by scripts/reference/gen_eval_fixtures.sh),
//! the saved top-k logits against the exact full-vocabulary KLD, and the bad inputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{model, scratch, GEMMA3, SMOLLM2};
use ledge::eval::perplexity::{tokenize_text, vocab_fingerprint};
use ledge::eval::{evaluate, Baseline, EvalOptions, EvalResult};
use ledge::gguf::{GgmlType, GgufBuilder, GgufFile};
use ledge::model::Model;
use ledge::tokenizer::Tokenizer;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval")
}

fn excerpt() -> PathBuf {
    fixtures().join("botchan-excerpt.txt")
}

/// The held-out part of the full Botchan text (scripts/fetch-eval-text.sh, which
/// scripts/test.sh runs): 2k+ scored tokens, where the perplexity comparison with
/// llama-perplexity is not dominated by kernel rounding noise (see `check_ppl`).
fn heldout() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/eval/botchan-heldout.txt");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-eval-text.sh",
        p.display()
    );
    p
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("llama_perplexity.json")).unwrap())
        .unwrap()
}

fn ledge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ledge"))
}

fn opts(tok: &Tokenizer, ctx: usize, chunks: usize, save: Option<usize>) -> EvalOptions {
    EvalOptions {
        ctx,
        chunks: Some(chunks),
        bos: tok.add_bos().then(|| tok.bos()).flatten(),
        save_top_k: save,
        vocab_fingerprint: vocab_fingerprint(tok),
    }
}

fn run_eval(path: &Path, text: &Path, ctx: usize, chunks: usize) -> EvalResult {
    ledge::quant::simd::init().unwrap();
    let f = GgufFile::open(path).unwrap();
    let m = Model::load(&f).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let tokens = tokenize_text(&tok, &std::fs::read_to_string(text).unwrap());
    evaluate(
        &m,
        &tokens,
        &opts(&tok, ctx, chunks, None),
        None,
        &mut |_, _| {},
    )
    .unwrap()
}

/// SmolLM2 Q4_1 with every Q4_1 tensor requantized to Q4_0 by ledge (bit-exact with ggml's
/// reference quantizer), the other tensors copied: a second file with the same vocabulary
/// and a measurable divergence. Its sha256 is pinned in the fixture, so llama-perplexity's
/// numbers are for this very file.
/// Built once per test process: two tests use it and run in parallel, and a second build
/// would empty the directory under the first one's temporary file.
fn q4_0_variant() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_q4_0_variant).clone()
}

fn build_q4_0_variant() -> PathBuf {
    let src = GgufFile::open(model(SMOLLM2)).unwrap();
    let out = scratch("eval_q4_0_variant").join("smollm2-q4_0.gguf");
    let mut b = GgufBuilder::with_metadata_of(&src).unwrap();
    b.set("general.file_type", ledge::gguf::MetaValue::U32(2))
        .unwrap();
    let ty = |t: GgmlType| {
        if t == GgmlType::Q4_1 {
            GgmlType::Q4_0
        } else {
            t
        }
    };
    for t in src.tensor_infos() {
        b.add_tensor(src.tensor_name(t), ty(t.ty), &t.dims).unwrap();
    }
    let mut w = b.create(&out).unwrap();
    for t in src.tensors() {
        if t.ty == GgmlType::Q4_1 {
            let q = ledge::quant::quantize_to_vec(GgmlType::Q4_0, &t.to_f32().unwrap()).unwrap();
            w.write_tensor(&q).unwrap();
        } else {
            w.write_tensor(&t.data).unwrap();
        }
    }
    w.finish().unwrap()
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn within(ours: f64, theirs: f64, rel: f64, what: &str) {
    let d = (ours - theirs).abs() / theirs.abs();
    assert!(
        d <= rel,
        "{what}: ledge {ours:.6}, llama-perplexity {theirs:.6} ({:.3}% apart, limit {:.1}%)",
        100.0 * d,
        100.0 * rel
    );
    eprintln!(
        "{what}: ledge {ours:.6}, llama-perplexity {theirs:.6} ({:.3}% apart)",
        100.0 * d
    );
}

/// Perplexity against llama-perplexity's for fixture `key`, on the excerpt or, for keys that
/// name it, the held-out text (its sha256 pinned in the fixture).
///
/// Why the quantized files are compared on the long text: every matmul re-quantizes its
/// input to 8 bits, so a one-ulp difference in any kernel flips a few roundings that then
/// grow layer by layer. Two valid kernel sets (ledge's scalar and AVX-512 sets, its packed
/// and blocked AVX-512 paths, or ledge and ggml) end up KLD ≈ 0.003 apart, which moves the
/// PPL of a 512-token excerpt by up to ~1% either way and of 2k tokens by ~0.3%. Measured
/// on SmolLM2 Q4_1, held-out text, ctx 512, 8 chunks: llama-perplexity 36.391, ledge packed
/// 36.274, blocked 36.385, scalar 36.278.
fn check_ppl(path: &Path, key: &str, tol: f64) {
    let name = path.file_name().unwrap().to_string_lossy();
    let r = &reference()[key];
    let (ctx, chunks) = (
        r["ctx"].as_u64().unwrap() as usize,
        r["chunks"].as_u64().unwrap() as usize,
    );
    let text = match r["text_sha256"].as_str() {
        Some(sha) => {
            let t = heldout();
            assert_eq!(sha256(&t), sha, "{} is not the fixture's text", t.display());
            t
        }
        None => excerpt(),
    };
    let res = run_eval(path, &text, ctx, chunks);
    assert_eq!(res.n_chunks, chunks);
    assert_eq!(
        res.n_tokens as u64,
        r["llama_tokenize_count"].as_u64().unwrap(),
        "{name}: token count"
    );
    within(
        res.ppl.value,
        r["ppl"].as_f64().unwrap(),
        tol,
        &format!("{name} PPL"),
    );
    within(
        res.ppl.stderr,
        r["ppl_stderr"].as_f64().unwrap(),
        0.05,
        &format!("{name} PPL stderr"),
    );
}

#[test]
fn smollm2_perplexity_matches_llama_perplexity() {
    check_ppl(&model(SMOLLM2), "smollm2_ppl_heldout", 0.005);
}

/// Gemma 3 with F32 weights: no quantized kernel on either side, so only the protocol
/// (tokenization, BOS, chunks, scored range, error formula) is compared, and it must agree
/// to rounding (measured: 0.004%).
#[test]
fn gemma3_f32_perplexity_matches_llama_perplexity_to_rounding() {
    let src = GgufFile::open(model(GEMMA3)).unwrap();
    let out = scratch("eval_gemma_f32").join("gemma-3-270m-f32.gguf");
    let mut b = GgufBuilder::with_metadata_of(&src).unwrap();
    b.set("general.file_type", ledge::gguf::MetaValue::U32(0))
        .unwrap();
    for t in src.tensor_infos() {
        b.add_tensor(src.tensor_name(t), GgmlType::F32, &t.dims)
            .unwrap();
    }
    let mut w = b.create(&out).unwrap();
    for t in src.tensors() {
        w.write_tensor(bytemuck::cast_slice(&t.to_f32().unwrap()))
            .unwrap();
    }
    let out = w.finish().unwrap();
    check_ppl(&out, "gemma3_f32_ppl", 0.001);
    std::fs::remove_file(&out).unwrap();
}

/// The quantized Gemma 3 file on the held-out text (ctx 512, 4 chunks, 2,044 scored tokens).
/// On the 512-token excerpt it is ~1% from llama-perplexity, with either of ledge's kernel
/// sets landing on either side of the F32 copies (27.42–27.50 vs 27.30 vs ggml's 27.22): the
/// rounding noise `check_ppl` describes. On this text the spread between valid kernel sets
/// of ledge itself, measured pairwise with `ledge eval --baseline-logits`: scalar vs
/// AVX-512 per-head attention KLD 0.0061, ln-ratio −0.0025 ± 0.0038 (PPL 31.91 vs 31.99);
/// tiled vs per-head attention KLD 0.0061, ln-ratio +0.0062 ± 0.0038 (32.19 vs 31.99);
/// llama-perplexity 31.96. Gemma's noise is wider than SmolLM2's, so the limit is 1%
/// (≈ 2.6 standard errors of the pairwise spread): a real defect (a wrong scale, a missing
/// norm) moves PPL by far more.
#[test]
fn gemma3_perplexity_matches_llama_perplexity() {
    check_ppl(&model(GEMMA3), "gemma3_ppl_heldout", 0.01);
}

/// KL divergence of the Q4_0 variant from the Q4_1 original, exact (both models run) and from
/// saved top-k logits, against llama-perplexity --kl-divergence on the same two files.
#[test]
fn kl_divergence_matches_llama_perplexity_and_topk_bounds_it() {
    let r = &reference()["smollm2_q4_0_vs_q4_1"];
    let variant = q4_0_variant();
    assert_eq!(
        sha256(&variant),
        r["variant_sha256"].as_str().unwrap(),
        "the Q4_0 variant differs from the file the fixture was made from"
    );
    let (ctx, chunks) = (
        r["ctx"].as_u64().unwrap() as usize,
        r["chunks"].as_u64().unwrap() as usize,
    );
    ledge::quant::simd::init().unwrap();
    let bf = GgufFile::open(model(SMOLLM2)).unwrap();
    let base = Model::load(&bf).unwrap();
    let tok = Tokenizer::from_gguf(&bf).unwrap();
    let vf = GgufFile::open(&variant).unwrap();
    let var = Model::load(&vf).unwrap();
    let tokens = tokenize_text(&tok, &std::fs::read_to_string(excerpt()).unwrap());

    let exact = evaluate(
        &var,
        &tokens,
        &opts(&tok, ctx, chunks, None),
        Some(Baseline::Model(&base)),
        &mut |_, _| {},
    )
    .unwrap();
    let k = exact.kld.as_ref().unwrap();
    within(
        k.kld_mean.value,
        r["kld_mean"].as_f64().unwrap(),
        0.05,
        "mean KLD",
    );
    // 384 scored tokens: within the rounding noise of `check_ppl` (measured 0.51% with the
    // packed kernels, 0.2% with the blocked ones); the 0.5% bound is held on the long text.
    within(
        k.ppl_base.value,
        r["ppl_base"].as_f64().unwrap(),
        0.01,
        "PPL(base)",
    );
    // The Q4_0 variant is the file where llama.cpp's arithmetic differs most from ledge's (it
    // repacks Q4_0 and runs its own AVX-512 kernels; both sides' sums hinge on SmolLM2's
    // massive activation, scripts/reference/README.md): measured 0.3–0.65% apart depending
    // on ledge's kernel set. The issue's 0.5% bound is checked on the real files above.
    within(exact.ppl.value, r["ppl"].as_f64().unwrap(), 0.01, "PPL(Q)");
    within(
        k.kld_median,
        r["kld_median"].as_f64().unwrap(),
        0.10,
        "median KLD",
    );
    within(
        k.same_top.value,
        r["same_top"].as_f64().unwrap(),
        0.03,
        "same top token",
    );
    within(
        k.rms_dp.value,
        r["rms_dp"].as_f64().unwrap(),
        0.05,
        "RMS Δp",
    );

    // Saved baseline logits: PPL(base), top-1 agreement and Δp stay exact; the KLD becomes
    // the divergence of the distributions with the tokens outside the baseline's top k merged
    // into one bucket, a lower bound whose gap shrinks as k grows. The gap is real and large
    // for a model this uncertain (PPL ~35: much mass lies outside any short list); it is
    // measured here and reported, and only k ≥ 1024 is held to a tolerance.
    let dir = scratch("eval_saved_logits");
    let mut prev = 0.0;
    for k_keep in [8, 64, 256, 1024] {
        let saved = evaluate(
            &base,
            &tokens,
            &opts(&tok, ctx, chunks, Some(k_keep)),
            None,
            &mut |_, _| {},
        )
        .unwrap()
        .saved
        .unwrap();
        saved.write(&dir.join("base.logits")).unwrap();
        let saved = ledge::eval::SavedLogits::read(&dir.join("base.logits")).unwrap();
        let approx = evaluate(
            &var,
            &tokens,
            &opts(&tok, ctx, chunks, None),
            Some(Baseline::Saved(&saved)),
            &mut |_, _| {},
        )
        .unwrap();
        let a = approx.kld.as_ref().unwrap();
        assert_eq!(approx.ppl, exact.ppl);
        assert!((a.ppl_base.value - k.ppl_base.value).abs() < 1e-9 * k.ppl_base.value);
        assert_eq!(a.same_top, k.same_top);
        assert!((a.rms_dp.value - k.rms_dp.value).abs() < 1e-9);
        assert!(
            a.kld_mean.value <= k.kld_mean.value * (1.0 + 1e-9),
            "top-k KLD must not exceed the exact one"
        );
        assert!(
            a.kld_mean.value >= prev,
            "keeping more tokens never loosens the bound"
        );
        prev = a.kld_mean.value;
        let gap = (k.kld_mean.value - a.kld_mean.value) / k.kld_mean.value;
        eprintln!(
            "top-{k_keep} KLD {:.6} vs exact {:.6}: {:.2}% low ({} bytes a position)",
            a.kld_mean.value,
            k.kld_mean.value,
            100.0 * gap,
            16 + 8 * k_keep
        );
        if k_keep >= 1024 {
            assert!(
                gap < 0.05,
                "top-{k_keep} KLD is {:.2}% below the exact value",
                100.0 * gap
            );
        }
    }
}

#[test]
fn a_model_compared_with_itself_diverges_nowhere() {
    ledge::quant::simd::init().unwrap();
    let f = GgufFile::open(model(SMOLLM2)).unwrap();
    let m = Model::load(&f).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let tokens = tokenize_text(&tok, &std::fs::read_to_string(excerpt()).unwrap());
    let r = evaluate(
        &m,
        &tokens,
        &opts(&tok, 64, 2, None),
        Some(Baseline::Model(&m)),
        &mut |_, _| {},
    )
    .unwrap();
    let k = r.kld.unwrap();
    assert!(k.kld_mean.value.abs() < 1e-9, "{}", k.kld_mean.value);
    assert_eq!(k.same_top.value, 1.0);
    assert_eq!(k.rms_dp.value, 0.0);
    assert_eq!(k.positions, 2 * 31);
}

// ---- the command line and its bad inputs ----

fn ledge_eval(args: &[&str]) -> (bool, String, String) {
    let out = ledge().arg("eval").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_eval_saves_logits_and_reuses_them_as_the_baseline() {
    let dir = scratch("eval_cli_logits");
    let logits = dir.join("smol.logits");
    let smol = model(SMOLLM2);
    let (ok, out, err) = ledge_eval(&[
        "-m",
        smol.to_str().unwrap(),
        "-f",
        excerpt().to_str().unwrap(),
        "-c",
        "64",
        "--chunks",
        "2",
        "--save-logits",
        logits.to_str().unwrap(),
        "--top-k",
        "16",
        "-t",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("PPL = "), "{out}");
    assert!(err.contains("2/2 chunks"), "no progress bar: {err}");
    // The same model against its own saved logits: nothing diverges, and --text may be left
    // out (the file holds the tokens).
    let (ok, out, err) = ledge_eval(&[
        "-m",
        smol.to_str().unwrap(),
        "--baseline-logits",
        logits.to_str().unwrap(),
        "-c",
        "64",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["n_chunks"], 2);
    assert!(
        v["kld"]["kld_mean"]["value"].as_f64().unwrap().abs() < 1e-6,
        "{out}"
    );
    assert_eq!(v["kld"]["same_top"]["value"], 1.0);
    // A different context than the logits were saved with.
    let (ok, _, err) = ledge_eval(&[
        "-m",
        smol.to_str().unwrap(),
        "-f",
        excerpt().to_str().unwrap(),
        "--baseline-logits",
        logits.to_str().unwrap(),
        "-c",
        "128",
    ]);
    assert!(!ok);
    assert!(err.contains("--ctx 64, not 128"), "{err}");
}

#[test]
fn bad_inputs_fail_with_clear_errors() {
    let dir = scratch("eval_bad_inputs");
    let smol = model(SMOLLM2);
    let smol = smol.to_str().unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "A short text of a few words.").unwrap();
    let not_gguf = dir.join("notes.gguf");
    std::fs::write(&not_gguf, "these are notes, not a model").unwrap();
    let text = excerpt();
    let text = text.to_str().unwrap();

    let (ok, _, err) = ledge_eval(&["-m", smol, "-f", empty.to_str().unwrap()]);
    assert!(
        !ok && err.contains("empty.txt: the evaluation text is empty"),
        "{err}"
    );

    let (ok, _, err) = ledge_eval(&["-m", smol, "-f", short.to_str().unwrap(), "-c", "512"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("too short") && err.contains("needs at least 1024"),
        "{err}"
    );

    let (ok, _, err) = ledge_eval(&["-m", not_gguf.to_str().unwrap(), "-f", text]);
    assert!(!ok && err.contains("notes.gguf: not a GGUF file"), "{err}");

    let (ok, _, err) = ledge_eval(&[
        "-m",
        smol,
        "-f",
        text,
        "--baseline",
        not_gguf.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("notes.gguf: not a GGUF file"), "{err}");

    let gemma = model(GEMMA3);
    let (ok, _, err) = ledge_eval(&[
        "-m",
        smol,
        "-f",
        text,
        "-c",
        "64",
        "--baseline",
        gemma.to_str().unwrap(),
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("different vocabulary") && err.contains("262144") && err.contains("49152"),
        "{err}"
    );

    let bad_logits = dir.join("bad.logits");
    std::fs::write(&bad_logits, b"LEDGELGT but cut short").unwrap();
    let (ok, _, err) = ledge_eval(&[
        "-m",
        smol,
        "-f",
        text,
        "--baseline-logits",
        bad_logits.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("bad.logits"), "{err}");
}

#[test]
fn saved_logits_from_another_vocabulary_are_refused() {
    let dir = scratch("eval_logits_vocab");
    let logits = dir.join("smol.logits");
    let smol = model(SMOLLM2);
    let (ok, _, err) = ledge_eval(&[
        "-m",
        smol.to_str().unwrap(),
        "-f",
        excerpt().to_str().unwrap(),
        "-c",
        "64",
        "--chunks",
        "2",
        "--save-logits",
        logits.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let gemma = model(GEMMA3);
    let (ok, _, err) = ledge_eval(&[
        "-m",
        gemma.to_str().unwrap(),
        "-f",
        excerpt().to_str().unwrap(),
        "-c",
        "64",
        "--baseline-logits",
        logits.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("different vocabulary"), "{err}");
}

#[test]
fn bench_reports_startup_latency_and_peak_memory() {
    let smol = model(SMOLLM2);
    let out = ledge()
        .args([
            "bench",
            "-m",
            smol.to_str().unwrap(),
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "1",
        ])
        .args(["--ttft-prompt", "8", "-t", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["startup"];
    let warm = s["load_warm_ms"].as_f64().unwrap();
    let ttft = s["ttft_ms"].as_f64().unwrap();
    assert!(warm > 0.0 && ttft > 0.0, "{s}");
    assert_eq!(s["prompt_tokens"], 8);
    // Linux: the cold path ran, and the first cold token includes the cold load.
    let cold = s["load_cold_ms"].as_f64().unwrap();
    assert!(s["first_token_cold_ms"].as_f64().unwrap() >= cold, "{s}");
    // Every weight was touched by pp/tg, and the file is mapped: the peak covers most of it.
    let peak = v["peak_rss_bytes"].as_u64().unwrap();
    let size = std::fs::metadata(&smol).unwrap().len();
    assert!(peak > size / 2, "peak RSS {peak} for a {size}-byte model");
    // The markdown form has both tables.
    let out = ledge()
        .args([
            "bench",
            "-m",
            smol.to_str().unwrap(),
            "-p",
            "8",
            "-n",
            "2",
            "-r",
            "1",
        ])
        .args(["--ttft-prompt", "4", "-t", "2"])
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("| pp8 |") && md.contains("| tg2 |"), "{md}");
    assert!(
        md.contains("TTFT p4 (warm)") && md.contains("peak RSS") && md.contains(" MiB |"),
        "{md}"
    );
}

#[test]
fn report_writes_a_table_a_chart_and_json() {
    let dir = scratch("eval_report");
    let variant = q4_0_variant();
    let out = dir.join("report");
    let smol = model(SMOLLM2);
    let res = ledge()
        .args([
            "report",
            variant.to_str().unwrap(),
            "--baseline",
            smol.to_str().unwrap(),
        ])
        .args([
            "-f",
            excerpt().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args(["-c", "64", "--chunks", "2", "-p", "8", "-n", "2", "-t", "2"])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(".gguf"))
        .collect();
    assert_eq!(rows.len(), 2, "{md}");
    assert!(
        rows[0].contains("(baseline)") && rows[0].contains("Q4_1"),
        "{md}"
    );
    assert!(
        rows[1].contains("smollm2-q4_0.gguf") && rows[1].contains("Q4_0"),
        "{md}"
    );
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let kld = json[1]["kld"]["kld_mean"]["value"].as_f64().unwrap();
    assert!(
        kld > 0.05,
        "requantizing Q4_1 to Q4_0 moves the distribution: {kld}"
    );
    assert!(json[0]["kld"].is_null());
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    assert!(svg.contains("smollm2-q4_0") && svg.contains("mean KLD"));
    assert!(!out.join("report.svg.tmp").exists());
}
