//! The two real models (fetched by scripts/fetch-models.sh): open, inspect, check against the
//! gguf-rs-lib oracle, and re-write byte for byte.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use ledge::gguf::{GgufBuilder, GgufFile};

fn type_counts(f: &GgufFile) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in f.tensor_infos() {
        *m.entry(t.ty.name().to_string()).or_default() += 1;
    }
    m
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn smollm2_tensors_and_types() {
    let f = GgufFile::open(model(SMOLLM2)).unwrap();
    assert_eq!(f.tensor_count(), 272);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(
        type_counts(&f),
        counts(&[("F32", 61), ("Q4_1", 210), ("Q8_0", 1)])
    );
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.shape, [576, 49152]);
    assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(f.get_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
}

#[test]
fn gemma3_tensors_and_types() {
    let f = GgufFile::open(model(GEMMA3)).unwrap();
    assert_eq!(f.tensor_count(), 236);
    assert_eq!(f.architecture().unwrap(), "gemma3");
    assert_eq!(
        type_counts(&f),
        counts(&[
            ("F32", 109),
            ("Q4_K", 27),
            ("Q5_0", 81),
            ("Q6_K", 9),
            ("Q8_0", 10)
        ])
    );
    assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap().len(), 262144);
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "llama");
    assert_eq!(f.get_u64("gemma3.attention.sliding_window").unwrap(), 512);
}

#[test]
fn inspect_command_on_both_models() {
    for (name, n, types) in [
        (SMOLLM2, 272, &["Q4_1", "Q8_0", "F32"][..]),
        (GEMMA3, 236, &["Q4_K", "Q6_K", "Q5_0", "Q8_0"][..]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ledge"))
            .arg("inspect")
            .arg(model(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(&format!("tensors ({n}):")), "{text}");
        assert!(text.contains(&format!("total: {n} tensors")), "{text}");
        for t in types {
            assert!(text.contains(t), "{t} missing");
        }
        // Long arrays are abbreviated, not dumped.
        assert!(text.len() < 64 * 1024, "{} bytes of output", text.len());

        let out = Command::new(env!("CARGO_BIN_EXE_ledge"))
            .args(["inspect", "--json"])
            .arg(model(name))
            .output()
            .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["tensor_count"], n);
        assert_eq!(j["tensors"].as_array().unwrap().len(), n);
        assert!(j["metadata"]["tokenizer.ggml.tokens"]["value"]["len"].as_u64() > Some(40000));
    }
}

#[test]
fn inspect_command_errors_cleanly() {
    let dir = scratch("inspect_err");
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"not a model at all").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ledge"))
        .arg("inspect")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GGUF file"), "{err}");
    // A truncated real model: the error names the tensor past the end.
    let data = std::fs::read(model(SMOLLM2)).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &data[..data.len() - 1000]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ledge"))
        .arg("inspect")
        .arg(&cut)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn real_models_match_the_gguf_rs_lib_oracle() {
    use gguf_rs_lib::format::metadata::MetadataValue as OV;
    for name in [SMOLLM2, GEMMA3] {
        let path = model(name);
        let ours = GgufFile::open(&path).unwrap();
        let theirs = gguf_rs_lib::reader::file_reader::open_gguf_file(&path).unwrap();
        assert_eq!(ours.metadata_len(), theirs.metadata().len(), "{name}");
        for (k, v) in ours.metadata() {
            let t = theirs.metadata().get(k).unwrap();
            match (v.as_array(), t) {
                (Some(a), OV::Array(b)) => {
                    assert_eq!(a.len(), b.values.len(), "{k}");
                    for (x, y) in a.iter().zip(&b.values) {
                        assert_eq!(x.to_string(), y.to_string_representation_for_test(), "{k}");
                    }
                }
                _ => assert_eq!(v.to_string(), t.to_string_representation_for_test(), "{k}"),
            }
        }
        for (a, b) in ours.tensor_infos().iter().zip(theirs.tensor_infos()) {
            assert_eq!(ours.tensor_name(a), b.name());
            assert_eq!(a.dims, b.shape().dims());
            assert_eq!(a.ty.id(), b.tensor_type() as u32);
            assert_eq!(a.data.start, ours.data_offset() + b.data_offset() as usize);
        }
    }
}

/// Formats gguf-rs-lib's value the way ours displays, for comparison.
trait OracleDisplay {
    fn to_string_representation_for_test(&self) -> String;
}

impl OracleDisplay for gguf_rs_lib::format::metadata::MetadataValue {
    fn to_string_representation_for_test(&self) -> String {
        use gguf_rs_lib::format::metadata::MetadataValue as OV;
        match self {
            OV::U8(v) => v.to_string(),
            OV::I8(v) => v.to_string(),
            OV::U16(v) => v.to_string(),
            OV::I16(v) => v.to_string(),
            OV::U32(v) => v.to_string(),
            OV::I32(v) => v.to_string(),
            OV::F32(v) => v.to_string(),
            OV::Bool(v) => v.to_string(),
            OV::String(v) => format!("{v:?}"),
            OV::U64(v) => v.to_string(),
            OV::I64(v) => v.to_string(),
            OV::F64(v) => v.to_string(),
            OV::Array(a) => format!("array of {}", a.values.len()),
        }
    }
}

/// Re-writes a model through the streaming writer: the same metadata and tensors, in order.
fn rewrite(src: &GgufFile, out: &std::path::Path) {
    let mut b = GgufBuilder::with_metadata_of(src).unwrap();
    for t in src.tensor_infos() {
        b.add_tensor(src.tensor_name(t), t.ty, &t.dims).unwrap();
    }
    let mut s = b.create(out).unwrap();
    for t in src.tensor_infos() {
        s.write_tensor(src.tensor_data(t)).unwrap();
    }
    s.finish().unwrap();
}

#[test]
fn smollm2_round_trip_is_identical() {
    let dir = scratch("rt_smollm2");
    let out = dir.join("copy.gguf");
    let src = GgufFile::open(model(SMOLLM2)).unwrap();
    rewrite(&src, &out);
    let copy = GgufFile::open(&out).unwrap();
    let a: Vec<_> = src
        .metadata()
        .map(|(k, v)| (k, v.to_owned_value()))
        .collect();
    let b: Vec<_> = copy
        .metadata()
        .map(|(k, v)| (k, v.to_owned_value()))
        .collect();
    assert!(a == b, "metadata differs");
    assert_eq!(src.tensor_count(), copy.tensor_count());
    for (x, y) in src.tensor_infos().iter().zip(copy.tensor_infos()) {
        assert_eq!(src.tensor_name(x), copy.tensor_name(y));
        assert_eq!((x.ty, &x.dims), (y.ty, &y.dims));
        assert!(src.tensor_data(x) == copy.tensor_data(y));
    }
    // The original was written by gguf-py with the same layout rules, so the files are equal
    // byte for byte.
    assert!(std::fs::read(model(SMOLLM2)).unwrap() == std::fs::read(&out).unwrap());

    // The independent check: the `gguf` Python package reads both files as identical.
    // scripts/test.sh sets LEDGE_PYTHON to its venv's interpreter.
    if let Ok(py) = std::env::var("LEDGE_PYTHON") {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gguf_same.py");
        let st = Command::new(py)
            .arg(script)
            .arg(model(SMOLLM2))
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "gguf package sees a difference");
    } else {
        eprintln!(
            "LEDGE_PYTHON unset: skipped the gguf-package comparison (scripts/test.sh runs it)"
        );
    }
}

/// Opening must parse the index only: the tensor data pages stay out of memory.
#[test]
fn open_does_not_read_tensor_data() {
    use std::os::fd::AsRawFd;
    let dir = scratch("no_data_pages");
    let path = dir.join("big.gguf");
    // A 100 MB file of random bytes behind a normal header.
    let mut b = GgufBuilder::new();
    b.set("general.architecture", "llama").unwrap();
    let rows = 100 * 1024 * 1024 / (4096 * 4);
    b.add_tensor("big", ledge::gguf::GgmlType::F32, &[4096, rows])
        .unwrap();
    let mut s = b.create(&path).unwrap();
    let mut rng = Rng(1);
    let chunk = rng.bytes(4096 * 4 * 64);
    let parts: Vec<&[u8]> = (0..rows / 64).map(|_| chunk.as_slice()).collect();
    s.write_tensor_parts(&parts).unwrap();
    s.finish().unwrap();
    // Drop the file from the page cache, so that residency after open shows what open read.
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: plain syscall on an open fd; the arguments are valid for posix_fadvise.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
    let data_len = 4096 * 4 * rows as usize;
    let before = {
        // SAFETY: read-only map of a file no one writes during the test.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        resident_pages(&map[map.len() - data_len..])
    };

    let f = GgufFile::open(&path).unwrap();
    let data = f.tensor_data(&f.tensor_infos()[0]);
    let after = resident_pages(data);
    // Kernel read-around near the header may pull a few pages; the data must not be read.
    assert!(
        after.saturating_sub(before) * 4096 < 2 * 1024 * 1024,
        "{after} data pages resident after open ({before} before)"
    );
    // The check can fail: touching the data makes it resident.
    let sum: u64 = data.iter().step_by(4096).map(|&b| b as u64).sum();
    assert!(resident_pages(data) > after + 10_000, "{sum}");
}

/// Pages of `s` (rounded inward to whole pages) that are in the page cache.
fn resident_pages(s: &[u8]) -> usize {
    let page = 4096usize;
    let start = (s.as_ptr() as usize).next_multiple_of(page);
    let len = (s.len() - (start - s.as_ptr() as usize)) / page * page;
    let mut vec = vec![0u8; len / page];
    // SAFETY: [start, start+len) lies inside a live mapping; vec has one byte per page.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0);
    vec.iter().filter(|&&v| v & 1 == 1).count()
}

/// Slices of real tensors of every type in both models, dequantized by ledge, equal the
/// `gguf` package's dequantization bit for bit (tests/fixtures/quant/real/, made by
/// scripts/reference/gen_real_fixtures.py). The manifest's tensor counts are gguf's too.
#[test]
fn real_tensors_dequantize_like_gguf_py() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant/real");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    for (name, m) in manifest["models"].as_object().unwrap() {
        let f = GgufFile::open(model(name)).unwrap();
        assert_eq!(f.tensor_count() as u64, m["tensor_count"].as_u64().unwrap());
        let want: BTreeMap<String, usize> = m["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as usize))
            .collect();
        assert_eq!(type_counts(&f), want, "{name}");
    }
    let mut types_seen = std::collections::BTreeSet::new();
    for s in manifest["slices"].as_array().unwrap() {
        let f = GgufFile::open(model(s["model"].as_str().unwrap())).unwrap();
        let t = f.tensor(s["tensor"].as_str().unwrap()).unwrap();
        assert_eq!(t.ty.name(), s["type"].as_str().unwrap());
        let n = s["elements"].as_u64().unwrap() as usize;
        let all = t.to_f32().unwrap();
        let want: Vec<f32> = std::fs::read(dir.join(s["file"].as_str().unwrap()))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(want.len(), n);
        for (i, (a, b)) in all[..n].iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{} element {i}", s["tensor"]);
        }
        types_seen.insert(t.ty.name());
    }
    for ty in ["F32", "Q4_1", "Q8_0", "Q5_0", "Q4_K", "Q6_K"] {
        assert!(types_seen.contains(ty), "no real {ty} tensor checked");
    }
}
