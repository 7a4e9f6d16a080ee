//! Matmul at real model shapes: SmolLM2-135M's FFN (576 → 1536) and a 7B's attention and FFN
//! (4096 → 4096, 4096 → 11008), for one token (generation, GEMV) and 64 tokens (prompt),
//! with the kernel set chosen at start-up. Throughput is bytes of weights per call.

use std::borrow::Cow;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ledge::gguf::GgmlType;
use ledge::ops::matmul_view;
use ledge::quant;
use ledge::tensor::TensorView;

fn weights(ty: GgmlType, k: usize, m: usize) -> TensorView<'static> {
    let x: Vec<f32> = (0..k * m)
        .map(|i| ((i as f32) * 0.61803).sin() * 0.05)
        .collect();
    TensorView {
        name: Cow::Borrowed("w"),
        ty,
        shape: vec![k, m],
        data: Cow::Owned(quant::quantize_to_vec(ty, &x).unwrap()),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    for (label, k, m) in [
        ("135M-ffn", 576, 1536),
        ("7B-attn", 4096, 4096),
        ("7B-ffn", 4096, 11008),
    ] {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let w = weights(ty, k, m);
            for n in [1usize, 64] {
                let x: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.37).cos()).collect();
                let mut out = vec![0f32; n * m];
                g.throughput(Throughput::Bytes(w.data.len() as u64));
                g.bench_function(
                    format!("{label}/{ty}/n{n}/{}", ledge::quant::simd::kernels().name),
                    |b| b.iter(|| matmul_view(&w, &x, n, &mut out).unwrap()),
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
