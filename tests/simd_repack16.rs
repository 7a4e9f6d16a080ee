//! The sixteen-row repacked layouts (quant::repack16) and their AVX-512 kernel: the kernel
//! equals the scalar reference bit for bit, the reference equals the canonical vec_dot within
//! rounding, on random data (never zeros) with outliers, row counts that are not multiples
//! of sixteen and token counts that are not multiples of the tile; the packed matmul equals
//! the blocked matmul within rounding and gives each token the bits it gets alone.

#![allow(clippy::needless_range_loop)] // index loops read clearer over (token, row) grids

mod common;

use bytemuck::Zeroable;
use common::Rng;
use ledge::gguf::GgmlType;
use ledge::quant::repack16::{gemm_ref, Act16, Gemm16Fn, Kind16, Packed16, ROWS};
use ledge::quant::*;
use ledge::tensor::TensorView;

const TYPES: [GgmlType; 4] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
];

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

fn acts(x: &[f32], kind: Kind16) -> Vec<Act16> {
    if kind.needs_sum() {
        let mut q = vec![BlockQ8_1::zeroed(); x.len() / 32];
        <BlockQ8_1 as QuantBlock>::quantize(x, &mut q);
        return q.iter().map(Act16::from_q8_1).collect();
    }
    let mut q = vec![BlockQ8_0::zeroed(); x.len() / 32];
    <BlockQ8_0 as QuantBlock>::quantize(x, &mut q);
    q.iter().map(|b| Act16::from_q8_0(b, kind)).collect()
}

/// 2·max|w|·Σ|x| of row r: the size of the terms summed, which tolerances scale with.
fn magnitude(wf: &[f32], k: usize, r: usize, x: &[f32]) -> f32 {
    let row = &wf[r * k..(r + 1) * k];
    let wmax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    2.0 * wmax * x.iter().map(|v| v.abs()).sum::<f32>()
}

/// Canonical dot of row `r` with one token's activations `x` (k values).
fn canonical(ty: GgmlType, w: &[u8], k: usize, r: usize, x: &[f32]) -> f32 {
    let nb = k / 32;
    if ty == GgmlType::Q4_1 {
        let mut xq = vec![BlockQ8_1::zeroed(); nb];
        <BlockQ8_1 as QuantBlock>::quantize(x, &mut xq);
        let b: Vec<BlockQ4_1> = bytemuck::pod_collect_to_vec(w);
        return <BlockQ4_1 as VecDot>::vec_dot(&b[r * nb..(r + 1) * nb], &xq);
    }
    let mut xq = vec![BlockQ8_0::zeroed(); nb];
    <BlockQ8_0 as QuantBlock>::quantize(x, &mut xq);
    match ty {
        GgmlType::Q4_0 => {
            let b: Vec<BlockQ4_0> = bytemuck::pod_collect_to_vec(w);
            <BlockQ4_0 as VecDot>::vec_dot(&b[r * nb..(r + 1) * nb], &xq)
        }
        GgmlType::Q5_0 => {
            let b: Vec<BlockQ5_0> = bytemuck::pod_collect_to_vec(w);
            <BlockQ5_0 as VecDot>::vec_dot(&b[r * nb..(r + 1) * nb], &xq)
        }
        GgmlType::Q8_0 => {
            let b: Vec<BlockQ8_0> = bytemuck::pod_collect_to_vec(w);
            <BlockQ8_0 as VecDot>::vec_dot(&b[r * nb..(r + 1) * nb], &xq)
        }
        _ => unreachable!(),
    }
}

#[test]
fn reference_equals_canonical_dot() {
    let mut rng = Rng(0x16_5eed);
    for ty in TYPES {
        for &(k, m, n) in &[(32, 1, 1), (64, 15, 3), (256, 17, 9), (576, 33, 5)] {
            let w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
            let view = TensorView::borrowed("w", ty, vec![k, m], &w);
            let p = Packed16::from_view(&view).unwrap();
            assert_eq!(p.groups(), m.div_ceil(ROWS));
            let x = data(&mut rng, n * k);
            let a = acts(&x, p.kind);
            let wf = view.to_f32().unwrap();
            for g in 0..p.groups() {
                let mut out = vec![[0f32; ROWS]; n];
                gemm_ref(&p, g, &a, &mut out);
                for t in 0..n {
                    let xt = &x[t * k..(t + 1) * k];
                    for r in 0..ROWS.min(m - ROWS * g) {
                        let row = ROWS * g + r;
                        let want = canonical(ty, &w, k, row, xt);
                        let got = out[t][r];
                        let tol = 1e-6 * magnitude(&wf, k, row, xt);
                        assert!(
                            (got - want).abs() <= tol,
                            "{ty} k={k} row {row} token {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// Both kernels (VNNI; AMX where the CPU and OS allow it), token counts around the AMX
/// tile of sixteen included, odd block counts (k = 32, 96) included.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_kernel_equals_reference_bits() {
    use ledge::quant::simd::avx512_repack16 as k16;
    let kernels = [("vnni", k16::vnni_kernel()), ("amx", k16::amx_kernel())];
    if kernels[0].1.is_none() {
        eprintln!("no AVX-512 VNNI here: skipped");
        return;
    }
    let mut rng = Rng(0x16_0001);
    for (name, kernel) in kernels {
        let Some(kernel) = kernel else {
            eprintln!("no {name} here: skipped");
            continue;
        };
        for ty in TYPES {
            for &(k, m) in &[(32, 16), (96, 5), (320, 31), (576, 40)] {
                let w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
                let view = TensorView::borrowed("w", ty, vec![k, m], &w);
                let p = Packed16::from_view(&view).unwrap();
                for n in [1, 2, 7, 8, 9, 13, 16, 17, 32, 35] {
                    let x = data(&mut rng, n * k);
                    let a = acts(&x, p.kind);
                    for g in 0..p.groups() {
                        let (mut want, mut got) = (vec![[0f32; ROWS]; n], vec![[0f32; ROWS]; n]);
                        gemm_ref(&p, g, &a, &mut want);
                        kernel(&p, g, &a, &mut got);
                        for t in 0..n {
                            for r in 0..ROWS {
                                assert_eq!(
                                    got[t][r].to_bits(),
                                    want[t][r].to_bits(),
                                    "{name} {ty} k={k} n={n} group {g} token {t} row {r}: {} vs {}",
                                    got[t][r],
                                    want[t][r]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A kernel against the reference, bit for bit: every kind, tails of the tiles (AVX2 and
/// AVX-512 eight tokens), odd row counts, Q8_0 weights at -128 (legal in a file, never made by the
/// quantizer) and Q5_0's fifth bits in every part of the group.
fn kernel_equals_reference_bits(name: &str, kernel: Gemm16Fn, seed: u64) {
    let mut rng = Rng(seed);
    for ty in TYPES {
        for &(k, m) in &[(32, 16), (96, 5), (320, 31), (576, 40)] {
            let mut w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
            if ty == GgmlType::Q8_0 {
                for blk in w.chunks_exact_mut(34).step_by(3) {
                    blk[2 + (blk[0] as usize % 32)] = 0x80;
                }
            }
            let view = TensorView::borrowed("w", ty, vec![k, m], &w);
            let p = Packed16::from_view(&view).unwrap();
            for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 14] {
                let x = data(&mut rng, n * k);
                let a = acts(&x, p.kind);
                for g in 0..p.groups() {
                    let (mut want, mut got) = (vec![[0f32; ROWS]; n], vec![[0f32; ROWS]; n]);
                    gemm_ref(&p, g, &a, &mut want);
                    kernel(&p, g, &a, &mut got);
                    for t in 0..n {
                        for r in 0..ROWS {
                            assert_eq!(
                                got[t][r].to_bits(),
                                want[t][r].to_bits(),
                                "{name} {ty} k={k} n={n} group {g} token {t} row {r}: {} vs {}",
                                got[t][r],
                                want[t][r]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The AVX2 kernel (for CPUs without AVX-512).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_kernel_equals_reference_bits() {
    match ledge::quant::simd::avx2_repack16::kernel() {
        Some(kernel) => kernel_equals_reference_bits("avx2", kernel, 0x16_0a02),
        None => eprintln!("no AVX2 here: skipped"),
    }
}

/// The AVX-VNNI kernel where the CPU has AVX-VNNI, and its code with `vpdpbusd`'s EVEX
/// encoding where the CPU has AVX512-VNNI: the same source, so either CPU tests the
/// kernel's arithmetic (qemu's x86 emulation has no AVX-VNNI).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_vnni_kernels_equal_reference_bits() {
    use ledge::quant::simd::avx2_repack16 as k16;
    let kernels = [
        ("avx-vnni", k16::kernel_vnni()),
        ("avx2 with evex vpdpbusd", k16::kernel_vnni_evex()),
    ];
    assert_eq!(
        kernels[0].1.is_some(),
        is_x86_feature_detected!("avxvnni"),
        "an AVX-VNNI kernel exactly when the CPU has AVX-VNNI"
    );
    for (i, (name, kernel)) in kernels.into_iter().enumerate() {
        match kernel {
            Some(kernel) => kernel_equals_reference_bits(name, kernel, 0x16_0a10 + i as u64),
            None => eprintln!("no {name} here: skipped"),
        }
    }
}

/// The NEON DotProd kernel (under qemu in scripts/test.sh: with dotprod by qemu's default
/// CPU; cortex-a72 has none and gets no kernel).
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_kernel_equals_reference_bits() {
    let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
    let kernel = ledge::quant::simd::neon_repack16::kernel();
    assert_eq!(
        kernel.is_some(),
        dotprod,
        "a kernel exactly when the CPU has dotprod"
    );
    match kernel {
        Some(kernel) => kernel_equals_reference_bits("neon-dotprod", kernel, 0x16_0a03),
        None => eprintln!("no dotprod here: skipped"),
    }
}

/// The NEON I8MM (`smmla`) kernel: under qemu in cross/test-aarch64.sh, run with
/// QEMU_CPU=max (which has i8mm) and with CPUs that lack it (no kernel).
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_i8mm_kernel_equals_reference_bits() {
    let i8mm = std::arch::is_aarch64_feature_detected!("i8mm")
        && std::arch::is_aarch64_feature_detected!("dotprod");
    let kernel = ledge::quant::simd::neon_i8mm::kernel();
    assert_eq!(
        kernel.is_some(),
        i8mm,
        "a kernel exactly when the CPU has i8mm and dotprod"
    );
    eprintln!("i8mm kernel under test: {}", kernel.is_some());
    match kernel {
        Some(kernel) => kernel_equals_reference_bits("neon-i8mm", kernel, 0x16_0a05),
        None => eprintln!("no i8mm here: skipped"),
    }
}

/// The sixteen-row matmul over x (n, k), its activations quantized as `ops::Input` does.
fn matmul16(p: &Packed16, kernel: Gemm16Fn, x: &[f32], n: usize, out: &mut [f32]) {
    let acts = ledge::ops::act::acts16(x, n, p.k, p.kind, ledge::quant::simd::kernels());
    ledge::ops::matmul::matmul_packed16(p, kernel, &acts, n, out);
}

/// The packed matmul against the blocked one, and n tokens against each token alone.
#[test]
fn packed_matmul_equals_blocked_and_single_tokens() {
    let Some(kernel) = ledge::quant::simd::kernels().gemm16 else {
        eprintln!("no sixteen-row kernel in this kernel set: skipped");
        return;
    };
    let mut rng = Rng(0x16_0002);
    for &(k, m, n) in &[(512, 37, 19), (96, 200, 8), (64, 3, 1), (64, 40, 150)] {
        for ty in TYPES {
            let w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
            let view = TensorView::borrowed("w", ty, vec![k, m], &w);
            let p = Packed16::from_view(&view).unwrap();
            let x = data(&mut rng, n * k);
            let (mut packed, mut blocked) = (vec![0f32; n * m], vec![0f32; n * m]);
            matmul16(&p, kernel, &x, n, &mut packed);
            ledge::ops::matmul_view(&view, &x, n, &mut blocked).unwrap();
            let wf = view.to_f32().unwrap();
            for i in 0..n * m {
                let (t, r) = (i / m, i % m);
                let tol = 1e-6 * magnitude(&wf, k, r, &x[t * k..(t + 1) * k]);
                assert!(
                    (packed[i] - blocked[i]).abs() <= tol,
                    "{ty} k={k} m={m} element {i}: {} vs {}",
                    packed[i],
                    blocked[i]
                );
            }
            for t in 0..n {
                let mut one = vec![0f32; m];
                let xt = &x[t * k..(t + 1) * k];
                matmul16(&p, kernel, xt, 1, &mut one);
                for r in 0..m {
                    assert_eq!(
                        one[r].to_bits(),
                        packed[t * m + r].to_bits(),
                        "{ty} {t} {r}"
                    );
                }
            }
        }
    }
}

/// Other types and shapes get no sixteen-row copy (they keep another path).
#[test]
fn unsupported_types_and_shapes_are_not_packed() {
    let mut rng = Rng(0x16_0003);
    let w = quantize_to_vec(GgmlType::Q4_K, &data(&mut rng, 256 * 4)).unwrap();
    let view = TensorView::borrowed("w", GgmlType::Q4_K, vec![256, 4], &w);
    assert!(Packed16::from_view(&view).is_none());
    let w = quantize_to_vec(GgmlType::Q8_0, &data(&mut rng, 64 * 2 * 3)).unwrap();
    let view = TensorView::borrowed("w", GgmlType::Q8_0, vec![64, 2, 3], &w);
    assert!(Packed16::from_view(&view).is_none());
}
