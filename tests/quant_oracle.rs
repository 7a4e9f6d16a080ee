//! Every block format against independent oracles (fixtures from
//! scripts/reference/gen_quant_fixtures.sh): ggml's own C reference code and the `gguf` Python
//! package. Quantize is compared byte for byte, dequantize bit for bit, and vec_dot against
//! ggml's generic (scalar) dot product.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ledge::gguf::GgmlType;
use ledge::quant::{self, *};

const ROWS: usize = 16;
const N: usize = 256;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

fn read(name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir().join(name)).ok()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn src() -> Vec<f32> {
    f32s(&read("src.f32").expect("tests/fixtures/quant/src.f32"))
}

/// Bit-exact f32 comparison (NaN equals NaN of any payload).
fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: element {i} is {g:e}, oracle {w:e}"
        );
    }
}

fn ty(name: &str) -> GgmlType {
    GgmlType::from_name(name).unwrap()
}

const LEGACY: &[&str] = &["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"];
const GGML_QUANT: &[&str] = &[
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
    "IQ4_NL", "IQ4_XS",
];
const RANDOM_DEQUANT: &[&str] = &[
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
    "IQ4_XS", "BF16", "F16",
];

#[test]
fn type_table_matches_ggml_and_gguf_py() {
    let ggml: BTreeMap<String, (usize, usize)> =
        serde_json::from_slice(&read("ggml_type_sizes.json").unwrap()).unwrap();
    assert_eq!(ggml.len(), GGML_QUANT.len());
    for (name, (block, size)) in &ggml {
        let t = ty(name);
        assert_eq!(
            (t.block_size(), t.type_size()),
            (*block, *size),
            "{name} vs ggml"
        );
    }
    let py: BTreeMap<String, (u32, usize, usize)> =
        serde_json::from_slice(&read("type_sizes.json").unwrap()).unwrap();
    let mut checked = 0;
    for (name, (id, block, size)) in &py {
        let t = GgmlType::from_id(*id).unwrap_or_else(|| panic!("{name} id {id} unknown"));
        assert_eq!(t.name(), name);
        if name == "Q8_1" {
            // gguf-py records 40 bytes; ggml's struct (checked above) is 36: a gguf-py bug.
            assert_eq!((*block, *size), (32, 40));
            continue;
        }
        assert_eq!(
            (t.block_size(), t.type_size()),
            (*block, *size),
            "{name} vs gguf-py"
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} types checked");
}

#[test]
fn quantize_is_bit_exact_with_gguf_py() {
    let x = src();
    for name in LEGACY {
        let t = ty(name);
        let want = read(&format!("{name}.gguf-py.q")).unwrap();
        let got = quant::quantize_to_vec(t, &x).unwrap();
        assert!(got == want, "{name}: quantized bytes differ from gguf-py");
        let mut deq = vec![0f32; x.len()];
        quant::dequantize_unaligned(t, &want, &mut deq).unwrap();
        let want_deq = f32s(&read(&format!("{name}.gguf-py.deq.f32")).unwrap());
        assert_bits_eq(&format!("{name} dequantize vs gguf-py"), &deq, &want_deq);
    }
}

#[test]
fn quantize_and_dequantize_are_bit_exact_with_ggml() {
    let x = src();
    for name in GGML_QUANT {
        let t = ty(name);
        let want = read(&format!("{name}.ggml.q")).unwrap();
        let got = quant::quantize_to_vec(t, &x).unwrap();
        if got != want {
            let bs = t.type_size();
            let blk = got
                .chunks(bs)
                .zip(want.chunks(bs))
                .position(|(a, b)| a != b)
                .unwrap();
            panic!("{name}: quantized block {blk} differs from ggml's quantize_row_*_ref");
        }
        if let Some(deq_want) = read(&format!("{name}.ggml.deq.f32")) {
            let mut deq = vec![0f32; x.len()];
            quant::dequantize_unaligned(t, &want, &mut deq).unwrap();
            assert_bits_eq(
                &format!("{name} dequantize vs ggml"),
                &deq,
                &f32s(&deq_want),
            );
        }
    }
}

#[test]
fn dequantize_random_blocks_like_gguf_py() {
    for name in RANDOM_DEQUANT {
        let t = ty(name);
        let q = read(&format!("{name}.random.q")).unwrap();
        let want = f32s(&read(&format!("{name}.random.deq.f32")).unwrap());
        let mut got = vec![0f32; want.len()];
        quant::dequantize_unaligned(t, &q, &mut got).unwrap();
        assert_bits_eq(&format!("{name} random blocks"), &got, &want);
    }
}

/// ggml's generic vec_dot of weight row r against activation row 15 − r.
fn check_dot<W: VecDot>(name: &str) {
    let Some(want) = read(&format!("{name}.ggml.dot.f32")) else {
        panic!("{name}.ggml.dot.f32 missing");
    };
    let want = f32s(&want);
    let x = src();
    let mut w = vec![W::zeroed(); ROWS * N / W::BLOCK_SIZE];
    W::quantize(&x, &mut w);
    let mut a = vec![W::Act::zeroed(); ROWS * N / W::Act::BLOCK_SIZE];
    W::Act::quantize(&x, &mut a);
    let (nw, na) = (N / W::BLOCK_SIZE, N / W::Act::BLOCK_SIZE);
    for r in 0..ROWS {
        let got = W::vec_dot(
            &w[r * nw..(r + 1) * nw],
            &a[(ROWS - 1 - r) * na..(ROWS - r) * na],
        );
        // Same integer sums and the same float operations in the same order: equal up to
        // the last bit or two, where the C compiler may keep extra precision.
        let tol = 1e-6 * want[r].abs().max(1e-30);
        assert!(
            (got - want[r]).abs() <= tol,
            "{name} row {r}: vec_dot {got:e}, ggml {:e}",
            want[r]
        );
    }
}

use bytemuck::Zeroable;

#[test]
fn vec_dot_matches_ggml_generic() {
    check_dot::<BlockQ4_0>("Q4_0");
    check_dot::<BlockQ4_1>("Q4_1");
    check_dot::<BlockQ5_0>("Q5_0");
    check_dot::<BlockQ5_1>("Q5_1");
    check_dot::<BlockQ8_0>("Q8_0");
    check_dot::<BlockQ2K>("Q2_K");
    check_dot::<BlockQ3K>("Q3_K");
    check_dot::<BlockQ4K>("Q4_K");
    check_dot::<BlockQ5K>("Q5_K");
    check_dot::<BlockQ6K>("Q6_K");
    check_dot::<BlockIQ4NL>("IQ4_NL");
    check_dot::<BlockIQ4XS>("IQ4_XS");
}

#[test]
fn float_dots_against_f64() {
    let x = src();
    let (a, b) = (&x[..N], &x[N..2 * N]);
    let exact: f64 = a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum();
    let f = <f32 as VecDot>::vec_dot(a, b);
    assert!((f as f64 - exact).abs() <= 1e-6 * exact.abs().max(1e-12));
    let (ha, hb): (Vec<half::f16>, Vec<half::f16>) = (
        a.iter().map(|&v| half::f16::from_f32(v)).collect(),
        b.iter().map(|&v| half::f16::from_f32(v)).collect(),
    );
    let exact16: f64 = ha
        .iter()
        .zip(&hb)
        .map(|(p, q)| p.to_f64() * q.to_f64())
        .sum();
    let h = <half::f16 as VecDot>::vec_dot(&ha, &hb);
    assert!((h as f64 - exact16).abs() <= 1e-5 * exact16.abs().max(1e-12));
}

#[test]
fn byte_entry_points_reject_bad_lengths() {
    let x = vec![0.5f32; 64];
    let mut out = vec![0u8; 35];
    assert!(matches!(
        quant::quantize(GgmlType::Q8_0, &x, &mut out),
        Err(QuantError::WrongByteLength { expected: 68, .. })
    ));
    assert!(matches!(
        quant::quantize_to_vec(GgmlType::Q4_K, &x),
        Err(QuantError::NotBlockMultiple { block: 256, .. })
    ));
    let mut y = vec![0f32; 64];
    assert!(quant::dequantize(GgmlType::Q4_0, &[0u8; 10], &mut y).is_err());
    assert!(matches!(
        quant::dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut vec![0f32; 256]),
        Err(QuantError::Unsupported { .. })
    ));
}
