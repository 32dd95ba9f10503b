//! Waiting for the next message on a hot path: spin a little before sleeping.
//!
//! A dependent task's hop is two hand-offs between threads (a processor's report to the
//! scheduler, the scheduler's assignment to a processor). A thread that sleeps on a channel
//! costs the sender a wake-up system call and itself the time the OS takes to run it again,
//! several microseconds each on a virtual machine, more than the work of the hop. Spinning for
//! [`SPIN`] first catches the next message of a busy graph at the cost of that much CPU
//! once a thread runs out of work.
//!
//! Spinning only pays while a core is free. Processor threads that wait on a busy scheduler
//! would take the cores it needs, so at most one fewer of them than there are cores spin at
//! once ([`Spinners`]); the rest sleep at once.

use crossbeam_channel::{Receiver, RecvError, TryRecvError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a thread spins before it sleeps.
pub(crate) const SPIN: Duration = Duration::from_micros(20);

/// The next message of `rx`: spins for up to [`SPIN`], then blocks.
pub(crate) fn recv<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    match rx.try_recv() {
        Ok(m) => return Ok(m),
        Err(TryRecvError::Disconnected) => return Err(RecvError),
        Err(TryRecvError::Empty) => {}
    }
    spin(rx).unwrap_or_else(|| rx.recv())
}

/// A limit on how many threads spin at once.
pub(crate) struct Spinners {
    spinning: AtomicUsize,
    max: std::sync::OnceLock<usize>,
}

impl Spinners {
    pub(crate) const fn new() -> Self {
        Spinners {
            spinning: AtomicUsize::new(0),
            max: std::sync::OnceLock::new(),
        }
    }

    fn max(&self) -> usize {
        *self.max.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.saturating_sub(1).max(1)
        })
    }

    fn try_enter(&self) -> bool {
        let max = self.max();
        self.spinning
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn leave(&self) {
        self.spinning.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The processor threads of every in-process worker: they share the process's cores with the
/// scheduler thread.
pub(crate) static PROCESSOR_SPINNERS: Spinners = Spinners::new();

/// Like [`recv`], but spins only while fewer than `spinners`' limit of threads spin.
pub(crate) fn recv_among<T>(rx: &Receiver<T>, spinners: &Spinners) -> Result<T, RecvError> {
    match rx.try_recv() {
        Ok(m) => return Ok(m),
        Err(TryRecvError::Disconnected) => return Err(RecvError),
        Err(TryRecvError::Empty) => {}
    }
    if !spinners.try_enter() {
        return rx.recv();
    }
    let got = spin(rx);
    spinners.leave();
    got.unwrap_or_else(|| rx.recv())
}

/// Polls `rx` for up to [`SPIN`]: the message, or `None` when none came.
fn spin<T>(rx: &Receiver<T>) -> Option<Result<T, RecvError>> {
    let start = Instant::now();
    loop {
        // Reading the clock costs tens of nanoseconds: look at it every few dozen polls.
        for _ in 0..32 {
            std::hint::spin_loop();
            match rx.try_recv() {
                Ok(m) => return Some(Ok(m)),
                Err(TryRecvError::Disconnected) => return Some(Err(RecvError)),
                Err(TryRecvError::Empty) => {}
            }
        }
        if start.elapsed() >= SPIN {
            return None;
        }
    }
}
