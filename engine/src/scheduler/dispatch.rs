//! Placing and dispatching ready tasks: per-processor queues, loads, and stealing by idle
//! processors (the decisions themselves are `crate::placement`'s pure functions).

use super::*;

impl Scheduler {
    pub(super) fn refresh_loads(&mut self) {
        self.loads.clear();
        self.loads.extend(
            self.procs
                .iter()
                .filter(|p| p.alive)
                .map(|p| ProcessorLoad {
                    id: p.id,
                    queued_s: p.queued_s,
                    slots: p.slots,
                }),
        );
    }

    /// Sends queued tasks of processor `pi` to its worker while it has free slots; steals when
    /// its own queue is empty.
    pub(super) fn dispatch(&mut self, pi: usize) {
        loop {
            let p = &mut self.procs[pi];
            if !p.alive || p.in_flight >= p.slots * PREFETCH_PER_SLOT {
                return;
            }
            let next = match p.queue.pop_front() {
                Some(id) => id,
                None => match self.steal_for(pi) {
                    Some(id) => id,
                    None => return,
                },
            };
            self.start(pi, next);
        }
    }

    pub(super) fn start(&mut self, pi: usize, id: TaskId) {
        let p = &mut self.procs[pi];
        p.in_flight += 1;
        let pid = p.id;
        let t = self.tasks.get_mut(&id).expect("queued task exists");
        t.phase = Phase::Running(pi);
        t.dispatched_us = now_us();
        t.attempts += 1;
        // What running it again takes, for a retry or to rebuild what it makes if that is lost.
        let params = t.sub.params.clone();
        let inputs = std::mem::take(&mut t.versions)
            .into_iter()
            .zip(t.sub.args.iter().map(|a| a.access))
            .collect();
        t.recipe = Some(Arc::new(Recipe {
            kernel: t.sub.kernel.clone(),
            params: params.clone(),
            scope: t.sub.scope.clone(),
            label: t.sub.label.clone(),
            cost_class: t.sub.cost_class,
            once: t.sub.once,
            inputs,
        }));
        let assignment = TaskAssignment {
            task: id,
            kernel: t.sub.kernel.clone(),
            params,
            processor: pid.kind,
            // Nothing reads a running task's inputs again.
            inputs: std::mem::take(&mut t.inputs),
        };
        let worker = self.workers[&pid.worker].worker.clone();
        worker.run_task(assignment, self.sink.clone());
    }

    /// Takes a queued task from a busier processor when moving its inputs costs less than the
    /// wait it saves.
    pub(super) fn steal_for(&mut self, thief_i: usize) -> Option<TaskId> {
        let thief = &self.procs[thief_i];
        let thief_load = ProcessorLoad {
            id: thief.id,
            queued_s: thief.queued_s,
            slots: thief.slots,
        };
        let mut owners = Vec::new();
        let mut cands = Vec::new();
        for (vi, v) in self.procs.iter().enumerate() {
            if vi == thief_i || !v.alive || v.queue.is_empty() {
                continue;
            }
            // Queued work was estimated when each task was queued; a kernel may since have shown
            // itself slower (or faster). Re-estimate the backlog from what is learned now.
            let sample = v.queue.iter().rev().take(STEAL_LOOKAHEAD);
            let (n, sum) = sample.fold((0usize, 0.0), |(n, s), id| {
                let t = &self.tasks[id];
                let est = self.estimate(&t.sub, placement::total_bytes(&t.sites));
                (n + 1, s + est)
            });
            let backlog = (v.queue.len() + v.in_flight) as f64 * sum / n.max(1) as f64;
            let victim = ProcessorLoad {
                id: v.id,
                queued_s: backlog.max(v.queued_s),
                slots: v.slots,
            };
            for (qi, tid) in v.queue.iter().enumerate().rev().take(STEAL_LOOKAHEAD) {
                let t = &self.tasks[tid];
                owners.push((vi, qi));
                cands.push(StealCandidate {
                    victim,
                    scope: &t.sub.scope,
                    inputs: &t.sites,
                });
            }
        }
        // Pinned inputs narrow a task's scope; check the narrowed scope, not only the declared one.
        let pick = placement::choose_steal(&thief_load, &cands, &self.model)?;
        let (vi, qi) = owners[pick];
        let tid = self.procs[vi].queue[qi];
        if self.pinned_elsewhere(tid, self.procs[thief_i].id.worker) {
            return None;
        }
        self.procs[vi].queue.remove(qi);
        let est = self.tasks[&tid].est_s;
        self.procs[vi].queued_s = (self.procs[vi].queued_s - est).max(0.0);
        self.procs[thief_i].queued_s += est;
        Some(tid)
    }

    pub(super) fn pinned_elsewhere(&self, id: TaskId, worker: WorkerId) -> bool {
        self.tasks[&id]
            .inputs
            .iter()
            .any(|i| i.owner != worker && self.chunks.get(&i.chunk).is_some_and(|c| c.pinned))
    }

    pub(super) fn release_slot(&mut self, pi: usize, est_s: f64) {
        let p = &mut self.procs[pi];
        p.in_flight = p.in_flight.saturating_sub(1);
        p.queued_s = (p.queued_s - est_s).max(0.0);
        self.dispatch(pi);
        self.feed_idle();
    }

    /// Gives processors with nothing to do a chance to steal. An idle processor has no events of
    /// its own, so it is asked whenever work finishes elsewhere.
    pub(super) fn feed_idle(&mut self) {
        if !self.procs.iter().any(|p| p.alive && p.queue.len() > 1) {
            return;
        }
        for i in 0..self.procs.len() {
            let p = &self.procs[i];
            if p.alive && p.in_flight == 0 && p.queue.is_empty() {
                self.dispatch(i);
            }
        }
    }
}
