//! This machine's sustained memory read bandwidth, measured the way a generation GEMV reads
//! its weights: one large buffer (far larger than the last-level cache) streamed front to
//! back with the widest loads the CPU has, each thread over its own contiguous part.
//!
//! The loads are summed (64-bit integer adds, four independent accumulators) and the sum
//! is returned, so the compiler cannot drop them; the sum also checks the whole buffer was
//! read. A pass is timed from the moment all threads start to the moment the last one
//! finishes; the best of several passes is reported (the least disturbed by other work on a
//! shared machine), in GB/s (10⁹ bytes per second, as STREAM and llama.cpp's numbers are).

use std::time::Instant;

use serde::Serialize;

/// 64 bytes aligned to a cache line, so every load is one aligned line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u64; 8]);

/// One bandwidth measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Bandwidth {
    pub threads: usize,
    pub buffer_bytes: usize,
    pub passes: usize,
    /// The fastest pass, GB/s.
    pub best_gb_s: f64,
    /// The mean over the passes, GB/s.
    pub mean_gb_s: f64,
    /// Which loads were used ("avx512", "avx2", "scalar").
    pub loads: &'static str,
}

/// The read kernel: the wrapping sum of every u64 in `lines`.
type SumFn = fn(&[Line]) -> u64;

fn sum_scalar(lines: &[Line]) -> u64 {
    let mut acc = [0u64; 8];
    for l in lines {
        for (a, &v) in acc.iter_mut().zip(&l.0) {
            *a = a.wrapping_add(v);
        }
    }
    acc.iter().fold(0u64, |s, &v| s.wrapping_add(v))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Line;
    use core::arch::x86_64::*;

    /// # Safety
    /// AVX-512 F must be available.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sum_avx512(lines: &[Line]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut chunks = lines.chunks_exact(4);
        for c in &mut chunks {
            for (a, l) in acc.iter_mut().zip(c) {
                // SAFETY: a Line is 64 bytes aligned to 64.
                let v = unsafe { _mm512_load_si512(l.0.as_ptr() as *const __m512i) };
                *a = _mm512_add_epi64(*a, v);
            }
        }
        for l in chunks.remainder() {
            // SAFETY: as above.
            let v = unsafe { _mm512_load_si512(l.0.as_ptr() as *const __m512i) };
            acc[0] = _mm512_add_epi64(acc[0], v);
        }
        let s = _mm512_add_epi64(
            _mm512_add_epi64(acc[0], acc[1]),
            _mm512_add_epi64(acc[2], acc[3]),
        );
        _mm512_reduce_add_epi64(s) as u64
    }

    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub unsafe fn sum_avx2(lines: &[Line]) -> u64 {
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut chunks = lines.chunks_exact(2);
        for c in &mut chunks {
            for (i, l) in c.iter().enumerate() {
                let p = l.0.as_ptr() as *const __m256i;
                // SAFETY: a Line is 64 bytes aligned to 64: two aligned 32-byte halves.
                let (lo, hi) = unsafe { (_mm256_load_si256(p), _mm256_load_si256(p.add(1))) };
                acc[2 * i] = _mm256_add_epi64(acc[2 * i], lo);
                acc[2 * i + 1] = _mm256_add_epi64(acc[2 * i + 1], hi);
            }
        }
        let mut out = [0u64; 4];
        let s = _mm256_add_epi64(
            _mm256_add_epi64(acc[0], acc[1]),
            _mm256_add_epi64(acc[2], acc[3]),
        );
        // SAFETY: `out` is 32 writable bytes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s) };
        let tail = super::sum_scalar(chunks.remainder());
        out.iter().fold(tail, |a, &v| a.wrapping_add(v))
    }

    pub fn avx512(lines: &[Line]) -> u64 {
        // SAFETY: only handed out by `kernel()` after detecting AVX-512 F.
        unsafe { sum_avx512(lines) }
    }

    pub fn avx2(lines: &[Line]) -> u64 {
        // SAFETY: only handed out by `kernel()` after detecting AVX2.
        unsafe { sum_avx2(lines) }
    }
}

/// The widest read kernel this CPU runs.
fn kernel() -> (SumFn, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return (x86::avx512, "avx512");
        }
        if is_x86_feature_detected!("avx2") {
            return (x86::avx2, "avx2");
        }
    }
    (sum_scalar, "scalar")
}

/// A buffer of `bytes` (rounded down to whole lines, at least one), every page written so it
/// is backed by memory before the timed reads.
struct Buffer(Vec<Line>);

impl Buffer {
    fn new(bytes: usize) -> Buffer {
        let n = (bytes / 64).max(1);
        // Line i holds i in every word: the expected sum is known, and no page is zero (a
        // never-written page could be the shared zero page, which reads from cache).
        Buffer((0..n).map(|i| Line([i as u64; 8])).collect())
    }

    fn expected_sum(&self) -> u64 {
        let n = self.0.len() as u64;
        // 8 · Σ i for i < n, wrapping like the kernels.
        let tri = if n.is_multiple_of(2) {
            (n / 2).wrapping_mul(n.wrapping_sub(1))
        } else {
            n.wrapping_mul((n - 1) / 2)
        };
        tri.wrapping_mul(8)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BandwidthError {
    #[error("could not start a pool of {threads} threads: {source}")]
    Pool {
        threads: usize,
        source: rayon::ThreadPoolBuildError,
    },
    #[error("the read sum {got:#x} is not the buffer's {want:#x}: the reads were not all done")]
    BadSum { got: u64, want: u64 },
}

/// Measures the read bandwidth with each thread count of `threads` over one buffer of
/// `buffer_bytes`, best of `passes` passes each (after one untimed pass).
pub fn measure(
    buffer_bytes: usize,
    threads: &[usize],
    passes: usize,
) -> Result<Vec<Bandwidth>, BandwidthError> {
    let buf = Buffer::new(buffer_bytes);
    let (sum, loads) = kernel();
    let want = buf.expected_sum();
    let bytes = buf.0.len() * 64;
    let mut out = Vec::new();
    for &nt in threads {
        let nt = nt.max(1);
        // A pool of its own: the measurement does not depend on the global pool's size.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(nt)
            .build()
            .map_err(|source| BandwidthError::Pool {
                threads: nt,
                source,
            })?;
        // Contiguous, disjoint parts, one per thread (like a GEMV's row ranges).
        let part = buf.0.len().div_ceil(nt);
        let pass = || -> u64 {
            pool.install(|| {
                use rayon::prelude::*;
                buf.0
                    .par_chunks(part)
                    .with_min_len(1)
                    .map(sum)
                    .reduce(|| 0, u64::wrapping_add)
            })
        };
        let got = pass();
        if got != want {
            return Err(BandwidthError::BadSum { got, want });
        }
        let mut speeds = Vec::with_capacity(passes.max(1));
        for _ in 0..passes.max(1) {
            let t = Instant::now();
            let s = pass();
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(s);
            speeds.push(bytes as f64 / secs.max(1e-9) / 1e9);
        }
        out.push(Bandwidth {
            threads: nt,
            buffer_bytes: bytes,
            passes: speeds.len(),
            best_gb_s: speeds.iter().cloned().fold(0.0, f64::max),
            mean_gb_s: speeds.iter().sum::<f64>() / speeds.len() as f64,
            loads,
        });
    }
    Ok(out)
}

/// A markdown table of the measurements.
pub fn table(results: &[Bandwidth]) -> String {
    let mut s = String::from(
        "| read bandwidth | buffer | loads | threads | best GB/s | mean GB/s |\n|---|---:|---|---:|---:|---:|\n",
    );
    for r in results {
        s += &format!(
            "| sequential read | {:.0} MiB | {} | {} | {:.2} | {:.2} |\n",
            r.buffer_bytes as f64 / (1 << 20) as f64,
            r.loads,
            r.threads,
            r.best_gb_s,
            r.mean_gb_s
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_sum_every_word() {
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 1000] {
            let b = Buffer::new(n * 64);
            let want = b.expected_sum();
            assert_eq!(sum_scalar(&b.0), want, "scalar, {n} lines");
            assert_eq!(kernel().0(&b.0), want, "{}, {n} lines", kernel().1);
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                assert_eq!(x86::avx2(&b.0), want, "avx2, {n} lines");
            }
        }
    }

    #[test]
    fn measure_returns_positive_finite_speeds() {
        // Small buffer (not ≫ LLC): this checks that it runs, not the machine's speed.
        let r = measure(1 << 20, &[1, 2, 3], 2).unwrap();
        assert_eq!(r.len(), 3);
        for b in &r {
            assert!(b.best_gb_s.is_finite() && b.best_gb_s > 0.0, "{b:?}");
            assert!(b.mean_gb_s.is_finite() && b.mean_gb_s > 0.0 && b.mean_gb_s <= b.best_gb_s);
            assert_eq!(b.buffer_bytes, 1 << 20);
        }
        assert!(table(&r).lines().count() == 5);
    }
}
