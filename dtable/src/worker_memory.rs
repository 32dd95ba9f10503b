//! The DataFusion side of a worker's memory budget: the one memory pool a worker's tasks share.
//! Its operators reserve out of the worker's [`MemoryBudget`], the same count its resident
//! chunks are in, so asking for memory the chunks hold makes the least recently used of them
//! spill. Between spilling operators (sorts, aggregations) it is fair as DataFusion's
//! `FairSpillPool` is: none may hold more than an equal share of what unspillable operators and
//! the chunks running tasks hold leave.

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use dirk_engine::MemoryBudgetRef;
use parking_lot::Mutex;

/// One worker's memory pool; see the module docs.
#[derive(Debug)]
pub(crate) struct WorkerPool {
    worker: String,
    budget: MemoryBudgetRef,
    limit: usize,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    spillers: usize,
    spillable: usize,
    unspillable: usize,
}

impl WorkerPool {
    /// The pool of `worker` (its name in errors) with `budget`, which must have a limit.
    pub(crate) fn new(worker: &str, budget: MemoryBudgetRef, limit: usize) -> Self {
        WorkerPool {
            worker: worker.to_string(),
            budget,
            limit,
            state: Mutex::new(PoolState::default()),
        }
    }

    fn refuse(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
        why: &str,
    ) -> DataFusionError {
        let spill = self
            .budget
            .spill_error()
            .map(|e| format!("; {e}"))
            .unwrap_or_default();
        DataFusionError::ResourcesExhausted(format!(
            "{}: {} needed {additional} more bytes (holding {}) and {why} of its memory \
             limit of {} bytes ({} in resident chunks, {} of them held by running tasks; {} in \
             operators){spill}",
            self.worker,
            reservation.consumer().name(),
            reservation.size(),
            self.limit,
            self.budget.chunk_bytes(),
            self.budget.held_chunk_bytes(),
            self.budget.operator_bytes(),
        ))
    }
}

impl std::fmt::Display for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the worker's pool of {} bytes", self.limit)
    }
}

impl MemoryPool for WorkerPool {
    fn name(&self) -> &str {
        "dirk-worker"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            self.state.lock().spillers += 1;
        }
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            let mut s = self.state.lock();
            s.spillers = s.spillers.saturating_sub(1);
        }
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        let mut s = self.state.lock();
        match reservation.consumer().can_spill() {
            true => s.spillable += additional,
            false => s.unspillable += additional,
        }
        drop(s);
        self.budget.reserve(additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        let mut s = self.state.lock();
        match reservation.consumer().can_spill() {
            true => s.spillable = s.spillable.saturating_sub(shrink),
            false => s.unspillable = s.unspillable.saturating_sub(shrink),
        }
        drop(s);
        self.budget.release(shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if additional == 0 {
            return Ok(());
        }
        let spills = reservation.consumer().can_spill();
        if spills {
            // Chunks running tasks hold cannot make room, so they come off the top first.
            let held = self.budget.held_chunk_bytes();
            let s = self.state.lock();
            let share = self
                .limit
                .saturating_sub(s.unspillable + held)
                .checked_div(s.spillers)
                .unwrap_or(self.limit);
            if reservation.size() + additional > share {
                return Err(self.refuse(reservation, additional, "would pass its fair share"));
            }
        }
        // Chunks spill here, outside the pool's lock, when the budget needs the room.
        if !self.budget.try_reserve(additional) {
            return Err(self.refuse(reservation, additional, "would pass the rest"));
        }
        let mut s = self.state.lock();
        match spills {
            true => s.spillable += additional,
            false => s.unspillable += additional,
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        let s = self.state.lock();
        s.spillable + s.unspillable
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}
