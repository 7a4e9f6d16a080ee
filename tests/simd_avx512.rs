//! The AVX-512 and AVX2 attention kernels (one query, and tiles of queries) and SiLU·up
//! against scalar references.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop)] // index loops read clearer over (token, row) grids

mod common;

use common::Rng;

/// Uniform in (-1, 1), never zero; one value in 40 an outlier up to ±60.
fn data(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mut v = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if v == 0.0 {
                v = 0.5;
            }
            if rng.below(40) == 0 {
                v * 60.0
            } else {
                v
            }
        })
        .collect()
}

/// The AVX-512 attention kernel against a scalar reference (q and probabilities rounded
/// through f16 as in ggml), for GQA layouts, windows and the head sizes it supports.
#[test]
fn avx512_attention_equals_reference() {
    use ledge::quant::simd::avx512_attn::{attend, supports};
    attention_equals_reference("AVX-512", supports, attend, 0xa77e_0003);
}

/// The AVX2 attention kernel likewise.
#[test]
fn avx2_attention_equals_reference() {
    use ledge::quant::simd::avx2_attn::{attend, supports};
    attention_equals_reference("AVX2", supports, attend, 0xa77e_0013);
}

fn attention_equals_reference(
    name: &str,
    supports: fn(usize, usize) -> bool,
    attend: ledge::quant::simd::HeadAttnFn,
    seed: u64,
) {
    use half::f16;
    use ledge::quant::simd::HeadLayout;
    let mut rng = Rng(seed);
    for &(hd, n_kv, g, first, pos) in &[
        (64, 3, 1, 0, 0),
        (64, 3, 2, 0, 6),
        (128, 1, 0, 3, 40),
        (256, 2, 1, 0, 129),
        (64, 2, 1, 2, 37),
        (96, 1, 0, 0, 20),
    ] {
        if !supports(hd, hd) {
            eprintln!("{name}: head size {hd} not supported here: skipped");
            continue;
        }
        let w = n_kv * hd;
        let kc: Vec<f16> = data(&mut rng, (pos + 1) * w)
            .iter()
            .map(|&v| f16::from_f32(v.clamp(-8.0, 8.0)))
            .collect();
        let vc: Vec<f16> = data(&mut rng, (pos + 1) * w)
            .iter()
            .map(|&v| f16::from_f32(v.clamp(-8.0, 8.0)))
            .collect();
        let q: Vec<f32> = data(&mut rng, hd).iter().map(|v| v * 0.3).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let l = HeadLayout {
            k_stride: w,
            k_off: g * hd,
            v_stride: w,
            v_off: g * hd,
        };
        let (mut scores, mut got) = (Vec::new(), vec![0f32; hd]);
        attend(&q, &kc, &vc, l, scale, first, pos, &mut scores, &mut got);
        // The reference.
        let qr: Vec<f32> = q.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        let s: Vec<f32> = (first..=pos)
            .map(|p| {
                let k = &kc[p * w + g * hd..][..hd];
                k.iter().zip(&qr).map(|(a, b)| a.to_f32() * b).sum::<f32>() * scale
            })
            .collect();
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let e: Vec<f32> = s.iter().map(|v| (v - max).exp()).collect();
        let sum: f64 = e.iter().map(|&v| v as f64).sum();
        let mut want = vec![0f32; hd];
        for (i, p) in (first..=pos).enumerate() {
            let pw = f16::from_f32(e[i] * (1.0 / sum) as f32).to_f32();
            for (o, v) in want.iter_mut().zip(&vc[p * w + g * hd..][..hd]) {
                *o += pw * v.to_f32();
            }
        }
        // A score's last bit can move a probability across an f16 rounding boundary
        // (2⁻¹¹ relative near 1): hence a tolerance of that order, not f32 rounding's.
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let tol = 2e-3 * b.abs().max(1.0);
            assert!((a - b).abs() <= tol, "hd {hd} pos {pos} [{i}]: {a} vs {b}");
        }
    }
}

/// The tiled prompt-attention kernel against the scalar reference: tiles of queries with
/// different causal ranges and sliding windows, query counts that are not multiples of the
/// kernel's 4, key ranges that are not multiples of its 32-key blocks, every head size it
/// supports, and several KV groups.
#[test]
fn avx512_tiled_attention_equals_reference() {
    use ledge::quant::simd::avx512_attn::{attend_tile, supports};
    tiled_attention_equals_reference("AVX-512", supports, attend_tile, 0xa77e_0004);
}

/// The AVX2 tiled kernel likewise (16-key blocks, 16-column value passes).
#[test]
fn avx2_tiled_attention_equals_reference() {
    use ledge::quant::simd::avx2_attn::{attend_tile, supports};
    tiled_attention_equals_reference("AVX2", supports, attend_tile, 0xa77e_0014);
}

fn tiled_attention_equals_reference(
    name: &str,
    supports: fn(usize, usize) -> bool,
    attend_tile: ledge::quant::simd::TileAttnFn,
    seed: u64,
) {
    use half::f16;
    use ledge::quant::simd::attn_tile::{KeysT, TileScratch};
    use ledge::quant::simd::HeadLayout;
    let mut rng = Rng(seed);
    let mut scratch = TileScratch::default();
    // (head size, kv heads, group, positions in the cache, query ranges)
    type Case<'a> = (usize, usize, usize, usize, &'a [(usize, usize)]);
    let cases: &[Case] = &[
        (
            64,
            3,
            1,
            40,
            &[
                (0, 33),
                (0, 33),
                (0, 33),
                (0, 34),
                (0, 34),
                (0, 34),
                (0, 35),
            ],
        ),
        (64, 1, 0, 7, &[(0, 0), (0, 1), (0, 6)]),
        (
            128,
            2,
            1,
            100,
            &[(60, 90), (61, 91), (62, 92), (63, 93), (64, 99)],
        ),
        (
            256,
            1,
            0,
            70,
            &[(0, 64), (0, 65), (5, 66), (6, 67), (7, 68), (8, 69)],
        ),
        (96, 1, 0, 23, &[(0, 20), (3, 21), (4, 22)]),
    ];
    for &(hd, n_kv, g, npos, ranges) in cases {
        if !supports(hd, hd) {
            eprintln!("{name}: head size {hd} not supported here: skipped");
            continue;
        }
        let w = n_kv * hd;
        let kc: Vec<f16> = data(&mut rng, npos * w)
            .iter()
            .map(|&v| f16::from_f32(v.clamp(-8.0, 8.0)))
            .collect();
        let vc: Vec<f16> = data(&mut rng, npos * w)
            .iter()
            .map(|&v| f16::from_f32(v.clamp(-8.0, 8.0)))
            .collect();
        let q: Vec<f32> = data(&mut rng, ranges.len() * hd)
            .iter()
            .map(|v| v * 0.3)
            .collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let l = HeadLayout {
            k_stride: w,
            k_off: g * hd,
            v_stride: w,
            v_off: g * hd,
        };
        let kt = KeysT::new(&kc, l, hd, npos);
        let mut got = vec![0f32; ranges.len() * hd];
        attend_tile(&q, ranges, &kt, &vc, l, scale, &mut scratch, &mut got);
        for (i, &(first, pos)) in ranges.iter().enumerate() {
            let qr: Vec<f32> = q[i * hd..(i + 1) * hd]
                .iter()
                .map(|&x| f16::from_f32(x).to_f32())
                .collect();
            let s: Vec<f32> = (first..=pos)
                .map(|p| {
                    let k = &kc[p * w + g * hd..][..hd];
                    k.iter().zip(&qr).map(|(a, b)| a.to_f32() * b).sum::<f32>() * scale
                })
                .collect();
            let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let e: Vec<f32> = s.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().map(|&v| v as f64).sum();
            let mut want = vec![0f32; hd];
            for (j, p) in (first..=pos).enumerate() {
                let pw = f16::from_f32(e[j] * (1.0 / sum) as f32).to_f32();
                for (o, v) in want.iter_mut().zip(&vc[p * w + g * hd..][..hd]) {
                    *o += pw * v.to_f32();
                }
            }
            // As for `attend`: a last-bit change in a score or in exp can move a probability
            // across an f16 rounding boundary (2⁻¹¹ relative).
            for (c, (a, b)) in got[i * hd..(i + 1) * hd].iter().zip(&want).enumerate() {
                let tol = 2e-3 * b.abs().max(1.0);
                assert!((a - b).abs() <= tol, "hd {hd} query {i} [{c}]: {a} vs {b}");
            }
        }
    }
}

/// Vectorized SiLU·up against the scalar `silu` (libm's exp) on random data from −100 to
/// 100 (both clamps of the vector exp) and a tail shorter than a vector.
#[test]
fn avx512_silu_mul_equals_reference() {
    use ledge::quant::simd::avx512_math::{silu_mul, supported};
    silu_mul_equals_reference("AVX-512", supported, silu_mul, 0x5110_0001);
}

/// The AVX2 SiLU·up likewise.
#[test]
fn avx2_silu_mul_equals_reference() {
    use ledge::quant::simd::avx2_math::{silu_mul, supported};
    silu_mul_equals_reference("AVX2", supported, silu_mul, 0x5110_0002);
}

fn silu_mul_equals_reference(
    name: &str,
    supported: fn() -> bool,
    silu_mul: fn(&mut [f32], &[f32]),
    seed: u64,
) {
    if !supported() {
        eprintln!("no {name} here: skipped");
        return;
    }
    let mut rng = Rng(seed);
    for n in [1, 7, 8, 9, 15, 16, 17, 1000, 4099] {
        let g: Vec<f32> = data(&mut rng, n).iter().map(|v| v * 25.0).collect();
        let u = data(&mut rng, n);
        let mut got = g.clone();
        silu_mul(&mut got, &u);
        for i in 0..n {
            let want = ledge::ops::activation::silu(g[i]) * u[i];
            // The Cephes-style exp is within ~2 ulp of libm's; the division and product add
            // one rounding each.
            let tol = 4.0 * f32::EPSILON * want.abs() + 1e-30;
            assert!(
                (got[i] - want).abs() <= tol,
                "n {n} [{i}] x {}: {} vs {want}",
                g[i],
                got[i]
            );
        }
    }
}
