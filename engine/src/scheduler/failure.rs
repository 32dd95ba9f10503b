//! Failures: a task's, its dependents', a cancelled one's, and a lost worker's.

use super::*;

impl Scheduler {
    /// Fails a task that has not started, and everything that depends on it.
    pub(super) fn fail(&mut self, id: TaskId, e: EngineError) {
        let Some(t) = self.tasks.remove(&id) else {
            return;
        };
        if let Phase::Queued(pi) = t.phase {
            let p = &mut self.procs[pi];
            p.queue.retain(|x| *x != id);
            p.queued_s = (p.queued_s - t.est_s).max(0.0);
        }
        self.release_keys(id, &t.keys);
        self.record_unrun(&t.sub, &t.deps, &e, None, false);
        if let Some(restore) = t.restores {
            self.restore_failed(restore);
        }
        self.fail_dependents(id, &t.dependents, &e);
        self.complete(&t.sub, Err(e));
        self.check_idle();
    }

    /// Fails the dependents of `failed` (transitively): each names the task that failed first.
    pub(super) fn fail_dependents(
        &mut self,
        failed: TaskId,
        dependents: &[TaskId],
        cause: &EngineError,
    ) {
        let (root, root_cause) = match cause {
            EngineError::UpstreamFailed { failed, cause, .. } => (*failed, cause.clone()),
            e => (failed, e.to_string()),
        };
        let cancelled = matches!(cause, EngineError::Cancelled { .. });
        for d in dependents {
            let e = if cancelled {
                EngineError::Cancelled { task: *d }
            } else {
                EngineError::UpstreamFailed {
                    task: *d,
                    failed: root,
                    kind: cause.kind(),
                    cause: root_cause.clone(),
                }
            };
            self.fail(*d, e);
        }
    }

    /// Records a task that ended without a report from a worker: it failed before it ran, or
    /// its attempt on `worker` was lost with it (`retried`: and it runs again).
    pub(super) fn record_unrun(
        &self,
        sub: &Submission,
        deps: &[TaskId],
        e: &EngineError,
        worker: Option<WorkerId>,
        retried: bool,
    ) {
        let now = now_us();
        self.log.task(TaskRecord {
            task: sub.id,
            name: sub.label.clone().unwrap_or_else(|| sub.kernel.clone()),
            worker,
            processor: None,
            queued_us: sub.submitted_us,
            dispatched_us: 0,
            started_us: 0,
            finished_us: now,
            reported_us: 0,
            rows_in: 0,
            bytes_in: 0,
            rows_out: 0,
            bytes_out: 0,
            bytes_moved: 0,
            fetch_wait_us: 0,
            cpu_us: 0,
            storage: Default::default(),
            spill: Default::default(),
            deps: deps.to_vec(),
            status: match e {
                _ if retried => TaskStatus::Retried(e.to_string()),
                EngineError::Cancelled { .. } => TaskStatus::Cancelled,
                e => TaskStatus::Failed(e.to_string()),
            },
        });
    }

    pub(super) fn cancel(&mut self, id: TaskId) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        match t.phase {
            Phase::Waiting | Phase::Queued(_) => self.fail(id, EngineError::Cancelled { task: id }),
            Phase::Running(pi) => {
                t.cancel_requested = true;
                let dependents = std::mem::take(&mut t.dependents);
                let worker = self.procs[pi].id.worker;
                if let Some(w) = self.workers.get(&worker) {
                    w.worker.cancel_task(id);
                }
                self.fail_dependents(id, &dependents, &EngineError::Cancelled { task: id });
            }
        }
    }

    /// A worker is gone: its chunks are lost and rebuilt elsewhere from their lineage, its
    /// running tasks run again elsewhere (or fail, see [`Scheduler::may_run_again`]), its queued
    /// tasks are placed again.
    pub(super) fn lose_worker(&mut self, worker: WorkerId, reason: String) {
        let Some(entry) = self.workers.get_mut(&worker) else {
            return;
        };
        if !entry.alive {
            return;
        }
        entry.alive = false;
        self.losses_seen = true;
        let mut lost = Vec::new();
        for (id, c) in self.chunks.iter_mut() {
            if c.meta.owner == worker {
                c.lost = true;
                lost.push(*id);
            }
        }
        lost.sort();
        let mut requeue = Vec::new();
        let mut running = Vec::new();
        for (pi, p) in self.procs.iter_mut().enumerate() {
            if p.id.worker != worker {
                continue;
            }
            p.alive = false;
            requeue.extend(p.queue.drain(..));
            p.queued_s = 0.0;
            p.in_flight = 0;
            running.extend(
                self.tasks
                    .iter()
                    .filter(|(_, t)| t.phase == Phase::Running(pi))
                    .map(|(id, _)| *id),
            );
        }
        running.sort();
        for id in running {
            let e = EngineError::WorkerLost {
                worker,
                reason: reason.clone(),
            };
            match self.tasks.get(&id) {
                Some(t) if self.may_run_again(t) => {
                    // Run again at once elsewhere; an input lost with the worker fails it there.
                    self.record_unrun(&t.sub, &t.deps, &e, Some(worker), true);
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.phase = Phase::Waiting;
                    }
                    self.make_ready(id);
                }
                _ => self.fail(id, e),
            }
        }
        for id in requeue {
            if let Some(t) = self.tasks.get_mut(&id) {
                t.phase = Phase::Waiting;
                self.make_ready(id);
            }
        }
        self.rebuild_lost(worker, reason, lost);
    }
}

pub(super) fn upstream(task: TaskId, failed: TaskId, e: &EngineError) -> EngineError {
    match e {
        EngineError::Cancelled { .. } => EngineError::Cancelled { task },
        EngineError::UpstreamFailed {
            failed,
            kind,
            cause,
            ..
        } => EngineError::UpstreamFailed {
            task,
            failed: *failed,
            kind: *kind,
            cause: cause.clone(),
        },
        e => EngineError::UpstreamFailed {
            task,
            failed,
            kind: e.kind(),
            cause: e.to_string(),
        },
    }
}

/// Kernels report failures without knowing their task; fill in the task, kernel and worker,
/// keeping the failure's kind.
pub(super) fn name_failure(
    e: EngineError,
    task: TaskId,
    kernel: &str,
    worker: WorkerId,
) -> EngineError {
    let kind = e.kind();
    let message = match e {
        EngineError::Failed { message, .. } | EngineError::KernelFailed { message, .. } => message,
        EngineError::Params { message, .. } => format!("bad parameters: {message}"),
        other => other.to_string(),
    };
    EngineError::KernelFailed {
        task,
        kernel: kernel.to_string(),
        worker: Some(worker),
        kind,
        message,
    }
}
