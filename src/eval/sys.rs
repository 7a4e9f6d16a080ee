//! What the operating system knows about this process and the model file: peak resident
//! memory, and whether a file's pages are in the page cache (and dropping them, for cold-load
//! timings). Linux only; elsewhere the functions say they cannot tell.

use std::path::Path;

/// Peak resident set size of this process in bytes (VmHWM in /proc/self/status).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size in bytes (VmRSS).
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

fn proc_status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0: writing 5 to clear_refs), so that
/// several measurements in one process each get their own peak. Returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Asks the kernel to drop `path`'s clean pages from the page cache (posix_fadvise
/// DONTNEED). Pages that some process has mapped stay; call it before mapping the file.
pub fn drop_from_page_cache(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: a plain syscall on a file descriptor that stays open for the call; offset 0 and
    // length 0 mean the whole file.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// The fraction of `path`'s pages that are in the page cache (mincore on a fresh map).
pub fn cached_fraction(path: &Path) -> std::io::Result<f64> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(0.0);
    }
    // SAFETY: a read-only map that is only passed to mincore, never read; a concurrent
    // truncation cannot make mincore fault.
    let map = unsafe { memmap2::Mmap::map(&f) }?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let pages = map.len().div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: the range is the whole live mapping (page-aligned start); vec has one byte per
    // page of it.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            vec.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(vec.iter().filter(|&&v| v & 1 == 1).count() as f64 / pages as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_grows_with_a_touched_allocation() {
        if peak_rss_bytes().is_none() {
            return; // not Linux
        }
        let v = vec![1u8; 64 << 20];
        let touched: u64 = v.iter().step_by(4096).map(|&b| b as u64).sum();
        // One read of /proc/self/status, so that other test threads allocating between two
        // reads (or resetting the peak) cannot order RSS above the peak.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |key: &str| -> u64 {
            let line = status.lines().find_map(|l| l.strip_prefix(key)).unwrap();
            line.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        let (peak, rss) = (field("VmHWM:"), field("VmRSS:"));
        assert!(
            rss >= 60 << 20,
            "the 64 MiB vector is resident: rss {rss} ({touched})"
        );
        assert!(peak >= rss, "peak {peak} < rss {rss}");
        assert_eq!(peak_rss_bytes().map(|p| p >= 60 << 20), Some(true));
        drop(v);
    }

    #[test]
    fn dropping_a_file_from_the_cache_empties_it() {
        let p = std::env::temp_dir().join(format!("ledge-sys-{}", std::process::id()));
        std::fs::write(&p, vec![7u8; 4 << 20]).unwrap();
        // Written pages are dirty until synced; DONTNEED drops only clean ones.
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        let _ = std::fs::read(&p).unwrap();
        assert!(cached_fraction(&p).unwrap() > 0.9);
        drop_from_page_cache(&p).unwrap();
        let after = cached_fraction(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(after < 0.1, "{after} of the file still cached");
    }
}
