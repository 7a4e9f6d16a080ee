//! Quantized matrix multiplication: W (k, m) @ x (n, k) → out (n, m), over the GGUF blocks
//! (`matmul_view`) and over the sixteen-row layout (`matmul_packed16`); the four-row K
//! layout has `matmul_k`.
//!
//! The activations are quantized once per call to the weight type's dot partner (Q8_0, Q8_1
//! or Q8_K, as ggml does; `act`), then every weight row is dotted with every token's
//! activations, with the kernels of the set chosen at start-up (`quant::simd`).
//! Rows are split across the rayon pool; each weight row is read once for all `n` tokens.

use bytemuck::Zeroable;
use half::{bf16, f16};
use rayon::prelude::*;

use super::act::quantize_rows;
use crate::ggml_type::GgmlType;
use crate::quant::repack16::{Act16, Gemm16Fn, Packed16, ROWS};
use crate::quant::simd::{self, Fast};
use crate::quant::*;
use crate::tensor::TensorView;

/// Rows per parallel task: enough work to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;

/// Rows per task for `n` tokens over `m` rows: `ROWS_PER_TASK` for prompts, and for
/// generation (n = 1) about eight contiguous tasks per thread, so that each task streams a
/// long run of weights (the hardware prefetcher's best case) while stealing still balances
/// a shared machine; rounded up to a multiple of four.
fn rows_per_task(n: usize, m: usize) -> usize {
    if n > 1 {
        return ROWS_PER_TASK;
    }
    let tasks = rayon::current_num_threads() * 8;
    m.div_ceil(tasks).next_multiple_of(4).max(ROWS_PER_TASK)
}

/// out (n, m) = x (n, k) · Wᵀ where `w` has rows of length k (ggml shape [k, m]).
pub fn matmul_view(w: &TensorView, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), QuantError> {
    let (k, m) = (w.row_len(), w.n_rows());
    assert_eq!(x.len(), n * k, "matmul {}: x is not n×k", w.name);
    assert_eq!(out.len(), n * m, "matmul {}: out is not n×m", w.name);
    match w.ty {
        GgmlType::F32 => typed::<f32>(w, x, n, out),
        GgmlType::F16 => typed::<f16>(w, x, n, out),
        GgmlType::BF16 => typed::<bf16>(w, x, n, out),
        GgmlType::Q4_0 => typed::<BlockQ4_0>(w, x, n, out),
        GgmlType::Q4_1 => typed::<BlockQ4_1>(w, x, n, out),
        GgmlType::Q5_0 => typed::<BlockQ5_0>(w, x, n, out),
        GgmlType::Q5_1 => typed::<BlockQ5_1>(w, x, n, out),
        GgmlType::Q8_0 => typed::<BlockQ8_0>(w, x, n, out),
        GgmlType::Q2_K => typed::<BlockQ2K>(w, x, n, out),
        GgmlType::Q3_K => typed::<BlockQ3K>(w, x, n, out),
        GgmlType::Q4_K => typed::<BlockQ4K>(w, x, n, out),
        GgmlType::Q5_K => typed::<BlockQ5K>(w, x, n, out),
        GgmlType::Q6_K => typed::<BlockQ6K>(w, x, n, out),
        GgmlType::IQ4_NL => typed::<BlockIQ4NL>(w, x, n, out),
        GgmlType::IQ4_XS => typed::<BlockIQ4XS>(w, x, n, out),
        ty => Err(QuantError::Unsupported {
            ty,
            what: "matrix multiplication",
        }),
    }
}

fn typed<B: Fast>(w: &TensorView, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), QuantError> {
    let (k, m) = (w.row_len(), w.n_rows());
    let owned;
    let blocks: &[B] = match cast_blocks::<B>(&w.data) {
        Ok(b) => b,
        Err(_) => {
            // Data at an unaligned offset (an owned buffer): copy once into aligned blocks.
            let mut v = vec![B::zeroed(); w.data.len() / std::mem::size_of::<B>()];
            bytemuck::cast_slice_mut::<B, u8>(&mut v).copy_from_slice(&w.data);
            owned = v;
            &owned
        }
    };
    let nb = k / B::BLOCK_SIZE;
    let nba = k / B::Act::BLOCK_SIZE;
    let kernels = simd::kernels();
    let (dot, quantize) = (B::dot(kernels), B::quantize_act(kernels));
    let mut xq = vec![B::Act::zeroed(); n * nba];
    quantize_rows(x, k, &mut xq, nba, quantize);
    // Prompts go through eight-token tiles where the set has them: each weight block is
    // decoded once per tile instead of once per token.
    let gemm = B::gemm8(kernels).filter(|_| n >= 8 && nb == nba);
    let tiles = if gemm.is_some() { n / 8 } else { 0 };
    let (dy, sy) = tile_scales::<B>(&xq, tiles, nba);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let per_task = rows_per_task(n, m);
    (0..m.div_ceil(per_task)).into_par_iter().for_each_init(
        Vec::new,
        |local: &mut Vec<f32>, task| {
            let (r0, r1) = (task * per_task, ((task + 1) * per_task).min(m));
            let rows = r1 - r0;
            // local (n, rows): this task's columns of the output, token-major.
            local.clear();
            local.resize(n * rows, 0.0);
            for i in 0..rows {
                let row = &blocks[(r0 + i) * nb..(r0 + i + 1) * nb];
                if let Some(g) = gemm {
                    for tile in 0..tiles {
                        let a = &xq[tile * 8 * nba..(tile + 1) * 8 * nba];
                        let d = &dy[tile * nba..(tile + 1) * nba];
                        let s = if sy.is_empty() {
                            &sy[..]
                        } else {
                            &sy[tile * nba..(tile + 1) * nba]
                        };
                        for (j, v) in g(row, a, d, s).into_iter().enumerate() {
                            local[(tile * 8 + j) * rows + i] = v;
                        }
                    }
                }
                for t in tiles * 8..n {
                    local[t * rows + i] = dot(row, &xq[t * nba..(t + 1) * nba]);
                }
            }
            for t in 0..n {
                let src = &local[t * rows..(t + 1) * rows];
                // SAFETY: `out` has n·m elements (asserted at the top of `matmul_view`) and
                // outlives this loop; task `task` writes only
                // out[t·m + r0 .. t·m + r1] for each token t, and the row ranges [r0, r1)
                // of different tasks are disjoint, so no two threads write the same element
                // and nothing reads `out` during the loop.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), out_ptr.at(t * m + r0), rows);
                }
            }
        },
    );
    Ok(())
}

/// The output pointer shared by a matmul's tasks (here and in `matmul_k`), which write
/// disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: only used by matmuls whose tasks write disjoint ranges (see each use).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` must be within the output slice the pointer came from.
    pub(super) unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: the caller keeps i in bounds.
        unsafe { self.0.add(i) }
    }
}

/// The activation block scales of each eight-token tile, as `[tile·nba + block][token]`:
/// `d` always, `s` only for formats that have it (else empty).
fn tile_scales<B: Fast>(xq: &[B::Act], tiles: usize, nba: usize) -> (Vec<[f32; 8]>, Vec<[f32; 8]>) {
    let (mut dy, mut sy) = (Vec::new(), Vec::new());
    if tiles == 0 {
        return (dy, sy);
    }
    let with_s = B::Act::TYPE == GgmlType::Q8_1;
    dy.resize(tiles * nba, [0f32; 8]);
    if with_s {
        sy.resize(tiles * nba, [0f32; 8]);
    }
    for tile in 0..tiles {
        for t in 0..8 {
            for b in 0..nba {
                let (d, s) = simd::act_scales(&xq[(tile * 8 + t) * nba + b]);
                dy[tile * nba + b][t] = d;
                if with_s {
                    sy[tile * nba + b][t] = s;
                }
            }
        }
    }
    (dy, sy)
}

/// out (n, m) = x (n, k) · Wᵀ over a sixteen-row packed W (`quant::repack16`), x quantized
/// for its kind by `act::acts16` (q, k and v share one quantization of their input; so do
/// gate and up): each task runs `kernel` over its groups of sixteen rows for panels of up
/// to 128 tokens.
pub fn matmul_packed16(p: &Packed16, kernel: Gemm16Fn, acts: &[Act16], n: usize, out: &mut [f32]) {
    let (k, m) = (p.k, p.rows);
    let nb = k / 32;
    assert_eq!(acts.len(), n * nb, "packed matmul: acts are not n×k/32");
    assert_eq!(out.len(), n * m, "packed matmul: out is not n×m");
    // Panels of up to PANEL tokens, groups inner: a group's weights are decoded once per
    // panel (the AMX kernel decodes them to bytes first) and stay in L1 across the panel's
    // tiles, the panel's activations in L2 across the task's groups. The task's results
    // for a panel are gathered first and then written token by token, one contiguous run
    // per output row: writing each group's column of 16 as it comes touched a page per
    // token per group (TLB misses: 10 % of a prompt's time).
    const PANEL: usize = 128;
    let groups = p.groups();
    // About four tasks per thread (at most eight groups each), the groups dealt out evenly
    // (sizes differ by at most one, spread through the range): rayon hands each thread a
    // contiguous half, quarter … of the tasks, so equal halves mean equal work. Runs of
    // ⌈groups / tasks⌉ left SmolLM2's 36-group projections split 20/16 over two threads.
    let tasks = (4 * rayon::current_num_threads().max(1)).clamp(groups.div_ceil(8), groups);
    let out_ptr = OutPtr(out.as_mut_ptr());
    thread_local! {
        /// A task's results for one panel; every entry used is written by the kernel first.
        static RES: std::cell::RefCell<Vec<[f32; ROWS]>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    (0..tasks)
        .into_par_iter()
        .with_max_len(super::matmul_k::leaf_tasks(n))
        .for_each(|task| {
            RES.with_borrow_mut(|res| {
                let (g0, g1) = (task * groups / tasks, (task + 1) * groups / tasks);
                let (r0, r1) = (g0 * ROWS, (g1 * ROWS).min(m));
                // Sized for this call's panel only, and grown, never refilled: a fresh
                // 128-token buffer zeroed per task was 8 % of a one-token decode.
                let need = PANEL.min(n) * (g1 - g0);
                if res.len() < need {
                    res.resize(need, [0f32; ROWS]);
                }
                for t0 in (0..n).step_by(PANEL) {
                    let tn = PANEL.min(n - t0);
                    // res[(g − g0)·tn + t]: group g's sixteen results for token t0 + t.
                    for (g, res) in (g0..g1).zip(res.chunks_exact_mut(tn)) {
                        kernel(p, g, &acts[t0 * nb..(t0 + tn) * nb], res);
                    }
                    for t in 0..tn {
                        // SAFETY: `out` has n·m elements (asserted above); this task writes
                        // only out[t·m + r0 .. t·m + r1] for its own rows [r0, r1), and the
                        // row ranges of different tasks are disjoint.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(out_ptr.at((t0 + t) * m + r0), r1 - r0)
                        };
                        // Whole groups as fixed-size copies (two vector moves each): a
                        // slice copy of 16 floats went through a libc memmove call (8 % of a
                        // prompt).
                        let mut groups = dst.chunks_exact_mut(ROWS);
                        for (i, d) in groups.by_ref().enumerate() {
                            let d: &mut [f32; ROWS] = d.try_into().expect("chunk of ROWS");
                            *d = res[i * tn + t];
                        }
                        let tail = groups.into_remainder();
                        if !tail.is_empty() {
                            let i = (r1 - r0) / ROWS;
                            tail.copy_from_slice(&res[i * tn + t][..tail.len()]);
                        }
                    }
                }
            })
        });
}
