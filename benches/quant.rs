//! Scalar reference throughput per block format: dequantize (GB/s of packed weights read) and
//! quantize. These are the baselines the SIMD kernels (issue: fast kernels) must beat.

use bytemuck::Zeroable;
use criterion::{criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup};
use criterion::{Criterion, Throughput};
use half::{bf16, f16};
use ledge::gguf::GgmlType;
use ledge::quant::simd::{self, Fast, KernelSet};
use ledge::quant::{self, *};

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

/// One weight row of `cols` dotted with one activation row, `rows` times: the GEMV inner
/// loop. Throughput is bytes of weights streamed.
fn dot_case<B: Fast>(g: &mut BenchmarkGroup<WallTime>, k: &KernelSet, x: &[f32]) {
    const ROWS: usize = 64;
    let cols = x.len() / ROWS;
    let mut w = vec![B::zeroed(); x.len() / B::BLOCK_SIZE];
    B::quantize(x, &mut w);
    let mut a = vec![B::Act::zeroed(); cols / B::Act::BLOCK_SIZE];
    (B::quantize_act(k))(&x[..cols], &mut a);
    let dot = B::dot(k);
    let nb = cols / B::BLOCK_SIZE;
    g.throughput(Throughput::Bytes(std::mem::size_of_val(&w[..]) as u64));
    g.bench_function(format!("{}/{}", B::TYPE.name(), k.name), |b| {
        b.iter(|| {
            let mut s = 0f32;
            for r in 0..ROWS {
                s += dot(&w[r * nb..(r + 1) * nb], &a);
            }
            s
        })
    });
}

fn bench_vec_dot(c: &mut Criterion) {
    let x = data();
    let mut g = c.benchmark_group("vec_dot");
    for k in simd::available() {
        dot_case::<BlockQ4_0>(&mut g, &k, &x);
        dot_case::<BlockQ4_1>(&mut g, &k, &x);
        dot_case::<BlockQ5_0>(&mut g, &k, &x);
        dot_case::<BlockQ5_1>(&mut g, &k, &x);
        dot_case::<BlockQ8_0>(&mut g, &k, &x);
        dot_case::<BlockQ2K>(&mut g, &k, &x);
        dot_case::<BlockQ3K>(&mut g, &k, &x);
        dot_case::<BlockQ4K>(&mut g, &k, &x);
        dot_case::<BlockQ5K>(&mut g, &k, &x);
        dot_case::<BlockQ6K>(&mut g, &k, &x);
        dot_case::<BlockIQ4NL>(&mut g, &k, &x);
        dot_case::<BlockIQ4XS>(&mut g, &k, &x);
        dot_case::<f32>(&mut g, &k, &x);
        dot_case::<f16>(&mut g, &k, &x);
        dot_case::<bf16>(&mut g, &k, &x);
    }
    g.finish();
}

criterion_group!(benches, bench_dequantize, bench_quantize, bench_vec_dot);
criterion_main!(benches);
