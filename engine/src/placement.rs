//! Placement policy: pure functions that pick a processor for a ready task and decide work
//! stealing. The scheduler feeds them its view; tests call them directly.

use crate::ids::WorkerId;
use crate::scope::{ProcessorId, Scope};

/// Constants that turn bytes and queued work into comparable seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Bytes per second between two workers.
    pub bandwidth_bytes_per_s: f64,
    /// Fixed cost of moving one chunk between workers, in seconds.
    pub transfer_latency_s: f64,
    /// Run time assumed for a kernel never seen before, in seconds.
    pub default_task_s: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            // In-process moves are `Arc` clones; a network hop is slower. A later issue measures it.
            bandwidth_bytes_per_s: 1.0e9,
            transfer_latency_s: 50.0e-6,
            default_task_s: 10.0e-6,
        }
    }
}

/// An input of a task: which worker holds it, and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputSite {
    /// The owning worker.
    pub owner: WorkerId,
    /// Its size.
    pub bytes: u64,
}

/// The scheduler's view of one processor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessorLoad {
    /// The processor.
    pub id: ProcessorId,
    /// Estimated seconds of work queued on it or running there.
    pub queued_s: f64,
    /// How many tasks it runs at once (queued work is divided among them).
    pub slots: usize,
}

impl ProcessorLoad {
    fn wait_s(&self) -> f64 {
        self.queued_s / self.slots.max(1) as f64
    }
}

/// Bytes of all `inputs` together.
pub fn total_bytes(inputs: &[InputSite]) -> u64 {
    inputs.iter().map(|i| i.bytes).sum()
}

/// Seconds to bring `inputs` to `worker`.
pub fn move_cost(inputs: &[InputSite], worker: WorkerId, model: &CostModel) -> f64 {
    inputs
        .iter()
        .filter(|i| i.owner != worker)
        .map(|i| model.transfer_latency_s + i.bytes as f64 / model.bandwidth_bytes_per_s)
        .sum()
}

/// Picks the processor in `scope` with the lowest cost = bytes to move there + estimated run
/// time + queued work there. Ties go to the earliest processor in `processors`. `None` when no
/// processor is in scope.
pub fn place(
    scope: &Scope,
    inputs: &[InputSite],
    est_run_s: f64,
    processors: &[ProcessorLoad],
    model: &CostModel,
) -> Option<ProcessorId> {
    let mut best: Option<(f64, ProcessorId)> = None;
    for p in processors.iter().filter(|p| scope.contains(&p.id)) {
        let cost = move_cost(inputs, p.id.worker, model) + est_run_s + p.wait_s();
        if best.is_none_or(|(c, _)| cost < c) {
            best = Some((cost, p.id));
        }
    }
    best.map(|(_, id)| id)
}

/// A queued task another processor might take.
#[derive(Debug, Clone, PartialEq)]
pub struct StealCandidate<'a> {
    /// The processor it is queued on.
    pub victim: ProcessorLoad,
    /// Where it may run.
    pub scope: &'a Scope,
    /// Its inputs.
    pub inputs: &'a [InputSite],
}

/// For an idle processor `thief`, picks the candidate whose extra move cost is smallest among those
/// where it is lower than the time the task would still wait on its victim. `None` when stealing
/// would not pay (or nothing is in scope).
pub fn choose_steal(
    thief: &ProcessorLoad,
    candidates: &[StealCandidate<'_>],
    model: &CostModel,
) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (i, c) in candidates.iter().enumerate() {
        if !c.scope.contains(&thief.id) || c.victim.id == thief.id {
            continue;
        }
        let extra = move_cost(c.inputs, thief.id.worker, model)
            - move_cost(c.inputs, c.victim.id.worker, model);
        let gain = c.victim.wait_s() - thief.wait_s() - extra;
        if gain > 0.0 && best.is_none_or(|(g, _)| gain > g) {
            best = Some((gain, i));
        }
    }
    best.map(|(_, i)| i)
}
