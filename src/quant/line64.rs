//! The unit of the repacked weight layouts (`repack16`, `repack_k`): 64 bytes aligned to a
//! cache line, so that a kernel reads one with a single aligned zmm load (or two ymm, four
//! NEON registers) and a line never straddles two cache lines.

use bytemuck::{Pod, Zeroable};

/// 64 bytes, aligned to a cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Line64(pub [u8; 64]);

/// `n` lines of `fill`, in memory backed by transparent huge pages where the kernel allows
/// it. The packed weights are streamed end to end once per token; in 4 KB pages a 7B model's
/// 3.9 GB is a million TLB entries, and with THP in its usual `madvise` mode anonymous
/// memory gets huge pages only when asked, before the pages are first touched.
pub fn filled(n: usize, fill: u8) -> Vec<Line64> {
    let mut v: Vec<Line64> = Vec::with_capacity(n);
    advise_huge_pages(v.as_mut_ptr() as *mut u8, n * 64);
    v.resize(n, Line64([fill; 64]));
    v
}

/// `madvise(MADV_HUGEPAGE)` on the whole 2 MB pages inside `len` bytes at `p`; advisory, so
/// a refusal (no THP, an old kernel) changes nothing but speed.
#[cfg(target_os = "linux")]
fn advise_huge_pages(p: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (p as usize).next_multiple_of(HUGE);
    let end = (p as usize + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: [start, end) lies inside this process's allocation of `len` bytes at `p`;
        // MADV_HUGEPAGE only changes how its pages are backed, never their contents.
        let _ =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: *mut u8, _: usize) {}
