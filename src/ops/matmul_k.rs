//! Quantized matrix multiplication over the load-time repacked K-quant layouts
//! (`quant::repack_k`): W (k, m) @ x (n, k) → out (n, m).
//!
//! The activations are quantized once per input to Q8_K and laid out for the packed kernel
//! (`act::acts_k`); tasks of a few four-row groups then run the kernel on tiles of up to
//! 24 tokens (which the kernels split into their own register tiles), each weight
//! super-block decoded once per register tile. With one token (generation) the same kernel
//! streams the packed rows once, split across the rayon pool.

use rayon::prelude::*;

use super::matmul::OutPtr;
use crate::quant::repack_k::{ActK, GemmKFn, PackedK};
use crate::quant::QK_K;

/// Four-row groups per parallel task (16 rows, as the other matmuls).
const GROUPS_PER_TASK: usize = 4;
/// Tokens per kernel call: a multiple of every kernel's register tile (AVX2 6, AVX-512 8,
/// NEON 4), so that no call ends in a short tile but the prompt's last.
const TILE: usize = 24;

/// out (n, m) = x (n, k) · Wᵀ over a Q4_K or Q6_K packed W, x quantized by `act::acts_k`
/// (shared by the matrices that read the same input), with the kernel set's `kernel` and,
/// where `amx` (the set's `amx_k`), its AMX path for prompts.
pub fn matmul_packed_k(
    p: &PackedK,
    kernel: GemmKFn,
    amx: bool,
    acts: &[ActK],
    n: usize,
    out: &mut [f32],
) {
    let (k, m) = (p.k, p.rows);
    let nsb = k / QK_K;
    assert_eq!(acts.len(), n * nsb, "packed K matmul: acts are not n×k/256");
    assert_eq!(out.len(), n * m, "packed K matmul: out is not n×m");
    #[cfg(target_arch = "x86_64")]
    if amx
        && n >= AMX_MIN_TOKENS
        && matches!(
            p.kind,
            crate::quant::repack_k::KindK::Q4_K | crate::quant::repack_k::KindK::Q6_K
        )
    {
        return amx_matmul(p, acts, n, out, kernel);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = amx;
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..p.groups().div_ceil(GROUPS_PER_TASK))
        .into_par_iter()
        .with_max_len(leaf_tasks(n))
        .for_each(|task| {
            let g0 = task * GROUPS_PER_TASK;
            let g1 = (g0 + GROUPS_PER_TASK).min(p.groups());
            // SAFETY: `out` has n·m elements (asserted above), and the tasks' group ranges
            // are disjoint.
            unsafe { run_groups(p, kernel, acts, n, out_ptr, g0..g1) };
        });
}

/// Most tasks rayon may run as one unsplittable piece. Its adaptive split stops after a few
/// halvings, so a thread that runs out of work cannot take any of the piece another thread is
/// in: at two threads on 7B prompts one thread slept 12 % of the time waiting on the other's
/// last piece (perf: 235k against 207k samples). Prompt tasks are long enough (a task is four
/// groups × all tokens) for one rayon job each; one-token tasks are microseconds, where the
/// default pieces keep the fork-join cost down.
pub(super) fn leaf_tasks(n: usize) -> usize {
    if n > 1 {
        1
    } else {
        usize::MAX
    }
}

/// One product of `matmul_packed_k_many`: out (n, p.rows) = x · Wᵀ, `acts` from x.
pub struct KJob<'a> {
    pub p: &'a PackedK,
    pub kernel: GemmKFn,
    pub acts: &'a [ActK],
    pub n: usize,
    pub out: &'a mut [f32],
}

/// Several products as one parallel loop (a mixture's chosen experts): the groups of all
/// of them become the tasks of one pool loop, so the threads share every expert's rows
/// evenly with one fork-join, instead of one per matrix or one expert per thread.
pub fn matmul_packed_k_many(jobs: &mut [KJob<'_>]) {
    let mut tasks: Vec<(usize, usize)> = Vec::new();
    let mut outs = Vec::with_capacity(jobs.len());
    for (j, job) in jobs.iter_mut().enumerate() {
        let nsb = job.p.k / QK_K;
        assert_eq!(
            job.acts.len(),
            job.n * nsb,
            "packed K matmul: acts are not n×k/256"
        );
        assert_eq!(
            job.out.len(),
            job.n * job.p.rows,
            "packed K matmul: out is not n×m"
        );
        tasks.extend((0..job.p.groups().div_ceil(GROUPS_PER_TASK)).map(|t| (j, t)));
        outs.push(OutPtr(job.out.as_mut_ptr()));
    }
    let jobs = &*jobs;
    tasks.into_par_iter().for_each(|(j, task)| {
        let job = &jobs[j];
        let g0 = task * GROUPS_PER_TASK;
        let g1 = (g0 + GROUPS_PER_TASK).min(job.p.groups());
        // SAFETY: each job's `out` has n·m elements (asserted above), the jobs' outputs are
        // distinct slices, and within a job the tasks' group ranges are disjoint.
        unsafe { run_groups(job.p, job.kernel, job.acts, job.n, outs[j], g0..g1) };
    });
}

/// Groups `gs` of out (n, m) = x · Wᵀ: blocks of tokens outer, then groups, then tiles of
/// tokens.
///
/// # Safety
/// `out` must point to n·m floats that no one else writes at rows 4·gs.start .. 4·gs.end.
unsafe fn run_groups(
    p: &PackedK,
    kernel: GemmKFn,
    acts: &[ActK],
    n: usize,
    out: OutPtr,
    gs: std::ops::Range<usize>,
) {
    let (m, nsb) = (p.rows, p.k / QK_K);
    let mut res = [[0f32; 4]; TILE];
    // Tokens in blocks whose activations stay in L2; per block, each group's rows are
    // taken against all the block's tiles, so a group is read from memory once and then
    // hit in L1 (the weights stream evenly, not in a burst on the first tile).
    let block = (ACT_BLOCK_BYTES / (nsb * std::mem::size_of::<ActK>()))
        .max(TILE)
        .div_ceil(TILE)
        * TILE;
    for b0 in (0..n).step_by(block) {
        let b1 = (b0 + block).min(n);
        for g in gs.clone() {
            let rows = 4.min(m - g * 4);
            for t0 in (b0..b1).step_by(TILE) {
                let tn = TILE.min(b1 - t0);
                kernel(p, g, &acts[t0 * nsb..(t0 + tn) * nsb], &mut res[..tn]);
                for (t, r) in res[..tn].iter().enumerate() {
                    // SAFETY: in bounds of the n·m output, in this caller's rows (the contract).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            r.as_ptr(),
                            out.at((t0 + t) * m + g * 4),
                            rows,
                        );
                    }
                }
            }
        }
    }
}

/// Activation bytes per token block of `run_groups`: a quarter of a small L2.
const ACT_BLOCK_BYTES: usize = 256 << 10;

/// Fewest tokens for the AMX path: it decodes each sixteen-row supergroup once per call,
/// which only pays over a few tiles of tokens.
#[cfg(target_arch = "x86_64")]
const AMX_MIN_TOKENS: usize = 32;

/// The AMX path: one task per sixteen-row supergroup, its whole tiles of sixteen tokens by
/// AMX, the tokens left over by `kernel` per four-row group.
#[cfg(target_arch = "x86_64")]
fn amx_matmul(p: &PackedK, acts: &[ActK], n: usize, out: &mut [f32], kernel: GemmKFn) {
    use crate::quant::simd::avx512_amx_k::{self as amx, ROWS, TOKENS};
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
