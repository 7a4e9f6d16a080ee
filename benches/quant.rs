//! Scalar reference throughput per block format: dequantize (GB/s of packed weights read) and
//! quantize. These are the baselines the SIMD kernels (issue: fast kernels) must beat.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ledge::gguf::GgmlType;
use ledge::quant;

const N: usize = 256 * 1024; // elements per run: a 512×512 matrix

fn data() -> Vec<f32> {
    // Deterministic, non-trivial values (a sum of incommensurate sines).
    (0..N)
        .map(|i| {
            let x = i as f32;
            (x * 0.013).sin() + 0.5 * (x * 0.0071).cos() + 0.1 * (x * 0.37).sin()
        })
        .collect()
}

fn types() -> impl Iterator<Item = GgmlType> {
    GgmlType::all().filter(|&t| quant::is_supported(t))
}

fn bench_dequantize(c: &mut Criterion) {
    let src = data();
    let mut g = c.benchmark_group("dequantize");
    for ty in types() {
        let packed = quant::quantize_to_vec(ty, &src).expect("quantize");
        // Held in u64s so the blocks are aligned as they are in a mapped file.
        let mut words = vec![0u64; packed.len().div_ceil(8)];
        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..packed.len()];
        bytes.copy_from_slice(&packed);
        let bytes = &*bytes;
        let mut out = vec![0f32; N];
        g.throughput(Throughput::Bytes(packed.len() as u64));
        g.bench_function(ty.name(), |b| {
            b.iter(|| quant::dequantize(ty, bytes, &mut out).unwrap())
        });
    }
    g.finish();
}

fn bench_quantize(c: &mut Criterion) {
    let src = data();
    let mut g = c.benchmark_group("quantize");
    g.sample_size(10);
    for ty in types() {
        g.throughput(Throughput::Elements(N as u64));
        g.bench_function(ty.name(), |b| {
            b.iter(|| quant::quantize_to_vec(ty, &src).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_dequantize, bench_quantize);
criterion_main!(benches);
