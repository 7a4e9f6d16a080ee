//! Distillation's student: its forward equals the model's own, and its backward (every op
//! chained through the blocks) equals finite differences of its loss, on the tiny llama
//! (plain), qwen2 (q/k/v biases) and qwen3 (q/k norms) fixtures.

mod common;

use std::path::PathBuf;

use common::Rng;
use ledge::gguf::GgufFile;
use ledge::model::{KvType, Logits, Model};
use ledge::train::grad::Target;
use ledge::train::student::{Loss, Student, TrainSpec, TARGETS};

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
        .join(format!("{family}.f32.gguf"))
}

fn spec() -> TrainSpec {
    TrainSpec {
        rank: 4,
        alpha: 8.0,
        targets: TARGETS.iter().map(|s| s.to_string()).collect(),
        norms: true,
    }
}

fn tokens(n_vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| (r.next_u64() % n_vocab as u64) as u32)
        .collect()
}

#[test]
fn student_forward_is_the_models_forward() {
    for fam in ["llama", "qwen2", "qwen3"] {
        let f = GgufFile::open(fixture(fam)).unwrap();
        let model = Model::load(&f).unwrap();
        let st = Student::new(&model, &f, spec()).unwrap();
        let p = st.init_params(1);
        let toks = tokens(model.config.n_vocab, 12, 7);
        let z = st.logits(&p, &toks).unwrap();
        let mut cache = model.new_cache_typed(16, KvType::F32);
        let want = model.forward(&mut cache, &toks, Logits::All).unwrap();
        let range = want.iter().cloned().fold(f32::MIN, f32::max)
            - want.iter().cloned().fold(f32::MAX, f32::min);
        let d = z
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-4 * range,
            "{fam}: student logits off by {d} (range {range})"
        );
    }
}

/// Random teacher targets: each position's top 5 of a random distribution, the rest as the
/// bucket, and a next token.
fn targets(n_vocab: usize, n: usize, seed: u64) -> Vec<(Vec<u32>, Vec<f32>, f64, u32)> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let ids: Vec<u32> = (0..5)
                .map(|_| (r.next_u64() % n_vocab as u64) as u32)
                .collect();
            let mut ids = ids;
            ids.sort();
            ids.dedup();
            let w: Vec<f64> = ids
                .iter()
                .map(|_| 1.0 + (r.next_u64() % 100) as f64)
                .collect();
            let total: f64 = w.iter().sum::<f64>() * 1.25;
            let logp = w.iter().map(|v| (v / total).ln() as f32).collect();
            let next = (r.next_u64() % n_vocab as u64) as u32;
            (ids, logp, 0.2, next)
        })
        .collect()
}

#[test]
fn student_backward_equals_finite_differences() {
    for fam in ["llama", "qwen2", "qwen3"] {
        let f = GgufFile::open(fixture(fam)).unwrap();
        let model = Model::load(&f).unwrap();
        let st = Student::new(&model, &f, spec()).unwrap();
        let nv = model.config.n_vocab;
        let mut p = st.init_params(3);
        // B away from zero so every path carries gradient.
        let mut r = Rng(11);
        for slots in &st.layout.lora {
            for at in slots.iter().flatten() {
                for v in &mut p[at.b..at.b + at.m * at.rank] {
                    *v = ((r.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
                }
            }
        }
        let n = 9;
        let toks = tokens(nv, n, 5);
        let tg = targets(nv, n, 9);
        let tgs: Vec<Option<Target>> = tg
            .iter()
            .enumerate()
            .map(|(i, (ids, logp, tail, next))| {
                (i != 4).then_some(Target {
                    ids,
                    logp,
                    tail: *tail,
                    next: *next,
                })
            })
            .collect();
        let lo = Loss {
            temperature: 2.0,
            alpha: 0.7,
            weight: 1.0,
        };
        let loss = |p: &[f32]| -> f64 {
            let mut g = vec![0f32; p.len()];
            st.step(p, &toks, &tgs, lo, &mut g).unwrap()
        };
        let mut g = vec![0f32; p.len()];
        st.step(&p, &toks, &tgs, lo, &mut g).unwrap();
        // Directional derivatives along random directions within each group of parameters.
        let mut groups: Vec<(String, Vec<std::ops::Range<usize>>)> = Vec::new();
        for (slot, name) in TARGETS.iter().enumerate() {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for slots in &st.layout.lora {
                let at = slots[slot].unwrap();
                a.push(at.a..at.a + at.rank * at.k);
                b.push(at.b..at.b + at.m * at.rank);
            }
            groups.push((format!("{name} A"), a));
            groups.push((format!("{name} B"), b));
        }
        let norms: Vec<_> = st.layout.norms.iter().flatten().collect();
        let d = model.config.n_embd;
        groups.push((
            "attn_norm".into(),
            norms.iter().map(|x| x.0..x.0 + d).collect(),
        ));
        groups.push((
            "ffn_norm".into(),
            norms.iter().map(|x| x.1..x.1 + d).collect(),
        ));
        let o = st.layout.output_norm.unwrap();
        groups.push(("output_norm".into(), std::iter::once(o..o + d).collect()));
        for (name, ranges) in groups {
            let mut dir = vec![0f32; p.len()];
            for rg in &ranges {
                for v in &mut dir[rg.clone()] {
                    *v = (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
            }
            let analytic: f64 = g.iter().zip(&dir).map(|(&a, &b)| a as f64 * b as f64).sum();
            let eps = 1e-2f32;
            let shifted =
                |s: f32| -> Vec<f32> { p.iter().zip(&dir).map(|(&a, &b)| a + s * b).collect() };
            let numeric = (loss(&shifted(eps)) - loss(&shifted(-eps))) / (2.0 * eps as f64);
            // Relative, with a floor for the near-zero directions where f32 noise in the loss dominates.
            let err = (analytic - numeric).abs() / numeric.abs().max(0.1);
            eprintln!(
                "{fam} {name}: {analytic:.6} {numeric:.6} {:.3}%",
                err * 100.0
            );
            assert!(
                err < 2e-2 || std::env::var("SHOWALL").is_ok(),
                "{fam} {name}: analytic {analytic:.6} numeric {numeric:.6} ({:.2}%)",
                err * 100.0
            );
        }
    }
}

fn ledge() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_ledge"))
}

fn text() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/botchan-excerpt.txt")
}

fn quant(family: &str, ty: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
        .join(format!("{family}.{ty}.gguf"))
}

/// (before, after) from "held-out KL divergence … : X -> Y".
fn held_out(stdout: &str) -> (f64, f64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("held-out KL divergence"))
        .unwrap_or_else(|| panic!("no held-out line in {stdout}"));
    let tail = line.rsplit(": ").next().unwrap();
    let (a, b) = tail.split_once(" -> ").unwrap();
    (a.trim().parse().unwrap(), b.trim().parse().unwrap())
}

/// The fixture text cut in two at a line: (training part, held-out part).
fn halves(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let t = std::fs::read_to_string(text()).unwrap();
    let lines: Vec<&str> = t.lines().collect();
    let (a, b) = lines.split_at(lines.len() * 6 / 10);
    let (pa, pb) = (dir.join("train.txt"), dir.join("heldout.txt"));
    std::fs::write(&pa, a.join("\n")).unwrap();
    std::fs::write(&pb, b.join("\n")).unwrap();
    (pa, pb)
}

fn eval_kld(
    model: &std::path::Path,
    baseline: &std::path::Path,
    lora: Option<&std::path::Path>,
    text: &std::path::Path,
) -> f64 {
    let mut c = ledge();
    c.args(["eval", "-m"])
        .arg(model)
        .arg("-f")
        .arg(text)
        .args(["-c", "64", "--json", "--baseline"])
        .arg(baseline);
    if let Some(l) = lora {
        c.arg("--lora").arg(l);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["kld"]["kld_mean"]["value"].as_f64().unwrap()
}

/// A Q4_K_M student distilled from its F32 teacher into an adapter: the held-out KL
/// divergence falls in the run, and `ledge eval --lora` on text the run never saw agrees.
#[test]
fn distill_recovers_a_quantized_student_through_its_adapter() {
    let dir = common::scratch("distill-q");
    let (teacher, student) = (fixture("llama"), quant("llama", "q4_k_m"));
    let adapter = dir.join("adapter.gguf");
    let (train, heldout) = halves(&dir);
    let out = ledge()
        .args(["distill", "--teacher"])
        .arg(&teacher)
        .arg("--student")
        .arg(&student)
        .arg("--train")
        .arg(&train)
        .arg("--adapter-out")
        .arg(&adapter)
        .args([
            "--seq",
            "32",
            "--batch",
            "2",
            "--tokens",
            "6000",
            "--val-frac",
            "0.2",
        ])
        .args(["--lr", "2e-3", "--temperature", "1", "--alpha", "1"])
        .arg("--eval-text")
        .arg(&heldout)
        .args(["--eval-every", "20"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (before, after) = held_out(&stdout);
    assert!(after < 0.85 * before, "held-out KLD {before} -> {after}");
    assert!(
        !dir.join("adapter.gguf.ckpt").exists(),
        "the checkpoint outlived the run"
    );
    // The learning curve on --eval-text: a point at the start, every 20 steps, and the end
    // (94 steps of 64 tokens), KLD falling.
    let csv = std::fs::read_to_string(dir.join("adapter.gguf.curve.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 6, "{csv}");
    assert_eq!(rows[0][0], 0.0);
    assert!(rows[5][1] < 0.9 * rows[0][1], "{csv}");
    let svg = std::fs::read_to_string(dir.join("adapter.gguf.curve.svg")).unwrap();
    assert!(svg.contains("Top-1 agreement"), "no chart");
    assert!(stdout.contains("--eval-text: KLD"), "{stdout}");
    let base = eval_kld(&student, &teacher, None, &heldout);
    let with_adapter = eval_kld(&student, &teacher, Some(&adapter), &heldout);
    assert!(
        with_adapter < 0.9 * base,
        "adapter: {base} -> {with_adapter}"
    );
}

/// Prune, then distill, as the pipeline is meant to run: a pruned F32 student trains its
/// pairs and norms, and the merged GGUF scores a lower KLD on unseen text. Without norms,
/// the merged file (pairs folded into F32, exactly) and the adapter give the same KLD.
#[test]
fn distill_recovers_a_pruned_student_in_the_merged_model() {
    let dir = common::scratch("distill-prune");
    let teacher = fixture("llama");
    let (train, heldout) = halves(&dir);
    let pruned = dir.join("pruned.gguf");
    let out = ledge()
        .arg("quantize")
        .arg(&teacher)
        .arg(&pruned)
        .args(["F32", "--prune-ffn", "0.25", "--calib"])
        .arg(&train)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let distill = |extra: &[&str], outs: &[(&str, &std::path::Path)]| {
        let mut c = ledge();
        c.args(["distill", "--teacher"])
            .arg(&teacher)
            .arg("--student")
            .arg(&pruned)
            .arg("--train")
            .arg(&train)
            .args([
                "--seq", "32", "--batch", "2", "--tokens", "6000", "--lr", "2e-3",
            ])
            // A random-weight teacher does not predict the text: the cross-entropy term
            // would pull the student away from it.
            .args(["--alpha", "1"])
            .args(extra);
        for (flag, p) in outs {
            c.arg(flag).arg(p);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let merged = dir.join("merged.gguf");
    distill(&[], &[("-o", &merged)]);
    let base = eval_kld(&pruned, &teacher, None, &heldout);
    let merged_kld = eval_kld(&merged, &teacher, None, &heldout);
    assert!(merged_kld < 0.95 * base, "merged: {base} -> {merged_kld}");

    let (m2, a2) = (dir.join("m2.gguf"), dir.join("a2.gguf"));
    distill(
        &["--train-norms", "false"],
        &[("-o", &m2), ("--adapter-out", &a2)],
    );
    let (km, ka) = (
        eval_kld(&m2, &teacher, None, &heldout),
        eval_kld(&pruned, &teacher, Some(&a2), &heldout),
    );
    assert!(km < 0.98 * base, "merged without norms: {base} -> {km}");
    assert!(
        (km - ka).abs() < 1e-4 * base.max(1.0),
        "merged {km} vs adapter {ka}"
    );
}

/// Ctrl-C saves a checkpoint; resuming it ends with the same adapter, bit for bit, as the
/// run that was never interrupted.
#[cfg(unix)]
#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    let dir = common::scratch("distill-resume");
    let args = |out: &std::path::Path| {
        let mut c = ledge();
        c.args(["distill", "--teacher"])
            .arg(fixture("llama"))
            .arg("--student")
            .arg(quant("llama", "q8_0"))
            .arg("--train")
            .arg(text())
            .arg("--adapter-out")
            .arg(out)
            .args([
                "--seq", "32", "--batch", "2", "--tokens", "40000", "--seed", "7",
            ])
            .args(["--save-every", "5", "--val-frac", "0", "-t", "2"]);
        c
    };
    let whole = dir.join("whole.gguf");
    let out = args(&whole).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let part = dir.join("part.gguf");
    let ckpt = dir.join("part.gguf.ckpt");
    let child = args(&part)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid, with a valid signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("interrupted at step"),
        "{stdout}"
    );
    assert!(!part.exists(), "an interrupted run wrote its output");
    let out = args(&part).arg("--resume").arg(&ckpt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resuming"), "{stderr}");
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&part).unwrap(),
        "the resumed run ended elsewhere"
    );
}

#[test]
fn distill_refuses_what_it_cannot_train_by_name() {
    let dir = common::scratch("distill-errors");
    let run = |teacher: PathBuf, student: PathBuf, extra: &[&str]| {
        let out = ledge()
            .args(["distill", "--teacher"])
            .arg(teacher)
            .arg("--student")
            .arg(student)
            .arg("--train")
            .arg(text())
            .arg("--adapter-out")
            .arg(dir.join("a.gguf"))
            .args(["--seq", "32", "--tokens", "64"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(!dir.join("a.gguf").exists());
        // Refused before the teacher ran: not even its labels were written.
        assert!(!dir.join("a.gguf.labels").exists() || extra.contains(&"--resume"));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(fixture("gemma2"), fixture("gemma2"), &[]);
    assert!(e.contains("does not train gemma2"), "{e}");
    let e = run(fixture("llama"), fixture("qwen2"), &[]);
    assert!(e.contains("different vocabulary"), "{e}");
    let e = run(
        fixture("llama"),
        fixture("llama"),
        &["--lora-targets", "attn_x"],
    );
    assert!(e.contains("unknown LoRA target \"attn_x\""), "{e}");
    let e = run(fixture("llama"), fixture("llama"), &["--alpha", "1.5"]);
    assert!(e.contains("--alpha"), "{e}");
    let short = dir.join("short.txt");
    std::fs::write(&short, "A few words only.").unwrap();
    let out = ledge()
        .args(["distill", "--teacher"])
        .arg(fixture("llama"))
        .arg("--student")
        .arg(fixture("llama"))
        .arg("--train")
        .arg(&short)
        .arg("--adapter-out")
        .arg(dir.join("a.gguf"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("at least two sequences"),
        "{e}"
    );
    assert!(!dir.join("a.gguf").exists() && !dir.join("a.gguf.labels").exists());
    let bogus = dir.join("bogus.ckpt");
    std::fs::write(&bogus, b"GGUF but not really").unwrap();
    let e = run(
        fixture("llama"),
        fixture("llama"),
        &["--resume", bogus.to_str().unwrap()],
    );
    assert!(e.contains("bogus.ckpt"), "{e}");
}

/// The whole student backward against PyTorch autograd through transformers' llama
/// (scripts/reference/gen_distill_fixtures.py): the same LoRA pairs on v, o, gate and down,
/// trainable norms, random teacher targets with a tail at T = 2: the same loss, and the same
/// gradient for every A, B and norm weight.
#[test]
fn student_gradients_equal_pytorch_autograd() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/student_torch.json");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let f32s = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let f = GgufFile::open(fixture("llama")).unwrap();
    let model = Model::load(&f).unwrap();
    let spec = TrainSpec {
        rank: r["rank"].as_u64().unwrap() as usize,
        alpha: r["alpha"].as_f64().unwrap() as f32,
        targets: ["attn_v", "attn_output", "ffn_gate", "ffn_down"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        norms: true,
    };
    let st = Student::new(&model, &f, spec).unwrap();
    let mut p = st.init_params(0);
    let slot = |name: &str| TARGETS.iter().position(|t| *t == name).unwrap();
    for pr in r["pairs"].as_array().unwrap() {
        let at = st.layout.lora[pr["layer"].as_u64().unwrap() as usize]
            [slot(pr["target"].as_str().unwrap())]
        .unwrap();
        p[at.a..at.a + at.rank * at.k].copy_from_slice(&f32s(&pr["a"]));
        p[at.b..at.b + at.m * at.rank].copy_from_slice(&f32s(&pr["b"]));
    }
    let ids: Vec<u32> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let tg: Vec<(Vec<u32>, Vec<f32>, f64, u32)> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect(),
                f32s(&t["logp"]),
                t["tail"].as_f64().unwrap(),
                t["next"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    let targets: Vec<Option<Target>> = tg
        .iter()
        .map(|(ids, logp, tail, next)| {
            Some(Target {
                ids,
                logp,
                tail: *tail,
                next: *next,
            })
        })
        .collect();
    let mut g = vec![0f32; p.len()];
    let loss = st
        .step(
            &p,
            &ids,
            &targets,
            Loss {
                temperature: r["temperature"].as_f64().unwrap() as f32,
                alpha: r["distill_alpha"].as_f64().unwrap() as f32,
                weight: 1.0,
            },
            &mut g,
        )
        .unwrap();
    let want = r["loss"].as_f64().unwrap();
    assert!(
        (loss - want).abs() < 1e-4 * want.abs(),
        "loss {loss} vs torch {want}"
    );
    let check = |what: String, got: &[f32], want: &[f32]| {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            scale > 0.0 && d <= 2e-3 * scale,
            "{what}: off by {d} (largest {scale})"
        );
    };
    for pr in r["pairs"].as_array().unwrap() {
        let il = pr["layer"].as_u64().unwrap() as usize;
        let name = pr["target"].as_str().unwrap();
        let at = st.layout.lora[il][slot(name)].unwrap();
        check(
            format!("blk.{il}.{name} dA"),
            &g[at.a..at.a + at.rank * at.k],
            &f32s(&pr["da"]),
        );
        check(
            format!("blk.{il}.{name} dB"),
            &g[at.b..at.b + at.m * at.rank],
            &f32s(&pr["db"]),
        );
    }
    let d = model.config.n_embd;
    for nm in r["norms"].as_array().unwrap() {
        let name = nm["name"].as_str().unwrap();
        let off = if name == "output_norm.weight" {
            st.layout.output_norm.unwrap()
        } else {
            let il: usize = name.split('.').nth(1).unwrap().parse().unwrap();
            let (a, f) = st.layout.norms[il].unwrap();
            if name.contains("attn_norm") {
                a
            } else {
                f
            }
        };
        assert_eq!(
            &p[off..off + d],
            &f32s(&nm["w"])[..],
            "{name}: weights differ"
        );
        check(format!("{name} dw"), &g[off..off + d], &f32s(&nm["dw"]));
    }
}

/// Without a corpus: the teacher samples the training text itself, and the student still
/// moves towards it on held-out samples.
#[test]
fn self_generated_text_trains_the_student() {
    let dir = common::scratch("distill-selfgen");
    let out = ledge()
        .args(["distill", "--teacher"])
        .arg(fixture("llama"))
        .arg("--student")
        .arg(quant("llama", "q4_k_m"))
        .args(["--self-generate", "2048", "--seed", "3"])
        .arg("--adapter-out")
        .arg(dir.join("a.gguf"))
        .args([
            "--seq",
            "32",
            "--batch",
            "2",
            "--tokens",
            "4000",
            "--val-frac",
            "0.25",
        ])
        .args(["--lr", "2e-3", "--alpha", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (before, after) = held_out(&stdout);
    assert!(after < 0.95 * before, "held-out KLD {before} -> {after}");
    assert!(dir.join("a.gguf").exists());
}

/// `--train` and `--self-generate` together: the text's whole sequences, then the samples
/// (made by `--generator`); a second run with the same labels file reuses the samples
/// instead of sampling again, and trains on exactly the same tokens.
#[test]
fn text_and_samples_mix_and_the_samples_are_reused() {
    let dir = common::scratch("distill-mix");
    let run = |out: &str| {
        let o = ledge()
            .args(["distill", "--teacher"])
            .arg(fixture("llama"))
            .arg("--student")
            .arg(quant("llama", "q8_0"))
            .arg("--train")
            .arg(text())
            .args(["--self-generate", "100", "--seed", "5", "--generator"])
            .arg(quant("llama", "q4_k_m"))
            .arg("--labels")
            .arg(dir.join("l.labels"))
            .arg("--adapter-out")
            .arg(dir.join(out))
            .args(["--seq", "32", "--tokens", "64", "--save-every", "0"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let first = run("a.gguf");
    assert!(first.contains("self-generate:"), "{first}");
    assert!(!first.contains("reusing the"), "{first}");
    let labels = ledge::eval::logits_file::SavedLogits::read(&dir.join("l.labels")).unwrap();
    // The text's whole sequences come first, then ceil(100 / 32) = 4 sequences of samples.
    let student = quant("llama", "q8_0");
    let f = ledge::gguf::GgufFile::open(&student).unwrap();
    let tok = ledge::tokenizer::Tokenizer::from_gguf(&f).unwrap();
    let t = ledge::eval::perplexity::tokenize_text(&tok, &std::fs::read_to_string(text()).unwrap());
    let n_text = t.len() / 32 * 32;
    assert_eq!(labels.tokens.len(), n_text + 4 * 32);
    assert_eq!(&labels.tokens[..n_text], &t[..n_text]);
    let second = run("b.gguf");
    assert!(
        second.contains("reusing the 128 sampled tokens"),
        "{second}"
    );
    assert!(second.contains("teacher labels: reusing"), "{second}");
    // Same tokens, same seed: the same adapter.
    assert_eq!(
        std::fs::read(dir.join("a.gguf")).unwrap(),
        std::fs::read(dir.join("b.gguf")).unwrap()
    );
}

/// `--minutes` times the first step and fixes the step count from it.
#[test]
fn minutes_fix_the_step_count_from_the_first_step() {
    let dir = common::scratch("distill-minutes");
    let out = ledge()
        .args(["distill", "--teacher"])
        .arg(fixture("llama"))
        .arg("--student")
        .arg(quant("llama", "q8_0"))
        .arg("--train")
        .arg(text())
        .arg("--adapter-out")
        .arg(dir.join("a.gguf"))
        .args(["--seq", "32", "--minutes", "0.03", "--save-every", "0"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("s a step:"))
        .unwrap_or_else(|| panic!("no timing line in {stderr}"));
    let steps: usize = line
        .split(": ")
        .nth(2)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(steps >= 1);
    assert!(
        stdout.contains(&format!("distilled {steps} steps")),
        "{stdout}"
    );
}
