//! Structured pruning (`--prune-ffn`, `--prune-layers`, `--drop-layers`) on a tiny
//! random-weight llama: shapes and metadata, the pruned file loads and runs, the ffn_down
//! re-fit lowers the reconstruction error, renumbering, and bad arguments.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ledge::convert::export::{export_hf, ExportOptions};
use ledge::convert::prune::{self, GramMode, PruneScope, PruneSpec};
use ledge::convert::safetensors::StDtype;
use ledge::convert::{convert_hf, quantize_gguf, ConvertError, ConvertOptions, Target};
use ledge::gguf::{GgmlType, GgufBuilder, GgufFile, MetaArray, MetaValue, Value, ValueType};
use ledge::model::{Logits, Model};

use common::Rng;

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
const N_FF: u64 = 128;
const N_HEAD: u64 = 4;
const N_HEAD_KV: u64 = 2;
const N_LAYER: u64 = 4;
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
        ("vocab_size", n_vocab),
        ("rope.dimension_count", N_EMBD / N_HEAD),
    ] {
        b.set(&format!("llama.{k}"), u32v(v)).unwrap();
    }
    b.set(
        "llama.attention.head_count_kv",
        MetaValue::Array(MetaArray::new(
            ValueType::U32,
            vec![MetaValue::U32(N_HEAD_KV as u32); N_LAYER as usize],
        )),
    )
    .unwrap();
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

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ledge-prune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Plain English-like text: enough tokens for a few calibration chunks.
fn calib_text(dir: &Path) -> PathBuf {
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "while", "rain", "fell", "over", "hills", "and",
        "rivers", "ran", "to", "sea", "every", "day", "people", "walked", "home",
    ];
    let mut rng = Rng(42);
    let text: Vec<&str> = (0..3000)
        .map(|_| words[rng.below(words.len() as u64) as usize])
        .collect();
    let p = dir.join("calib.txt");
    std::fs::write(&p, text.join(" ")).unwrap();
    p
}

fn opts(t: &str, spec: PruneSpec) -> ConvertOptions {
    ConvertOptions {
        target: t.parse::<Target>().unwrap(),
        overrides: vec![],
        allow_requantize: false,
        progress: false,
        imatrix: None,
        gptq: None,
        prune: Some(spec),
        lowrank: None,
    }
}

fn spec(calib: &Path) -> PruneSpec {
    PruneSpec {
        calib_text: Some(calib.to_path_buf()),
        calib_ctx: 64,
        calib_chunks: 8,
        ..Default::default()
    }
}

fn dims(f: &GgufFile, name: &str) -> Vec<u64> {
    f.tensor_info(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .dims
        .clone()
}

/// The model loads and produces finite logits.
fn runs(path: &Path) {
    let f = GgufFile::open(path).unwrap();
    let m = Model::load(&f).unwrap();
    let mut cache = m.new_cache(32);
    let logits = m
        .forward(&mut cache, &[5, 60, 70, 80], Logits::All)
        .unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
}

fn u32s(f: &GgufFile, key: &str) -> Vec<i64> {
    match f.get(key).unwrap_or_else(|| panic!("{key} missing")) {
        Value::Array(a) => a.to_i64_vec().unwrap(),
        v => vec![v.to_i64().unwrap()],
    }
}

#[test]
fn ffn_layer_scope_shapes_metadata_and_runs() {
    let d = tmpdir("ffn-layer");
    let (src, out) = (d.join("tiny.gguf"), d.join("pruned.gguf"));
    tiny_llama(&src, false, 1);
    let calib = calib_text(&d);
    let s = PruneSpec {
        ffn_fraction: Some(0.25),
        ..spec(&calib)
    };
    quantize_gguf(&src, &out, &opts("F16", s)).unwrap();
    let f = GgufFile::open(&out).unwrap();
    for l in 0..N_LAYER {
        assert_eq!(dims(&f, &format!("blk.{l}.ffn_gate.weight")), [N_EMBD, 96]);
        assert_eq!(dims(&f, &format!("blk.{l}.ffn_up.weight")), [N_EMBD, 96]);
        assert_eq!(dims(&f, &format!("blk.{l}.ffn_down.weight")), [96, N_EMBD]);
    }
    assert_eq!(f.get_u64("llama.feed_forward_length").unwrap(), 96);
    assert!((f.get_f32("ledge.prune.ffn_fraction").unwrap() - 0.25).abs() < 1e-6);
    assert!(f.get_bool("ledge.prune.refit").unwrap());
    assert_eq!(f.get_str("ledge.prune.ffn_scope").unwrap(), "layer");
    runs(&out);
    // Without the re-fit, ffn_down is the plain column selection of the original.
    let out2 = d.join("norefit.gguf");
    let s = PruneSpec {
        ffn_fraction: Some(0.25),
        refit: false,
        ..spec(&calib)
    };
    quantize_gguf(&src, &out2, &opts("F32", s)).unwrap();
    let (f0, f2) = (
        GgufFile::open(&src).unwrap(),
        GgufFile::open(&out2).unwrap(),
    );
    assert!(!f2.get_bool("ledge.prune.refit").unwrap());
    let gate0 = f0
        .tensor("blk.0.ffn_gate.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    let gate2 = f2
        .tensor("blk.0.ffn_gate.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    let down0 = f0
        .tensor("blk.0.ffn_down.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    let down2 = f2
        .tensor("blk.0.ffn_down.weight")
        .unwrap()
        .to_f32()
        .unwrap();
    let e = N_EMBD as usize;
    // Each kept gate row is an original row; the down columns follow the same channels.
    let kept: Vec<usize> = gate2
        .chunks_exact(e)
        .map(|r| gate0.chunks_exact(e).position(|o| o == r).unwrap())
        .collect();
    assert!(kept.windows(2).all(|w| w[0] < w[1]));
    for (row0, row2) in down0
        .chunks_exact(N_FF as usize)
        .zip(down2.chunks_exact(96))
    {
        let sel: Vec<f32> = kept.iter().map(|&c| row0[c]).collect();
        assert_eq!(sel, row2);
    }
    runs(&out2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn ffn_global_scope_per_layer_lengths() {
    let d = tmpdir("ffn-global");
    let (src, out) = (d.join("tiny.gguf"), d.join("pruned.gguf"));
    tiny_llama(&src, true, 2);
    let calib = calib_text(&d);
    let s = PruneSpec {
        ffn_fraction: Some(0.5),
        scope: PruneScope::Global,
        ..spec(&calib)
    };
    quantize_gguf(&src, &out, &opts("Q8_0", s)).unwrap();
    let f = GgufFile::open(&out).unwrap();
    let ff = u32s(&f, "llama.feed_forward_length");
    let ff = if ff.len() == 1 {
        vec![ff[0]; N_LAYER as usize]
    } else {
        ff
    };
    assert_eq!(ff.len(), N_LAYER as usize);
    for (l, &n) in ff.iter().enumerate() {
        assert!(n % 32 == 0 && n > 0 && n <= N_FF as i64, "layer {l}: {n}");
        assert_eq!(
            dims(&f, &format!("blk.{l}.ffn_down.weight")),
            [n as u64, N_EMBD]
        );
    }
    // Rounding each layer to 32 moves the total by at most 16 channels a layer.
    let total: i64 = ff.iter().sum();
    let want = (N_FF * N_LAYER / 2) as i64;
    assert!(
        (total - want).abs() <= 16 * N_LAYER as i64,
        "{total} vs {want}"
    );
    assert_eq!(f.get_str("ledge.prune.ffn_scope").unwrap(), "global");
    runs(&out);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn refit_reduces_reconstruction_error() {
    let d = tmpdir("refit");
    let src = d.join("tiny.gguf");
    tiny_llama(&src, false, 3);
    let text = std::fs::read_to_string(calib_text(&d)).unwrap();
    let f = GgufFile::open(&src).unwrap();
    let cal = prune::calibrate(&f, &text, 64, 8, GramMode::Full, false).unwrap();
    assert_eq!(cal.tokens, 8 * 64);
    let nf = N_FF as usize;
    for l in 0..N_LAYER as usize {
        let g = &cal.gram[l];
        assert_eq!(g.len(), nf * nf);
        let w = f
            .tensor(&format!("blk.{l}.ffn_down.weight"))
            .unwrap()
            .to_f32()
            .unwrap();
        let diag: Vec<f64> = (0..nf).map(|i| g[i * nf + i]).collect();
        let scores = prune::channel_scores(&w, nf, &diag, cal.tokens);
        let mut order: Vec<usize> = (0..nf).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut kept = order[..64].to_vec();
        kept.sort_unstable();
        let plain: Vec<f32> = w
            .chunks_exact(nf)
            .flat_map(|r| kept.iter().map(move |&c| r[c]))
            .collect();
        let fitted = prune::refit_down(&w, nf, g, &kept, 1e-2).unwrap();
        let e0 = prune::reconstruction_error(&w, nf, g, &kept, &plain);
        let e1 = prune::reconstruction_error(&w, nf, g, &kept, &fitted);
        assert!(e1 < 0.9 * e0, "layer {l}: re-fit {e1} vs plain {e0}");
        // Keeping every channel, the re-fit (tiny ridge) reproduces W.
        let all: Vec<usize> = (0..nf).collect();
        let e_all = prune::reconstruction_error(&w, nf, g, &all, &w);
        assert!(e_all.abs() < 1e-6 * e0.max(1e-30) + 1e-9, "{e_all}");
    }
    // Similarities are cosines.
    assert!(cal
        .similarity
        .iter()
        .all(|s| (-1.0..=1.0 + 1e-9).contains(s)));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn drop_layers_renumbers_and_filters_arrays() {
    let d = tmpdir("drop");
    let (src, out) = (d.join("tiny.gguf"), d.join("dropped.gguf"));
    tiny_llama(&src, false, 4);
    let s = PruneSpec {
        drop_layers: vec![2, 1],
        ..Default::default()
    };
    quantize_gguf(&src, &out, &opts("F32", s)).unwrap();
    let (f0, f) = (GgufFile::open(&src).unwrap(), GgufFile::open(&out).unwrap());
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(u32s(&f, "ledge.prune.dropped_layers"), [1, 2]);
    assert_eq!(u32s(&f, "llama.attention.head_count_kv").len(), 2);
    assert!(f.get("ledge.prune.ffn_fraction").is_none());
    // blk.0 is the old 0, blk.1 the old 3, byte for byte; no blk.2 or blk.3 remain.
    for (new, old) in [(0, 0), (1, 3)] {
        for part in ["attn_q", "attn_norm", "ffn_down"] {
            let a = f0.tensor(&format!("blk.{old}.{part}.weight")).unwrap();
            let b = f.tensor(&format!("blk.{new}.{part}.weight")).unwrap();
            assert_eq!(a.data, b.data, "blk.{new}.{part} should be old blk.{old}");
        }
    }
    assert!(f.tensor_infos().iter().all(
        |i| !f.tensor_name(i).starts_with("blk.2.") && !f.tensor_name(i).starts_with("blk.3.")
    ));
    runs(&out);
    // --prune-layers picks by similarity: one more block goes.
    let out2 = d.join("pruned-layers.gguf");
    let calib = calib_text(&d);
    let s = PruneSpec {
        prune_layers: Some(1),
        drop_layers: vec![0],
        ..spec(&calib)
    };
    quantize_gguf(&src, &out2, &opts("F32", s)).unwrap();
    let f2 = GgufFile::open(&out2).unwrap();
    assert_eq!(f2.get_u64("llama.block_count").unwrap(), 2);
    let dropped = u32s(&f2, "ledge.prune.dropped_layers");
    assert_eq!(dropped.len(), 2);
    assert_eq!(dropped[0], 0);
    runs(&out2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn from_an_hf_directory() {
    let d = tmpdir("hf");
    let src = d.join("tiny.gguf");
    tiny_llama(&src, false, 5);
    let hf = d.join("hf");
    let f = GgufFile::open(&src).unwrap();
    export_hf(
        &f,
        &hf,
        &ExportOptions {
            dtype: StDtype::F32,
            shard_bytes: None,
            progress: false,
        },
    )
    .unwrap();
    let calib = calib_text(&d);
    let out = d.join("pruned.gguf");
    let s = PruneSpec {
        ffn_fraction: Some(0.25),
        drop_layers: vec![3],
        ..spec(&calib)
    };
    convert_hf(&hf, &out, &opts("Q8_0", s)).unwrap();
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 3);
    assert_eq!(g.get_u64("llama.feed_forward_length").unwrap(), 96);
    assert_eq!(dims(&g, "blk.2.ffn_up.weight"), [N_EMBD, 96]);
    runs(&out);
    // The temporary F16 conversion is gone.
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_arguments_fail_without_output() {
    let d = tmpdir("bad");
    let src = d.join("tiny.gguf");
    tiny_llama(&src, false, 6);
    let calib = calib_text(&d);
    let out = d.join("out.gguf");
    let cases: Vec<(PruneSpec, &str)> = vec![
        (
            PruneSpec {
                ffn_fraction: Some(1.5),
                ..spec(&calib)
            },
            "between 0 and 1",
        ),
        (
            PruneSpec {
                ffn_fraction: Some(0.0),
                ..spec(&calib)
            },
            "between 0 and 1",
        ),
        (
            PruneSpec {
                ffn_fraction: Some(0.3),
                ..Default::default()
            },
            "--calib",
        ),
        (
            PruneSpec {
                drop_layers: vec![4],
                ..Default::default()
            },
            "has 4 layers",
        ),
        (
            PruneSpec {
                drop_layers: vec![0, 1],
                prune_layers: Some(2),
                ..spec(&calib)
            },
            "leave none",
        ),
    ];
    for (s, want) in cases {
        let e = quantize_gguf(&src, &out, &opts("F16", s.clone())).unwrap_err();
        assert!(
            matches!(e, ConvertError::Usage(_)) && e.to_string().contains(want),
            "{s:?}: {e}"
        );
        assert!(!out.exists());
    }
    // The command line says the same, and writes nothing.
    let bin = env!("CARGO_BIN_EXE_ledge");
    for (args, want) in [
        (vec!["--prune-ffn", "0.3"], "--calib"),
        (
            vec!["--prune-ffn", "2", "--calib", "x.txt"],
            "between 0 and 1",
        ),
        (vec!["--drop-layers", "9"], "has 4 layers"),
        (
            vec!["--prune-scope", "global"],
            "only apply with --prune-ffn",
        ),
    ] {
        let o = Command::new(bin)
            .arg("quantize")
            .arg(&src)
            .arg(&out)
            .arg("F16")
            .args(&args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists());
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A copy of `src` whose attn_output columns of the given KV groups (per layer) are zero: the
/// unpruned model with those heads masked.
fn mask_groups(src: &Path, out: &Path, removed: &[Vec<usize>]) {
    let f = GgufFile::open(src).unwrap();
    let mut b = GgufBuilder::with_metadata_of(&f).unwrap();
    let hd = (N_EMBD / N_HEAD) as usize;
    let group = (N_HEAD / N_HEAD_KV) as usize * hd;
    let mut data = Vec::new();
    for info in f.tensor_infos() {
        let name = f.tensor_name(info).to_string();
        b.add_tensor(&name, GgmlType::F32, &info.dims).unwrap();
        let mut v = f.tensor(&name).unwrap().to_f32().unwrap();
        if let Some(l) = name
            .strip_suffix(".attn_output.weight")
            .and_then(|p| p.strip_prefix("blk."))
        {
            let l: usize = l.parse().unwrap();
            let n_cols = info.dims[0] as usize;
            for row in v.chunks_exact_mut(n_cols) {
                for &g in &removed[l] {
                    row[g * group..(g + 1) * group].fill(0.0);
                }
            }
        }
        data.push(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    }
    let mut s = b.create(out).unwrap();
    for d in &data {
        s.write_tensor(d).unwrap();
    }
    s.finish().unwrap();
}

fn logits_of(path: &Path, tokens: &[u32]) -> Vec<f32> {
    let f = GgufFile::open(path).unwrap();
    let m = Model::load(&f).unwrap();
    let mut cache = m.new_cache(64);
    m.forward(&mut cache, tokens, Logits::All).unwrap()
}

#[test]
fn heads_pruned_file_equals_masked_model() {
    let d = tmpdir("heads");
    let (src, out) = (d.join("tiny.gguf"), d.join("pruned.gguf"));
    tiny_llama(&src, false, 7);
    let calib = calib_text(&d);
    let s = PruneSpec {
        prune_heads: Some(1),
        refit: false,
        ..spec(&calib)
    };
    quantize_gguf(&src, &out, &opts("F32", s)).unwrap();
    let (f0, f) = (GgufFile::open(&src).unwrap(), GgufFile::open(&out).unwrap());
    let hd = N_EMBD / N_HEAD;
    let (nh, nkv) = (N_HEAD - N_HEAD / N_HEAD_KV, N_HEAD_KV - 1);
    assert_eq!(u32s(&f, "llama.attention.head_count"), [nh as i64]);
    assert_eq!(u32s(&f, "llama.attention.head_count_kv"), [nkv as i64]);
    assert_eq!(f.get_u64("llama.attention.key_length").unwrap(), hd);
    assert_eq!(f.get_u64("llama.attention.value_length").unwrap(), hd);
    assert_eq!(f.get_u64("llama.embedding_length").unwrap(), N_EMBD);
    assert_eq!(f.get_u64("ledge.prune.kv_groups_removed").unwrap(), 1);
    assert!(!f.get_bool("ledge.prune.attn_refit").unwrap());
    assert!(f.get("ledge.prune.ffn_fraction").is_none());
    let removed = u32s(&f, "ledge.prune.removed_kv_heads");
    assert_eq!(removed.len(), N_LAYER as usize);
    let removed: Vec<Vec<usize>> = removed.iter().map(|&g| vec![g as usize]).collect();
    for l in 0..N_LAYER {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        assert_eq!(dims(&f, &n("attn_q")), [N_EMBD, nh * hd]);
        assert_eq!(dims(&f, &n("attn_k")), [N_EMBD, nkv * hd]);
        assert_eq!(dims(&f, &n("attn_v")), [N_EMBD, nkv * hd]);
        assert_eq!(dims(&f, &n("attn_output")), [nh * hd, N_EMBD]);
        assert_eq!(dims(&f, &n("ffn_down")), [N_FF, N_EMBD]);
        // The kept K rows are the original rows of the kept KV head, in order.
        let k0 = f0.tensor(&n("attn_k")).unwrap().to_f32().unwrap();
        let k1 = f.tensor(&n("attn_k")).unwrap().to_f32().unwrap();
        let kept = 1 - removed[l as usize][0];
        let w = (N_EMBD * hd) as usize;
        assert_eq!(k1, k0[kept * w..(kept + 1) * w]);
    }
    // The pruned model computes what the unpruned one does with those heads masked.
    let masked = d.join("masked.gguf");
    mask_groups(&src, &masked, &removed);
    let tokens = [5u32, 60, 70, 80, 90, 100, 110, 7, 8, 200, 33];
    let (a, b) = (logits_of(&out, &tokens), logits_of(&masked, &tokens));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff <= 1e-4 * scale, "max |Δlogit| {diff} (scale {scale})");
    // …and not what the unpruned one does (the test can fail).
    let full = logits_of(&src, &tokens);
    let diff_full = full
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff_full > 100.0 * diff.max(1e-6), "{diff_full} vs {diff}");
    // The removed group is the lowest-scoring one: masking the other group instead moves the
    // logits further from the unpruned model's on the calibration-like tokens.
    let other: Vec<Vec<usize>> = removed.iter().map(|r| vec![1 - r[0]]).collect();
    let masked2 = d.join("masked-other.gguf");
    mask_groups(&src, &masked2, &other);
    let c = logits_of(&masked2, &tokens);
    let err = |x: &[f32]| -> f64 {
        x.iter()
            .zip(&full)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum()
    };
    assert!(err(&b) < err(&c), "{} vs {}", err(&b), err(&c));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn heads_refit_combined_with_ffn_and_layers() {
    let d = tmpdir("heads-refit");
    let (src, out) = (d.join("tiny.gguf"), d.join("pruned.gguf"));
    tiny_llama(&src, true, 8);
    let calib = calib_text(&d);
    let s = PruneSpec {
        prune_heads: Some(1),
        ffn_fraction: Some(0.25),
        drop_layers: vec![1],
        ..spec(&calib)
    };
    quantize_gguf(&src, &out, &opts("Q8_0", s)).unwrap();
    let f = GgufFile::open(&out).unwrap();
    let hd = N_EMBD / N_HEAD;
    assert_eq!(f.get_u64("llama.block_count").unwrap(), N_LAYER - 1);
    assert_eq!(u32s(&f, "llama.attention.head_count"), [2]);
    assert_eq!(u32s(&f, "llama.attention.head_count_kv"), [1]);
    assert!(f.get_bool("ledge.prune.attn_refit").unwrap());
    assert_eq!(
        u32s(&f, "ledge.prune.removed_kv_heads").len(),
        N_LAYER as usize - 1
    );
    for l in 0..N_LAYER - 1 {
        assert_eq!(
            dims(&f, &format!("blk.{l}.attn_output.weight")),
            [2 * hd, N_EMBD]
        );
        assert_eq!(dims(&f, &format!("blk.{l}.ffn_up.weight")), [N_EMBD, 96]);
    }
    runs(&out);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn heads_bad_arguments_fail_without_output() {
    let d = tmpdir("heads-bad");
    let src = d.join("tiny.gguf");
    tiny_llama(&src, false, 9);
    let calib = calib_text(&d);
    let out = d.join("out.gguf");
    for (s, want) in [
        (
            PruneSpec {
                prune_heads: Some(2),
                ..spec(&calib)
            },
            "would leave none",
        ),
        (
            PruneSpec {
                prune_heads: Some(0),
                ..spec(&calib)
            },
            "removes nothing",
        ),
        (
            PruneSpec {
                prune_heads: Some(1),
                ..Default::default()
            },
            "--calib",
        ),
    ] {
        let e = quantize_gguf(&src, &out, &opts("F16", s.clone())).unwrap_err();
        assert!(
            matches!(e, ConvertError::Usage(_)) && e.to_string().contains(want),
            "{s:?}: {e}"
        );
        assert!(!out.exists());
    }
    // A model with one KV head per block has no group to remove.
    let mqa = d.join("mqa.gguf");
    let f = GgufFile::open(&src).unwrap();
    let mut b = GgufBuilder::with_metadata_of(&f).unwrap();
    b.set("llama.attention.head_count_kv", MetaValue::U32(1))
        .unwrap();
    let hd = N_EMBD / N_HEAD;
    let mut data = Vec::new();
    for info in f.tensor_infos() {
        let name = f.tensor_name(info).to_string();
        let mut dims = info.dims.clone();
        let mut bytes = f.tensor(&name).unwrap().data.to_vec();
        if name.ends_with(".attn_k.weight") || name.ends_with(".attn_v.weight") {
            dims[1] = hd;
            bytes.truncate((N_EMBD * hd * 4) as usize);
        }
        b.add_tensor(&name, GgmlType::F32, &dims).unwrap();
        data.push(bytes);
    }
    let mut w = b.create(&mqa).unwrap();
    for x in &data {
        w.write_tensor(x).unwrap();
    }
    w.finish().unwrap();
    runs(&mqa);
    let bin = env!("CARGO_BIN_EXE_ledge");
    let o = Command::new(bin)
        .arg("quantize")
        .arg(&mqa)
        .arg(&out)
        .arg("F16")
        .args(["--prune-heads", "1", "--calib"])
        .arg(&calib)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no GQA groups"), "{err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&d);
}
