//! The load-time repacked K-quant layouts (quant::repack_k) and their kernels: each kernel
//! equals the scalar reference bit for bit, for every kind its set lists; the reference
//! equals the canonical vec_dot (Q4_K / Q5_K / Q6_K / IQ4_XS against Q8_K) within 1e-6 of
//! the terms' size, on random data (never
//! zeros), rows not a multiple of four, tokens not a multiple of the tile, k = 256·odd; the
//! packed matmul equals the blocked matmul within rounding for 1, 3, 8 and 17 tokens and
//! gives each token the bits it gets alone.

#![allow(clippy::needless_range_loop)] // index loops read clearer over (token, row) grids

mod common;

use bytemuck::Zeroable;
use common::Rng;
use ledge::gguf::GgmlType;
use ledge::quant::repack_k::{gemm_ref, ActK, GemmKFn, KindK, PackedK};
use ledge::quant::*;
use ledge::tensor::TensorView;

const TYPES: [GgmlType; 4] = [
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_XS,
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

fn q8k(x: &[f32]) -> Vec<BlockQ8K> {
    let mut q = vec![BlockQ8K::zeroed(); x.len() / QK_K];
    <BlockQ8K as QuantBlock>::quantize(x, &mut q);
    q
}

fn acts(x: &[f32]) -> Vec<ActK> {
    q8k(x).iter().map(ActK::from_q8_k).collect()
}

/// 2·max|w|·Σ|x| of row `r`: the size of the terms its dot sums (cancellation can make the
/// result itself arbitrarily small).
fn magnitude(wf: &[f32], k: usize, r: usize, x: &[f32]) -> f32 {
    let row = &wf[r * k..(r + 1) * k];
    let wmax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    2.0 * wmax * x.iter().map(|v| v.abs()).sum::<f32>()
}

/// The canonical (scalar reference) dot of row `r` with one token's activations.
fn canonical(ty: GgmlType, w: &[u8], k: usize, r: usize, x: &[f32]) -> f32 {
    let nb = k / QK_K;
    let xq = q8k(x);
    match ty {
        GgmlType::Q4_K => {
            let b: Vec<BlockQ4K> = bytemuck::pod_collect_to_vec(w);
            <BlockQ4K as VecDot>::vec_dot(&b[r * nb..(r + 1) * nb], &xq)
        }
        GgmlType::Q5_K => {
            let b: Vec<BlockQ5K> = bytemuck::pod_collect_to_vec(w);
            <BlockQ5K as VecDot>::vec_dot(&b[r * nb..(r + 1) * nb], &xq)
        }
        GgmlType::Q6_K => {
            let b: Vec<BlockQ6K> = bytemuck::pod_collect_to_vec(w);
            <BlockQ6K as VecDot>::vec_dot(&b[r * nb..(r + 1) * nb], &xq)
        }
        GgmlType::IQ4_XS => {
            let b: Vec<BlockIQ4XS> = bytemuck::pod_collect_to_vec(w);
            <BlockIQ4XS as VecDot>::vec_dot(&b[r * nb..(r + 1) * nb], &xq)
        }
        _ => unreachable!(),
    }
}

#[test]
fn reference_equals_canonical_dot() {
    let mut rng = Rng(0x4b5e_ed01);
    for ty in TYPES {
        for &(k, m, n) in &[(256, 1, 1), (256, 5, 3), (768, 7, 9), (1280, 13, 17)] {
            let w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
            let view = TensorView::borrowed("w", ty, vec![k, m], &w);
            let p = PackedK::from_view(&view).unwrap();
            assert_eq!(Some(p.kind), KindK::of(ty));
            assert_eq!(format!("{:?}", p.kind), ty.to_string());
            assert_eq!(p.groups(), m.div_ceil(4));
            let x = data(&mut rng, n * k);
            let a = acts(&x);
            let wf = view.to_f32().unwrap();
            for g in 0..p.groups() {
                let mut out = vec![[0f32; 4]; n];
                gemm_ref(&p, g, &a, &mut out);
                for t in 0..n {
                    for r in 0..4.min(m - 4 * g) {
                        let xt = &x[t * k..(t + 1) * k];
                        let want = canonical(ty, &w, k, 4 * g + r, xt);
                        let got = out[t][r];
                        let tol = 1e-6 * magnitude(&wf, k, 4 * g + r, xt);
                        assert!(
                            (got - want).abs() <= tol,
                            "{ty} k={k} row {} token {t}: {got} vs {want}",
                            4 * g + r
                        );
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_kernel_equals_reference_bits() {
    match ledge::quant::simd::avx512_repack_k::kernel() {
        Some(kernel) => kernel_equals_reference_bits(kernel, KindK::ALL, 0x4b5e_ed02),
        None => eprintln!("no AVX-512 VNNI here: skipped"),
    }
}

/// The AVX2 kernel (two rows per 256-bit half, tiles of 1..=6 tokens), every kind.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_kernel_equals_reference_bits() {
    match ledge::quant::simd::avx2_repack_k::kernel() {
        Some(kernel) => kernel_equals_reference_bits(kernel, KindK::ALL, 0x4b5e_ed12),
        None => eprintln!("no AVX2 here: skipped"),
    }
}

/// The AVX-VNNI kernel where the CPU has AVX-VNNI, and its code with the EVEX encodings
/// where the CPU has AVX512-VNNI (qemu's x86 emulation has no AVX-VNNI).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_vnni_kernels_equal_reference_bits() {
    use ledge::quant::simd::avx2_repack_k as kk;
    let kernels = [
        ("avx-vnni", kk::kernel_vnni()),
        ("avx2 with evex vnni", kk::kernel_vnni_evex()),
    ];
    assert_eq!(
        kernels[0].1.is_some(),
        is_x86_feature_detected!("avxvnni"),
        "an AVX-VNNI kernel exactly when the CPU has AVX-VNNI"
    );
    for (i, (name, kernel)) in kernels.into_iter().enumerate() {
        match kernel {
            Some(kernel) => {
                kernel_equals_reference_bits(kernel, KindK::ALL, 0x4b5e_ed40 + i as u64)
            }
            None => eprintln!("no {name} here: skipped"),
        }
    }
}

/// The NEON DotProd kernel (under qemu in cross/test-aarch64.sh: with dotprod by qemu's
/// default CPU; cortex-a72 has none and gets no kernel).
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_kernel_equals_reference_bits() {
    let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
    let kernel = ledge::quant::simd::neon_repack_k::kernel();
    assert_eq!(
        kernel.is_some(),
        dotprod,
        "a kernel exactly when the CPU has dotprod"
    );
    match kernel {
        Some(kernel) => kernel_equals_reference_bits(kernel, KindK::ALL, 0x4b5e_ed22),
        None => eprintln!("no dotprod here: skipped"),
    }
}

/// The NEON I8MM (`smmla`) kernel: under qemu with QEMU_CPU=max (which has i8mm) in
/// cross/test-aarch64.sh; CPUs without i8mm get no kernel.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_i8mm_kernel_equals_reference_bits() {
    let i8mm = std::arch::is_aarch64_feature_detected!("i8mm")
        && std::arch::is_aarch64_feature_detected!("dotprod");
    let kernel = ledge::quant::simd::neon_i8mm_k::kernel();
    assert_eq!(
        kernel.is_some(),
        i8mm,
        "a kernel exactly when the CPU has i8mm and dotprod"
    );
    eprintln!("i8mm K kernel under test: {}", kernel.is_some());
    match kernel {
        Some(kernel) => kernel_equals_reference_bits(kernel, KindK::ALL, 0x4b5e_ed32),
        None => eprintln!("no i8mm here: skipped"),
    }
}

/// `kernel` against `gemm_ref`, bit for bit: row counts that leave padded groups, token
/// counts across the kernels' tile sizes, several super-blocks per row; the kinds in `kinds`.
fn kernel_equals_reference_bits(kernel: GemmKFn, kinds: &[KindK], seed: u64) {
    let mut rng = Rng(seed);
    for ty in TYPES {
        if !kinds.contains(&KindK::of(ty).unwrap()) {
            continue;
        }
        for &(k, m, n) in &[
            (256, 3, 1),
            (768, 9, 7),
            (512, 6, 8),
            (1280, 11, 19),
            (2048, 4, 2),
            (512, 5, 5),
            (256, 2, 3),
            (256, 7, 4),
            (512, 5, 10),
        ] {
            let w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
            let view = TensorView::borrowed("w", ty, vec![k, m], &w);
            let p = PackedK::from_view(&view).unwrap();
            let a = acts(&data(&mut rng, n * k));
            for g in 0..p.groups() {
                let (mut want, mut got) = (vec![[0f32; 4]; n], vec![[0f32; 4]; n]);
                gemm_ref(&p, g, &a, &mut want);
                kernel(&p, g, &a, &mut got);
                for t in 0..n {
                    for r in 0..4 {
                        assert_eq!(
                            got[t][r].to_bits(),
                            want[t][r].to_bits(),
                            "{ty} k={k} group {g} token {t} row {r}: {} vs {}",
                            got[t][r],
                            want[t][r]
                        );
                    }
                }
            }
        }
    }
}

/// The packed K matmul over x (n, k), its activations quantized as `ops::Input` does.
fn matmul_k(p: &PackedK, kernel: GemmKFn, amx: bool, x: &[f32], n: usize, out: &mut [f32]) {
    let acts = ledge::ops::act::acts_k(x, n, p.k, ledge::quant::simd::kernels());
    ledge::ops::matmul_k::matmul_packed_k(p, kernel, amx, &acts, n, out);
}

/// The packed matmul against the blocked one (1, 3, 8, 17 tokens; 53 tokens of a long row,
/// several of `run_groups`' token blocks), and n tokens against each token alone. Runs with
/// the kernel set's packed K kernel and AMX choice (the reference kernel for the kinds the
/// set has none for).
#[test]
fn packed_matmul_equals_blocked_and_single_tokens() {
    let ks = ledge::quant::simd::kernels();
    let mut rng = Rng(0x4b5e_ed03);
    for ((k, m, ns), ty) in [(768, 37, &[1, 3, 8, 17][..]), (256 * 41, 9, &[53][..])]
        .into_iter()
        .flat_map(|c| TYPES.into_iter().map(move |ty| (c, ty)))
    {
        let w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
        let view = TensorView::borrowed("w", ty, vec![k, m], &w);
        let p = PackedK::from_view(&view).unwrap();
        let (kernel, amx) = match ks.gemm_k {
            Some(k) if ks.k_kinds.contains(&p.kind) => (k, ks.amx_k),
            _ => (gemm_ref as GemmKFn, false),
        };
        let wf = view.to_f32().unwrap();
        for &n in ns {
            let x = data(&mut rng, n * k);
            let (mut packed, mut blocked) = (vec![0f32; n * m], vec![0f32; n * m]);
            matmul_k(&p, kernel, amx, &x, n, &mut packed);
            ledge::ops::matmul_view(&view, &x, n, &mut blocked).unwrap();
            for i in 0..n * m {
                let (t, r) = (i / m, i % m);
                let tol = 1e-6 * magnitude(&wf, k, r, &x[t * k..(t + 1) * k]);
                assert!(
                    (packed[i] - blocked[i]).abs() <= tol,
                    "{ty} n={n} element {i}: {} vs {}",
                    packed[i],
                    blocked[i]
                );
            }
            for t in 0..n {
                let mut one = vec![0f32; m];
                matmul_k(&p, kernel, amx, &x[t * k..(t + 1) * k], 1, &mut one);
                for r in 0..m {
                    assert_eq!(
                        one[r].to_bits(),
                        packed[t * m + r].to_bits(),
                        "{ty} n={n} {t} {r}"
                    );
                }
            }
        }
    }
}

/// The AMX path of the packed matmul (prompts of ≥ 32 tokens, where AMX is usable): each
/// element within float rounding of the reference (the integer sums are the same; only the
/// f32 steps are grouped differently: 2e-6 of the terms' size), on supergroups cut by the
/// row count (m = 5, 37) and tokens past the last whole tile of sixteen (49, 35).
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_matmul_matches_reference() {
    let kernel = ledge::quant::simd::avx512_repack_k::kernel();
    let Some(kernel) = kernel.filter(|_| ledge::quant::simd::avx512_amx_k::usable()) else {
        eprintln!("no AMX (or no AVX-512 VNNI) here: skipped");
        return;
    };
    let mut rng = Rng(0x4b5e_ed04);
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
        for &(k, m, n) in &[(256, 16, 32), (768, 37, 49), (1280, 20, 64), (2048, 5, 35)] {
            let w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
            let view = TensorView::borrowed("w", ty, vec![k, m], &w);
            let p = PackedK::from_view(&view).unwrap();
            let wf = view.to_f32().unwrap();
            let x = data(&mut rng, n * k);
            let a = acts(&x);
            let mut got = vec![0f32; n * m];
            ledge::ops::matmul_k::matmul_packed_k(&p, kernel, true, &a, n, &mut got);
            for g in 0..p.groups() {
                let mut want = vec![[0f32; 4]; n];
                gemm_ref(&p, g, &a, &mut want);
                for t in 0..n {
                    for r in 0..4.min(m - 4 * g) {
                        let row = 4 * g + r;
                        let tol = 2e-6 * magnitude(&wf, k, row, &x[t * k..(t + 1) * k]);
                        let v = got[t * m + row];
                        assert!(
                            (v - want[t][r]).abs() <= tol,
                            "{ty} k={k} m={m} n={n} token {t} row {row}: {v} vs {}",
                            want[t][r]
                        );
                    }
                }
            }
        }
    }
}
