//! The bound on unfinished tasks: `spawn` waits beyond it.

use super::*;

/// Bounds the number of submitted, unfinished tasks: `spawn` blocks while the bound is reached,
/// so a caller that spawns faster than tasks run cannot grow memory without limit. Blocking cannot
/// deadlock: a task depends only on tasks submitted before it, never on the caller.
pub(crate) struct Admission {
    limit: usize,
    outstanding: AtomicUsize,
    /// Tasks ever admitted and ever released: a caller's progress is the difference of two
    /// readings of each.
    admitted: AtomicU64,
    released: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Admission {
    pub(crate) fn new(limit: usize) -> Self {
        Admission {
            limit: limit.max(1),
            outstanding: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            released: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Takes a place for one task, waiting while all places are taken.
    pub(crate) fn acquire(&self) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
        if self.outstanding.fetch_add(1, Ordering::SeqCst) < self.limit {
            return;
        }
        let mut guard = self.lock.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        while self.outstanding.load(Ordering::SeqCst) > self.low_water() {
            self.cv
                .wait_for(&mut guard, std::time::Duration::from_millis(10));
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// (tasks submitted, tasks finished) since the context started.
    pub(crate) fn counts(&self) -> (u64, u64) {
        // Read `released` first: a reading never shows more finished than submitted.
        let released = self.released.load(Ordering::Relaxed);
        (self.admitted.load(Ordering::Relaxed), released)
    }

    /// Waiters resume once the backlog has drained to three quarters of the bound, so a fast
    /// caller is woken once per batch rather than once per finished task.
    fn low_water(&self) -> usize {
        self.limit - self.limit / 4
    }

    /// Gives a place back.
    pub(crate) fn release(&self) {
        self.released.fetch_add(1, Ordering::Relaxed);
        let before = self.outstanding.fetch_sub(1, Ordering::SeqCst);
        if before - 1 <= self.low_water() && self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock();
            self.cv.notify_all();
        }
    }
}
