//! Activation quantization for the matmuls: x (n, k) in f32 to the blocks a weight layout's
//! kernel reads (Q8_0, Q8_1 or Q8_K, as ggml pairs them with the weight types), once per
//! input (`ops::Input` shares one between the matrices that read the same x).

use bytemuck::Pod;
use rayon::prelude::*;

use crate::quant::repack16::{Act16, Kind16};
use crate::quant::repack_k::ActK;
use crate::quant::simd::{KernelSet, QuantFn};
use crate::quant::{BlockQ8K, BlockQ8_0, BlockQ8_1, QuantBlock};

/// Tokens per task when a prompt's activations are quantized in parallel.
const QUANT_TOKENS_PER_TASK: usize = 8;

/// Runs `row(x row, its nb activation blocks)` for every token of x (n, k): across the pool
/// for prompts (quantizing a 512-token input on one thread was ~6 % of a two-thread prompt,
/// with the other thread idle), inline for a few tokens.
pub fn quantize_rows<A: Send>(
    x: &[f32],
    k: usize,
    acts: &mut [A],
    nb: usize,
    row: impl Fn(&[f32], &mut [A]) + Sync,
) {
    let n = x.len() / k;
    if n < 2 * QUANT_TOKENS_PER_TASK {
        for (src, dst) in x.chunks_exact(k).zip(acts.chunks_exact_mut(nb)) {
            row(src, dst);
        }
        return;
    }
    x.par_chunks(k * QUANT_TOKENS_PER_TASK)
        .zip(acts.par_chunks_mut(nb * QUANT_TOKENS_PER_TASK))
        .for_each(|(x, acts)| {
            for (src, dst) in x.chunks_exact(k).zip(acts.chunks_exact_mut(nb)) {
                row(src, dst);
            }
        });
}

/// x (n, k) quantized by `quantize` to blocks of `Q`, each laid out for a kernel by
/// `to_act`: n·k/`Q::BLOCK_SIZE` activation blocks, token-major. `C` blocks at a time go
/// through a buffer on the stack, so no row of `Q` blocks is ever allocated.
fn quantize_as<Q: QuantBlock, A: Pod + Send, const C: usize>(
    x: &[f32],
    n: usize,
    k: usize,
    quantize: QuantFn<Q>,
    to_act: impl Fn(&Q) -> A + Sync,
) -> Vec<A> {
    assert_eq!(x.len(), n * k, "activations: x is not n×k");
    let nb = k / Q::BLOCK_SIZE;
    let mut acts = vec![A::zeroed(); n * nb];
    quantize_rows(x, k, &mut acts, nb, |src, dst| {
        let mut q = [Q::zeroed(); C];
        for (src, dst) in src.chunks(C * Q::BLOCK_SIZE).zip(dst.chunks_mut(C)) {
            let q = &mut q[..dst.len()];
            quantize(src, q);
            for (a, b) in dst.iter_mut().zip(q.iter()) {
                *a = to_act(b);
            }
        }
    });
    acts
}

/// x (n, k) quantized for sixteen-row weights of `kind` (Q8_1 where the kind needs the
/// block sums, else Q8_0) with the quantizers of `ks`: n·k/32 blocks, token-major.
pub fn acts16(x: &[f32], n: usize, k: usize, kind: Kind16, ks: &KernelSet) -> Vec<Act16> {
    if kind.needs_sum() {
        quantize_as::<BlockQ8_1, _, 8>(x, n, k, ks.quantize_q8_1, Act16::from_q8_1)
    } else {
        quantize_as::<BlockQ8_0, _, 8>(x, n, k, ks.quantize_q8_0, |b| Act16::from_q8_0(b, kind))
    }
}

/// x (n, k) quantized to Q8_K for the four-row K weights with the quantizer of `ks`:
/// n·k/256 blocks, token-major.
pub fn acts_k(x: &[f32], n: usize, k: usize, ks: &KernelSet) -> Vec<ActK> {
    quantize_as::<BlockQ8K, _, 4>(x, n, k, ks.quantize_q8_k, ActK::from_q8_k)
}
