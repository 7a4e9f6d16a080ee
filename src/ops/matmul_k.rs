//! Quantized matrix multiplication over the load-time repacked K-quant layouts
//! (`quant::repack_k`): W (k, m) @ x (n, k) → out (n, m).
//!
//! The activations are quantized once per call to Q8_K and laid out for the packed kernel;
//! tasks of a few four-row groups then run the kernel on tiles of up to eight tokens, each
//! weight super-block decoded once per tile. With one token (generation) the same kernel
//! streams the packed rows once, split across the rayon pool.

use bytemuck::Zeroable;
use rayon::prelude::*;

use crate::quant::repack::PackedMatrix;
use crate::quant::repack_k::{self, ActQ8K4};
use crate::quant::{simd, BlockQ8K, QK_K};

/// Four-row groups per parallel task (16 rows, as the other matmuls).
const GROUPS_PER_TASK: usize = 4;
/// Tokens per kernel call.
const TILE: usize = 8;

/// out (n, m) = x (n, k) · Wᵀ over a Q4_Kx4 or Q6_Kx4 packed W.
pub fn matmul_packed_k(p: &PackedMatrix, x: &[f32], n: usize, out: &mut [f32]) {
    let acts = acts_k(x, n, p.k);
    matmul_packed_k_acts(p, &acts, n, out);
}

/// x (n, k) quantized to Q8_K for the packed K kernels: n·k/256 blocks, token-major.
pub fn acts_k(x: &[f32], n: usize, k: usize) -> Vec<ActQ8K4> {
    assert_eq!(x.len(), n * k, "packed K matmul: x is not n×k");
    let nsb = k / QK_K;
    let quantize = simd::kernels().quantize_q8_k;
    let mut acts = vec![ActQ8K4::zeroed(); n * nsb];
    super::matmul::quantize_rows(x, k, &mut acts, nsb, |src, dst| {
        let mut q = [BlockQ8K::zeroed(); 4];
        for (src, dst) in src.chunks(4 * QK_K).zip(dst.chunks_mut(4)) {
            let q = &mut q[..dst.len()];
            quantize(src, q);
            for (a, b) in dst.iter_mut().zip(q.iter()) {
                *a = ActQ8K4::from_q8_k(b);
            }
        }
    });
    acts
}

/// `matmul_packed_k` over activations already quantized by `acts_k` (shared by the
/// matrices that read the same input).
pub fn matmul_packed_k_acts(p: &PackedMatrix, acts: &[ActQ8K4], n: usize, out: &mut [f32]) {
    let (k, m) = (p.k, p.rows);
    let nsb = k / QK_K;
    assert_eq!(acts.len(), n * nsb, "packed K matmul: acts are not n×k/256");
    assert_eq!(out.len(), n * m, "packed K matmul: out is not n×m");
    let kernel = repack_k::kernel().unwrap_or(repack_k::gemm_k_ref);
    #[cfg(target_arch = "x86_64")]
    if n >= AMX_MIN_TOKENS && amx_enabled() {
        return amx(p, acts, n, out, kernel);
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..p.groups().div_ceil(GROUPS_PER_TASK))
        .into_par_iter()
        .for_each(|task| {
            let g1 = ((task + 1) * GROUPS_PER_TASK).min(p.groups());
            let mut res = [[0f32; 4]; TILE];
            // Tokens outer, groups inner: the task's few groups of weights stay in cache
            // while each tile of activations is used by all of them.
            for t0 in (0..n).step_by(TILE) {
                let tn = TILE.min(n - t0);
                for g in task * GROUPS_PER_TASK..g1 {
                    kernel(p, g, &acts[t0 * nsb..(t0 + tn) * nsb], &mut res[..tn]);
                    let rows = 4.min(m - g * 4);
                    for (t, r) in res[..tn].iter().enumerate() {
                        // SAFETY: `out` has n·m elements (asserted above); this task writes
                        // only out[t·m + 4·g .. t·m + 4·g + rows] for its own groups g, and
                        // the groups of different tasks are disjoint.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                r.as_ptr(),
                                out_ptr.at((t0 + t) * m + g * 4),
                                rows,
                            );
                        }
                    }
                }
            }
        });
}

/// Fewest tokens for the AMX path: it decodes each sixteen-row supergroup once per call,
/// which only pays over a few tiles of tokens.
#[cfg(target_arch = "x86_64")]
const AMX_MIN_TOKENS: usize = 32;

/// Whether the packed K matmuls use AMX for prompts: the kernel set says so (`avx512-amx`).
#[cfg(target_arch = "x86_64")]
fn amx_enabled() -> bool {
    simd::kernels().amx_k
}

/// The AMX path: one task per sixteen-row supergroup, its whole tiles of sixteen tokens by
/// AMX, the tokens left over by `kernel` per four-row group.
#[cfg(target_arch = "x86_64")]
fn amx(
    p: &PackedMatrix,
    acts: &[ActQ8K4],
    n: usize,
    out: &mut [f32],
    kernel: repack_k::PackedKGemmFn,
) {
    use simd::avx512_amx_k::{self as amx, ROWS, TOKENS};
    let (k, m) = (p.k, p.rows);
    let nsb = k / QK_K;
    let full = n / TOKENS * TOKENS;
    let packed = amx::pack_acts(&acts[..full * nsb], full, nsb);
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..p.groups().div_ceil(4)).into_par_iter().for_each(|sg| {
        let mut res = vec![[0f32; ROWS]; full];
        amx::supergroup(p, sg, &packed, &mut res);
        let rows = ROWS.min(m - sg * ROWS);
        let write = |t: usize, r: &[f32], row0: usize, rows: usize| {
            // SAFETY: `out` has n·m elements (asserted by the caller); this task writes only
            // out[t·m + row0 .. t·m + row0 + rows] within its own supergroup's rows, and the
            // supergroups of different tasks are disjoint.
            unsafe { std::ptr::copy_nonoverlapping(r.as_ptr(), out_ptr.at(t * m + row0), rows) };
        };
        for (t, r) in res.iter().enumerate() {
            write(t, r, sg * ROWS, rows);
        }
        let mut tail = [[0f32; 4]; TILE];
        for t0 in (full..n).step_by(TILE) {
            let tn = TILE.min(n - t0);
            for g in 4 * sg..(4 * sg + 4).min(p.groups()) {
                kernel(p, g, &acts[t0 * nsb..(t0 + tn) * nsb], &mut tail[..tn]);
                for (t, r) in tail[..tn].iter().enumerate() {
                    write(t0 + t, r, g * 4, 4.min(m - g * 4));
                }
            }
        }
    });
}

/// The output pointer shared by the tasks, which write disjoint parts of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only used inside `matmul_packed_k`, whose tasks write disjoint ranges.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` must be within the output slice the pointer came from.
    unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: the caller keeps i in bounds.
        unsafe { self.0.add(i) }
    }
}
