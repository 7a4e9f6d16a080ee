//! `ledge compress` on the real SmolLM2 file with a short candidate list, a small context
//! and two chunks: the chosen file meets the target by the table's own numbers, a rerun
//! makes the same choice and the same bytes, and the refusals (same text, unmeetable target,
//! bad inputs) write nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{model, scratch, SMOLLM2};
use ledge::compress::choose::meets;
use ledge::compress::{compress, CompressOptions, Optimize, QualityTarget};
use ledge::gguf::{GgmlType, GgufFile};

fn ledge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ledge"))
}

/// Disjoint calibration and evaluation texts cut from the committed Botchan excerpt.
fn texts(dir: &Path) -> (PathBuf, PathBuf) {
    let t = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/botchan-excerpt.txt"),
    )
    .unwrap();
    let cut = t[..t.len() * 2 / 5].rfind('\n').unwrap();
    let (calib, eval) = (dir.join("calib.txt"), dir.join("eval.txt"));
    std::fs::write(&calib, &t[..cut]).unwrap();
    std::fs::write(&eval, &t[cut + 1..]).unwrap();
    (calib, eval)
}

fn opts(dir: &Path, out: &Path, candidates: &str) -> CompressOptions {
    let (calib, eval) = texts(dir);
    CompressOptions {
        source: model(SMOLLM2),
        out: out.to_path_buf(),
        target: QualityTarget {
            max_kld: Some(0.05),
            ..Default::default()
        },
        calib,
        eval,
        optimize: Optimize::Size,
        allow_same_text: false,
        work_dir: None,
        keep: false,
        ctx: 128,
        chunks: Some(2),
        calib_chunks: Some(2),
        candidates: Some(ledge::compress::candidate::parse_list(candidates).unwrap()),
        early_stop: true,
    }
}

fn cli(args: &[&str]) -> Output {
    ledge().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn chooses_the_smallest_file_meeting_the_target_and_a_rerun_agrees() {
    ledge::quant::simd::init().unwrap();
    let dir = scratch("compress-choice");
    let out = dir.join("out.gguf");
    let o = opts(&dir, &out, "Q8_0,Q4_0,Q4_0+imatrix");
    let r = compress(&o).unwrap();
    assert_eq!(r.rows.len(), 3, "{}", r.table);
    let i = r.chosen.expect("a candidate meets KLD 0.05");
    let c = &r.rows[i];
    // The chosen file meets the target by its own measurements …
    assert!(meets(c, &o.target), "{}", r.table);
    let kld = c.quality.as_ref().unwrap().kld.kld_mean.value;
    assert!(kld <= 0.05, "{kld}");
    // … and every smaller candidate misses it (SmolLM2 re-quantized to Q4_0 is far off).
    for m in &r.rows {
        if m.size_bytes < c.size_bytes {
            assert!(!meets(m, &o.target), "{} is smaller and meets", m.candidate);
        }
    }
    assert_eq!(c.candidate.to_string(), "Q8_0", "{}", r.table);
    // Calibration weighted the Q4_0 tensors: the imatrix variant differs from the plain one.
    let (q4, q4im) = (&r.rows[1], &r.rows[2]);
    let k = |m: &ledge::compress::choose::Measured| m.quality.as_ref().unwrap().kld.kld_mean.value;
    assert_ne!(k(q4), k(q4im));
    // The table says why for every row.
    assert!(r.table.contains("| 1 | Q8_0 |"), "{}", r.table);
    assert!(r.table.contains("**chosen**"), "{}", r.table);
    assert_eq!(r.table.matches("fails KLD").count(), 2, "{}", r.table);
    // The output is the chosen candidate, a complete GGUF; the work folder is gone.
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.file_size(), c.size_bytes);
    assert!(f.tensor_infos().iter().any(|t| t.ty == GgmlType::Q8_0));
    assert!(!dir.join("out.gguf.work").exists());
    let first = std::fs::read(&out).unwrap();

    // Same inputs: same choice, same numbers, same bytes.
    std::fs::remove_file(&out).unwrap();
    let again = compress(&o).unwrap();
    assert_eq!(again.chosen, r.chosen);
    for (a, b) in r.rows.iter().zip(&again.rows) {
        assert_eq!(a.size_bytes, b.size_bytes);
        assert_eq!(k(a).to_bits(), k(b).to_bits(), "{}", a.candidate);
    }
    assert_eq!(again.table, r.table);
    assert!(
        std::fs::read(&out).unwrap() == first,
        "the rerun wrote different bytes"
    );
}

#[test]
fn refuses_the_same_text_for_calibration_and_evaluation() {
    let dir = scratch("compress-same-text");
    let (calib, eval) = texts(&dir);
    let copy = dir.join("copy.txt");
    std::fs::copy(&eval, &copy).unwrap();
    let out = dir.join("out.gguf");
    let src = model(SMOLLM2);
    for c in [&eval, &copy] {
        let o = cli(&[
            "compress",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--max-kld",
            "0.05",
            "--calib",
            c.to_str().unwrap(),
            "--eval",
            eval.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("same text"), "{}", stderr(&o));
        assert!(stderr(&o).contains("--allow-same-text"), "{}", stderr(&o));
    }
    assert!(!out.exists());
    let _ = calib;
}

#[test]
fn an_unmeetable_target_writes_nothing_and_names_the_best() {
    let dir = scratch("compress-unmeetable");
    let (calib, eval) = texts(&dir);
    let out = dir.join("out.gguf");
    let src = model(SMOLLM2);
    // Q8_0 (145 MB) is over the size limit and not evaluated; Q4_0 misses the KLD, and so
    // does Q4_0 with its least useful block removed (a pruning rung: its own calibration).
    let o = cli(&[
        "compress",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--max-kld",
        "0.05",
        "--max-size",
        "120MB",
        "--calib",
        calib.to_str().unwrap(),
        "--eval",
        eval.to_str().unwrap(),
        "-c",
        "128",
        "--chunks",
        "2",
        "--candidates",
        "Q8_0,Q4_0,Q4_0+layers1",
    ]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{table}");
    let err = stderr(&o);
    assert!(err.contains("no candidate meets the target"), "{err}");
    assert!(err.contains("the best found: Q4_0"), "{err}");
    assert!(err.contains("Nothing was written"), "{err}");
    assert!(
        table.contains("over size 144.8 MB > 120.0 MB (not evaluated)"),
        "{table}"
    );
    assert!(table.contains("fails KLD"), "{table}");
    let pruned = table
        .lines()
        .find(|l| l.contains("Q4_0+prune(1 layer)"))
        .unwrap_or_else(|| panic!("no pruning rung in\n{table}"));
    assert!(pruned.contains("fails KLD"), "{pruned}");
    assert!(!table.contains("**chosen**"), "{table}");
    assert!(!out.exists());
    assert!(!dir.join("out.gguf.work").exists());
}

#[test]
fn bad_inputs_fail_clearly_before_any_work() {
    let dir = scratch("compress-bad-inputs");
    let (calib, eval) = texts(&dir);
    let out = dir.join("out.gguf");
    let src = model(SMOLLM2);
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "It was a short text.\n").unwrap();
    let not_gguf = dir.join("model.gguf");
    std::fs::write(&not_gguf, "this is not a model").unwrap();
    let run = |src: &Path, calib: &Path, eval: &Path| {
        let o = cli(&[
            "compress",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--max-kld",
            "0.05",
            "--calib",
            calib.to_str().unwrap(),
            "--eval",
            eval.to_str().unwrap(),
            "-c",
            "128",
        ]);
        assert!(!o.status.success());
        stderr(&o)
    };
    let e = run(&src, &calib, &empty);
    assert!(e.contains("empty.txt: the text is empty"), "{e}");
    let e = run(&src, &empty, &eval);
    assert!(e.contains("empty.txt: the text is empty"), "{e}");
    let e = run(&src, &calib, &short);
    assert!(e.contains("short.txt") && e.contains("too short"), "{e}");
    let e = run(&src, &short, &eval);
    assert!(e.contains("short.txt") && e.contains("too short"), "{e}");
    let e = run(&not_gguf, &calib, &eval);
    assert!(
        e.contains("not a Hugging Face model folder or a GGUF file"),
        "{e}"
    );
    let e = run(&dir.join("missing"), &calib, &eval);
    assert!(e.contains("no such file or folder"), "{e}");
    // No quality target at all.
    let o = cli(&[
        "compress",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--eval",
        eval.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--max-kld"), "{}", stderr(&o));
    assert!(!out.exists());
    assert!(!dir.join("out.gguf.work").exists());
}
