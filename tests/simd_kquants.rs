//! The AVX2 K-quant kernels (`quant::simd::avx2_kquants`) against the scalar reference.
//!
//! Dot products: the kernels sum the same integer products exactly and differ from the
//! reference only in the order of f32 operations, so they must agree within 1e-5 of
//! Σ|w·a| (computed in f64 from the dequantized blocks); real reordering error is ~1e-7.
//! The Q8_K quantizer must be byte-identical to the reference.
//!
//! Run `cargo test --release --test simd_kquants -- --ignored --nocapture` for timings.
#![cfg(target_arch = "x86_64")]

mod common;

use std::time::Instant;

use bytemuck::Zeroable;
use common::Rng;
use half::f16;
use ledge::quant::simd::avx2_kquants as avx2;
use ledge::quant::{
    BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QuantBlock, VecDot,
    QK_K,
};

/// Whether the kernels can run here; on an AVX2 machine they must (so the tests cannot
/// pass by skipping where they should run).
fn runnable() -> bool {
    if avx2::available() {
        return true;
    }
    assert!(
        !is_x86_feature_detected!("avx2"),
        "AVX2 detected but avx2_kquants::available() is false"
    );
    eprintln!("skipped: this CPU has no AVX2");
    false
}

fn uniform(rng: &mut Rng) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

/// Roughly normal values with occasional large outliers (as in real weights and
/// activations), so that per-block scales and the first-maximum rule get exercised.
fn random_row(rng: &mut Rng, n: usize) -> Vec<f32> {
    let scale = 0.01 + 2.0 * uniform(rng);
    (0..n)
        .map(|_| {
            let g = (0..4).map(|_| uniform(rng)).sum::<f32>() - 2.0;
            let outlier = if rng.below(64) == 0 {
                5.0 + 20.0 * uniform(rng)
            } else {
                1.0
            };
            scale * g * outlier
        })
        .collect()
}

/// A finite f16 of moderate magnitude (random bytes could be NaN or huge).
fn random_f16(rng: &mut Rng) -> f16 {
    let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
    f16::from_f32(sign * (0.0005 + 0.05 * uniform(rng)))
}

/// A well-formed Q8_K block with random quants in -127..=127 (the quantizer never makes
/// -128) and matching `bsums`.
fn random_q8k(rng: &mut Rng) -> BlockQ8K {
    let mut b = BlockQ8K::zeroed();
    b.d = 0.001 + 0.1 * uniform(rng);
    for q in b.qs.iter_mut() {
        *q = (rng.below(255) as i32 - 127) as i8;
    }
    for (s, q16) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = q16.iter().map(|&q| q as i16).sum();
    }
    b
}

/// A block of random bytes with its f16 scales replaced by finite ones.
fn random_raw<B: bytemuck::Pod>(rng: &mut Rng, fix: impl Fn(&mut B, &mut Rng)) -> B {
    let mut b: B = bytemuck::pod_read_unaligned(&rng.bytes(std::mem::size_of::<B>()));
    fix(&mut b, rng);
    b
}

trait RawBlock: Sized {
    fn random(rng: &mut Rng) -> Self;
}

impl RawBlock for BlockQ2K {
    fn random(rng: &mut Rng) -> Self {
        random_raw(rng, |b: &mut Self, r| {
            b.d = random_f16(r);
            b.dmin = random_f16(r);
        })
    }
}
impl RawBlock for BlockQ3K {
    fn random(rng: &mut Rng) -> Self {
        random_raw(rng, |b: &mut Self, r| b.d = random_f16(r))
    }
}
impl RawBlock for BlockQ4K {
    fn random(rng: &mut Rng) -> Self {
        random_raw(rng, |b: &mut Self, r| {
            b.d = random_f16(r);
            b.dmin = random_f16(r);
        })
    }
}
impl RawBlock for BlockQ5K {
    fn random(rng: &mut Rng) -> Self {
        random_raw(rng, |b: &mut Self, r| {
            b.d = random_f16(r);
            b.dmin = random_f16(r);
        })
    }
}
impl RawBlock for BlockQ6K {
    fn random(rng: &mut Rng) -> Self {
        random_raw(rng, |b: &mut Self, r| b.d = random_f16(r))
    }
}
impl RawBlock for BlockIQ4XS {
    fn random(rng: &mut Rng) -> Self {
        random_raw(rng, |b: &mut Self, r| b.d = random_f16(r))
    }
}

fn dequant<B: QuantBlock>(b: &[B]) -> Vec<f32> {
    let mut out = vec![0.0; b.len() * B::BLOCK_SIZE];
    B::dequantize(b, &mut out);
    out
}

/// Compares `fast` with the reference over many rows of 1, 3, 7, 16 and 40 super-blocks,
/// with weights and activations each either reference-quantized from random rows or
/// random well-formed blocks.
fn check_dot<W>(fast: fn(&[W], &[BlockQ8K]) -> f32, seed: u64)
where
    W: VecDot<Act = BlockQ8K> + RawBlock,
{
    if !runnable() {
        return;
    }
    let mut rng = Rng(seed);
    let mut worst = 0.0f64;
    for nb in [1, 3, 7, 16, 40] {
        for row in 0..60 {
            let n = nb * QK_K;
            let w: Vec<W> = if row % 2 == 0 {
                let mut w = vec![W::zeroed(); nb];
                W::quantize(&random_row(&mut rng, n), &mut w);
                w
            } else {
                (0..nb).map(|_| W::random(&mut rng)).collect()
            };
            let a: Vec<BlockQ8K> = if row % 4 < 2 {
                let mut a = vec![BlockQ8K::zeroed(); nb];
                BlockQ8K::quantize(&random_row(&mut rng, n), &mut a);
                a
            } else {
                (0..nb).map(|_| random_q8k(&mut rng)).collect()
            };
            let reference = W::vec_dot(&w, &a) as f64;
            let got = fast(&w, &a) as f64;
            let mag: f64 = (dequant(&w).iter().zip(dequant(&a)))
                .map(|(&x, y)| (x as f64 * y as f64).abs())
                .sum();
            assert!(mag > 0.0, "degenerate test row");
            let rel = (got - reference).abs() / mag;
            assert!(
                rel <= 1e-5,
                "{nb} blocks, row {row}: avx2 {got} vs scalar {reference} (Σ|w·a| = {mag})"
            );
            worst = worst.max(rel);
        }
    }
    eprintln!("worst |avx2 - scalar| / Σ|w·a| = {worst:.2e}");
}

#[test]
fn q4_k_matches_scalar() {
    check_dot::<BlockQ4K>(avx2::vec_dot_q4k_q8k, 1);
}

#[test]
fn q6_k_matches_scalar() {
    check_dot::<BlockQ6K>(avx2::vec_dot_q6k_q8k, 2);
}

#[test]
fn q5_k_matches_scalar() {
    check_dot::<BlockQ5K>(avx2::vec_dot_q5k_q8k, 3);
}

#[test]
fn q3_k_matches_scalar() {
    check_dot::<BlockQ3K>(avx2::vec_dot_q3k_q8k, 4);
}

#[test]
fn q2_k_matches_scalar() {
    check_dot::<BlockQ2K>(avx2::vec_dot_q2k_q8k, 5);
}

#[test]
fn iq4_xs_matches_scalar() {
    check_dot::<BlockIQ4XS>(avx2::vec_dot_iq4xs_q8k, 6);
}

fn assert_q8k_identical(x: &[f32], what: &str) {
    let nb = x.len() / QK_K;
    let mut want = vec![BlockQ8K::zeroed(); nb];
    let mut got = vec![BlockQ8K::zeroed(); nb];
    BlockQ8K::quantize(x, &mut want);
    avx2::quantize_q8k(x, &mut got);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            bytemuck::bytes_of(g),
            bytemuck::bytes_of(w),
            "{what}: block {i} differs\navx2:   {g:?}\nscalar: {w:?}"
        );
    }
}

#[test]
fn quantize_q8_k_is_byte_identical() {
    if !runnable() {
        return;
    }
    let mut rng = Rng(7);
    for nb in [1, 3, 7, 16] {
        for _ in 0..100 {
            assert_q8k_identical(&random_row(&mut rng, nb * QK_K), "random row");
        }
    }

    // Exact ties: with the maximum at ±127 the scale is ∓1, so halves must round to even.
    for sign in [1.0f32, -1.0] {
        let mut x: Vec<f32> = (0..QK_K)
            .map(|_| (rng.below(509) as f32 - 254.0) * 0.5)
            .collect();
        x[100] = 127.0 * sign;
        assert_q8k_identical(&x, "ties");
    }

    // +m and -m both of largest magnitude: the first one sets the sign of the scale.
    for first in [5, 200] {
        let mut x = random_row(&mut rng, QK_K);
        let m = x.iter().fold(0.0f32, |a, v| a.max(v.abs())) * 2.0;
        x[first] = -m;
        x[255 - first / 2] = m;
        assert_q8k_identical(&x, "tied maximum");
    }

    // Zeros, a single value, tiny and huge magnitudes, and non-finite values (which go to
    // the reference itself).
    let mut special = vec![vec![0.0f32; QK_K], vec![-0.0f32; QK_K]];
    let mut one = vec![0.0f32; QK_K];
    one[17] = -3.0e-30;
    special.push(one);
    special.push(
        random_row(&mut rng, QK_K)
            .iter()
            .map(|v| v * 1e30)
            .collect(),
    );
    special.push(
        random_row(&mut rng, QK_K)
            .iter()
            .map(|v| v * 1e-38)
            .collect(),
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = random_row(&mut rng, QK_K);
        x[33] = bad;
        special.push(x);
    }
    for x in &special {
        assert_q8k_identical(x, "special block");
    }
}

/// Rough speed of each kernel against the scalar reference, per 256-weight block, over rows
/// of 16 blocks (ignored by default: timings on a shared machine are noise for a pass/fail
/// test).
#[test]
#[ignore]
fn timings() {
    if !runnable() {
        return;
    }
    const NB: usize = 16;
    const ROWS: usize = 256;
    const REPS: usize = 10;
    // Best of several tries: the machine is shared, and the minimum is the least noisy.
    const TRIES: usize = 5;

    fn time_dot<W: VecDot<Act = BlockQ8K> + RawBlock>(
        name: &str,
        fast: fn(&[W], &[BlockQ8K]) -> f32,
    ) {
        let mut rng = Rng(99);
        let w: Vec<W> = (0..NB * ROWS).map(|_| W::random(&mut rng)).collect();
        let a: Vec<BlockQ8K> = (0..NB).map(|_| random_q8k(&mut rng)).collect();
        let run = |f: fn(&[W], &[BlockQ8K]) -> f32| {
            let mut best = f64::INFINITY;
            for _ in 0..TRIES {
                let t = Instant::now();
                let mut s = 0.0f32;
                for _ in 0..REPS {
                    for row in w.chunks_exact(NB) {
                        s += f(std::hint::black_box(row), &a);
                    }
                }
                std::hint::black_box(s);
                best = best.min(t.elapsed().as_secs_f64());
            }
            best / (REPS * ROWS * NB) as f64 * 1e9
        };
        let (scalar, fast) = (run(W::vec_dot), run(fast));
        eprintln!(
            "{name:8} scalar {scalar:7.1} ns/block  avx2 {fast:6.1} ns/block  x{:.1}",
            scalar / fast
        );
    }
    time_dot::<BlockQ2K>("q2_k", avx2::vec_dot_q2k_q8k);
    time_dot::<BlockQ3K>("q3_k", avx2::vec_dot_q3k_q8k);
    time_dot::<BlockQ4K>("q4_k", avx2::vec_dot_q4k_q8k);
    time_dot::<BlockQ5K>("q5_k", avx2::vec_dot_q5k_q8k);
    time_dot::<BlockQ6K>("q6_k", avx2::vec_dot_q6k_q8k);
    time_dot::<BlockIQ4XS>("iq4_xs", avx2::vec_dot_iq4xs_q8k);

    let mut rng = Rng(98);
    let x = random_row(&mut rng, NB * ROWS * QK_K);
    let mut out = vec![BlockQ8K::zeroed(); NB * ROWS];
    let run = |f: fn(&[f32], &mut [BlockQ8K]), out: &mut [BlockQ8K]| {
        let mut best = f64::INFINITY;
        for _ in 0..TRIES {
            let t = Instant::now();
            for _ in 0..REPS {
                f(std::hint::black_box(&x), out);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        best / (REPS * NB * ROWS) as f64 * 1e9
    };
    let scalar = run(BlockQ8K::quantize, &mut out);
    let fast = run(avx2::quantize_q8k, &mut out);
    eprintln!(
        "q8_k quantize scalar {scalar:7.1} ns/block  avx2 {fast:6.1} ns/block  x{:.1}",
        scalar / fast
    );
}
