//! Shared test helpers: a raw GGUF byte encoder (to craft malformed files the writer refuses
//! to make), a small synthetic model, and the path to the real models.
#![allow(dead_code)]

use std::path::PathBuf;

use ledge::gguf::{GgmlType, GgufBuilder, MetaArray, MetaValue, ValueType};

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A real model file; fails with the fix when it is absent.
pub fn model(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// Deterministic pseudo-random bytes (splitmix64), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Raw little-endian GGUF encoder with no checks at all.
#[derive(Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.0.extend_from_slice(b"GGUF");
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// A key with a u32 value.
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(ValueType::U32 as u32).u32(v)
    }
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    pub fn data(&mut self, n: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0x11u8, n));
        self
    }
}

/// A small model-like file exercising every metadata value type, nested and empty arrays,
/// and tensors of several types. Returns the builder and each tensor's data.
pub fn synthetic() -> (GgufBuilder, Vec<Vec<u8>>) {
    let mut b = GgufBuilder::new();
    b.set("general.architecture", "llama").unwrap();
    b.set("general.name", "synthetic ✓ ünïcode").unwrap();
    b.set("t.u8", MetaValue::U8(200)).unwrap();
    b.set("t.i8", MetaValue::I8(-100)).unwrap();
    b.set("t.u16", MetaValue::U16(60000)).unwrap();
    b.set("t.i16", MetaValue::I16(-30000)).unwrap();
    b.set("t.u32", MetaValue::U32(4_000_000_000)).unwrap();
    b.set("t.i32", MetaValue::I32(-2_000_000_000)).unwrap();
    b.set("t.f32", MetaValue::F32(1.5e-5)).unwrap();
    b.set("t.bool", MetaValue::Bool(true)).unwrap();
    b.set("t.u64", MetaValue::U64(u64::MAX)).unwrap();
    b.set("t.i64", MetaValue::I64(i64::MIN)).unwrap();
    b.set("t.f64", MetaValue::F64(-2.25)).unwrap();
    b.set(
        "t.tokens",
        MetaValue::Array(MetaArray::strings(["<s>", "</s>", "▁hello", "", "日本"])),
    )
    .unwrap();
    b.set(
        "t.scores",
        MetaValue::Array(MetaArray::new(
            ValueType::F32,
            vec![MetaValue::F32(0.0), MetaValue::F32(-1.25)],
        )),
    )
    .unwrap();
    b.set(
        "t.empty",
        MetaValue::Array(MetaArray::new(ValueType::String, vec![])),
    )
    .unwrap();
    let inner = |v: &[i32]| {
        MetaValue::Array(MetaArray::new(
            ValueType::I32,
            v.iter().map(|&x| MetaValue::I32(x)).collect(),
        ))
    };
    b.set(
        "t.nested",
        MetaValue::Array(MetaArray::new(
            ValueType::Array,
            vec![inner(&[1, 2]), inner(&[]), inner(&[3])],
        )),
    )
    .unwrap();
    let mut rng = Rng(7);
    let specs: [(&str, GgmlType, &[u64]); 4] = [
        ("a.weight", GgmlType::F32, &[5, 3]),
        ("b.weight", GgmlType::Q8_0, &[64, 2]),
        ("c.weight", GgmlType::F16, &[7]),
        ("d.weight", GgmlType::Q4_K, &[256, 1, 2]),
    ];
    let mut data = Vec::new();
    for (name, ty, dims) in specs {
        b.add_tensor(name, ty, dims).unwrap();
        let n: u64 = dims.iter().product();
        data.push(rng.bytes(ty.bytes_for(n).unwrap() as usize));
    }
    (b, data)
}

/// Writes `synthetic()` to `path` and returns the tensor data written.
pub fn write_synthetic(path: &std::path::Path) -> Vec<Vec<u8>> {
    let (b, data) = synthetic();
    let mut s = b.create(path).unwrap();
    for d in &data {
        s.write_tensor(d).unwrap();
    }
    s.finish().unwrap();
    data
}

/// A fresh scratch directory under target/ (tests run in parallel: one per test name).
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
