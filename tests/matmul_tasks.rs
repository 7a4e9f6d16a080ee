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
