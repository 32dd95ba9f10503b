//! Waiting for the next message on a hot path: spin a little before sleeping.
//!
//! A dependent task's hop is two hand-offs between threads (a processor's report to the
//! scheduler, the scheduler's assignment to a processor). A thread that sleeps on a channel
//! costs the sender a wake-up system call and itself the time the OS takes to run it again,
//! several microseconds each on a virtual machine, more than the work of the hop. Spinning for
//! [`SPIN`] first catches the next message of a busy graph at the cost of that much CPU
//! once a thread runs out of work.

use crossbeam_channel::{Receiver, RecvError, TryRecvError};
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
    let start = Instant::now();
    loop {
        // Reading the clock costs tens of nanoseconds: look at it every few dozen polls.
        for _ in 0..32 {
            std::hint::spin_loop();
            match rx.try_recv() {
                Ok(m) => return Ok(m),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => {}
            }
        }
        if start.elapsed() >= SPIN {
            return rx.recv();
        }
    }
}
