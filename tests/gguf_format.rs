//! GGUF reader and writer: round trips, the gguf-rs-lib oracle, and every malformed-input error.

mod common;

use common::*;
use gguf_rs_lib::format::metadata::MetadataValue as OV;
use ledge::gguf::{GgmlType, GgufError, GgufFile, MetaValue, Value, ValueType};

/// Compares one of our values against gguf-rs-lib's reading of the same key.
fn same_as_oracle(ours: &Value<'_>, theirs: &OV) -> bool {
    match (ours, theirs) {
        (Value::U8(a), OV::U8(b)) => a == b,
        (Value::I8(a), OV::I8(b)) => a == b,
        (Value::U16(a), OV::U16(b)) => a == b,
        (Value::I16(a), OV::I16(b)) => a == b,
        (Value::U32(a), OV::U32(b)) => a == b,
        (Value::I32(a), OV::I32(b)) => a == b,
        (Value::F32(a), OV::F32(b)) => a.to_bits() == b.to_bits(),
        (Value::Bool(a), OV::Bool(b)) => a == b,
        (Value::String(a), OV::String(b)) => a == b,
        (Value::U64(a), OV::U64(b)) => a == b,
        (Value::I64(a), OV::I64(b)) => a == b,
        (Value::F64(a), OV::F64(b)) => a.to_bits() == b.to_bits(),
        (Value::Array(a), OV::Array(b)) => {
            a.elem_type() as u32 == b.element_type as u32
                && a.len() == b.values.len()
                && a.iter().zip(&b.values).all(|(x, y)| same_as_oracle(&x, y))
        }
        _ => false,
    }
}

/// Checks our reading of `path` against gguf-rs-lib's: every key and value, every tensor's
/// name, shape, type and offset.
fn check_against_oracle(path: &std::path::Path) {
    let ours = GgufFile::open(path).unwrap();
    let theirs = gguf_rs_lib::reader::file_reader::open_gguf_file(path).unwrap();
    assert_eq!(ours.metadata_len(), theirs.metadata().len());
    for (k, v) in ours.metadata() {
        let t = theirs
            .metadata()
            .get(k)
            .unwrap_or_else(|| panic!("oracle lacks {k}"));
        assert!(same_as_oracle(&v, t), "{k}: ours {v} vs oracle {t:?}");
    }
    assert_eq!(ours.tensor_count(), theirs.tensor_count());
    for (a, b) in ours.tensor_infos().iter().zip(theirs.tensor_infos()) {
        assert_eq!(ours.tensor_name(a), b.name());
        assert_eq!(a.dims, b.shape().dims());
        assert_eq!(a.ty.id(), b.tensor_type() as u32);
        assert_eq!(
            a.data.start as u64,
            ours.data_offset() as u64 + b.data_offset()
        );
    }
}

#[test]
fn writer_round_trip_every_value_type() {
    let dir = scratch("round_trip_types");
    let path = dir.join("s.gguf");
    let data = write_synthetic(&path);
    let f = GgufFile::open(&path).unwrap();
    let (b, _) = synthetic();
    // Every key comes back with the same type and value, in the same order.
    let back: Vec<(String, MetaValue)> = f
        .metadata()
        .map(|(k, v)| (k.to_string(), v.to_owned_value()))
        .collect();
    let keys: Vec<&str> = back.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys[0], "general.architecture");
    for (k, v) in &back {
        assert_eq!(Some(v), b.get(k), "{k}");
    }
    assert_eq!(f.get("t.u8"), Some(Value::U8(200)));
    assert_eq!(f.get("t.i32").unwrap().value_type(), ValueType::I32);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX);
    assert!(f.get_u64("t.i64").is_err());
    let tokens: Vec<&str> = f
        .get_array("t.tokens")
        .unwrap()
        .strings()
        .unwrap()
        .collect();
    assert_eq!(tokens, ["<s>", "</s>", "▁hello", "", "日本"]);
    let nested = f.get_array("t.nested").unwrap();
    let lens: Vec<usize> = nested.iter().map(|v| v.as_array().unwrap().len()).collect();
    assert_eq!(lens, [2, 0, 1]);
    // Tensor bytes, shapes and alignment.
    assert_eq!(f.tensor_count(), 4);
    for (info, d) in f.tensor_infos().iter().zip(&data) {
        assert_eq!(f.tensor_data(info), d.as_slice());
        assert_eq!(info.data.start % 32, 0);
    }
    assert_eq!(f.tensor("d.weight").unwrap().shape, [256, 1, 2]);
    assert!(matches!(
        f.tensor("nope"),
        Err(GgufError::TensorNotFound(n)) if n == "nope"
    ));
    check_against_oracle(&path);
    assert!(!dir.join("s.gguf.tmp").exists());
}

#[test]
fn writer_file_size_is_exact() {
    let dir = scratch("file_size");
    let path = dir.join("s.gguf");
    let (b, _) = synthetic();
    let expected = b.file_size();
    write_synthetic(&path);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), expected);
}

#[test]
fn writer_custom_alignment() {
    let dir = scratch("alignment");
    let path = dir.join("a.gguf");
    let mut b = ledge::gguf::GgufBuilder::new();
    b.set("general.alignment", MetaValue::U32(64)).unwrap();
    b.add_tensor("x", GgmlType::F32, &[3]).unwrap();
    b.add_tensor("y", GgmlType::F32, &[5]).unwrap();
    assert!(b.set("general.alignment", MetaValue::U32(128)).is_err());
    assert!(ledge::gguf::GgufBuilder::new()
        .set("general.alignment", MetaValue::U32(48))
        .is_err());
    let mut s = b.create(&path).unwrap();
    s.write_tensor(&[1; 12]).unwrap();
    s.write_tensor(&[2; 20]).unwrap();
    s.finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment(), 64);
    for t in f.tensor_infos() {
        assert_eq!(t.data.start % 64, 0);
    }
    assert_eq!(f.tensor_data(&f.tensor_infos()[1]), &[2; 20]);
    check_against_oracle(&path);
}

#[test]
fn writer_leaves_no_file_when_unfinished() {
    let dir = scratch("unfinished");
    let path = dir.join("out.gguf");
    let (b, data) = synthetic();
    // Dropped halfway: no final file, no temp file.
    {
        let mut s = b.clone().create(&path).unwrap();
        s.write_tensor(&data[0]).unwrap();
        assert!(dir.join("out.gguf.tmp").exists());
    }
    assert!(!path.exists() && !dir.join("out.gguf.tmp").exists());
    // finish() with tensors missing is an error, and cleans up too.
    let mut s = b.clone().create(&path).unwrap();
    s.write_tensor(&data[0]).unwrap();
    let e = s.finish().unwrap_err().to_string();
    assert!(e.contains("only 1 of 4 tensors written"), "{e}");
    assert!(!path.exists() && !dir.join("out.gguf.tmp").exists());
    // Wrong data size names the tensor.
    let mut s = b.clone().create(&path).unwrap();
    let e = s.write_tensor(&[0; 3]).unwrap_err().to_string();
    assert!(
        e.contains("a.weight") && e.contains("needs 60 bytes, got 3"),
        "{e}"
    );
    drop(s);
    // An existing file is replaced only on success.
    std::fs::write(&path, b"old").unwrap();
    drop(b.clone().create(&path).unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
}

#[test]
fn writer_rejects_bad_declarations() {
    let mut b = ledge::gguf::GgufBuilder::new();
    b.add_tensor("x", GgmlType::Q4_0, &[64]).unwrap();
    assert!(b.add_tensor("x", GgmlType::F32, &[1]).is_err());
    assert!(b.add_tensor("y", GgmlType::Q4_0, &[33]).is_err());
    assert!(b.add_tensor("z", GgmlType::F32, &[]).is_err());
    assert!(b.add_tensor("w", GgmlType::F32, &[1, 1, 1, 1, 1]).is_err());
    assert!(b.add_tensor("v", GgmlType::F32, &[u64::MAX, 2]).is_err());
    let mixed = MetaValue::Array(ledge::gguf::MetaArray::new(
        ValueType::U32,
        vec![MetaValue::U32(1), MetaValue::F32(2.0)],
    ));
    assert!(b.set("k", mixed).is_err());
}

// ---- malformed input: each a typed error naming what and where ----

fn open_err(bytes: &[u8]) -> GgufError {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn bad_magic_and_versions() {
    assert!(matches!(
        open_err(b"GGML\x03\0\0\0"),
        GgufError::BadMagic { .. }
    ));
    assert!(matches!(open_err(b"GG"), GgufError::Truncated { .. }));
    let e = open_err(&Raw::header(1, 0, 0).0);
    assert!(matches!(e, GgufError::UnsupportedVersion(1)), "{e}");
    let e = open_err(&Raw::header(4, 0, 0).0);
    assert!(matches!(e, GgufError::UnsupportedVersion(4)), "{e}");
    let e = open_err(&Raw::header(3u32.swap_bytes(), 0, 0).0);
    assert!(matches!(e, GgufError::BigEndian { .. }), "{e}");
    // v2 and v3 both read.
    GgufFile::from_bytes(&Raw::header(2, 0, 0).0).unwrap();
    GgufFile::from_bytes(&Raw::header(3, 0, 0).0).unwrap();
}

#[test]
fn truncated_file_names_the_field_and_offset() {
    let mut r = Raw::header(3, 0, 1);
    r.str("general.name").u32(ValueType::String as u32).u64(100);
    r.0.extend_from_slice(b"short");
    let e = open_err(&r.0);
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            GgufError::Truncated {
                offset: 56,
                needed: 100,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("general.name"), "{msg}");
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let e = open_err(&Raw::header(3, 0, u64::MAX).0);
    assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e}");
    let e = open_err(&Raw::header(3, 1 << 60, 0).0);
    assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e}");
    let mut r = Raw::header(3, 0, 1);
    r.str("tokenizer.ggml.tokens")
        .u32(ValueType::Array as u32)
        .u32(ValueType::String as u32)
        .u64(1 << 40);
    let e = open_err(&r.0);
    assert!(
        matches!(&e, GgufError::ArrayTooLong { what, count, .. } if what.contains("tokenizer.ggml.tokens") && *count == 1 << 40),
        "{e}"
    );
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(ValueType::String as u32).u64(u64::MAX);
    assert!(matches!(open_err(&r.0), GgufError::Truncated { .. }));
}

#[test]
fn unknown_value_type_and_nesting_depth() {
    let mut r = Raw::header(3, 0, 1);
    r.str("my.key").u32(13).u32(0);
    let e = open_err(&r.0);
    assert!(
        matches!(&e, GgufError::UnknownValueType { what, offset: 38, id: 13 } if what.contains("my.key")),
        "{e}"
    );
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(ValueType::Array as u32);
    for _ in 0..20 {
        r.u32(ValueType::Array as u32).u64(1);
    }
    r.u32(ValueType::U8 as u32).u64(0);
    let e = open_err(&r.0);
    assert!(matches!(e, GgufError::TooDeep { .. }), "{e}");
}

#[test]
fn duplicate_key_and_invalid_utf8() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a.b", 1).kv_u32("a.b", 2);
    let e = open_err(&r.0);
    assert!(
        matches!(&e, GgufError::DuplicateKey { key, .. } if key == "a.b"),
        "{e}"
    );
    let mut r = Raw::header(3, 0, 1);
    r.u64(2);
    r.0.extend_from_slice(&[0xC3, 0x28]);
    r.u32(ValueType::U8 as u32);
    r.0.push(0);
    assert!(matches!(
        open_err(&r.0),
        GgufError::InvalidUtf8 { offset: 24, .. }
    ));
}

#[test]
fn bad_alignment_value() {
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 24);
    let e = open_err(&r.0);
    assert!(
        matches!(&e, GgufError::BadMetadata { key, .. } if key == "general.alignment"),
        "{e}"
    );
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment")
        .u32(ValueType::U64 as u32)
        .u64(32);
    assert!(matches!(open_err(&r.0), GgufError::BadMetadata { .. }));
}

#[test]
fn tensor_info_errors() {
    let one = |name: &str, dims: &[u64], ty: u32, off: u64, data: usize| {
        let mut r = Raw::header(3, 1, 0);
        r.tensor(name, dims, ty, off).data(data);
        r.0
    };
    // Sanity: the well-formed version opens.
    let f = GgufFile::from_bytes(&one("w", &[32, 2], 8, 0, 68)).unwrap();
    assert_eq!(f.tensor("w").unwrap().data.len(), 68);

    let e = open_err(&one("w", &[32, 2], 8, 0, 67));
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { name, .. } if name == "w"),
        "{e}"
    );
    let e = open_err(&one("w", &[32, 2], 8, 1 << 62, 68));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    let e = open_err(&one("w", &[32, 2], 8, u64::MAX - 31, 68));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    let e = open_err(&one("w", &[32], 99, 0, 64));
    assert!(
        matches!(&e, GgufError::UnknownTensorType { name, id: 99, .. } if name == "w"),
        "{e}"
    );
    let e = open_err(&one("w", &[32], 31, 0, 64));
    assert!(
        matches!(
            &e,
            GgufError::RemovedTensorType {
                type_name: "Q4_0_4_4",
                ..
            }
        ),
        "{e}"
    );
    for (dims, why) in [
        (&[33u64, 1][..], "not a multiple"),
        (&[1, 2, 3, 4, 5][..], "dimensions"),
        (&[][..], "dimensions"),
        (&[u64::MAX, 4][..], "overflows"),
    ] {
        let e = open_err(&one("w", dims, 8, 0, 64));
        assert!(
            matches!(&e, GgufError::BadTensorInfo { reason, .. } if reason.contains(why)),
            "{dims:?}: {e}"
        );
    }
    let e = open_err(&one("w", &[4], 0, 8, 64));
    assert!(
        e.to_string().contains("not a multiple of the alignment"),
        "{e}"
    );

    let mut r = Raw::header(3, 2, 0);
    r.tensor("dup", &[4], 0, 0)
        .tensor("dup", &[4], 0, 32)
        .data(64);
    let e = open_err(&r.0);
    assert!(
        matches!(&e, GgufError::DuplicateTensor { name, .. } if name == "dup"),
        "{e}"
    );
}

#[test]
fn missing_and_mistyped_keys() {
    let dir = scratch("keys");
    let path = dir.join("s.gguf");
    write_synthetic(&path);
    let f = GgufFile::open(&path).unwrap();
    let e = f.get_str("llama.block_count").unwrap_err().to_string();
    assert!(
        e.contains("llama.block_count") && e.contains("missing"),
        "{e}"
    );
    let e = f.get_str("t.u32").unwrap_err().to_string();
    assert!(e.contains("t.u32 ") || e.contains("\"t.u32\""), "{e}");
    assert!(e.contains("u32") && e.contains("expected a string"), "{e}");
    assert_eq!(f.get_u64("t.u8").unwrap(), 200);
    assert_eq!(f.get_f32("t.f64").unwrap(), -2.25);
    assert!(f.get_bool("t.bool").unwrap());
}

#[test]
fn open_missing_file_names_the_path() {
    let e = GgufFile::open("/nonexistent/x.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.gguf"), "{e}");
}
