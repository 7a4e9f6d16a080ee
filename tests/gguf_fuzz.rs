//! Fuzz-style robustness: thousands of truncated and byte-flipped copies of a small GGUF must
//! each parse or fail with an error: no panic, and no allocation out of proportion to the input.
//!
//! A counting global allocator records the largest single allocation during each parse (this
//! test binary runs only this test, so other threads do not disturb the count).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use ledge::gguf::GgufFile;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; we only record sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Parses `bytes`, then reads everything the file exposes (so lazily decoded values are
/// exercised too). Returns whether it parsed.
fn parse_and_walk(bytes: &[u8]) -> bool {
    let Ok(f) = GgufFile::from_bytes(bytes) else {
        return false;
    };
    for (k, v) in f.metadata() {
        let _ = (k.len(), v.to_string(), v.to_owned_value());
    }
    for t in f.tensors() {
        let _ = t.to_f32();
    }
    let _ = ledge::inspect::report_text(&f);
    true
}

#[test]
fn truncated_and_corrupted_copies_never_panic() {
    let dir = scratch("fuzz");
    let path = dir.join("seed.gguf");
    write_synthetic(&path);
    let seed = std::fs::read(&path).unwrap();
    assert!(parse_and_walk(&seed));
    // Bytes of the input copy, the 8-aligned copy from_bytes makes, plus slack for the
    // parsed index: anything larger means an allocation was sized by untrusted data.
    let bound = 4 * seed.len() + (1 << 16);

    let mut rng = Rng(0x5eed);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Every truncation point.
    for n in 0..seed.len() {
        cases.push(seed[..n].to_vec());
    }
    // Random single and multiple byte flips, biased to the header where the structure lives.
    let header_len = seed.len().min(700);
    for i in 0..4000 {
        let mut c = seed.clone();
        let flips = 1 + (i % 4);
        for _ in 0..flips {
            let at = if rng.below(4) == 0 {
                rng.below(c.len() as u64)
            } else {
                rng.below(header_len as u64)
            } as usize;
            c[at] = match rng.below(3) {
                0 => c[at] ^ (1 << rng.below(8)),
                1 => 0xFF,
                _ => rng.next_u64() as u8,
            };
        }
        cases.push(c);
    }
    // Random u64s written over length and count fields.
    for _ in 0..1000 {
        let mut c = seed.clone();
        let at = rng.below((header_len - 8) as u64) as usize;
        c[at..at + 8].copy_from_slice(&rng.next_u64().to_le_bytes());
        cases.push(c);
    }

    let prev_hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let (mut parsed, mut failed, mut panics) = (0, 0, Vec::new());
    for (i, c) in cases.iter().enumerate() {
        LARGEST.store(0, Ordering::Relaxed);
        match panic::catch_unwind(|| parse_and_walk(c)) {
            Ok(true) => parsed += 1,
            Ok(false) => failed += 1,
            Err(_) => panics.push(i),
        }
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest <= bound,
            "case {i}: an allocation of {largest} bytes for a {}-byte input",
            c.len()
        );
    }
    panic::set_hook(prev_hook);
    assert!(panics.is_empty(), "panicked on cases {panics:?}");
    assert!(
        cases.len() > 5000 && failed > 1000,
        "{parsed} parsed, {failed} failed"
    );
    eprintln!(
        "{} cases: {parsed} parsed, {failed} errors, 0 panics",
        cases.len()
    );
}
