//! The benchmark binary's allocator: mimalloc, counting the bytes in use and their peak, so a
//! suite can report the memory an operation needs at its peak (RSS would lag: freed memory is
//! not returned to the system at once).
//!
//! Counting is off until a suite turns it on: it touches two shared atomics on every allocation
//! of every thread, a cost the suites that do not report memory need not pay.

// Implementing `GlobalAlloc` is unsafe by definition; the impl only forwards and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

pub(crate) struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
// Signed: blocks allocated before counting began may be freed while it runs.
static IN_USE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        let now = IN_USE.fetch_add(by as isize, Ordering::Relaxed) + by as isize;
        if now > PEAK.load(Ordering::Relaxed) {
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
    }
}

fn shrank(by: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        IN_USE.fetch_sub(by as isize, Ordering::Relaxed);
    }
}

/// Starts counting; call before the suite allocates what it measures.
pub(crate) fn start_counting() {
    COUNTING.store(true, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to mimalloc unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Bytes allocated now, counted from [`start_counting`].
pub(crate) fn in_use() -> isize {
    IN_USE.load(Ordering::Relaxed)
}

/// Starts a new peak measurement at the current use; returns it.
pub(crate) fn reset_peak() -> isize {
    let now = in_use();
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// The most bytes in use since the last [`reset_peak`].
pub(crate) fn peak() -> isize {
    PEAK.load(Ordering::Relaxed)
}
