//! The converter: GGUF → HF export → GGUF round trips (tiny random models and SmolLM2),
//! equality with ledge's own quantization of the same weights, and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ledge::convert::export::{export_hf, ExportOptions};
use ledge::convert::safetensors::StDtype;
use ledge::convert::{convert_hf, quantize_gguf, ConvertError, ConvertOptions, Target};
use ledge::gguf::{GgmlType, GgufBuilder, GgufFile, MetaArray, MetaValue, ValueType};
use ledge::model::{Logits, Model};
use ledge::tokenizer::Tokenizer;

use common::Rng;

fn opts(t: &str) -> ConvertOptions {
    ConvertOptions {
        target: t.parse::<Target>().unwrap(),
        overrides: vec![],
        allow_requantize: false,
        progress: false,
        imatrix: None,
        gptq: None,
        prune: None,
        lowrank: None,
    }
}

/// GPT-2's byte alphabet (printable Latin-1 stands for itself, the rest from U+0100 on).
fn byte_chars() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

const N_EMBD: u64 = 64;
const N_FF: u64 = 96;
const N_HEAD: u64 = 4;
const N_HEAD_KV: u64 = 2;
const N_LAYER: u64 = 2;
const TEMPLATE: &str =
    "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}";

/// A tiny llama with random F32 weights and a byte-level BPE vocabulary.
fn tiny_llama(path: &Path, tied: bool, seed: u64) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    tokens.extend(byte_chars().into_iter().map(String::from));
    let merges = ["Ġ t", "h e", "Ġt he", "e r", "Ġ a"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let n_vocab = tokens.len() as u64;
    let mut types = vec![3; 3];
    types.resize(tokens.len(), 1);

    let mut b = GgufBuilder::new();
    let u32v = |x: u64| MetaValue::U32(x as u32);
    b.set("general.architecture", "llama").unwrap();
    b.set("general.name", "tiny").unwrap();
    for (k, v) in [
        ("block_count", N_LAYER),
        ("context_length", 256),
        ("embedding_length", N_EMBD),
        ("feed_forward_length", N_FF),
        ("attention.head_count", N_HEAD),
        ("attention.head_count_kv", N_HEAD_KV),
        ("vocab_size", n_vocab),
        ("rope.dimension_count", N_EMBD / N_HEAD),
    ] {
        b.set(&format!("llama.{k}"), u32v(v)).unwrap();
    }
    b.set("llama.rope.freq_base", MetaValue::F32(10000.0))
        .unwrap();
    b.set(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(1e-5),
    )
    .unwrap();
    b.set("tokenizer.ggml.model", "gpt2").unwrap();
    b.set("tokenizer.ggml.pre", "smollm").unwrap();
    b.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::strings(tokens)),
    )
    .unwrap();
    b.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::new(
            ValueType::I32,
            types.into_iter().map(MetaValue::I32).collect(),
        )),
    )
    .unwrap();
    b.set(
        "tokenizer.ggml.merges",
        MetaValue::Array(MetaArray::strings(merges)),
    )
    .unwrap();
    b.set("tokenizer.ggml.bos_token_id", u32v(1)).unwrap();
    b.set("tokenizer.ggml.eos_token_id", u32v(2)).unwrap();
    b.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(false))
        .unwrap();
    b.set("tokenizer.chat_template", TEMPLATE).unwrap();

    let hd = N_EMBD / N_HEAD;
    let mut specs: Vec<(String, Vec<u64>)> =
        vec![("token_embd.weight".into(), vec![N_EMBD, n_vocab])];
    for il in 0..N_LAYER {
        let n = |s: &str| format!("blk.{il}.{s}.weight");
        specs.push((n("attn_norm"), vec![N_EMBD]));
        specs.push((n("attn_q"), vec![N_EMBD, N_HEAD * hd]));
        specs.push((n("attn_k"), vec![N_EMBD, N_HEAD_KV * hd]));
        specs.push((n("attn_v"), vec![N_EMBD, N_HEAD_KV * hd]));
        specs.push((n("attn_output"), vec![N_HEAD * hd, N_EMBD]));
        specs.push((n("ffn_norm"), vec![N_EMBD]));
        specs.push((n("ffn_gate"), vec![N_EMBD, N_FF]));
        specs.push((n("ffn_up"), vec![N_EMBD, N_FF]));
        specs.push((n("ffn_down"), vec![N_FF, N_EMBD]));
    }
    specs.push(("output_norm.weight".into(), vec![N_EMBD]));
    if !tied {
        specs.push(("output.weight".into(), vec![N_EMBD, n_vocab]));
    }
    let mut rng = Rng(seed);
    let mut data = Vec::new();
    for (name, dims) in &specs {
        b.add_tensor(name, GgmlType::F32, dims).unwrap();
        let n: u64 = dims.iter().product();
        let norm = dims.len() == 1;
        let vals: Vec<u8> = (0..n)
            .flat_map(|_| {
                let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let v: f32 = if norm { 1.0 + 0.2 * u } else { 0.4 * u };
                // Exactly representable in BF16, so a BF16 export loses nothing.
                f32::from_bits(v.to_bits() & 0xFFFF_0000).to_le_bytes()
            })
            .collect();
        data.push(vals);
    }
    let mut s = b.create(path).unwrap();
    for d in &data {
        s.write_tensor(d).unwrap();
    }
    s.finish().unwrap();
}

fn export(src: &Path, dir: &Path, dtype: StDtype, shard_bytes: Option<u64>) {
    let f = GgufFile::open(src).unwrap();
    export_hf(
        &f,
        dir,
        &ExportOptions {
            dtype,
            shard_bytes,
            progress: false,
        },
    )
    .unwrap();
}

/// Every tensor of `a` is in `b` with the same type, shape and bytes.
fn assert_same_tensors(a: &Path, b: &Path) {
    let (fa, fb) = (GgufFile::open(a).unwrap(), GgufFile::open(b).unwrap());
    assert_eq!(fa.tensor_count(), fb.tensor_count());
    for info in fa.tensor_infos() {
        let name = fa.tensor_name(info);
        let other = fb
            .tensor_info(name)
            .unwrap_or_else(|| panic!("{name} missing from {}", b.display()));
        assert_eq!((info.ty, &info.dims), (other.ty, &other.dims), "{name}");
        assert!(
            fa.tensor_data(info) == fb.tensor_data(other),
            "{name}: bytes differ"
        );
    }
}

/// Greedy continuation of `prompt` (n tokens), by forward passes.
fn greedy(path: &Path, prompt: &str, n: usize) -> Vec<u32> {
    let f = GgufFile::open(path).unwrap();
    let model = Model::load(&f).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let mut cache = model.new_cache(256);
    let mut input = tok.encode(prompt, true, true);
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = model.forward(&mut cache, &input, Logits::Last).unwrap();
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        out.push(next);
        input = vec![next];
    }
    out
}

fn tokenizer_keys(path: &Path) -> Vec<(String, String)> {
    let f = GgufFile::open(path).unwrap();
    let mut v: Vec<(String, String)> = f
        .metadata()
        .filter(|(k, _)| k.starts_with("tokenizer.") || k.starts_with("llama."))
        .map(|(k, v)| (k.to_string(), format!("{:?}", v.to_owned_value())))
        .collect();
    v.sort();
    v
}

fn no_output(out: &Path) {
    assert!(!out.exists(), "{} was left behind", out.display());
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    assert!(
        !PathBuf::from(&tmp).exists(),
        "{} was left behind",
        PathBuf::from(tmp).display()
    );
}

#[test]
fn tiny_f32_round_trip_is_exact_and_sharded_checkpoints_read() {
    let dir = common::scratch("convert-tiny-roundtrip");
    let src = dir.join("tiny.gguf");
    tiny_llama(&src, false, 1);
    let hf = dir.join("hf");
    // Shards of ~40 KB: several files and an index.
    export(&src, &hf, StDtype::F32, Some(40_000));
    assert!(hf.join("model.safetensors.index.json").exists());
    let shards = std::fs::read_dir(&hf)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().ends_with(".safetensors")
        })
        .count();
    assert!(shards > 2, "{shards} shards");
    let out = dir.join("back.gguf");
    convert_hf(&hf, &out, &opts("f32")).unwrap();
    assert_same_tensors(&src, &out);

    // Hyperparameters and the whole tokenizer survive; `pre` is recognised by its regexes.
    let (a, b) = (tokenizer_keys(&src), tokenizer_keys(&out));
    for (k, v) in &a {
        let got = b.iter().find(|(kb, _)| kb == k).map(|(_, v)| v);
        assert_eq!(got, Some(v), "{k}");
    }
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(f.get_str("tokenizer.chat_template").unwrap(), TEMPLATE);

    // The same weights and vocabulary give the same tokens.
    let prompt = "<|im_start|>the other";
    assert_eq!(greedy(&src, prompt, 8), greedy(&out, prompt, 8));
}

#[test]
fn tiny_tied_model_converts_like_quantize_of_the_original() {
    let dir = common::scratch("convert-tiny-tied");
    let src = dir.join("tiny.gguf");
    tiny_llama(&src, true, 2);
    let hf = dir.join("hf");
    export(&src, &hf, StDtype::BF16, None);
    assert!(hf.join("model.safetensors").exists());
    // The weights are BF16 values, so the export is exact: converting it must give what
    // quantizing the original gives.
    for t in ["bf16", "q8_0", "q4_k_m", "q5_0"] {
        let a = dir.join(format!("conv-{t}.gguf"));
        let b = dir.join(format!("quant-{t}.gguf"));
        convert_hf(&hf, &a, &opts(t)).unwrap();
        quantize_gguf(&src, &b, &opts(t)).unwrap();
        assert_same_tensors(&b, &a);
    }
    let f = GgufFile::open(dir.join("conv-q8_0.gguf")).unwrap();
    assert!(f.tensor_info("output.weight").is_none(), "tied: no output");
    assert_eq!(f.get_u64("general.file_type").unwrap(), 7);
}

#[test]
fn smollm2_export_converts_to_the_dequantized_original() {
    let orig = common::model(common::SMOLLM2);
    let dir = common::scratch("convert-smollm2");
    let hf = dir.join("hf-f16");
    export(&orig, &hf, StDtype::F16, None);
    // The reference: ledge's own F16 copy of the Q4_1 original, and its Q8_0.
    let deq = dir.join("orig-f16.gguf");
    let mut o = opts("f16");
    o.allow_requantize = true;
    quantize_gguf(&orig, &deq, &o).unwrap();
    let deq_q8 = dir.join("orig-q8_0.gguf");
    quantize_gguf(&deq, &deq_q8, &opts("q8_0")).unwrap();

    let f16 = dir.join("conv-f16.gguf");
    let q8 = dir.join("conv-q8_0.gguf");
    convert_hf(&hf, &f16, &opts("f16")).unwrap();
    convert_hf(&hf, &q8, &opts("q8_0")).unwrap();
    assert_same_tensors(&deq, &f16);
    assert_same_tensors(&deq_q8, &q8);

    let f = GgufFile::open(&f16).unwrap();
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    let (a, b) = (tokenizer_keys(&orig), tokenizer_keys(&f16));
    for k in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
    ] {
        let get = |v: &[(String, String)]| v.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        assert_eq!(get(&a), get(&b), "{k}");
    }
    let prompt = "The capital of France is";
    let want = greedy(&deq, prompt, 16);
    assert_eq!(greedy(&f16, prompt, 16), want);
    assert_eq!(greedy(&q8, prompt, 16), greedy(&deq_q8, prompt, 16));
}

// ---- bad input ----

fn tiny_hf(name: &str) -> (PathBuf, PathBuf) {
    let dir = common::scratch(name);
    let src = dir.join("tiny.gguf");
    tiny_llama(&src, false, 3);
    let hf = dir.join("hf");
    export(&src, &hf, StDtype::F16, None);
    (dir, hf)
}

fn edit_config(hf: &Path, key: &str, value: serde_json::Value) {
    let p = hf.join("config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    j[key] = value;
    std::fs::write(&p, j.to_string()).unwrap();
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let (dir, hf) = tiny_hf("convert-bad-truncated");
    let st = hf.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(len - 100).unwrap();
    let out = dir.join("out.gguf");
    let e = convert_hf(&hf, &out, &opts("q8_0")).unwrap_err();
    assert!(matches!(e, ConvertError::Safetensors { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    no_output(&out);
    // A header cut short too.
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(20).unwrap();
    let e = convert_hf(&hf, &out, &opts("q8_0")).unwrap_err();
    assert!(matches!(e, ConvertError::Safetensors { .. }), "{e}");
    no_output(&out);
}

#[test]
fn unknown_architecture_is_a_clear_error() {
    let (dir, hf) = tiny_hf("convert-bad-arch");
    edit_config(
        &hf,
        "architectures",
        serde_json::json!(["FalconForCausalLM"]),
    );
    let out = dir.join("out.gguf");
    let e = convert_hf(&hf, &out, &opts("f16")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("FalconForCausalLM") && msg.contains("config.json"),
        "{msg}"
    );
    no_output(&out);
}

#[test]
fn mismatched_shapes_are_a_clear_error() {
    let (dir, hf) = tiny_hf("convert-bad-shape");
    edit_config(&hf, "intermediate_size", serde_json::json!(128));
    let out = dir.join("out.gguf");
    let e = convert_hf(&hf, &out, &opts("f16")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConvertError::BadShape { .. }), "{msg}");
    assert!(msg.contains("mlp.") && msg.contains("128"), "{msg}");
    no_output(&out);
    // A tensor the config does not account for.
    edit_config(&hf, "intermediate_size", serde_json::json!(N_FF));
    edit_config(&hf, "num_hidden_layers", serde_json::json!(1));
    let e = convert_hf(&hf, &out, &opts("f16")).unwrap_err();
    assert!(e.to_string().contains("model.layers.1."), "{e}");
    no_output(&out);
}

#[test]
fn requantizing_needs_the_flag() {
    let dir = common::scratch("convert-requant");
    let src = dir.join("tiny.gguf");
    tiny_llama(&src, false, 4);
    let q8 = dir.join("q8.gguf");
    quantize_gguf(&src, &q8, &opts("q8_0")).unwrap();
    let out = dir.join("q4.gguf");
    let e = quantize_gguf(&q8, &out, &opts("q4_0")).unwrap_err();
    assert!(e.to_string().contains("--allow-requantize"), "{e}");
    no_output(&out);
    let mut o = opts("q4_0");
    o.allow_requantize = true;
    quantize_gguf(&q8, &out, &o).unwrap();
    // Tensors already in the target type are copied, not re-rounded: Q8_0 → Q8_0.
    let again = dir.join("q8-again.gguf");
    quantize_gguf(&q8, &again, &opts("q8_0")).unwrap();
    assert_same_tensors(&q8, &again);
}

#[test]
fn write_failures_leave_no_file() {
    let (dir, hf) = tiny_hf("convert-bad-write");
    // A folder that does not exist.
    let out = dir.join("no-such-dir").join("out.gguf");
    let e = convert_hf(&hf, &out, &opts("f32")).unwrap_err();
    assert!(e.to_string().contains("no-such-dir"), "{e}");
    no_output(&out);
    // A full disk, simulated by a file-size limit (writes past it fail with EFBIG once
    // SIGXFSZ is ignored): the error is reported and the partial file removed.
    let out = dir.join("full.gguf");
    let st = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 200; exec \"$0\" convert \"$1\" -o \"$2\" --type f32")
        .arg(env!("CARGO_BIN_EXE_ledge"))
        .arg(&hf)
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success(), "{stderr}");
    assert!(
        stderr.contains("error:") && stderr.contains("full.gguf.tmp"),
        "{stderr}"
    );
    no_output(&out);
}

#[test]
fn cli_convert_quantize_and_export() {
    let dir = common::scratch("convert-cli");
    let src = dir.join("tiny.gguf");
    tiny_llama(&src, false, 5);
    let bin = env!("CARGO_BIN_EXE_ledge");
    let run = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(bin).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let hf = dir.join("hf");
    let (ok, log) = run(&[
        "export-hf".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        hf.as_os_str(),
        "--dtype".as_ref(),
        "f32".as_ref(),
    ]);
    assert!(ok, "{log}");
    let out = dir.join("mix.gguf");
    let (ok, log) = run(&[
        "convert".as_ref(),
        hf.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--type".as_ref(),
        "q4_k_m".as_ref(),
        "--tensor-type".as_ref(),
        "ffn_up=q8_0".as_ref(),
    ]);
    assert!(ok, "{log}");
    // Rows of 64 cannot hold 256-blocks: the fallback is reported.
    assert!(log.contains("fallback") && log.contains("Q5_0"), "{log}");
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(
        f.tensor_info("blk.0.ffn_up.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    assert_eq!(
        f.tensor_info("blk.1.ffn_gate.weight").unwrap().ty,
        GgmlType::Q5_0
    );
    assert_eq!(f.get_u64("general.file_type").unwrap(), 15);
    let (ok, log) = run(&[
        "quantize".as_ref(),
        src.as_os_str(),
        dir.join("x.gguf").as_os_str(),
        "Q9_9".as_ref(),
    ]);
    assert!(
        !ok && log.contains("unknown type") && log.contains("Q4_K_M"),
        "{log}"
    );
    // Exporting over a non-empty folder is refused.
    let (ok, log) = run(&[
        "export-hf".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        hf.as_os_str(),
    ]);
    assert!(!ok && log.contains("not empty"), "{log}");
}

// ---- calibration ----

#[test]
fn calibration_statistics_round_trip_and_weight_quantization() {
    use ledge::convert::imatrix::{calibrate, Imatrix};
    let dir = common::scratch("convert-calibrate");
    let src = dir.join("tiny.gguf");
    tiny_llama(&src, false, 6);
    let f = GgufFile::open(&src).unwrap();
    let text = "the other hear the rather there ".repeat(40);
    let im = calibrate(&f, &text, 32, Some(3), false).unwrap();
    assert_eq!(im.chunks, 3);
    // Every matrix has statistics of its input width, from 3 chunks × 32 positions.
    for (name, width) in [
        ("blk.0.attn_q.weight", N_EMBD),
        ("blk.1.attn_output.weight", N_EMBD),
        ("blk.0.ffn_up.weight", N_EMBD),
        ("blk.1.ffn_down.weight", N_FF),
        ("output.weight", N_EMBD),
    ] {
        let e = &im.entries[name];
        assert_eq!(
            (e.sum2.len() as u64, e.counts.as_slice()),
            (width, &[96u64][..]),
            "{name}"
        );
        assert!(e.sum2.iter().all(|&v| v > 0.0), "{name}");
    }
    // attn_q/k/v see the same input.
    assert_eq!(
        im.entries["blk.0.attn_q.weight"].sum2,
        im.entries["blk.0.attn_v.weight"].sum2
    );
    let path = dir.join("tiny.imatrix");
    im.save(&path).unwrap();
    let back = Imatrix::load(&path).unwrap();
    assert_eq!(back.entries.len(), im.entries.len());
    let (a, b) = (
        im.importance("blk.1.ffn_down.weight").unwrap(),
        back.importance("blk.1.ffn_down.weight").unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} vs {y}");
    }

    // With the imatrix, Q4_0 tensors differ from plain quantization and are closer, in the
    // importance-weighted sense, to the original weights.
    let plain = dir.join("q4_0.gguf");
    let weighted = dir.join("q4_0-imatrix.gguf");
    quantize_gguf(&src, &plain, &opts("q4_0")).unwrap();
    let mut o = opts("q4_0");
    o.imatrix = Some(std::sync::Arc::new(back.clone()));
    let s = quantize_gguf(&src, &weighted, &o).unwrap();
    // Every layer matrix and the output (Q6_K/Q8_0, weighted too since every type has a
    // weighted quantizer); token_embd has no statistics.
    assert_eq!(s.weighted, (N_LAYER * 7 + 1) as usize, "{:?}", s.unweighted);
    let (fp, fw) = (
        GgufFile::open(&plain).unwrap(),
        GgufFile::open(&weighted).unwrap(),
    );
    let name = "blk.1.ffn_down.weight";
    let orig = f.tensor(name).unwrap().to_f32().unwrap();
    let imp = back.importance(name).unwrap();
    let err = |g: &GgufFile| -> f64 {
        let v = g.tensor(name).unwrap().to_f32().unwrap();
        v.iter()
            .zip(&orig)
            .enumerate()
            .map(|(i, (a, b))| imp[i % imp.len()] as f64 * ((a - b) as f64).powi(2))
            .sum()
    };
    let (ep, ew) = (err(&fp), err(&fw));
    assert!(ew < 0.95 * ep, "weighted {ew} vs plain {ep}");
    // The weighted file still runs.
    assert_eq!(greedy(&weighted, "the", 4).len(), 4);
}
