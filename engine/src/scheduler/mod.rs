//! The scheduler: one event loop on its own thread that owns all scheduling state. Callers and
//! workers talk to it only through [`Event`]s; placement decisions come from the pure functions
//! in [`crate::placement`].

use crate::chunk::ChunkMeta;
use crate::datadeps::{DataDeps, DataKey};
use crate::error::ErrorKind;
use crate::error::{EngineError, Result};
use crate::eventlog::{now_us, EventLog, TaskRecord, TaskStatus};
use crate::ids::{ChunkId, IdBuildHasher, IdMap, TaskId, WorkerId};
use crate::placement::{self, CostModel, InputSite, ProcessorLoad, StealCandidate};
use crate::scope::{ProcessorId, Scope};
use crate::task::{Access, Arg, ArgSource, TaskOutput, TaskSlot};
use crate::worker::{InputSpec, ReportSink, TaskAssignment, TaskReport, WorkerRef};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

mod admission;
mod chunks;
mod dispatch;
mod failure;
mod recovery;
mod retry;
mod runtimes;

pub(crate) use admission::Admission;
use failure::{name_failure, upstream};
pub(crate) use recovery::push_notice;
pub(crate) use recovery::Made;
pub use recovery::{Notice, RECOMPUTE_PREFIX};
use recovery::{Rebuild, Recipe, Restore};
pub use retry::RetryPolicy;
use runtimes::RunTimes;

/// How a chunk came to be: what recovery would rerun.
#[derive(Debug, Clone, PartialEq)]
pub enum Lineage {
    /// Put into a store by the caller.
    Put,
    /// Output `index` of a task running `kernel`, or an input that task wrote in place.
    Task {
        /// The task.
        task: TaskId,
        /// Its kernel.
        kernel: Arc<str>,
    },
}

/// The scheduler's directory entry for a chunk.
#[derive(Debug, Clone)]
pub struct ChunkEntry {
    /// Facts as last reported.
    pub meta: ChunkMeta,
    /// Pinned to its owner (Dagger's `@mutable worker=N`): tasks using it run there.
    pub pinned: bool,
    /// What made it.
    pub lineage: Lineage,
    /// Its owner was lost.
    pub lost: bool,
    /// What its current contents were made from, to make them again.
    pub(crate) made: Arc<Made>,
    /// The id its owner stores it under: its own, unless it was rebuilt after a loss.
    pub(crate) stored: ChunkId,
    /// The task rebuilding it, while it is lost.
    pub(crate) recovering: Option<TaskId>,
    /// A copy of what the caller put, held on another worker.
    pub(crate) replica: Option<ChunkId>,
    /// The chunk this one is the replica of.
    pub(crate) replica_of: Option<ChunkId>,
}

impl ChunkEntry {
    fn new(meta: ChunkMeta, pinned: bool, lineage: Lineage, made: Arc<Made>) -> Self {
        ChunkEntry {
            stored: meta.id,
            meta,
            pinned,
            lineage,
            lost: false,
            made,
            recovering: None,
            replica: None,
            replica_of: None,
        }
    }
}

/// A task as submitted by a caller.
pub(crate) struct Submission {
    pub(crate) id: TaskId,
    pub(crate) kernel: Arc<str>,
    pub(crate) params: Arc<[u8]>,
    pub(crate) args: Vec<Arg>,
    pub(crate) after: Vec<(TaskId, Arc<TaskSlot>)>,
    pub(crate) scope: Scope,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) cost_class: Option<u64>,
    pub(crate) slot: Arc<TaskSlot>,
    pub(crate) submitted_us: u64,
    /// It holds a place of the caller's bound on unfinished tasks (the scheduler's own
    /// recomputations do not).
    pub(crate) counted: bool,
    /// Runs at most once ([`crate::TaskOptions::once`]).
    pub(crate) once: bool,
}

/// Everything the event loop reacts to.
pub(crate) enum Event {
    Submit(Box<Submission>),
    Finished(Box<TaskReport>),
    Cancel(TaskId),
    WorkerAdded(WorkerRef),
    WorkerLost {
        worker: WorkerId,
        reason: String,
    },
    ChunkAdded {
        meta: ChunkMeta,
        pinned: bool,
        /// The same data stored on another worker, to rebuild it from if its owner is lost.
        replica: Option<ChunkMeta>,
    },
    FreeChunks(Vec<ChunkId>),
    Locate(ChunkId, Sender<Result<ChunkEntry>>),
    Idle(Sender<()>),
    Shutdown,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    Waiting,
    Queued(usize),
    Running(usize),
}

struct TaskState {
    sub: Box<Submission>,
    waiting_on: u32,
    dependents: Vec<TaskId>,
    phase: Phase,
    keys: Vec<DataKey>,
    deps: Vec<TaskId>,
    est_s: f64,
    /// Resolved at dispatch.
    inputs: Vec<InputSpec>,
    sites: Vec<InputSite>,
    cancel_requested: bool,
    /// When it was sent to its worker.
    dispatched_us: u64,
    /// How many times it has been sent to a worker.
    attempts: u32,
    /// Resolved at dispatch: each input's chunk (its public id) and contents.
    input_ids: Vec<ChunkId>,
    versions: Vec<Arc<Made>>,
    /// Made at its first dispatch: what running it again takes.
    recipe: Option<Arc<Recipe>>,
    /// Set when it rebuilds a lost chunk.
    restores: Option<Restore>,
}

struct ProcState {
    id: ProcessorId,
    slots: usize,
    in_flight: usize,
    queue: VecDeque<TaskId>,
    queued_s: f64,
    alive: bool,
}

struct WorkerEntry {
    worker: WorkerRef,
    alive: bool,
}

pub(crate) struct Scheduler {
    events: Receiver<Event>,
    sink: ReportSink,
    tasks: IdMap<TaskId, TaskState>,
    deps: DataDeps,
    chunks: IdMap<ChunkId, ChunkEntry>,
    workers: IdMap<WorkerId, WorkerEntry>,
    procs: Vec<ProcState>,
    run_times: RunTimes,
    /// Scratch space for placement, reused to avoid an allocation per task.
    loads: Vec<ProcessorLoad>,
    model: CostModel,
    log: Arc<EventLog>,
    admission: Arc<Admission>,
    idle_waiters: Vec<Sender<()>>,
    /// Chunks freed while unfinished tasks still access them: freed when those finish, so a
    /// reader that was submitted before the free still finds its data.
    deferred_frees: std::collections::HashSet<ChunkId, IdBuildHasher>,
    retry: RetryPolicy,
    /// Worker-side ids of rebuilt chunks, to the ids they are known by.
    aliases: IdMap<ChunkId, ChunkId>,
    /// Task ids, shared with the context: recomputations are tasks too.
    next_task: Arc<AtomicU64>,
    /// Whether a worker was ever lost: until then no input can be lost, and ready tasks skip
    /// the check.
    losses_seen: bool,
    /// The rebuilds of what lost workers held, and the worker each chunk being rebuilt was
    /// lost with.
    rebuilds: IdMap<WorkerId, Rebuild>,
    rebuilding_from: IdMap<ChunkId, WorkerId>,
    /// Replicas whose chunk was freed, kept while some lineage reads what they hold.
    replicas_kept: Vec<ChunkId>,
    /// What users should hear of, until they take it.
    notices: Arc<Mutex<Vec<Notice>>>,
    /// Callers waiting to locate a chunk that is being rebuilt.
    locate_waiters: IdMap<ChunkId, Vec<Sender<Result<ChunkEntry>>>>,
    /// Tasks waiting out a retry's backoff, soonest first.
    retry_at: std::collections::BinaryHeap<std::cmp::Reverse<(std::time::Instant, TaskId)>>,
}

/// How many queued tasks of each victim a thief looks at when stealing.
const STEAL_LOOKAHEAD: usize = 8;

/// Tasks in flight per processor slot: a few more than the slot runs, so a worker never idles
/// for a round trip to the scheduler between short tasks. Kept small so most queued work stays
/// with the scheduler, where it can still be placed or stolen.
const PREFETCH_PER_SLOT: usize = 4;

/// What the scheduler shares with its context.
pub(crate) struct SchedulerLinks {
    pub(crate) log: Arc<EventLog>,
    pub(crate) admission: Arc<Admission>,
    /// Task ids: the scheduler's own tasks (rebuilds) take theirs from the same counter.
    pub(crate) next_task: Arc<AtomicU64>,
    pub(crate) notices: Arc<Mutex<Vec<Notice>>>,
}

impl Scheduler {
    pub(crate) fn new(
        events: Receiver<Event>,
        sink: ReportSink,
        links: SchedulerLinks,
        model: CostModel,
        retry: RetryPolicy,
    ) -> Self {
        let SchedulerLinks {
            log,
            admission,
            next_task,
            notices,
        } = links;
        Scheduler {
            events,
            sink,
            tasks: IdMap::default(),
            deps: DataDeps::default(),
            chunks: IdMap::default(),
            workers: IdMap::default(),
            procs: Vec::new(),
            run_times: RunTimes::default(),
            loads: Vec::new(),
            model,
            log,
            admission,
            idle_waiters: Vec::new(),
            deferred_frees: Default::default(),
            retry,
            retry_at: Default::default(),
            aliases: Default::default(),
            next_task,
            locate_waiters: Default::default(),
            losses_seen: false,
            rebuilds: Default::default(),
            replicas_kept: Vec::new(),
            rebuilding_from: Default::default(),
            notices,
        }
    }

    /// Runs until `Shutdown` (or until every sender is gone).
    pub(crate) fn run(mut self) {
        loop {
            let event = match self.next_retry_in() {
                None => crate::wait::recv(&self.events).ok(),
                Some(wait) => match self.events.recv_timeout(wait) {
                    Ok(ev) => Some(ev),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        self.run_due_retries();
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
                },
            };
            let Some(ev) = event else { break };
            if !self.handle(ev) {
                break;
            }
            if !self.retry_at.is_empty() {
                self.run_due_retries();
            }
        }
        self.shutdown();
    }

    fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Submit(sub) => self.submit(sub),
            Event::Finished(report) => self.finished(*report),
            Event::Cancel(task) => self.cancel(task),
            Event::WorkerAdded(w) => self.add_worker(w),
            Event::WorkerLost { worker, reason } => self.lose_worker(worker, reason),
            Event::ChunkAdded {
                meta,
                pinned,
                replica,
            } => self.chunk_added(meta, pinned, replica),
            Event::FreeChunks(ids) => self.free_chunks(ids),
            Event::Locate(id, reply) => self.locate(id, reply),
            Event::Idle(reply) => {
                if self.tasks.is_empty() {
                    let _ = reply.send(());
                } else {
                    self.idle_waiters.push(reply);
                }
            }
            Event::Shutdown => return false,
        }
        true
    }

    // ---- submission -------------------------------------------------------------------------

    fn submit(&mut self, sub: Box<Submission>) {
        let id = sub.id;
        match self.admit(&sub) {
            Ok((keys, deps, scope_ok)) => {
                debug_assert!(scope_ok);
                let mut waiting_on = 0;
                for d in &deps {
                    if let Some(t) = self.tasks.get_mut(d) {
                        t.dependents.push(id);
                        waiting_on += 1;
                    }
                }
                self.tasks.insert(
                    id,
                    TaskState {
                        sub,
                        waiting_on,
                        dependents: Vec::new(),
                        phase: Phase::Waiting,
                        keys,
                        deps,
                        // Estimated when it is ready: learned run times and input sizes may
                        // change while it waits.
                        est_s: 0.0,
                        inputs: Vec::new(),
                        sites: Vec::new(),
                        cancel_requested: false,
                        dispatched_us: 0,
                        attempts: 0,
                        input_ids: Vec::new(),
                        versions: Vec::new(),
                        recipe: None,
                        restores: None,
                    },
                );
                if waiting_on == 0 {
                    self.make_ready(id);
                }
            }
            Err(e) => {
                self.record_unrun(&sub, &[], &e, None, false);
                self.complete(&sub, Err(e));
            }
        }
    }

    /// Checks a submission and derives its data keys and dependencies. Errors are immediate:
    /// an unknown chunk, a failed upstream, an empty scope.
    fn admit(&mut self, sub: &Submission) -> Result<(Vec<DataKey>, Vec<TaskId>, bool)> {
        let id = sub.id;
        let mut keys = Vec::with_capacity(sub.args.len());
        let mut deps = Vec::new();
        let mut narrowed: Option<Scope> = None;
        let mut pinned_to = Vec::new();
        for arg in &sub.args {
            let key = match &arg.source {
                ArgSource::Chunk(c) => {
                    if self.chunks.get(c).is_some_and(|e| e.lost) {
                        // Lost with its worker: rebuilt first, if anything can rebuild it.
                        deps.extend(self.recover(*c)?);
                    }
                    let entry = self
                        .chunks
                        .get(c)
                        .ok_or_else(|| EngineError::InvalidArgument {
                            task: id,
                            detail: format!("unknown {c}"),
                        })?;
                    if entry.pinned {
                        pinned_to.push(entry.meta.owner);
                        let s = narrowed.as_ref().unwrap_or(&sub.scope);
                        narrowed = Some(s.intersect(&Scope::worker(entry.meta.owner)));
                    }
                    DataKey::Chunk(*c)
                }
                ArgSource::Output { task, index, slot } => {
                    if self.tasks.contains_key(task) {
                        deps.push(*task);
                        DataKey::Output(*task, *index)
                    } else {
                        match slot.output_chunk(*index) {
                            Some(Ok(c)) => DataKey::Chunk(c),
                            Some(Err(e)) => return Err(upstream(id, *task, &e)),
                            None => {
                                return Err(EngineError::InvalidArgument {
                                    task: id,
                                    detail: format!("{task} belongs to another context"),
                                })
                            }
                        }
                    }
                }
            };
            keys.push(key);
        }
        for (i, (arg, key)) in sub.args.iter().zip(&keys).enumerate() {
            let twice = keys[..i]
                .iter()
                .zip(&sub.args)
                .any(|(k, a)| k == key && (a.access.writes() || arg.access.writes()));
            if twice {
                return Err(EngineError::InvalidArgument {
                    task: id,
                    detail: "the same chunk is passed twice and one use writes it".into(),
                });
            }
        }
        for (t, slot) in &sub.after {
            if self.tasks.contains_key(t) {
                deps.push(*t);
            } else if let Some(Err(e)) = slot.get() {
                return Err(upstream(id, *t, &e));
            }
        }
        let scope = narrowed.as_ref().unwrap_or(&sub.scope);
        if scope.is_empty() || !self.procs.iter().any(|p| p.alive && scope.contains(&p.id)) {
            let pinned = if pinned_to.is_empty() {
                String::new()
            } else {
                let ws: Vec<String> = pinned_to.iter().map(|w| w.to_string()).collect();
                format!(" ∩ inputs pinned to {}", ws.join(", "))
            };
            return Err(EngineError::EmptyScope {
                task: id,
                detail: format!("scope {}{pinned} matches no live processor", sub.scope),
            });
        }
        for (arg, key) in sub.args.iter().zip(&keys) {
            self.deps.record(id, *key, arg.access, &mut deps);
        }
        deps.sort_unstable();
        deps.dedup();
        Ok((keys, deps, true))
    }

    /// Expected run time of task `sub` when it reads `input_bytes`: from the history of its
    /// cost class when that has run, else from its kernel's. One kernel can run tasks over
    /// kilobytes and over hundreds of megabytes (every query fragment is the same kernel): where
    /// the history has inputs, the estimate scales with them. Otherwise two big tasks could both
    /// look cheaper to queue behind each other than to move a few bytes.
    fn estimate(&self, sub: &Submission, input_bytes: u64) -> f64 {
        self.run_times
            .estimate(&sub.kernel, sub.cost_class, input_bytes)
            .unwrap_or(self.model.default_task_s)
    }

    // ---- placement and dispatch -------------------------------------------------------------

    /// All dependencies are done: resolve inputs, place the task and queue it.
    fn make_ready(&mut self, id: TaskId) {
        if self.losses_seen {
            match self.await_lost_inputs(id) {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => return self.fail(id, e),
            }
        }
        self.refresh_loads();
        if self.losses_seen {
            if let Some(t) = self.tasks.get(&id) {
                let scope = self.surviving_scope(&t.sub.scope);
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.sub.scope = scope;
                }
            }
        }
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let narrowed = match resolve_inputs(&self.chunks, id, t) {
            Ok(n) => n,
            Err(e) => return self.fail(id, e),
        };
        t.est_s = self
            .run_times
            .estimate(
                &t.sub.kernel,
                t.sub.cost_class,
                placement::total_bytes(&t.sites),
            )
            .unwrap_or(self.model.default_task_s);
        let scope = narrowed.as_ref().unwrap_or(&t.sub.scope);
        let Some(pid) = placement::place(scope, &t.sites, t.est_s, &self.loads, &self.model) else {
            let detail = format!("scope {scope} matches no live processor");
            return self.fail(id, EngineError::EmptyScope { task: id, detail });
        };
        let pi = self
            .procs
            .iter()
            .position(|p| p.id == pid)
            .expect("placed on known processor");
        t.phase = Phase::Queued(pi);
        let p = &mut self.procs[pi];
        p.queue.push_back(id);
        p.queued_s += t.est_s;
        self.dispatch(pi);
    }

    // ---- completion -------------------------------------------------------------------------

    fn finished(&mut self, r: TaskReport) {
        let reported_us = now_us();
        for tr in &r.transfers {
            self.log.transfer(*tr);
        }
        let pi = self
            .procs
            .iter()
            .position(|p| p.id.worker == r.worker && p.id.kind == r.processor);
        let current = self.tasks.get(&r.task).map(|t| t.phase);
        if pi.is_none() || current != pi.map(Phase::Running) {
            // Not the report of the task's current attempt: the task is done or gone, or this
            // attempt's worker was declared lost (it may have been hung, not dead) and the task
            // was handed to another. Its results are refused.
            if let Some(pi) = pi {
                self.release_slot(pi, 0.0);
            }
            return;
        }
        let Some(mut t) = self.tasks.remove(&r.task) else {
            return;
        };
        if let Some(pi) = pi {
            self.release_slot(pi, t.est_s);
        }
        let dur_s = r.finished_us.saturating_sub(r.started_us) as f64 / 1e6;
        let input_bytes = placement::total_bytes(&t.sites);
        self.run_times
            .learn(&t.sub.kernel, t.sub.cost_class, dur_s, input_bytes);

        let storage = r.result.as_ref().map(|d| d.storage).unwrap_or_default();
        let spill = r.result.as_ref().map(|d| d.spill).unwrap_or_default();
        let mut record = TaskRecord {
            task: r.task,
            name: t.sub.label.clone().unwrap_or_else(|| t.sub.kernel.clone()),
            worker: Some(r.worker),
            processor: Some(r.processor),
            queued_us: t.sub.submitted_us,
            dispatched_us: t.dispatched_us,
            started_us: r.started_us,
            finished_us: r.finished_us,
            reported_us,
            rows_in: r.rows_in,
            bytes_in: r.bytes_in,
            rows_out: 0,
            bytes_out: 0,
            bytes_moved: r.transfers.iter().map(|x| x.bytes).sum(),
            fetch_wait_us: r.fetch_wait_us,
            cpu_us: r.cpu_us,
            storage,
            spill,
            deps: std::mem::take(&mut t.deps),
            status: TaskStatus::Ok,
        };
        if let Err(e) = &r.result {
            if self.retries(&t, e) {
                // An input could not be fetched: wait for its owner to answer again, or for the
                // heartbeat to declare it lost, before the next attempt.
                t.deps = record.deps.clone();
                record.status = TaskStatus::Retried(e.to_string());
                self.log.task(record);
                let delay = self.backoff(t.attempts);
                self.retry_later(r.task, t, delay);
                return;
            }
        }
        let result = match r.result {
            Ok(done) => {
                let lineage = || Lineage::Task {
                    task: t.sub.id,
                    kernel: t.sub.kernel.clone(),
                };
                let recipe = t.recipe.clone().expect("a task that ran has its recipe");
                for m in &done.written {
                    let id = self.aliases.get(&m.id).copied().unwrap_or(m.id);
                    let index = t.input_ids.iter().position(|c| *c == id).unwrap_or(0) as u32;
                    if let Some(e) = self.chunks.get_mut(&id) {
                        if e.meta.owner != m.owner {
                            // It moved to where it was written: the copy left behind is stale.
                            if let Some(w) = self.workers.get(&e.meta.owner).filter(|w| w.alive) {
                                w.worker.free_chunks(&[m.id]);
                            }
                        }
                        e.meta = ChunkMeta { id, ..m.clone() };
                        e.lineage = lineage();
                        e.made = Arc::new(Made::Written(recipe.clone(), index));
                    }
                }
                for (i, m) in done.outputs.iter().enumerate() {
                    let made = Arc::new(Made::Output(recipe.clone(), i as u32));
                    self.chunks
                        .insert(m.id, ChunkEntry::new(m.clone(), false, lineage(), made));
                }
                if t.cancel_requested {
                    // Nobody will read the outputs of a cancelled task.
                    let ids = done.outputs.iter().map(|m| m.id).collect();
                    self.free_chunks(ids);
                    Err(EngineError::Cancelled { task: r.task })
                } else {
                    Ok(done.outputs)
                }
            }
            Err(e) => Err(if t.cancel_requested {
                EngineError::Cancelled { task: r.task }
            } else {
                name_failure(e, r.task, &t.sub.kernel, r.worker)
            }),
        };
        self.release_keys(r.task, &t.keys);
        match result {
            Ok(outputs) => {
                if self.log.enabled() {
                    record.rows_out = outputs.iter().map(|c| c.rows).sum();
                    record.bytes_out = outputs.iter().map(|c| c.bytes).sum();
                    self.log.task(record);
                }
                for (i, m) in outputs.iter().enumerate() {
                    let (from, to) = (DataKey::Output(r.task, i as u32), DataKey::Chunk(m.id));
                    // Tasks waiting to read the output now read the chunk, and must release
                    // that key when they finish: else the chunk could never be freed.
                    for reader in self.deps.rename(from, to) {
                        if let Some(rt) = self.tasks.get_mut(&reader) {
                            for k in rt.keys.iter_mut().filter(|k| **k == from) {
                                *k = to;
                            }
                        }
                    }
                }
                if let Some(restore) = t.restores.take() {
                    self.restored(restore, &outputs);
                }
                self.complete(
                    &t.sub,
                    Ok(TaskOutput {
                        task: r.task,
                        chunks: outputs,
                    }),
                );
                for d in t.dependents {
                    if let Some(dt) = self.tasks.get_mut(&d) {
                        dt.waiting_on -= 1;
                        if dt.waiting_on == 0 {
                            self.make_ready(d);
                        }
                    }
                }
            }
            Err(e) => {
                let status = match e {
                    EngineError::Cancelled { .. } => TaskStatus::Cancelled,
                    _ => TaskStatus::Failed(e.to_string()),
                };
                record.status = status;
                self.log.task(record);
                if let Some(restore) = t.restores.take() {
                    self.restore_failed(restore);
                }
                self.fail_dependents(r.task, &t.dependents, &e);
                self.complete(&t.sub, Err(e));
            }
        }
        self.check_idle();
    }

    /// Publishes a task's result and lets one more task be submitted.
    fn complete(&self, sub: &Submission, result: Result<TaskOutput>) {
        sub.slot.complete(result);
        if sub.counted {
            self.admission.release();
        }
    }

    fn check_idle(&mut self) {
        if self.tasks.is_empty() {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    // ---- workers and chunks -----------------------------------------------------------------

    fn shutdown(&mut self) {
        let mut ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        ids.sort();
        for id in ids {
            if let Some(t) = self.tasks.remove(&id) {
                self.complete(&t.sub, Err(EngineError::Shutdown));
            }
        }
        for w in self.idle_waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// Where each input of task `id` lives now (into its `inputs` and `sites`), and its scope
/// narrowed by pinned inputs.
fn resolve_inputs(
    chunks: &IdMap<ChunkId, ChunkEntry>,
    id: TaskId,
    t: &mut TaskState,
) -> Result<Option<Scope>> {
    let mut narrowed: Option<Scope> = None;
    t.inputs.clear();
    t.sites.clear();
    t.input_ids.clear();
    t.versions.clear();
    for arg in &t.sub.args {
        let chunk = match &arg.source {
            ArgSource::Chunk(c) => *c,
            ArgSource::Output { task, index, slot } => match slot.output_chunk(*index) {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(upstream(id, *task, &e)),
                None => unreachable!("dependency finished before its dependent was ready"),
            },
        };
        let entry = chunks
            .get(&chunk)
            .ok_or_else(|| EngineError::InvalidArgument {
                task: id,
                detail: format!("{chunk} was freed"),
            })?;
        if entry.lost {
            return Err(EngineError::ChunkLost {
                chunk,
                worker: entry.meta.owner,
            });
        }
        if entry.pinned {
            let s = narrowed.as_ref().unwrap_or(&t.sub.scope);
            narrowed = Some(s.intersect(&Scope::worker(entry.meta.owner)));
        }
        t.inputs.push(InputSpec {
            chunk: entry.stored,
            owner: entry.meta.owner,
            access: arg.access,
        });
        t.input_ids.push(chunk);
        t.versions.push(entry.made.clone());
        t.sites.push(InputSite {
            owner: entry.meta.owner,
            bytes: entry.meta.bytes,
        });
    }
    Ok(narrowed)
}
