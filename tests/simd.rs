//! Every kernel set this CPU offers, entry by entry, against the scalar reference
//! (`quant::simd::SCALAR`, itself tested against ggml in quant_legacy.rs / quant_k.rs).
//!
//! Tolerances:
//! - The AVX2 and NEON sets' legacy block dots (Q4_0 … Q8_0, IQ4_NL), and the NEON sets'
//!   Q2_K and IQ4_XS dots, are bit-identical to the scalar reference by construction
//!   (integer block sums, then the reference's own f32 ops in its order), and asserted so
//!   (`EXACT_*` below). Every other entry gets the tolerance below.
//! - Dots: |fast − scalar| ≤ 1e-5 · M (+1e-30 absolute), M = Σ over blocks of
//!   max|w| · Σ|a| (for the floats, blocks of one element: M = Σ|w·a|). Inside a block both
//!   sum the integer products exactly; they differ only in how the per-block (or, for
//!   floats, per-element) f32 terms are added up (lane-wise with FMA vs. one running sum, or
//!   an f64 sum for the float reference). Each rounding moves the result by at most 2⁻²⁴ of
//!   the running sum, and with random signs these errors add like a random walk. M rather
//!   than Σ|w·a| because formats with a minimum (w = d·q + m) sum d·q·a and m·Σa separately,
//!   and those terms can be far larger than w·a when they cancel (an outlier block with
//!   m = −60 and w ≈ 0); M bounds them. Measured with the AVX2 set: the worst |diff|/M is
//!   ~2e-7 (f32/f16 against the f64 reference), ≤ 1.5e-7 for the block formats, while even
//!   one wrong weight in the longest rows here moves the dot by ~1e-4 of M.
//! - Activation quantizers: identical scale (`d`), each level within ±1 (what a ggml-style
//!   AVX quantizer rounding ties to even, or scaling by 127/amax, may change), Q8_1's `s`
//!   equal to its own `d·Σq` up to f16 rounding, Q8_K's `bsums` equal to the sums of its own
//!   levels. The AVX2 Q8_0/Q8_1 quantizers here are moreover exact (same bytes), which is
//!   asserted separately, including at exact .5 ties and for degenerate blocks.

mod common;

use bytemuck::Zeroable;
use common::Rng;
use half::f16;
use ledge::quant::simd::{available, select, KernelSet, SimdError, SCALAR};
use ledge::quant::*;

/// The sets under test. Asserts that every set this CPU's features call for is offered (so
/// the tests cannot pass by skipping a set that should run), and logs which ones run.
fn sets() -> Vec<KernelSet> {
    let sets = available();
    let names: Vec<_> = sets.iter().map(|k| k.name).collect();
    assert_eq!(names[0], "scalar");
    #[cfg(target_arch = "aarch64")]
    {
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        let i8mm = dotprod && std::arch::is_aarch64_feature_detected!("i8mm");
        let want: &[&str] = if i8mm {
            &["scalar", "neon", "neon-dotprod", "neon-i8mm"]
        } else if dotprod {
            &["scalar", "neon", "neon-dotprod"]
        } else {
            &["scalar", "neon"]
        };
        assert_eq!(names, want, "dotprod detected: {dotprod}, i8mm: {i8mm}");
    }
    eprintln!("kernel sets under test: {names:?}");
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        assert!(
            names.contains(&"avx2"),
            "this CPU has AVX2+FMA+F16C but the avx2 set is not offered: {names:?}"
        );
        assert_eq!(
            names.contains(&"avx2-vnni"),
            is_x86_feature_detected!("avxvnni"),
            "avx2-vnni offered exactly where the CPU has AVX-VNNI: {names:?}"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
    {
        assert!(
            names.contains(&"avx512-vnni"),
            "this CPU has AVX-512 VNNI but the avx512 set is not offered: {names:?}"
        );
    }
    sets
}

/// `LEDGE_SIMD`'s names: empty or unset is the best set, a family name (`neon`) its best
/// variant, a specific name (`neon-dotprod`) only that set, and a set the CPU lacks or an
/// unknown name is an error.
#[test]
fn ledge_simd_selects() {
    let names: Vec<_> = sets().iter().map(|k| k.name).collect();
    let best = *names.last().unwrap();
    assert_eq!(select(None).unwrap().name, best);
    assert_eq!(select(Some("")).unwrap().name, best);
    assert_eq!(select(Some("scalar")).unwrap().name, "scalar");
    assert!(matches!(select(Some("sse9")), Err(SimdError::Unknown(_))));
    assert!(matches!(select(Some("neon-")), Err(SimdError::Unknown(_))));
    #[cfg(target_arch = "aarch64")]
    {
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        let i8mm = dotprod && std::arch::is_aarch64_feature_detected!("i8mm");
        let neon = select(Some("neon")).unwrap().name;
        let want = match (dotprod, i8mm) {
            (_, true) => "neon-i8mm",
            (true, false) => "neon-dotprod",
            _ => "neon",
        };
        assert_eq!(neon, want);
        match select(Some("neon-dotprod")) {
            Ok(k) => assert!(dotprod && k.name == "neon-dotprod"),
            Err(e) => assert!(!dotprod && matches!(e, SimdError::Unsupported(..)), "{e}"),
        }
        match select(Some("neon-i8mm")) {
            Ok(k) => assert!(i8mm && k.name == "neon-i8mm"),
            Err(e) => assert!(!i8mm && matches!(e, SimdError::Unsupported(..)), "{e}"),
        }
        assert!(matches!(
            select(Some("avx2")),
            Err(SimdError::Unsupported(..))
        ));
    }
    #[cfg(target_arch = "x86_64")]
    for name in ["neon", "neon-dotprod", "neon-i8mm"] {
        assert!(matches!(
            select(Some(name)),
            Err(SimdError::Unsupported(..))
        ));
    }
}

/// Uniform in (-1, 1), never zero.
fn unit(rng: &mut Rng) -> f32 {
    let v = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    if v == 0.0 {
        0.5
    } else {
        v
    }
}

/// Activation-like data: mostly small, one value in 40 an outlier up to ±60.
fn data(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = unit(rng);
            if rng.below(40) == 0 {
                v * 60.0
            } else {
                v
            }
        })
        .collect()
}

fn blocks<B: QuantBlock>(x: &[f32]) -> Vec<B> {
    let mut out = vec![B::zeroed(); x.len() / B::BLOCK_SIZE];
    B::quantize(x, &mut out);
    out
}

/// Blocks of random bytes (every bit pattern of the levels and sub-scales) whose f16 scale
/// fields, at the byte offsets given, are replaced by sane random scales so that the dot
/// stays finite.
fn random_blocks<B: QuantBlock>(rng: &mut Rng, n: usize, f16_fields: &[usize]) -> Vec<B> {
    let size = std::mem::size_of::<B>();
    let mut bytes = rng.bytes(n * size);
    for b in bytes.chunks_exact_mut(size) {
        for &off in f16_fields {
            let s = f16::from_f32(unit(rng) * 0.05).to_bits().to_le_bytes();
            b[off..off + 2].copy_from_slice(&s);
        }
    }
    let mut out = vec![B::zeroed(); n];
    bytemuck::cast_slice_mut::<B, u8>(&mut out).copy_from_slice(&bytes);
    out
}

fn dequant<B: QuantBlock>(b: &[B]) -> Vec<f32> {
    let mut out = vec![0.0; b.len() * B::BLOCK_SIZE];
    B::dequantize(b, &mut out);
    out
}

type Dot<W, A> = fn(&[W], &[A]) -> f32;

/// Compares one dot entry of `set` with SCALAR's over many rows sharing one activation row.
fn check_dot<W: QuantBlock, A: QuantBlock>(
    what: &str,
    exact: bool,
    set: &KernelSet,
    fast: Dot<W, A>,
    reference: Dot<W, A>,
    rows: &[Vec<W>],
    act: &[A],
) {
    let a = dequant(act);
    let mut nonzero = 0;
    for (r, w) in rows.iter().enumerate() {
        let got = fast(w, act);
        let want = reference(w, act);
        if exact {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{} {what} row {r}: {got} vs {want}",
                set.name
            );
        }
        let mag: f64 = dequant(w)
            .chunks_exact(W::BLOCK_SIZE)
            .zip(a.chunks_exact(W::BLOCK_SIZE))
            .map(|(x, y)| {
                let wmax = x.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
                wmax * y.iter().map(|&v| (v as f64).abs()).sum::<f64>()
            })
            .sum();
        assert!(mag > 0.0, "{what}: degenerate test data");
        nonzero += (want != 0.0) as usize;
        let tol = 1e-5 * mag + 1e-30;
        assert!(
            ((got - want) as f64).abs() <= tol,
            "{} {what} row {r} ({} blocks): {got} vs scalar {want} (|diff| {} > {tol})",
            set.name,
            w.len(),
            (got - want).abs()
        );
    }
    // A single block's integer sum can be 0 by chance, but not every row's.
    assert!(
        nonzero > rows.len() / 2,
        "{what}: the reference returned mostly zeros"
    );
}

/// Block counts per row: one block, odd counts, and rows of 4096+ weights.
fn block_counts(block: usize) -> Vec<usize> {
    let long = if block == 32 { [128, 136] } else { [16, 17] };
    vec![1, 3, 7, 9, long[0], long[1]]
}

/// Runs `check_dot` for a weight type on quantized rows and on random-byte rows.
fn dots_for<W: QuantBlock, A: QuantBlock>(
    what: &str,
    exact_in: &[&str],
    seed: u64,
    f16_fields: &[usize],
    pick: fn(&KernelSet) -> Dot<W, A>,
) {
    assert_eq!(W::BLOCK_SIZE, A::BLOCK_SIZE);
    let mut rng = Rng(seed);
    for set in sets() {
        let exact = exact_in.contains(&set.name);
        for nb in block_counts(W::BLOCK_SIZE) {
            let n = nb * W::BLOCK_SIZE;
            let n_rows = if nb > 10 { 8 } else { 24 };
            let act: Vec<A> = blocks(&data(&mut rng, n));
            let quantized: Vec<Vec<W>> = (0..n_rows).map(|_| blocks(&data(&mut rng, n))).collect();
            check_dot(
                what,
                exact,
                &set,
                pick(&set),
                pick(&SCALAR),
                &quantized,
                &act,
            );
            let random: Vec<Vec<W>> = (0..n_rows)
                .map(|_| random_blocks(&mut rng, nb, f16_fields))
                .collect();
            check_dot(what, exact, &set, pick(&set), pick(&SCALAR), &random, &act);
        }
    }
}

macro_rules! dot_test {
    ($name:ident, $w:ty, $a:ty, $field:ident, [$($f16:ident),*], $exact:expr) => {
        #[test]
        fn $name() {
            dots_for::<$w, $a>(
                stringify!($field),
                $exact,
                0x5eed ^ stringify!($name).len() as u64,
                &[$(std::mem::offset_of!($w, $f16)),*],
                |k| k.$field,
            );
        }
    };
}

/// Sets whose legacy block dots return the scalar reference's bits.
const EXACT_LEGACY: &[&str] = &[
    "avx2",
    "avx2-vnni",
    "avx512-vnni",
    "avx512-amx",
    "neon",
    "neon-dotprod",
    "neon-i8mm",
];
/// Sets whose Q2_K and IQ4_XS dots do (the reference sums those per (sub-)block too).
const EXACT_Q2K_IQ4XS: &[&str] = &["neon", "neon-dotprod", "neon-i8mm"];

dot_test!(dot_q4_0, BlockQ4_0, BlockQ8_0, q4_0, [d], EXACT_LEGACY);
dot_test!(dot_q4_1, BlockQ4_1, BlockQ8_1, q4_1, [d, m], EXACT_LEGACY);
dot_test!(dot_q5_0, BlockQ5_0, BlockQ8_0, q5_0, [d], EXACT_LEGACY);
dot_test!(dot_q5_1, BlockQ5_1, BlockQ8_1, q5_1, [d, m], EXACT_LEGACY);
dot_test!(dot_q8_0, BlockQ8_0, BlockQ8_0, q8_0, [d], EXACT_LEGACY);
dot_test!(dot_iq4_nl, BlockIQ4NL, BlockQ8_0, iq4_nl, [d], EXACT_LEGACY);
dot_test!(
    dot_q2_k,
    BlockQ2K,
    BlockQ8K,
    q2_k,
    [d, dmin],
    EXACT_Q2K_IQ4XS
);
dot_test!(dot_q3_k, BlockQ3K, BlockQ8K, q3_k, [d], &[]);
dot_test!(dot_q4_k, BlockQ4K, BlockQ8K, q4_k, [d, dmin], &[]);
dot_test!(dot_q5_k, BlockQ5K, BlockQ8K, q5_k, [d, dmin], &[]);
dot_test!(dot_q6_k, BlockQ6K, BlockQ8K, q6_k, [d], &[]);
dot_test!(
    dot_iq4_xs,
    BlockIQ4XS,
    BlockQ8K,
    iq4_xs,
    [d],
    EXACT_Q2K_IQ4XS
);

/// Float rows: every length from 1 to 70 (all tail sizes around the 32-wide main loop),
/// then long ones.
fn float_dots<T: QuantBlock>(what: &str, pick: fn(&KernelSet) -> Dot<T, T>) {
    let mut rng = Rng(0xf10a7 ^ what.len() as u64);
    let lens: Vec<usize> = (1..=70).chain([4096, 4099, 4445]).collect();
    for set in sets() {
        for &n in &lens {
            let act: Vec<T> = blocks(&data(&mut rng, n));
            let rows: Vec<Vec<T>> = (0..8).map(|_| blocks(&data(&mut rng, n))).collect();
            check_dot(what, false, &set, pick(&set), pick(&SCALAR), &rows, &act);
        }
    }
}

#[test]
fn dot_f32() {
    float_dots::<f32>("f32", |k| k.f32);
}

#[test]
fn dot_f16() {
    float_dots::<f16>("f16", |k| k.f16);
}

#[test]
fn dot_bf16() {
    float_dots::<half::bf16>("bf16", |k| k.bf16);
}

/// out += w·v (attention's value sum): every length 1..=70 and long rows, random w, v and
/// starting out. Tolerance: FMA rounds once where the reference rounds twice, so each element
/// may differ by one rounding of |w·v| plus one of the sum: 2⁻²³·(|out| + |w·v|).
#[test]
fn axpy_f16() {
    let mut rng = Rng(0xa4b9);
    let lens: Vec<usize> = (1..=70).chain([64, 128, 256, 4099]).collect();
    for set in sets() {
        for &n in &lens {
            let v: Vec<f16> = data(&mut rng, n)
                .iter()
                .map(|&x| f16::from_f32(x))
                .collect();
            let start = data(&mut rng, n);
            let w = unit(&mut rng) * 3.0;
            let (mut got, mut want) = (start.clone(), start.clone());
            (set.axpy_f16)(&mut got, w, &v);
            (SCALAR.axpy_f16)(&mut want, w, &v);
            for i in 0..n {
                let bound = 2f32.powi(-23) * (start[i].abs() + (w * v[i].to_f32()).abs()) + 1e-30;
                assert!(
                    (got[i] - want[i]).abs() <= bound,
                    "{} axpy_f16 n={n} i={i}: {} vs {}",
                    set.name,
                    got[i],
                    want[i]
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Activation quantizers.

/// Rows for the quantizers: random data with outliers, plus blocks whose scale is exactly 1
/// (amax = 127) and whose other values sit on .5 ties, where roundf and round-to-even part.
fn quant_inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x = data(rng, n);
    for (i, b) in x.chunks_exact_mut(32).enumerate() {
        if i % 3 == 1 {
            for v in b.iter_mut() {
                *v = rng.below(254) as f32 - 126.5;
            }
            b[(i / 3) % 32] = if i % 2 == 0 { 127.0 } else { -127.0 };
        }
    }
    x
}

fn quant_lengths() -> Vec<usize> {
    vec![256, 3 * 256, 7 * 256, 9 * 256, 4096, 4352]
}

fn check_levels(what: &str, set: &str, block: usize, got: &[i8], want: &[i8]) {
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as i32 - *w as i32).abs() <= 1,
            "{set} {what} block {block} level {j}: {g} vs scalar {w}"
        );
    }
}

#[test]
fn quantize_q8_0_matches_scalar() {
    let mut rng = Rng(0x80);
    for set in sets() {
        for n in quant_lengths() {
            for _ in 0..4 {
                let x = quant_inputs(&mut rng, n);
                let (mut got, mut want) = (vec![BlockQ8_0::zeroed(); n / 32], vec![]);
                want.resize(n / 32, BlockQ8_0::zeroed());
                (set.quantize_q8_0)(&x, &mut got);
                (SCALAR.quantize_q8_0)(&x, &mut want);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.d.to_bits(),
                        w.d.to_bits(),
                        "{} q8_0 block {i}: d",
                        set.name
                    );
                    check_levels("q8_0", set.name, i, &g.qs, &w.qs);
                }
            }
        }
    }
}

#[test]
fn quantize_q8_1_matches_scalar() {
    let mut rng = Rng(0x81);
    for set in sets() {
        for n in quant_lengths() {
            for _ in 0..4 {
                let x = quant_inputs(&mut rng, n);
                let mut got = vec![BlockQ8_1::zeroed(); n / 32];
                let mut want = vec![BlockQ8_1::zeroed(); n / 32];
                (set.quantize_q8_1)(&x, &mut got);
                (SCALAR.quantize_q8_1)(&x, &mut want);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.d.to_bits(),
                        w.d.to_bits(),
                        "{} q8_1 block {i}: d",
                        set.name
                    );
                    check_levels("q8_1", set.name, i, &g.qs, &w.qs);
                    // s = d·Σq of its own levels, d in f32 (recoverable to within f16
                    // rounding from the stored one), rounded to f16: allow two f16 ulps.
                    let sum: i32 = g.qs.iter().map(|&q| q as i32).sum();
                    let s = g.d.to_f32() * sum as f32;
                    let ulp = f16::from_f32(s.abs()).to_f32() * 2.0f32.powi(-10);
                    assert!(
                        (g.s.to_f32() - s).abs() <= 2.0 * ulp + 1e-7,
                        "{} q8_1 block {i}: s {} vs d·Σq {s}",
                        set.name,
                        g.s
                    );
                }
            }
        }
    }
}

#[test]
fn quantize_q8_k_matches_scalar() {
    let mut rng = Rng(0x8c);
    for set in sets() {
        for n in quant_lengths() {
            for _ in 0..4 {
                let x = quant_inputs(&mut rng, n);
                let mut got = vec![BlockQ8K::zeroed(); n / 256];
                let mut want = vec![BlockQ8K::zeroed(); n / 256];
                (set.quantize_q8_k)(&x, &mut got);
                (SCALAR.quantize_q8_k)(&x, &mut want);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.d.to_bits(),
                        w.d.to_bits(),
                        "{} q8_K block {i}: d",
                        set.name
                    );
                    check_levels("q8_K", set.name, i, &g.qs, &w.qs);
                    for (k, (&bs, q)) in g.bsums.iter().zip(g.qs.chunks_exact(16)).enumerate() {
                        let sum: i32 = q.iter().map(|&q| q as i32).sum();
                        assert_eq!(bs as i32, sum, "{} q8_K block {i}: bsums[{k}]", set.name);
                    }
                }
            }
        }
    }
}

/// The AVX2 and NEON Q8_0/Q8_1 quantizers promise more than the tolerance above: the scalar
/// bytes, also for the blocks where a careless SIMD port differs (ties, an all-zero block, a
/// block so small that 1/d overflows to inf, huge values, NaN and infinities).
#[test]
fn q8_quantizers_are_exact() {
    let mut rng = Rng(0x8e);
    let mut x = quant_inputs(&mut rng, 4096);
    x[32..64].fill(0.0);
    for (j, v) in x[64..96].iter_mut().enumerate() {
        *v = (j as f32 - 15.5) * 1e-41;
    }
    for (j, v) in x[96..128].iter_mut().enumerate() {
        *v = (j as f32 - 16.0) * 1e37;
    }
    // The AVX2 quantizers are not asked to reproduce the reference on non-finite input.
    let mut x_nan = x.clone();
    x_nan[130] = f32::NAN;
    x_nan[170] = f32::INFINITY;
    x_nan[200] = f32::NEG_INFINITY;
    x_nan[224..256].fill(f32::NAN);
    let mut checked = 0;
    for set in sets() {
        let inputs = match set.name {
            "avx2" | "avx2-vnni" | "avx512-vnni" | "avx512-amx" => vec![&x],
            "neon" | "neon-dotprod" | "neon-i8mm" => vec![&x, &x_nan],
            _ => continue,
        };
        checked += 1;
        for x in inputs {
            let mut got = vec![BlockQ8_0::zeroed(); x.len() / 32];
            let mut want = got.clone();
            (set.quantize_q8_0)(x, &mut got);
            (SCALAR.quantize_q8_0)(x, &mut want);
            assert_eq!(
                bytemuck::cast_slice::<_, u8>(&got),
                bytemuck::cast_slice::<_, u8>(&want),
                "q8_0"
            );
            let mut got = vec![BlockQ8_1::zeroed(); x.len() / 32];
            let mut want = got.clone();
            (set.quantize_q8_1)(x, &mut got);
            (SCALAR.quantize_q8_1)(x, &mut want);
            assert_eq!(
                bytemuck::cast_slice::<_, u8>(&got),
                bytemuck::cast_slice::<_, u8>(&want),
                "q8_1"
            );
        }
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // avx2, and avx512 (whose quantizers are the avx2 ones) where the CPU has it.
        assert!(checked >= 1);
    }
    #[cfg(target_arch = "aarch64")]
    assert!(checked >= 1);
}

// ---------------------------------------------------------------------------------------
// A rough timing, not a check: `cargo test --release --test simd -- --ignored --nocapture`.

fn time_dot<W: QuantBlock, A: QuantBlock>(what: &str, pick: fn(&KernelSet) -> Dot<W, A>) {
    let mut rng = Rng(0x7173);
    let n = 4096;
    let rows: Vec<Vec<W>> = (0..64).map(|_| blocks(&data(&mut rng, n))).collect();
    let act: Vec<A> = blocks(&data(&mut rng, n));
    let mut line = format!("{what:>6}:");
    let mut base = 0.0;
    for set in sets() {
        let dot = pick(&set);
        let mut sink = 0.0f32;
        let start = std::time::Instant::now();
        for _ in 0..50 {
            for w in &rows {
                sink += dot(std::hint::black_box(w), &act);
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / (50 * rows.len()) as f64;
        std::hint::black_box(sink);
        if set.name == "scalar" {
            base = ns;
        }
        line += &format!("  {} {ns:8.0} ns/row ({:.1}×)", set.name, base / ns);
    }
    eprintln!("{line}   (rows of {n})");
}

#[test]
#[ignore]
fn timing() {
    time_dot::<BlockQ4_0, BlockQ8_0>("q4_0", |k| k.q4_0);
    time_dot::<BlockQ4_1, BlockQ8_1>("q4_1", |k| k.q4_1);
    time_dot::<BlockQ5_0, BlockQ8_0>("q5_0", |k| k.q5_0);
    time_dot::<BlockQ5_1, BlockQ8_1>("q5_1", |k| k.q5_1);
    time_dot::<BlockQ8_0, BlockQ8_0>("q8_0", |k| k.q8_0);
    time_dot::<BlockIQ4NL, BlockQ8_0>("iq4_nl", |k| k.iq4_nl);
    time_dot::<f32, f32>("f32", |k| k.f32);
    time_dot::<f16, f16>("f16", |k| k.f16);
    let mut rng = Rng(0x7174);
    let x = data(&mut rng, 1 << 16);
    for set in sets() {
        let mut out = vec![BlockQ8_1::zeroed(); x.len() / 32];
        let start = std::time::Instant::now();
        for _ in 0..50 {
            (set.quantize_q8_1)(std::hint::black_box(&x), &mut out);
        }
        let ns = start.elapsed().as_nanos() as f64 / (50.0 * x.len() as f64 / 4096.0);
        eprintln!("quantize_q8_1 {}: {ns:.0} ns per 4096 values", set.name);
    }
}

// ---------------------------------------------------------------------------------------
// Prompt tiles (one weight row × eight tokens).

type Gemm8<W, A> = fn(&[W], &[A], &[[f32; 8]], &[[f32; 8]]) -> [f32; 8];

/// Every tile kernel against its set's dot for each of its eight tokens, on quantized and
/// random-byte rows of every block count: bit-identical (the tiles do the dot's operations
/// per token in its order; for the legacy types that dot is itself the scalar reference's
/// bits, asserted above).
fn gemm8_for<W: QuantBlock, A: QuantBlock>(
    what: &str,
    seed: u64,
    f16_fields: &[usize],
    pick: fn(&KernelSet) -> Option<Gemm8<W, A>>,
    pick_dot: fn(&KernelSet) -> Dot<W, A>,
) {
    let mut rng = Rng(seed);
    let mut tested = 0;
    for set in sets() {
        let Some(gemm) = pick(&set) else { continue };
        let reference = pick_dot(&set);
        for nb in block_counts(W::BLOCK_SIZE) {
            let n = nb * W::BLOCK_SIZE;
            let act: Vec<A> = (0..8)
                .flat_map(|_| blocks::<A>(&data(&mut rng, n)))
                .collect();
            let mut dy = vec![[0f32; 8]; nb];
            let mut sy = vec![[0f32; 8]; nb];
            for t in 0..8 {
                for b in 0..nb {
                    let (d, s) = ledge::quant::simd::act_scales(&act[t * nb + b]);
                    dy[b][t] = d;
                    sy[b][t] = s;
                }
            }
            if A::TYPE != ledge::gguf::GgmlType::Q8_1 {
                sy.clear();
            }
            for r in 0..6 {
                let w: Vec<W> = if r % 2 == 0 {
                    blocks(&data(&mut rng, n))
                } else {
                    random_blocks(&mut rng, nb, f16_fields)
                };
                let got = gemm(&w, &act, &dy, &sy);
                for t in 0..8 {
                    let want = reference(&w, &act[t * nb..(t + 1) * nb]);
                    assert_eq!(
                        got[t].to_bits(),
                        want.to_bits(),
                        "{} gemm8 {what} nb={nb} row {r} token {t}: {} vs {want}",
                        set.name,
                        got[t]
                    );
                }
            }
            tested += 1;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        assert!(tested > 0, "{what}: no set with tiles was tested");
    }
    // No NEON set has tiles yet.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = tested;
}

macro_rules! gemm8_test {
    ($name:ident, $w:ty, $a:ty, $field:ident, $dot:ident, [$($f16:ident),*]) => {
        #[test]
        fn $name() {
            gemm8_for::<$w, $a>(
                stringify!($field),
                0x6e88 ^ stringify!($name).len() as u64,
                &[$(std::mem::offset_of!($w, $f16)),*],
                |k| k.$field,
                |k| k.$dot,
            );
        }
    };
}

gemm8_test!(gemm8_q4_0, BlockQ4_0, BlockQ8_0, gemm8_q4_0, q4_0, [d]);
gemm8_test!(gemm8_q4_1, BlockQ4_1, BlockQ8_1, gemm8_q4_1, q4_1, [d, m]);
gemm8_test!(gemm8_q5_0, BlockQ5_0, BlockQ8_0, gemm8_q5_0, q5_0, [d]);
gemm8_test!(gemm8_q5_1, BlockQ5_1, BlockQ8_1, gemm8_q5_1, q5_1, [d, m]);
gemm8_test!(gemm8_q8_0, BlockQ8_0, BlockQ8_0, gemm8_q8_0, q8_0, [d]);
gemm8_test!(
    gemm8_iq4_nl,
    BlockIQ4NL,
    BlockQ8_0,
    gemm8_iq4_nl,
    iq4_nl,
    [d]
);
gemm8_test!(gemm8_q4_k, BlockQ4K, BlockQ8K, gemm8_q4_k, q4_k, [d, dmin]);
gemm8_test!(gemm8_q6_k, BlockQ6K, BlockQ8K, gemm8_q6_k, q6_k, [d]);

/// The matmul with tiles (19 tokens: two tiles and a tail of three) gives each token the
/// bits it gets alone.
#[test]
fn matmul_tiles_equal_single_tokens() {
    use ledge::gguf::GgmlType;
    use ledge::tensor::TensorView;
    let mut rng = Rng(0x7117);
    let (k, m, n) = (512, 37, 19);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q5_1,
    ] {
        let w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
        let view = TensorView::borrowed("w", ty, vec![k, m], &w);
        let x = data(&mut rng, n * k);
        let mut all = vec![0f32; n * m];
        ledge::ops::matmul_view(&view, &x, n, &mut all).unwrap();
        for t in 0..n {
            let mut one = vec![0f32; m];
            ledge::ops::matmul_view(&view, &x[t * k..(t + 1) * k], 1, &mut one).unwrap();
            for r in 0..m {
                assert_eq!(
                    all[t * m + r].to_bits(),
                    one[r].to_bits(),
                    "{ty} token {t} row {r}"
                );
            }
        }
    }
}
