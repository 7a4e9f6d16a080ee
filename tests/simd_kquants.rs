//! The K-quant and IQ4_XS kernels of every SIMD kernel set this CPU offers (AVX2 on x86,
//! NEON with and without dotprod on aarch64) against the scalar reference.
//!
//! Dot products: the kernels sum the same integer products exactly and differ from the
//! reference only in the order of f32 operations, so they must agree within 1e-5 of
//! Σ|w·a| (computed in f64 from the dequantized blocks); real reordering error is ~1e-7.
//! The Q8_K quantizers must be byte-identical to the reference.
//!
//! Run `cargo test --release --test simd_kquants -- --ignored --nocapture` for timings.

mod common;

use std::time::Instant;

use bytemuck::Zeroable;
use common::Rng;
use half::f16;
use ledge::quant::simd::{available, DotFn, KernelSet};
use ledge::quant::{
    BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QuantBlock, VecDot,
    QK_K,
};

/// The SIMD sets to test (all but the scalar reference). Where the CPU's features call for
/// a set it must be offered, so that the tests cannot pass by skipping where they should run.
fn simd_sets() -> Vec<KernelSet> {
    let sets: Vec<KernelSet> = available()
        .into_iter()
        .filter(|k| k.name != "scalar")
        .collect();
    let names: Vec<_> = sets.iter().map(|k| k.name).collect();
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        names.contains(&"avx2"),
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"),
        "avx2 offered iff AVX2+FMA+F16C: {names:?}"
    );
    #[cfg(target_arch = "aarch64")]
    assert_eq!(
        names.contains(&"neon-dotprod"),
        std::arch::is_aarch64_feature_detected!("dotprod"),
        "neon-dotprod offered iff dotprod: {names:?}"
    );
    #[cfg(target_arch = "aarch64")]
    assert!(names.contains(&"neon"), "{names:?}");
    if names.is_empty() {
        eprintln!("skipped: no SIMD kernel set on this CPU");
    } else {
        eprintln!("kernel sets under test: {names:?}");
    }
    sets
}

/// Row lengths in super-blocks and rows per length: smaller under emulation (qemu runs the
/// aarch64 tests about an order of magnitude slower).
fn sizes() -> (&'static [usize], usize) {
    if cfg!(target_arch = "x86_64") {
        (&[1, 3, 7, 16, 40], 60)
    } else {
        (&[1, 3, 7, 16], 24)
    }
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

/// Compares each set's kernel with the reference over many rows of 1, 3, 7, 16 and 40
/// super-blocks, with weights and activations each either reference-quantized from random
/// rows or random well-formed blocks.
fn check_dot<W>(pick: fn(&KernelSet) -> DotFn<W, BlockQ8K>, seed: u64)
where
    W: VecDot<Act = BlockQ8K> + RawBlock,
{
    for set in simd_sets() {
        check_dot_set(set.name, pick(&set), seed);
    }
}

fn check_dot_set<W>(name: &str, fast: DotFn<W, BlockQ8K>, seed: u64)
where
    W: VecDot<Act = BlockQ8K> + RawBlock,
{
    let mut rng = Rng(seed);
    let mut worst = 0.0f64;
    let (lengths, rows) = sizes();
    for &nb in lengths {
        for row in 0..rows {
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
                "{nb} blocks, row {row}: {name} {got} vs scalar {reference} (Σ|w·a| = {mag})"
            );
            worst = worst.max(rel);
        }
    }
    eprintln!("worst |{name} - scalar| / Σ|w·a| = {worst:.2e}");
}

#[test]
fn q4_k_matches_scalar() {
    check_dot::<BlockQ4K>(|k| k.q4_k, 1);
}

#[test]
fn q6_k_matches_scalar() {
    check_dot::<BlockQ6K>(|k| k.q6_k, 2);
}

#[test]
fn q5_k_matches_scalar() {
    check_dot::<BlockQ5K>(|k| k.q5_k, 3);
}

#[test]
fn q3_k_matches_scalar() {
    check_dot::<BlockQ3K>(|k| k.q3_k, 4);
}

#[test]
fn q2_k_matches_scalar() {
    check_dot::<BlockQ2K>(|k| k.q2_k, 5);
}

#[test]
fn iq4_xs_matches_scalar() {
    check_dot::<BlockIQ4XS>(|k| k.iq4_xs, 6);
}

fn assert_q8k_identical(set: &KernelSet, x: &[f32], what: &str) {
    let nb = x.len() / QK_K;
    let mut want = vec![BlockQ8K::zeroed(); nb];
    let mut got = vec![BlockQ8K::zeroed(); nb];
    BlockQ8K::quantize(x, &mut want);
    (set.quantize_q8_k)(x, &mut got);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            bytemuck::bytes_of(g),
            bytemuck::bytes_of(w),
            "{what}: block {i} differs\n{}: {g:?}\nscalar: {w:?}",
            set.name
        );
    }
}

#[test]
fn quantize_q8_k_is_byte_identical() {
    for set in simd_sets() {
        q8k_identical_for(&set);
    }
}

fn q8k_identical_for(set: &KernelSet) {
    let assert_q8k_identical = |x: &[f32], what: &str| assert_q8k_identical(set, x, what);
    let mut rng = Rng(7);
    let reps = if cfg!(target_arch = "x86_64") {
        100
    } else {
        25
    };
    for nb in [1, 3, 7, 16] {
        for _ in 0..reps {
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
    for set in simd_sets() {
        timings_for(&set);
    }
}

fn timings_for(set: &KernelSet) {
    const NB: usize = 16;
    const ROWS: usize = 256;
    const REPS: usize = 10;
    // Best of several tries: the machine is shared, and the minimum is the least noisy.
    const TRIES: usize = 5;

    fn time_dot<W: VecDot<Act = BlockQ8K> + RawBlock>(
        set: &str,
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
            "{name:8} scalar {scalar:7.1} ns/block  {set} {fast:6.1} ns/block  x{:.1}",
            scalar / fast
        );
    }
    time_dot::<BlockQ2K>(set.name, "q2_k", set.q2_k);
    time_dot::<BlockQ3K>(set.name, "q3_k", set.q3_k);
    time_dot::<BlockQ4K>(set.name, "q4_k", set.q4_k);
    time_dot::<BlockQ5K>(set.name, "q5_k", set.q5_k);
    time_dot::<BlockQ6K>(set.name, "q6_k", set.q6_k);
    time_dot::<BlockIQ4XS>(set.name, "iq4_xs", set.iq4_xs);

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
    let fast = run(set.quantize_q8_k, &mut out);
    eprintln!(
        "q8_k quantize scalar {scalar:7.1} ns/block  {} {fast:6.1} ns/block  x{:.1}",
        set.name,
        scalar / fast
    );
}
