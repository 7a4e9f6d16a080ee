//! Generation (one token) splits a matmul's rows into fewer, longer tasks than prompts do
//! (ops::matmul's `rows_per_task`): a one-token matmul over many rows, in a pool of an odd
//! thread count so the last task is short, must give each row exactly the bits the same
//! token gets inside a multi-token call (same kernel per row, only the split differs), for
//! the blocked path and, where the kernel set packs the type, the packed layout.

mod common;

use common::Rng;
use ledge::gguf::GgmlType;
use ledge::ops::{matmul, Input, Weight};
use ledge::quant::quantize_to_vec;
use ledge::tensor::TensorView;

fn data(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect()
}

#[test]
fn one_token_long_tasks_equal_the_multi_token_split() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let mut rng = Rng(0xb0_0004);
    // 1001 rows: 24 tasks of 44 rows (a multiple of four) and a short last one.
    let (k, m, n) = (256, 1001, 3);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q8_0] {
        let w = quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap();
        let view = TensorView::borrowed("w", ty, vec![k, m], &w);
        let x = data(&mut rng, n * k);
        pool.install(|| {
            let mut all = vec![0f32; n * m];
            ledge::ops::matmul_view(&view, &x, n, &mut all).unwrap();
            for t in 0..n {
                let mut one = vec![0f32; m];
                ledge::ops::matmul_view(&view, &x[t * k..(t + 1) * k], 1, &mut one).unwrap();
                let want: Vec<u32> = all[t * m..(t + 1) * m]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                let got: Vec<u32> = one.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{ty} blocked, token {t}");
            }
            // The layout the kernel set loads this weight in (sixteen-row, four-row K), where
            // it packs one.
            let weight = Weight::load(view.clone(), ledge::quant::simd::kernels());
            if weight.packed_bytes() > 0 {
                let mut all = vec![0f32; n * m];
                matmul(&weight, &mut Input::new(&x, n), &mut all).unwrap();
                for t in 0..n {
                    let mut one = vec![0f32; m];
                    let xt = &x[t * k..(t + 1) * k];
                    matmul(&weight, &mut Input::new(xt, 1), &mut one).unwrap();
                    let want: Vec<u32> = all[t * m..(t + 1) * m]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    let got: Vec<u32> = one.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{ty} packed, token {t}");
                }
            }
        });
    }
}

/// `matmul_many` (a mixture's chosen experts as one pool loop) gives each product exactly
/// the bits `matmul` gives it alone: Q4_K and Q6_K (packed where the kernel set packs them),
/// row counts that leave short last groups and tasks, inputs shared by two weights, one and
/// five tokens, three threads.
#[test]
fn many_products_in_one_loop_equal_each_alone() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let mut rng = Rng(0xb0_0005);
    let ks = ledge::quant::simd::kernels();
    let k = 512;
    for n in [1usize, 5] {
        let shapes = [
            (GgmlType::Q4_K, 70),
            (GgmlType::Q6_K, 36),
            (GgmlType::Q4_K, 18),
        ];
        let bufs: Vec<(GgmlType, usize, Vec<u8>)> = shapes
            .iter()
            .map(|&(ty, m)| (ty, m, quantize_to_vec(ty, &data(&mut rng, k * m)).unwrap()))
            .collect();
        let weights: Vec<Weight> = bufs
            .iter()
            .map(|(ty, m, b)| Weight::load(TensorView::borrowed("w", *ty, vec![k, *m], b), ks))
            .collect();
        let xs: Vec<Vec<f32>> = (0..2).map(|_| data(&mut rng, n * k)).collect();
        // Inputs: 0 feeds weights 0 and 1, 1 feeds weight 2.
        let which = [0usize, 0, 1];
        pool.install(|| {
            let alone: Vec<Vec<f32>> = weights
                .iter()
                .zip(&shapes)
                .zip(which)
                .map(|((w, &(_, m)), i)| {
                    let mut out = vec![0f32; n * m];
                    matmul(w, &mut Input::new(&xs[i], n), &mut out).unwrap();
                    out
                })
                .collect();
            let mut outs: Vec<Vec<f32>> = shapes.iter().map(|&(_, m)| vec![0f32; n * m]).collect();
            let mut inputs: Vec<Input> = xs.iter().map(|x| Input::new(x, n)).collect();
            let mut jobs: Vec<(&Weight, usize, &mut [f32])> = weights
                .iter()
                .zip(which)
                .zip(&mut outs)
                .map(|((w, i), o)| (w, i, &mut o[..]))
                .collect();
            ledge::ops::matmul_many(&mut inputs, &mut jobs).unwrap();
            for (j, (a, b)) in alone.iter().zip(&outs).enumerate() {
                assert!(a.iter().any(|&v| v != 0.0), "job {j}: all zeros");
                let (a, b): (Vec<u32>, Vec<u32>) = (
                    a.iter().map(|v| v.to_bits()).collect(),
                    b.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(a, b, "n {n}, job {j} ({:?})", shapes[j]);
            }
        });
    }
}
