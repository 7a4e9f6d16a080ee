//! The legacy block formats (F32/F16/BF16, Q4_0/Q4_1, Q5_0/Q5_1, Q8_0/Q8_1) against oracle
//! fixtures in tests/fixtures/quant (written by scripts/reference/):
//! - `src.f32`: 16 rows × 256 f32, chosen to hit quantizer corner cases;
//! - `<T>.ggml.q` / `.ggml.deq.f32` / `.ggml.dot.f32`: ggml's C `quantize_row_*_ref`,
//!   `dequantize_row_*` and generic `vec_dot` (weight row r · activation row 15 − r);
//! - `<T>.gguf-py.q` / `.gguf-py.deq.f32`: the `gguf` Python package's numpy port;
//! - `<T>.random.q` / `.random.deq.f32`: random well-formed blocks and gguf-py's decoding.
//!
//! Quantize and dequantize must match bit for bit. Dots are compared to ggml's with a small
//! relative tolerance: same integer sums, but ggml's C may contract `a*b + c` into an FMA.

use half::{bf16, f16};
use ledge::gguf::GgmlType;
use ledge::quant::{
    self, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QuantBlock, QuantError,
    VecDot,
};
use std::path::PathBuf;

const ROWS: usize = 16;
const COLS: usize = 256;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name)
}

fn read_bytes(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn read_f32(name: &str) -> Vec<f32> {
    read_bytes(name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn src() -> Vec<f32> {
    let s = read_f32("src.f32");
    assert_eq!(s.len(), ROWS * COLS);
    s
}

/// Copies fixture bytes into properly aligned blocks.
fn blocks<B: QuantBlock>(bytes: &[u8]) -> Vec<B> {
    assert_eq!(bytes.len() % std::mem::size_of::<B>(), 0);
    let mut out = vec![B::zeroed(); bytes.len() / std::mem::size_of::<B>()];
    bytemuck::cast_slice_mut::<B, u8>(&mut out).copy_from_slice(bytes);
    out
}

fn assert_bytes_eq(ty: GgmlType, what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{ty} {what}: length");
    let block = ty.type_size();
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        let b = i / block;
        let range = b * block..(b + 1) * block;
        panic!(
            "{ty} {what}: first difference at byte {i} (block {b}, row {})\n got  {:02x?}\n want {:02x?}",
            b * ty.block_size() / COLS,
            &got[range.clone()],
            &want[range]
        );
    }
}

/// Bit-exact f32 comparison; two NaNs count as equal whatever their payloads.
fn assert_f32_bits_eq(ty: GgmlType, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{ty} {what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(
            same,
            "{ty} {what}: element {i} (row {}, col {}): got {g:e} ({:#010x}), want {w:e} ({:#010x})",
            i / COLS,
            i % COLS,
            g.to_bits(),
            w.to_bits()
        );
    }
}

fn dequantize_bytes(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / ty.type_size() * ty.block_size();
    let mut out = vec![0.0f32; n];
    quant::dequantize_unaligned(ty, bytes, &mut out).unwrap();
    out
}

/// The types gguf-py quantizes and the types gguf-py decodes from random blocks.
const GGUF_PY_TYPES: &[GgmlType] = &[
    GgmlType::BF16,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// The types ggml's C harness quantizes (Q8_1 without dequantization).
const GGML_TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
];

#[test]
fn quantize_matches_ggml_reference() {
    let src = src();
    for &ty in GGML_TYPES {
        let got = quant::quantize_to_vec(ty, &src).unwrap();
        assert_bytes_eq(
            ty,
            "quantize vs ggml",
            &got,
            &read_bytes(&format!("{ty}.ggml.q")),
        );
    }
}

#[test]
fn dequantize_matches_ggml_reference() {
    for &ty in GGML_TYPES.iter().filter(|&&t| t != GgmlType::Q8_1) {
        let got = dequantize_bytes(ty, &read_bytes(&format!("{ty}.ggml.q")));
        let want = read_f32(&format!("{ty}.ggml.deq.f32"));
        assert_f32_bits_eq(ty, "dequantize vs ggml", &got, &want);
    }
}

/// ggml has no Q8_1 dequantizer. Its Q8_1 blocks carry the same d and qs as its Q8_0 blocks
/// of the same data (checked here on ggml's own bytes), so ggml's Q8_0 dequantization is the
/// oracle for ledge's `d * q` Q8_1 decoding; `s` is checked against its definition.
#[test]
fn q8_1_dequantize_matches_ggml_q8_0_of_same_data() {
    let q8_1: Vec<BlockQ8_1> = blocks(&read_bytes("Q8_1.ggml.q"));
    let q8_0: Vec<BlockQ8_0> = blocks(&read_bytes("Q8_0.ggml.q"));
    assert_eq!(q8_1.len(), q8_0.len());
    for (i, (a, b)) in q8_1.iter().zip(&q8_0).enumerate() {
        assert_eq!(a.d.to_bits(), b.d.to_bits(), "block {i}: d");
        assert_eq!(a.qs, b.qs, "block {i}: qs");
        // s = f16(d_f32 * Σq). Only the f16 d is known here: it is within half an f16 ulp
        // of d_f32 (2^-11 relative, or 2^-25 absolute where d is subnormal), and s adds its
        // own f16 rounding.
        let sum: i32 = a.qs.iter().map(|&q| q as i32).sum();
        let d = a.d.to_f32();
        let approx = sum as f32 * d;
        let half_ulp = |v: f32| v.abs() * 2.0f32.powi(-11) + 2.0f32.powi(-25);
        let tol = sum.unsigned_abs() as f32 * half_ulp(d) + half_ulp(approx);
        assert!(
            (a.s.to_f32() - approx).abs() <= tol,
            "block {i}: s = {} but d * Σq = {approx}",
            a.s
        );
    }
    let mut got = vec![0.0f32; q8_1.len() * 32];
    BlockQ8_1::dequantize(&q8_1, &mut got);
    let want = read_f32("Q8_0.ggml.deq.f32");
    assert_f32_bits_eq(GgmlType::Q8_1, "dequantize vs ggml Q8_0", &got, &want);
}

#[test]
fn quantize_matches_gguf_py() {
    let src = src();
    for &ty in GGUF_PY_TYPES {
        let got = quant::quantize_to_vec(ty, &src).unwrap();
        let want = read_bytes(&format!("{ty}.gguf-py.q"));
        assert_bytes_eq(ty, "quantize vs gguf-py", &got, &want);
    }
}

#[test]
fn dequantize_matches_gguf_py() {
    for &ty in GGUF_PY_TYPES {
        let got = dequantize_bytes(ty, &read_bytes(&format!("{ty}.gguf-py.q")));
        let want = read_f32(&format!("{ty}.gguf-py.deq.f32"));
        assert_f32_bits_eq(ty, "dequantize vs gguf-py", &got, &want);
    }
}

/// Random block bytes reach levels, signs of scales and (for F16/BF16) subnormals and
/// signed zeros that quantizing smooth data never produces.
#[test]
fn dequantize_random_blocks_matches_gguf_py() {
    for &ty in GGUF_PY_TYPES {
        let got = dequantize_bytes(ty, &read_bytes(&format!("{ty}.random.q")));
        let want = read_f32(&format!("{ty}.random.deq.f32"));
        assert_eq!(got.len(), ROWS * COLS, "{ty}");
        assert_f32_bits_eq(ty, "dequantize random vs gguf-py", &got, &want);
    }
}

/// F32 has no fixture: quantize and dequantize are copies, checked bit for bit on src.
#[test]
fn f32_is_identity() {
    let src = src();
    let bytes = quant::quantize_to_vec(GgmlType::F32, &src).unwrap();
    let want: Vec<u8> = src.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_bytes_eq(GgmlType::F32, "quantize", &bytes, &want);
    assert_f32_bits_eq(
        GgmlType::F32,
        "dequantize",
        &dequantize_bytes(GgmlType::F32, &bytes),
        &src,
    );
}

/// ggml's dot of weight row r (its quantization of src row r) with activation row 15 − r.
/// Blocks come from ggml's fixture bytes, so this tests the dot alone.
fn check_dot_against_ggml<W: VecDot>() {
    let wt = W::TYPE;
    let at = <W::Act as QuantBlock>::TYPE;
    let w: Vec<W> = blocks(&read_bytes(&format!("{wt}.ggml.q")));
    let a: Vec<W::Act> = blocks(&read_bytes(&format!("{at}.ggml.q")));
    let want = read_f32(&format!("{wt}.ggml.dot.f32"));
    assert_eq!(want.len(), ROWS);
    let per_row = COLS / 32;
    // The scale a relative tolerance is taken against: Σ|w·a| over the dequantized rows, so
    // that a row whose dot cancels to near zero is not held to 1e-5 of that small number.
    let wd = dequantize_bytes(wt, &read_bytes(&format!("{wt}.ggml.q")));
    let ad = dequantize_bytes(at, &read_bytes(&format!("{at}.ggml.q")));
    for r in 0..ROWS {
        let ar = ROWS - 1 - r;
        let got = W::vec_dot(
            &w[r * per_row..(r + 1) * per_row],
            &a[ar * per_row..(ar + 1) * per_row],
        );
        let mag: f64 = wd[r * COLS..(r + 1) * COLS]
            .iter()
            .zip(&ad[ar * COLS..(ar + 1) * COLS])
            .map(|(&x, &y)| (x as f64 * y as f64).abs())
            .sum();
        let tol = 1e-5 * (want[r].abs() as f64).max(mag);
        assert!(
            ((got - want[r]) as f64).abs() <= tol,
            "{wt}·{at} row {r}: got {got:e}, ggml {:e} (tolerance {tol:e})",
            want[r]
        );
    }
}

#[test]
fn vec_dot_matches_ggml() {
    check_dot_against_ggml::<BlockQ4_0>();
    check_dot_against_ggml::<BlockQ4_1>();
    check_dot_against_ggml::<BlockQ5_0>();
    check_dot_against_ggml::<BlockQ5_1>();
    check_dot_against_ggml::<BlockQ8_0>();
}

/// The float dots have no ggml fixture. Their inputs are gguf-py's F16/BF16 encodings of src
/// (and src itself for F32), and the oracle is an f64 dot of those values computed here.
/// Products of two f16 or two bf16 values are exact in f32, so only the final rounding of the
/// f64 sum to f32 separates the two (tolerance: 1 ulp of f32 relative to Σ|x·y|); for F32 each
/// product is rounded to f32 first, which adds at most 2^-24 relative per term.
fn check_float_dot<B: VecDot<Act = B>>(bytes: &[u8], values: &[f32]) {
    let x: Vec<B> = blocks(bytes);
    assert_eq!(x.len(), ROWS * COLS);
    for r in 0..ROWS {
        let ar = ROWS - 1 - r;
        let got = B::vec_dot(&x[r * COLS..(r + 1) * COLS], &x[ar * COLS..(ar + 1) * COLS]);
        let (mut want, mut mag) = (0.0f64, 0.0f64);
        for (&p, &q) in values[r * COLS..(r + 1) * COLS]
            .iter()
            .zip(&values[ar * COLS..(ar + 1) * COLS])
        {
            want += p as f64 * q as f64;
            mag += (p as f64 * q as f64).abs();
        }
        let tol = mag * 2.0f64.powi(-23);
        assert!(
            (got as f64 - want).abs() <= tol,
            "{} row {r}: got {got:e}, f64 dot {want:e}",
            B::TYPE
        );
    }
}

#[test]
fn float_vec_dots_match_f64_dot() {
    let src = src();
    let src_bytes: Vec<u8> = src.iter().flat_map(|x| x.to_le_bytes()).collect();
    check_float_dot::<f32>(&src_bytes, &src);
    check_float_dot::<f16>(
        &read_bytes("F16.gguf-py.q"),
        &read_f32("F16.gguf-py.deq.f32"),
    );
    check_float_dot::<bf16>(
        &read_bytes("BF16.gguf-py.q"),
        &read_f32("BF16.gguf-py.deq.f32"),
    );
}

/// Sanity bounds from each format's definition (not an oracle; the fixtures are): every
/// element comes back within one quantization step of its input, half a step for the
/// rounding formats, plus slack for the f16 rounding of the stored scale.
#[test]
fn round_trip_error_within_one_step() {
    let src = src();
    let step_q4_0 = |b: &[f32]| b.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 8.0;
    let step_q5_0 = |b: &[f32]| b.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 16.0;
    let range = |b: &[f32]| {
        let (lo, hi) = b
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        hi - lo
    };
    let step_q4_1 = |b: &[f32]| range(b) / 15.0;
    let step_q5_1 = |b: &[f32]| range(b) / 31.0;
    let step_q8 = |b: &[f32]| b.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
    type Step<'a> = &'a dyn Fn(&[f32]) -> f32;
    // (type, step of a 32-block, steps of error allowed, largest |level| times the scale)
    let cases: [(GgmlType, Step, f32, f32); 6] = [
        // Symmetric 4/5-bit: the side opposite the extreme value clamps, up to one step.
        (GgmlType::Q4_0, &step_q4_0, 1.0, 8.0),
        (GgmlType::Q5_0, &step_q5_0, 1.0, 16.0),
        (GgmlType::Q4_1, &step_q4_1, 0.5, 15.0),
        (GgmlType::Q5_1, &step_q5_1, 0.5, 31.0),
        (GgmlType::Q8_0, &step_q8, 0.5, 127.0),
        (GgmlType::Q8_1, &step_q8, 0.5, 127.0),
    ];
    for (ty, step, steps, levels) in cases {
        let q = quant::quantize_to_vec(ty, &src).unwrap();
        let d = dequantize_bytes(ty, &q);
        for (b, (x, y)) in src.chunks(32).zip(d.chunks(32)).enumerate() {
            let s = step(x);
            // The stored scale (and min) are f16: off by half an ulp, 2^-11 relative or
            // 2^-25 absolute where subnormal (row 10's scales are), times the largest level.
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let tol =
                s * steps * 1.001 + amax * 2.0f32.powi(-9) + (levels + 1.0) * 2.0f32.powi(-25);
            for (j, (&xi, &yi)) in x.iter().zip(y).enumerate() {
                assert!(
                    (xi - yi).abs() <= tol,
                    "{ty} block {b} elem {j}: {xi} -> {yi} (step {s})"
                );
            }
        }
    }
    // The float formats: one rounding of 2^-11 (f16) or 2^-8 (bf16) relative. src stays
    // inside f16's normal range except row 10, whose values may be f16 subnormals.
    for (ty, rel, floor) in [
        (GgmlType::F16, 2.0f32.powi(-11), 2.0f32.powi(-25)),
        (GgmlType::BF16, 2.0f32.powi(-8), 0.0),
    ] {
        let d = dequantize_bytes(ty, &quant::quantize_to_vec(ty, &src).unwrap());
        for (i, (&x, &y)) in src.iter().zip(&d).enumerate() {
            assert!(
                (x - y).abs() <= x.abs() * rel + floor,
                "{ty} elem {i}: {x} -> {y}"
            );
        }
    }
}

#[test]
fn byte_entry_points_reject_wrong_lengths() {
    let src = vec![0.5f32; 64];
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
    ] {
        let good = ty.bytes_for(64).unwrap() as usize;
        // 8-aligned buffers, so only the lengths can be wrong.
        let mut words = vec![0u64; good / 8 + 8];
        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);

        // Source not a whole number of blocks (for F16/BF16 every length is).
        if ty.block_size() > 1 {
            assert_eq!(
                quant::quantize(ty, &src[..40], &mut buf[..good]),
                Err(QuantError::NotBlockMultiple {
                    ty,
                    n: 40,
                    block: 32
                })
            );
            assert!(matches!(
                quant::quantize_to_vec(ty, &src[..33]),
                Err(QuantError::NotBlockMultiple { .. })
            ));
            let mut out = vec![0.0f32; 40];
            assert!(matches!(
                quant::dequantize(ty, &buf[..good], &mut out),
                Err(QuantError::NotBlockMultiple { .. })
            ));
        }
        // Output one byte short and one block long.
        for len in [good - 1, good + ty.type_size()] {
            assert_eq!(
                quant::quantize(ty, &src, &mut buf[..len]),
                Err(QuantError::WrongByteLength {
                    ty,
                    n: 64,
                    expected: good,
                    got: len
                })
            );
            let mut out = vec![0.0f32; 64];
            assert_eq!(
                quant::dequantize(ty, &buf[..len], &mut out),
                Err(QuantError::WrongByteLength {
                    ty,
                    n: 64,
                    expected: good,
                    got: len
                })
            );
            assert!(matches!(
                quant::dequantize_unaligned(ty, &buf[..len], &mut out),
                Err(QuantError::WrongByteLength { .. })
            ));
        }
        // Right length at an odd address: every block type here holds an f16 field.
        assert_eq!(
            quant::quantize(ty, &src, &mut buf[1..good + 1]),
            Err(QuantError::Misaligned { ty })
        );
        // And the right length, aligned, works.
        quant::quantize(ty, &src, &mut buf[..good]).unwrap();
        let mut out = vec![0.0f32; 64];
        quant::dequantize(ty, &buf[..good], &mut out).unwrap();
    }
}
