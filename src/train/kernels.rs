//! The one dense kernel training adds: dx (nt, k) += G (nt, nr)·R (nr, k), the backward of a
//! frozen matrix once a tile of its rows is dequantized (`student::frozen_backward`).
//!
//! One loop, generic over fused multiply-add: the portable reference multiplies then adds;
//! the AVX2+FMA and AVX-512 builds fuse them (one rounding instead of two, ~1.6× the speed
//! here), chosen at run time. The fused builds agree with the reference to f32 rounding of
//! each product (tested below with a stated tolerance); the same order of adds otherwise.

/// Columns per register block: 4 tokens × 32 columns of accumulators stay in registers.
const COLS: usize = 32;

/// dx (nt, k) += g (nt, nr) · rows (nr, k), all row-major.
pub fn gemm_acc(dx: &mut [f32], g: &[f32], rows: &[f32], nt: usize, nr: usize, k: usize) {
    assert!(dx.len() >= nt * k && g.len() >= nt * nr && rows.len() >= nr * k);
    #[cfg(target_arch = "x86_64")]
    {
        // The kernel set in use decides (so `--simd avx2` trains with the AVX2 build).
        let set = crate::quant::simd::kernels().name;
        let fma = std::is_x86_feature_detected!("fma");
        if set.starts_with("avx512") && fma && std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F and FMA (checked just above).
            return unsafe { gemm_acc_avx512(dx, g, rows, nt, nr, k) };
        }
        if set.starts_with("avx") && fma && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { gemm_acc_avx2(dx, g, rows, nt, nr, k) };
        }
    }
    gemm_acc_portable(dx, g, rows, nt, nr, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn gemm_acc_avx512(dx: &mut [f32], g: &[f32], rows: &[f32], nt: usize, nr: usize, k: usize) {
    gemm_acc_generic::<true>(dx, g, rows, nt, nr, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemm_acc_avx2(dx: &mut [f32], g: &[f32], rows: &[f32], nt: usize, nr: usize, k: usize) {
    gemm_acc_generic::<true>(dx, g, rows, nt, nr, k)
}

/// The reference: for every element, Σ over rows in row order, added to dx's value.
pub fn gemm_acc_portable(dx: &mut [f32], g: &[f32], rows: &[f32], nt: usize, nr: usize, k: usize) {
    gemm_acc_generic::<false>(dx, g, rows, nt, nr, k)
}

#[inline(always)]
fn madd<const FMA: bool>(acc: f32, a: f32, b: f32) -> f32 {
    if FMA {
        a.mul_add(b, acc)
    } else {
        acc + a * b
    }
}

#[inline(always)]
fn gemm_acc_generic<const FMA: bool>(
    dx: &mut [f32],
    g: &[f32],
    rows: &[f32],
    nt: usize,
    nr: usize,
    k: usize,
) {
    let full = k / COLS * COLS;
    let mut t0 = 0;
    while t0 + 4 <= nt {
        for c in (0..full).step_by(COLS) {
            let mut acc = [[0f32; COLS]; 4];
            for (t, a) in acc.iter_mut().enumerate() {
                a.copy_from_slice(&dx[(t0 + t) * k + c..][..COLS]);
            }
            for i in 0..nr {
                let w: &[f32; COLS] = rows[i * k + c..][..COLS].try_into().expect("COLS");
                for (t, a) in acc.iter_mut().enumerate() {
                    let gv = g[(t0 + t) * nr + i];
                    for l in 0..COLS {
                        a[l] = madd::<FMA>(a[l], gv, w[l]);
                    }
                }
            }
            for (t, a) in acc.iter().enumerate() {
                dx[(t0 + t) * k + c..][..COLS].copy_from_slice(a);
            }
        }
        for t in t0..t0 + 4 {
            tail_cols(
                &mut dx[t * k..(t + 1) * k],
                &g[t * nr..(t + 1) * nr],
                rows,
                full,
                k,
            );
        }
        t0 += 4;
    }
    for t in t0..nt {
        tail_cols(
            &mut dx[t * k..(t + 1) * k],
            &g[t * nr..(t + 1) * nr],
            rows,
            0,
            k,
        );
    }
}

/// One token's columns from..k, rows in order (the same per-element order as the blocks).
#[inline(always)]
fn tail_cols(dxr: &mut [f32], gr: &[f32], rows: &[f32], from: usize, k: usize) {
    for (i, &gv) in gr.iter().enumerate() {
        let w = &rows[i * k + from..(i + 1) * k];
        dxr[from..]
            .iter_mut()
            .zip(w)
            .for_each(|(d, &x)| *d += gv * x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every shape class (whole register blocks, a column tail, a token tail, one row): the
    /// portable loop equals the plain triple loop exactly (same order of adds per element),
    /// and the dispatched (fused) build is within 1e-5 of its sum of magnitudes (a fused
    /// multiply-add skips one rounding per product).
    #[test]
    fn dispatched_equals_reference_on_every_shape() {
        for &(nt, nr, k) in &[
            (4, 16, 64),
            (7, 33, 100),
            (3, 5, 31),
            (1, 1, 1),
            (9, 64, 576),
        ] {
            let g = rand(nt * nr, 1 + nt as u64);
            let rows = rand(nr * k, 2 + k as u64);
            let init = rand(nt * k, 3);
            let mut a = init.clone();
            gemm_acc(&mut a, &g, &rows, nt, nr, k);
            let mut b = init.clone();
            gemm_acc_portable(&mut b, &g, &rows, nt, nr, k);
            for i in 0..a.len() {
                let (t, j) = (i / k, i % k);
                let mag: f32 = init[i].abs()
                    + (0..nr)
                        .map(|r| (g[t * nr + r] * rows[r * k + j]).abs())
                        .sum::<f32>();
                assert!(
                    (a[i] - b[i]).abs() <= 1e-5 * mag,
                    "({nt},{nr},{k}) [{i}]: dispatched {} vs portable {}",
                    a[i],
                    b[i]
                );
            }
            let mut c = init.clone();
            for t in 0..nt {
                for i in 0..nr {
                    for j in 0..k {
                        c[t * k + j] += g[t * nr + i] * rows[i * k + j];
                    }
                }
            }
            assert_eq!(b, c, "({nt},{nr},{k}): differs from the triple loop");
        }
    }
}
