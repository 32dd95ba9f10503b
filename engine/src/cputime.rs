//! The CPU time of a task, for task reports, at a cost a microsecond task can pay.
//!
//! Reading the calling thread's CPU clock is a system call (about 1.2 µs on a virtual machine,
//! more than a no-op task's whole hop through the scheduler), so a task does not read it twice.
//! Each processor thread keeps an anchor: a reading of its CPU clock and the wall time it was
//! taken. While a thread runs tasks back to back, its CPU time grows with the wall time, so a
//! task that starts within [`ANCHOR_VALID_US`] of the anchor takes its start from it; a task that
//! ends within [`SHORT_TASK_US`] of its start reports its wall time. Only a longer task reads the
//! clock at its end (and re-anchors there). Each estimate errs by less than those bounds: a
//! thread that was preempted or parked since the anchor, a short task that blocked.

use std::cell::Cell;

/// An anchor older than this is read again.
const ANCHOR_VALID_US: u64 = 200;
/// A task shorter than this reports its wall time as its CPU time.
const SHORT_TASK_US: u64 = 100;

thread_local! {
    /// (CPU µs, wall µs) of this thread's last clock reading; wall 0 when none.
    static ANCHOR: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Where a task started, in CPU and wall time.
pub(crate) struct TaskClock {
    cpu_us: u64,
    wall_us: u64,
}

impl TaskClock {
    /// Starts timing a task on this thread.
    pub(crate) fn start() -> TaskClock {
        let wall_us = crate::eventlog::now_us();
        let (cpu, at) = ANCHOR.get();
        let cpu_us = if at != 0 && wall_us.saturating_sub(at) < ANCHOR_VALID_US {
            cpu + (wall_us - at)
        } else {
            let cpu = thread_cpu_us();
            ANCHOR.set((cpu, wall_us));
            cpu
        };
        TaskClock { cpu_us, wall_us }
    }

    /// The wall time it started, in µs since the Unix epoch.
    pub(crate) fn started_us(&self) -> u64 {
        self.wall_us
    }

    /// The task's CPU µs, given the wall time `now_us` at which it ended.
    pub(crate) fn cpu_us(&self, now_us: u64) -> u64 {
        let wall = now_us.saturating_sub(self.wall_us);
        if wall < SHORT_TASK_US {
            return wall;
        }
        let cpu = thread_cpu_us();
        ANCHOR.set((cpu, now_us));
        cpu.saturating_sub(self.cpu_us)
    }
}

/// Microseconds of CPU time the calling thread has used; 0 where the platform does not say.
#[cfg(unix)]
fn thread_cpu_us() -> u64 {
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
fn thread_cpu_us() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::TaskClock;

    #[test]
    fn busy_and_idle_tasks_are_told_apart_and_short_ones_cost_no_clock_read() {
        let busy = TaskClock::start();
        let t0 = std::time::Instant::now();
        while t0.elapsed().as_millis() < 20 {
            std::hint::black_box(0u64);
        }
        let cpu = busy.cpu_us(crate::eventlog::now_us());
        assert!(cpu >= 10_000, "{cpu}");
        let idle = TaskClock::start();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let cpu = idle.cpu_us(crate::eventlog::now_us());
        assert!(cpu < 5_000, "{cpu}");
        // A short task: its wall time, at most.
        let short = TaskClock::start();
        let end = short.wall_us + 30;
        assert_eq!(short.cpu_us(end), 30);
    }
}
