//! Running a task again after its worker was lost or could not be reached: which failures are
//! retried, how often, and after how long.

use super::*;
use std::cmp::Reverse;
use std::time::{Duration, Instant};

/// How the scheduler retries a task whose machine or network failed under it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts a task gets in all, the first included (default 4, as Spark's
    /// `spark.task.maxFailures`); 1 never retries.
    pub attempts: u32,
    /// The wait before the second attempt of a task whose input could not be fetched; it
    /// doubles with each further attempt. The first retries of a task whose own worker was
    /// declared lost are not delayed. The default (1 s, so 1 + 2 + 4 s over four attempts)
    /// outlasts the heartbeat's verdict on the unreachable worker (5 s by default), after
    /// which its chunks are known lost and the last attempt fails with that error instead
    /// of a network one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            backoff: Duration::from_secs(1),
        }
    }
}

impl Scheduler {
    /// Whether a task that failed with `e` runs again: the failure is the machine's or the
    /// network's (not the kernel's own), it was not cancelled, and it has attempts left.
    ///
    /// A task that writes chunks in place runs again too. Such a failure comes before its kernel
    /// changed anything (an input could not be fetched: the chunks taken to be written go back
    /// unchanged), or with the worker that held the chunks being written (a chunk written
    /// there was lost with it, its contents before the write are rebuilt from its lineage; one
    /// fetched from elsewhere was left where it was until the write is accepted).
    pub(super) fn retries(&self, t: &TaskState, e: &EngineError) -> bool {
        e.is_lost_work() && self.may_run_again(t)
    }

    /// Whether task `t` may be sent to a worker once more after its attempt failed.
    pub(super) fn may_run_again(&self, t: &TaskState) -> bool {
        !t.cancel_requested && !t.sub.once && t.attempts < self.retry.attempts
    }

    /// Puts back task `t`, whose attempt failed, to run again after `delay`. It keeps its data
    /// keys meanwhile, so the tasks ordered after it still wait for it.
    pub(super) fn retry_later(&mut self, id: TaskId, mut t: TaskState, delay: Duration) {
        t.phase = Phase::Waiting;
        self.tasks.insert(id, t);
        self.retry_at.push(Reverse((Instant::now() + delay, id)));
    }

    /// The wait before attempt `attempts + 1` of a task whose input could not be fetched.
    pub(super) fn backoff(&self, attempts: u32) -> Duration {
        self.retry.backoff * (1u32 << attempts.saturating_sub(1).min(5))
    }

    /// How long the event loop may sleep before a retry is due (`None`: no retry waits).
    pub(super) fn next_retry_in(&self) -> Option<Duration> {
        self.retry_at
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
    }

    /// Makes ready the tasks whose retry is due.
    pub(super) fn run_due_retries(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.retry_at.peek().copied() {
            if at > now {
                break;
            }
            self.retry_at.pop();
            if self
                .tasks
                .get(&id)
                .is_some_and(|t| t.phase == Phase::Waiting)
            {
                self.make_ready(id);
            }
        }
    }
}
