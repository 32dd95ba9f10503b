//! The CPU time of the calling thread, for task reports.

/// Microseconds of CPU time the calling thread has used; 0 where the platform does not say.
#[cfg(unix)]
pub(crate) fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: `ts` is a valid, writable timespec; the call writes only to it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Microseconds of CPU time the calling thread has used; 0 where the platform does not say.
#[cfg(not(unix))]
pub(crate) fn thread_cpu_us() -> u64 {
    0
}
