//! How Dirk's binaries set up mimalloc, their allocator. Shared by `dirk` and `dirk-benches`
//! (which includes this file by path), so the benchmarks measure what users run.

/// mimalloc's option `purge_delay` (its position in mimalloc 3's `mi_option_e`; the Rust
/// bindings do not name it). Checked by the test below.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds that freed memory stays with the process before mimalloc returns it to the OS.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Keeps freed memory for 10 s instead of mimalloc's 1 s. A worker frees one query's chunks and
/// allocates the next one's, of similar sizes, moments later; memory returned in between comes
/// back as fresh pages that the kernel zeroes first (`clear_page` was a quarter of the profile of
/// `dirk-benches flight`, whose 1 MiB chunks moved at 0.97 GB/s with 1 s and 1.19 GB/s with 10 s).
pub(crate) fn configure() {
    #[allow(unsafe_code)]
    // SAFETY: sets an integer option that mimalloc reads when it purges; touches no memory.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
}

#[cfg(test)]
mod tests {
    #[allow(unsafe_code)]
    #[test]
    fn the_option_set_is_the_purge_delay() {
        // The bindings name the option after it; mimalloc 3's defaults are 1 for the one before
        // (eager commit delay), 1000 ms for the purge delay (unless MIMALLOC_PURGE_DELAY is set).
        assert_eq!(
            libmimalloc_sys::mi_option_use_numa_nodes,
            super::MI_OPTION_PURGE_DELAY + 1
        );
        // SAFETY: reads integer options.
        let (before, purge_delay) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY - 1),
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
            )
        };
        assert_eq!(before, 1);
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay, 1000);
        }
        super::configure();
        // SAFETY: reads an integer option.
        let now = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(now, super::PURGE_DELAY_MS);
    }
}
