//! The `ledge run` and `ledge chat` commands end to end on SmolLM2, and the generator's stop
//! rules and errors.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use ledge::generate::{GenerateError, GenerateOptions, Generator, SamplerConfig, StopReason};
use ledge::gguf::{GgufBuilder, GgufFile, MetaValue};
use ledge::model::Model;
use ledge::tokenizer::Tokenizer;

fn ledge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ledge"))
}

#[test]
fn run_prints_the_greedy_continuation_and_a_summary() {
    let out = ledge()
        .args(["run", "-m"])
        .arg(model(SMOLLM2))
        .args(["-p", "The capital of France is", "-n", "12", "--temp", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("The capital of France is"), "{text}");
    assert!(text.contains("Paris"), "{text}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("prompt:") && err.contains("tok/s") && err.contains("time to first token"),
        "{err}"
    );
}

#[test]
fn chat_holds_a_three_turn_conversation() {
    let mut child = ledge()
        .args(["chat", "-m"])
        .arg(model(SMOLLM2))
        .args([
            "--temp",
            "0",
            "-n",
            "40",
            "--system",
            "You are a helpful AI assistant.",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\nAnd of Germany?\nThank you!\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let turns: Vec<&str> = text.split("> ").filter(|t| !t.trim().is_empty()).collect();
    assert_eq!(turns.len(), 3, "{text}");
    assert!(turns[0].contains("Paris"), "{text}");
    // "And of Germany?" only makes sense with the first turn in the history.
    assert!(turns[1].contains("Berlin"), "{text}");
}

#[test]
fn run_without_a_model_file_says_what_is_wrong() {
    let out = ledge()
        .args(["run", "-m", "/nonexistent/m.gguf", "-p", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/m.gguf"), "{err}");
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let src = GgufFile::open(model(SMOLLM2)).unwrap();
    let mut b = GgufBuilder::with_metadata_of(&src).unwrap();
    b.set("general.architecture", "mamba9").unwrap();
    let path = scratch("unknown_arch").join("m.gguf");
    b.create(&path).unwrap().finish().unwrap();
    let out = ledge()
        .args(["run", "-m"])
        .arg(&path)
        .args(["-p", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("mamba9") && err.contains("llama") && err.contains("gemma3"),
        "{err}"
    );
}

#[test]
fn missing_tensor_and_wrong_shape_are_named() {
    for (drop, swap) in [("blk.3.ffn_up.weight", ""), ("", "blk.0.attn_k.weight")] {
        check_broken(drop, swap);
    }
}

/// Loads SmolLM2 without tensor `drop`, and with the two dimensions of `swap` exchanged.
fn check_broken(drop: &str, swap: &str) {
    let src = GgufFile::open(model(SMOLLM2)).unwrap();
    let path = scratch(&format!("bad_tensors{}", drop.len())).join("m.gguf");
    let mut b = GgufBuilder::with_metadata_of(&src).unwrap();
    b.set("general.name", MetaValue::from("broken")).unwrap();
    let infos: Vec<_> = src
        .tensor_infos()
        .iter()
        .filter(|t| src.tensor_name(t) != drop)
        .collect();
    for t in &infos {
        let mut dims = t.dims.clone();
        if src.tensor_name(t) == swap {
            dims.swap(0, 1);
        }
        b.add_tensor(src.tensor_name(t), t.ty, &dims).unwrap();
    }
    let mut w = b.create(&path).unwrap();
    for t in &infos {
        w.write_tensor(src.tensor_data(t)).unwrap();
    }
    w.finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    let e = Model::load(&f).err().unwrap().to_string();
    if drop.is_empty() {
        assert!(
            e.contains(swap) && e.contains("[192, 576]") && e.contains("expected [576, 192]"),
            "{e}"
        );
    } else {
        assert!(e.contains(drop) && e.contains("missing"), "{e}");
    }
}

fn smollm2_generate(prompt: &str, opts: GenerateOptions) -> (String, Option<StopReason>) {
    let f = GgufFile::open(model(SMOLLM2)).unwrap();
    let m = Model::load(&f).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let mut g = Generator::new(&m, &tok, SamplerConfig::greedy(), 64);
    let ids = tok.encode(prompt, true, true);
    let mut s = g.generate(&ids, opts).unwrap();
    let text: String = (&mut s).map(|p| p.unwrap()).collect();
    (text, s.stop_reason())
}

#[test]
fn generator_stops_at_strings_limits_and_end_of_turn() {
    let chat =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    // llama.cpp's greedy reply is "The capital of France is Paris." then <|im_end|>.
    let (text, why) = smollm2_generate(chat, GenerateOptions::default());
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(why, Some(StopReason::EndOfText));
    let (text, why) = smollm2_generate(
        chat,
        GenerateOptions {
            stop: vec![" is P".into()],
            ..Default::default()
        },
    );
    assert_eq!(text, "The capital of France");
    assert_eq!(why, Some(StopReason::StopString));
    let (text, why) = smollm2_generate(
        chat,
        GenerateOptions {
            max_tokens: 3,
            ..Default::default()
        },
    );
    assert_eq!(text, "The capital of");
    assert_eq!(why, Some(StopReason::MaxTokens));
}

#[test]
fn prompt_longer_than_the_context_is_an_error_unless_truncated() {
    let f = GgufFile::open(model(SMOLLM2)).unwrap();
    let m = Model::load(&f).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let mut g = Generator::new(&m, &tok, SamplerConfig::greedy(), 16);
    let ids = tok.encode(&"one two three four five six ".repeat(4), true, true);
    assert!(ids.len() > 16);
    let e = g.generate(&ids, GenerateOptions::default()).err().unwrap();
    assert!(
        matches!(e, GenerateError::PromptTooLong { ctx: 16, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("--ctx"), "{e}");
    let opts = GenerateOptions {
        max_tokens: 4,
        truncate_prompt: true,
        ..Default::default()
    };
    let mut s = g.generate(&ids, opts).unwrap();
    let n = (&mut s).count();
    assert!(n >= 1);
    assert!(matches!(
        s.stop_reason(),
        Some(StopReason::MaxTokens | StopReason::ContextFull)
    ));
    assert!(matches!(
        g.generate(&[], GenerateOptions::default()).err().unwrap(),
        GenerateError::EmptyPrompt
    ));
}

#[test]
fn bench_reports_pp_and_tg_as_json_and_table() {
    let out = ledge()
        .args(["bench", "-m"])
        .arg(model(SMOLLM2))
        .args(["-p", "8", "-n", "4", "-r", "2", "-t", "1", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = j["results"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["test"], "pp8");
    assert_eq!(r[1]["test"], "tg4");
    for x in r {
        assert_eq!(x["samples"].as_array().unwrap().len(), 2);
        assert!(x["tokens_per_second_mean"].as_f64().unwrap() > 0.0);
    }
    let out = ledge()
        .args(["bench", "-m"])
        .arg(model(SMOLLM2))
        .args(["-p", "4", "-n", "0", "-r", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("| pp4 |") && !text.contains("tg"), "{text}");
}

fn stderr_of(args: &[&str]) -> (bool, String) {
    let out = ledge().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn simd_flag_chooses_the_kernel_set_before_or_after_the_command() {
    let m = model(SMOLLM2);
    let m = m.to_str().unwrap();
    let run = ["-m", m, "-p", "Hi", "-n", "2", "--temp", "0", "-v"];
    for args in [
        [&["--simd", "scalar", "run"][..], &run].concat(),
        [&["run"][..], &run, &["--simd", "scalar"]].concat(),
    ] {
        let (ok, err) = stderr_of(&args);
        assert!(ok, "{err}");
        assert!(err.contains("kernel set: scalar"), "{err}");
    }
    let (ok, err) = stderr_of(&["--simd", "bogus", "run", "-m", m, "-p", "Hi"]);
    assert!(!ok);
    assert!(
        err.contains("--simd: unknown kernel set \"bogus\"") && err.contains("scalar, avx2"),
        "{err}"
    );
}

#[test]
fn sampling_values_out_of_range_name_the_flag_and_the_range() {
    for (flag, value, range) in [
        ("--top-p", "2", "must be in [0, 1], got 2"),
        ("--min-p", "-0.1", "must be in [0, 1], got -0.1"),
        ("--temp", "-1", "must be >= 0, got -1"),
        ("--repeat-penalty", "0", "must be > 0, got 0"),
        ("--top-k", "-5", "must be >= 0, got -5"),
        ("--temp", "NaN", "must be >= 0, got NaN"),
    ] {
        let (ok, err) = stderr_of(&["run", "-p", "hi", flag, value]);
        assert!(!ok, "{flag} {value}");
        assert!(err.contains(flag) && err.contains(range), "{err}");
    }
}

#[test]
fn top_level_help_has_one_line_per_command_and_details_stay_with_the_command() {
    let out = ledge().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    // A summary that wrapped would add a line that does not start with a command's name.
    let names: Vec<&str> = commands
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "run",
            "chat",
            "bench",
            "eval",
            "report",
            "compress",
            "serve",
            "synth",
            "convert",
            "quantize",
            "calibrate",
            "distill",
            "export-hf",
            "inspect",
            "help"
        ],
        "{help}"
    );
    assert!(!help.contains("llama-perplexity"), "{help}");
    let out = ledge().args(["eval", "--help"]).output().unwrap();
    let long = String::from_utf8(out.stdout).unwrap();
    assert!(long.contains("llama-perplexity"), "{long}");
}

#[test]
fn eval_progress_in_a_log_is_a_few_plain_lines() {
    let text = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval/botchan-excerpt.txt");
    let out = ledge()
        .args(["eval", "-m"])
        .arg(model(SMOLLM2))
        .arg("-f")
        .arg(&text)
        .args(["-c", "64", "--chunks", "4", "-t", "1"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(!err.contains('\r'), "{err:?}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" chunks ")).collect();
    assert!((2..=12).contains(&lines.len()), "{err}");
    assert!(lines[0].contains("0/4 chunks"), "{err}");
    assert!(lines.last().unwrap().contains("4/4 chunks"), "{err}");
}
