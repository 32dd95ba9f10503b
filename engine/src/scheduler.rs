//! The scheduler: one event loop on its own thread that owns all scheduling state. Callers and
//! workers talk to it only through [`Event`]s; placement decisions come from the pure functions
//! in [`crate::placement`].

use crate::chunk::ChunkMeta;
use crate::datadeps::{DataDeps, DataKey};
use crate::error::{EngineError, Result};
use crate::eventlog::{now_us, EventLog, TaskRecord, TaskStatus};
use crate::ids::{ChunkId, IdMap, TaskId, WorkerId};
use crate::placement::{self, CostModel, InputSite, ProcessorLoad, StealCandidate};
use crate::scope::{ProcessorId, Scope};
use crate::task::{Arg, ArgSource, TaskOutput, TaskSlot};
use crate::worker::{InputSpec, ReportSink, TaskAssignment, TaskReport, WorkerRef};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

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
}

/// A task as submitted by a caller.
pub(crate) struct Submission {
    pub(crate) id: TaskId,
    pub(crate) kernel: Arc<str>,
    pub(crate) params: Vec<u8>,
    pub(crate) args: Vec<Arg>,
    pub(crate) after: Vec<(TaskId, Arc<TaskSlot>)>,
    pub(crate) scope: Scope,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) cost_class: Option<u64>,
    pub(crate) slot: Arc<TaskSlot>,
    pub(crate) submitted_us: u64,
}

/// Everything the event loop reacts to.
pub(crate) enum Event {
    Submit(Box<Submission>),
    Finished(Box<TaskReport>),
    Cancel(TaskId),
    WorkerAdded(WorkerRef),
    WorkerLost { worker: WorkerId, reason: String },
    ChunkAdded { meta: ChunkMeta, pinned: bool },
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

/// Learned run time of one kernel: an exponentially weighted mean per task, and decayed sums of
/// the seconds and input bytes of its tasks that read inputs, whose ratio prices a byte.
#[derive(Default)]
struct KernelStats {
    mean_s: f64,
    samples: u64,
    input_s: f64,
    input_bytes: f64,
}

impl KernelStats {
    /// Adds a task that took `dur_s` over `input_bytes` of inputs.
    fn learn(&mut self, dur_s: f64, input_bytes: u64) {
        self.mean_s = if self.samples == 0 {
            dur_s
        } else {
            0.8 * self.mean_s + 0.2 * dur_s
        };
        self.samples += 1;
        if input_bytes > 0 {
            self.input_s = 0.9 * self.input_s + dur_s;
            self.input_bytes = 0.9 * self.input_bytes + input_bytes as f64;
        }
    }

    /// Expected seconds of a task over `input_bytes`; `None` before the first sample.
    fn estimate(&self, input_bytes: u64) -> Option<f64> {
        match self.samples {
            0 => None,
            _ if input_bytes > 0 && self.input_bytes > 0.0 => {
                Some(input_bytes as f64 * (self.input_s / self.input_bytes))
            }
            _ => Some(self.mean_s),
        }
    }
}

/// How many cost classes the scheduler keeps history for.
const MAX_COST_CLASSES: usize = 4096;

/// What the scheduler has learned of run times: per kernel, and per (kernel, cost class) (see
/// [`crate::TaskOptions::cost_class`]).
#[derive(Default)]
struct RunTimes {
    kernels: HashMap<Arc<str>, KernelStats>,
    classes: HashMap<(Arc<str>, u64), KernelStats>,
}

impl RunTimes {
    /// A task of `kernel` (and `class`) took `dur_s` over `input_bytes` of inputs.
    fn learn(&mut self, kernel: &Arc<str>, class: Option<u64>, dur_s: f64, input_bytes: u64) {
        let stats = match self.kernels.get_mut(kernel) {
            Some(s) => s,
            None => self.kernels.entry(kernel.clone()).or_default(),
        };
        stats.learn(dur_s, input_bytes);
        if let Some(class) = class {
            if self.classes.len() >= MAX_COST_CLASSES {
                // A bound on memory: the classes of a long session's past queries are dropped
                // together, and relearned as they run again.
                self.classes.clear();
            }
            self.classes
                .entry((kernel.clone(), class))
                .or_default()
                .learn(dur_s, input_bytes);
        }
    }

    /// Expected seconds of a task of `kernel` (and `class`) over `input_bytes`: from its class's
    /// history when the class has run, else from its kernel's; `None` when neither has.
    fn estimate(&self, kernel: &Arc<str>, class: Option<u64>, input_bytes: u64) -> Option<f64> {
        class
            .and_then(|c| self.classes.get(&(kernel.clone(), c)))
            .and_then(|s| s.estimate(input_bytes))
            .or_else(|| self.kernels.get(kernel)?.estimate(input_bytes))
    }
}

pub(crate) struct Scheduler {
    events: Receiver<Event>,
    sink: ReportSink,
    tasks: IdMap<TaskId, TaskState>,
    deps: DataDeps,
    chunks: IdMap<ChunkId, ChunkEntry>,
    workers: HashMap<WorkerId, WorkerEntry>,
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
    deferred_frees: Vec<ChunkId>,
}

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

/// How many queued tasks of each victim a thief looks at when stealing.
const STEAL_LOOKAHEAD: usize = 8;

/// Tasks in flight per processor slot: a few more than the slot runs, so a worker never idles
/// for a round trip to the scheduler between short tasks. Kept small so most queued work stays
/// with the scheduler, where it can still be placed or stolen.
const PREFETCH_PER_SLOT: usize = 4;

impl Scheduler {
    pub(crate) fn new(
        events: Receiver<Event>,
        sink: ReportSink,
        model: CostModel,
        log: Arc<EventLog>,
        admission: Arc<Admission>,
    ) -> Self {
        Scheduler {
            events,
            sink,
            tasks: IdMap::default(),
            deps: DataDeps::default(),
            chunks: IdMap::default(),
            workers: HashMap::new(),
            procs: Vec::new(),
            run_times: RunTimes::default(),
            loads: Vec::new(),
            model,
            log,
            admission,
            idle_waiters: Vec::new(),
            deferred_frees: Vec::new(),
        }
    }

    /// Runs until `Shutdown` (or until every sender is gone).
    pub(crate) fn run(mut self) {
        while let Ok(ev) = self.events.recv() {
            if !self.handle(ev) {
                break;
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
            Event::ChunkAdded { meta, pinned } => {
                self.chunks.insert(
                    meta.id,
                    ChunkEntry {
                        meta,
                        pinned,
                        lineage: Lineage::Put,
                        lost: false,
                    },
                );
            }
            Event::FreeChunks(ids) => self.free_chunks(ids),
            Event::Locate(id, reply) => {
                let _ = reply.send(
                    self.chunks
                        .get(&id)
                        .cloned()
                        .ok_or(EngineError::UnknownChunk { chunk: id }),
                );
            }
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
                let est_s = self.estimate(&sub, 0);
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
                        est_s,
                        inputs: Vec::new(),
                        sites: Vec::new(),
                        cancel_requested: false,
                        dispatched_us: 0,
                    },
                );
                if waiting_on == 0 {
                    self.make_ready(id);
                }
            }
            Err(e) => {
                self.record_unrun(&sub, &[], &e);
                self.complete(&sub.slot, Err(e));
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
                    let entry = self.chunks.get(c).ok_or(EngineError::InvalidArgument {
                        task: id,
                        detail: format!("unknown {c}"),
                    })?;
                    if entry.lost {
                        return Err(EngineError::ChunkLost {
                            chunk: *c,
                            worker: entry.meta.owner,
                        });
                    }
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
        if !self.tasks.contains_key(&id) {
            return;
        }
        let (inputs, sites, narrowed) = match self.resolve_inputs(id) {
            Ok(r) => r,
            Err(e) => return self.fail(id, e),
        };
        self.refresh_loads();
        let est_s = self.estimate(&self.tasks[&id].sub, placement::total_bytes(&sites));
        let t = self.tasks.get_mut(&id).expect("checked above");
        t.inputs = inputs;
        t.sites = sites;
        t.est_s = est_s;
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

    /// Where each input lives now, and the task's scope narrowed by pinned inputs.
    fn resolve_inputs(
        &self,
        id: TaskId,
    ) -> Result<(Vec<InputSpec>, Vec<InputSite>, Option<Scope>)> {
        let t = &self.tasks[&id];
        let mut narrowed: Option<Scope> = None;
        let mut inputs = Vec::with_capacity(t.sub.args.len());
        let mut sites = Vec::with_capacity(t.sub.args.len());
        for arg in &t.sub.args {
            let chunk = match &arg.source {
                ArgSource::Chunk(c) => *c,
                ArgSource::Output { task, index, slot } => match slot.output_chunk(*index) {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(upstream(id, *task, &e)),
                    None => unreachable!("dependency finished before its dependent was ready"),
                },
            };
            let entry = self
                .chunks
                .get(&chunk)
                .ok_or(EngineError::InvalidArgument {
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
            inputs.push(InputSpec {
                chunk,
                owner: entry.meta.owner,
                access: arg.access,
            });
            sites.push(InputSite {
                owner: entry.meta.owner,
                bytes: entry.meta.bytes,
            });
        }
        Ok((inputs, sites, narrowed))
    }

    fn refresh_loads(&mut self) {
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
    fn dispatch(&mut self, pi: usize) {
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

    fn start(&mut self, pi: usize, id: TaskId) {
        let p = &mut self.procs[pi];
        p.in_flight += 1;
        let pid = p.id;
        let t = self.tasks.get_mut(&id).expect("queued task exists");
        t.phase = Phase::Running(pi);
        t.dispatched_us = now_us();
        let assignment = TaskAssignment {
            task: id,
            kernel: t.sub.kernel.clone(),
            // A task is dispatched once; its parameters are not needed afterwards.
            params: std::mem::take(&mut t.sub.params),
            processor: pid.kind,
            inputs: t.inputs.clone(),
        };
        let worker = self.workers[&pid.worker].worker.clone();
        worker.run_task(assignment, self.sink.clone());
    }

    /// Takes a queued task from a busier processor when moving its inputs costs less than the
    /// wait it saves.
    fn steal_for(&mut self, thief_i: usize) -> Option<TaskId> {
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

    fn pinned_elsewhere(&self, id: TaskId, worker: WorkerId) -> bool {
        self.tasks[&id]
            .inputs
            .iter()
            .any(|i| i.owner != worker && self.chunks.get(&i.chunk).is_some_and(|c| c.pinned))
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
        let Some(mut t) = self.tasks.remove(&r.task) else {
            if let Some(pi) = pi {
                self.release_slot(pi, 0.0);
            }
            return;
        };
        if let Some(pi) = pi {
            self.release_slot(pi, t.est_s);
        }
        let dur_s = r.finished_us.saturating_sub(r.started_us) as f64 / 1e6;
        let input_bytes = placement::total_bytes(&t.sites);
        self.run_times
            .learn(&t.sub.kernel, t.sub.cost_class, dur_s, input_bytes);

        let result = match r.result {
            Ok(done) => {
                let lineage = || Lineage::Task {
                    task: t.sub.id,
                    kernel: t.sub.kernel.clone(),
                };
                for m in &done.written {
                    if let Some(e) = self.chunks.get_mut(&m.id) {
                        e.meta = m.clone();
                        e.lineage = lineage();
                    }
                }
                for m in &done.outputs {
                    self.chunks.insert(
                        m.id,
                        ChunkEntry {
                            meta: m.clone(),
                            pinned: false,
                            lineage: lineage(),
                            lost: false,
                        },
                    );
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
                name_failure(e, r.task, &t.sub.kernel)
            }),
        };
        let deps = std::mem::take(&mut t.deps);
        let record = |status: TaskStatus, rows_out, bytes_out| TaskRecord {
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
            rows_out,
            bytes_out,
            bytes_moved: r.transfers.iter().map(|x| x.bytes).sum(),
            fetch_wait_us: r.fetch_wait_us,
            cpu_us: r.cpu_us,
            deps: deps.clone(),
            status,
        };
        self.deps.forget(r.task, &t.keys);
        self.free_deferred();
        match result {
            Ok(outputs) => {
                if self.log.enabled() {
                    let rows = outputs.iter().map(|c| c.rows).sum();
                    let bytes = outputs.iter().map(|c| c.bytes).sum();
                    self.log.task(record(TaskStatus::Ok, rows, bytes));
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
                self.complete(
                    &t.sub.slot,
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
                self.log.task(record(status, 0, 0));
                self.fail_dependents(r.task, &t.dependents, &e);
                self.complete(&t.sub.slot, Err(e));
            }
        }
        self.check_idle();
    }

    fn release_slot(&mut self, pi: usize, est_s: f64) {
        let p = &mut self.procs[pi];
        p.in_flight = p.in_flight.saturating_sub(1);
        p.queued_s = (p.queued_s - est_s).max(0.0);
        self.dispatch(pi);
        self.feed_idle();
    }

    /// Gives processors with nothing to do a chance to steal. An idle processor has no events of
    /// its own, so it is asked whenever work finishes elsewhere.
    fn feed_idle(&mut self) {
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

    /// Fails a task that has not started, and everything that depends on it.
    fn fail(&mut self, id: TaskId, e: EngineError) {
        let Some(t) = self.tasks.remove(&id) else {
            return;
        };
        if let Phase::Queued(pi) = t.phase {
            let p = &mut self.procs[pi];
            p.queue.retain(|x| *x != id);
            p.queued_s = (p.queued_s - t.est_s).max(0.0);
        }
        self.deps.forget(id, &t.keys);
        self.free_deferred();
        self.record_unrun(&t.sub, &t.deps, &e);
        self.fail_dependents(id, &t.dependents, &e);
        self.complete(&t.sub.slot, Err(e));
        self.check_idle();
    }

    /// Fails the dependents of `failed` (transitively): each names the task that failed first.
    fn fail_dependents(&mut self, failed: TaskId, dependents: &[TaskId], cause: &EngineError) {
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
                    cause: root_cause.clone(),
                }
            };
            self.fail(*d, e);
        }
    }

    fn record_unrun(&self, sub: &Submission, deps: &[TaskId], e: &EngineError) {
        let now = now_us();
        self.log.task(TaskRecord {
            task: sub.id,
            name: sub.label.clone().unwrap_or_else(|| sub.kernel.clone()),
            worker: None,
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
            deps: deps.to_vec(),
            status: match e {
                EngineError::Cancelled { .. } => TaskStatus::Cancelled,
                e => TaskStatus::Failed(e.to_string()),
            },
        });
    }

    fn cancel(&mut self, id: TaskId) {
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

    /// Publishes a task's result and lets one more task be submitted.
    fn complete(&self, slot: &TaskSlot, result: Result<TaskOutput>) {
        slot.complete(result);
        self.admission.release();
    }

    fn check_idle(&mut self) {
        if self.tasks.is_empty() {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    // ---- workers and chunks -----------------------------------------------------------------

    fn add_worker(&mut self, w: WorkerRef) {
        let id = w.id();
        for (kind, slots) in w.processors() {
            self.procs.push(ProcState {
                id: ProcessorId { worker: id, kind },
                slots: slots.max(1),
                in_flight: 0,
                queue: VecDeque::new(),
                queued_s: 0.0,
                alive: true,
            });
        }
        self.workers.insert(
            id,
            WorkerEntry {
                worker: w,
                alive: true,
            },
        );
    }

    /// A worker is gone: its chunks are lost (their lineage is kept for recovery), its running
    /// tasks fail, its queued tasks are placed again elsewhere.
    fn lose_worker(&mut self, worker: WorkerId, reason: String) {
        let Some(entry) = self.workers.get_mut(&worker) else {
            return;
        };
        if !entry.alive {
            return;
        }
        entry.alive = false;
        for c in self.chunks.values_mut() {
            if c.meta.owner == worker {
                c.lost = true;
            }
        }
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
            self.fail(id, e);
        }
        for id in requeue {
            if let Some(t) = self.tasks.get_mut(&id) {
                t.phase = Phase::Waiting;
                self.make_ready(id);
            }
        }
    }

    /// Frees chunks, or defers each until the unfinished tasks that access it have finished.
    fn free_chunks(&mut self, ids: Vec<ChunkId>) {
        let (later, now): (Vec<_>, Vec<_>) = ids
            .into_iter()
            .partition(|id| self.deps.in_use(DataKey::Chunk(*id)));
        self.deferred_frees.extend(later);
        self.free_now(now);
    }

    fn free_deferred(&mut self) {
        if self.deferred_frees.is_empty() {
            return;
        }
        let (later, now): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred_frees)
            .into_iter()
            .partition(|id| self.deps.in_use(DataKey::Chunk(*id)));
        self.deferred_frees = later;
        self.free_now(now);
    }

    fn free_now(&mut self, ids: Vec<ChunkId>) {
        if ids.is_empty() {
            return;
        }
        let mut by_owner: HashMap<WorkerId, Vec<ChunkId>> = HashMap::new();
        for id in ids {
            if let Some(e) = self.chunks.remove(&id) {
                by_owner.entry(e.meta.owner).or_default().push(id);
            }
        }
        for (owner, ids) in by_owner {
            if let Some(w) = self.workers.get(&owner).filter(|w| w.alive) {
                w.worker.free_chunks(&ids);
            }
        }
    }

    fn shutdown(&mut self) {
        let mut ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        ids.sort();
        for id in ids {
            if let Some(t) = self.tasks.remove(&id) {
                self.complete(&t.sub.slot, Err(EngineError::Shutdown));
            }
        }
        for w in self.idle_waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

fn upstream(task: TaskId, failed: TaskId, e: &EngineError) -> EngineError {
    match e {
        EngineError::Cancelled { .. } => EngineError::Cancelled { task },
        EngineError::UpstreamFailed { failed, cause, .. } => EngineError::UpstreamFailed {
            task,
            failed: *failed,
            cause: cause.clone(),
        },
        e => EngineError::UpstreamFailed {
            task,
            failed,
            cause: e.to_string(),
        },
    }
}

/// Kernels report failures without knowing their task; fill the names in.
fn name_failure(e: EngineError, task: TaskId, kernel: &str) -> EngineError {
    match e {
        EngineError::KernelFailed { message, .. } => EngineError::KernelFailed {
            task,
            kernel: kernel.to_string(),
            message,
        },
        EngineError::Params { message, .. } => EngineError::KernelFailed {
            task,
            kernel: kernel.to_string(),
            message: format!("bad parameters: {message}"),
        },
        other => EngineError::KernelFailed {
            task,
            kernel: kernel.to_string(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::RunTimes;
    use std::sync::Arc;

    #[test]
    fn a_cost_class_is_estimated_from_its_own_history() {
        let kernel: Arc<str> = Arc::from("dirk.fragment");
        let mut times = RunTimes::default();
        assert_eq!(times.estimate(&kernel, Some(1), 1000), None);
        // Class 1 reads a few columns of big chunks: cheap per byte. Class 2 is dear per byte.
        for _ in 0..5 {
            times.learn(&kernel, Some(1), 0.001, 1_000_000);
            times.learn(&kernel, Some(2), 0.100, 1_000_000);
        }
        let cheap = times.estimate(&kernel, Some(1), 1_000_000).unwrap();
        let dear = times.estimate(&kernel, Some(2), 1_000_000).unwrap();
        assert!((cheap - 0.001).abs() < 1e-9, "{cheap}");
        assert!((dear - 0.100).abs() < 1e-9, "{dear}");
        // Scaled by the bytes read.
        let half = times.estimate(&kernel, Some(2), 500_000).unwrap();
        assert!((half - 0.050).abs() < 1e-9, "{half}");
        // A class never seen, or no class, falls back to the kernel's mix of both.
        let unknown = times.estimate(&kernel, Some(3), 1_000_000).unwrap();
        assert!(cheap < unknown && unknown < dear, "{unknown}");
        assert_eq!(times.estimate(&kernel, None, 1_000_000), Some(unknown));
        // Another kernel knows nothing.
        assert_eq!(times.estimate(&Arc::from("other"), Some(1), 1), None);
    }

    #[test]
    fn cost_classes_are_bounded() {
        let kernel: Arc<str> = Arc::from("k");
        let mut times = RunTimes::default();
        for class in 0..(super::MAX_COST_CLASSES as u64 + 10) {
            times.learn(&kernel, Some(class), 0.01, 100);
        }
        assert!(times.classes.len() <= super::MAX_COST_CLASSES);
        assert!(times.classes.len() >= 10);
    }
}
