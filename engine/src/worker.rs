//! Workers: a chunk store plus processors. The scheduler talks to every worker through the
//! [`Worker`] trait; in-process workers implement it here, remote workers over Arrow Flight later.
//! Everything the scheduler sends a worker ([`TaskAssignment`]) and everything a worker reports
//! ([`TaskReport`]) is serializable.

use crate::chunk::{Chunk, ChunkMeta};
use crate::env::{WorkerEnv, WorkerEnvRef};
use crate::error::{EngineError, Result};
use crate::eventlog::{now_us, SpillIo, StorageRead, Transfer};
use crate::ids::{ChunkId, TaskId, WorkerId};
use crate::kernel::{KernelCall, KernelInput, KernelRegistry};
use crate::processor::{CpuProcessor, FakeProcessor, ProcessorRef};
use crate::scheduler::Event;
use crate::scope::ProcessorKind;
use crate::store::ChunkStore;
use crate::task::Access;
use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// One input of an assigned task: which chunk, who holds it, how the task uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// The chunk.
    pub chunk: ChunkId,
    /// Its owner now.
    pub owner: WorkerId,
    /// How the task uses it.
    pub access: Access,
}

/// What the scheduler sends a worker to run one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The task.
    pub task: TaskId,
    /// The kernel's registered name.
    pub kernel: Arc<str>,
    /// The kernel's serialized parameters (shared with the task's recipe, for a retry).
    pub params: Arc<[u8]>,
    /// Which processor of the worker runs it.
    pub processor: ProcessorKind,
    /// Inputs, in argument order.
    pub inputs: Vec<InputSpec>,
}

/// What a task did, when it succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDone {
    /// New chunks, now held by the worker that ran the task.
    pub outputs: Vec<ChunkMeta>,
    /// Inputs written in place, now held by the worker that ran the task.
    pub written: Vec<ChunkMeta>,
    /// What the kernel read from storage outside the engine.
    #[serde(default)]
    pub storage: StorageRead,
    /// Chunk bytes the worker spilled and read back for the task.
    #[serde(default)]
    pub spill: SpillIo,
}

/// A worker's report on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task.
    pub task: TaskId,
    /// The worker that ran it.
    pub worker: WorkerId,
    /// The processor kind that ran it.
    pub processor: ProcessorKind,
    /// When it started.
    pub started_us: u64,
    /// When it finished.
    pub finished_us: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Microseconds the task waited, once on its processor, for inputs still moving from other
    /// workers (fetches start when the task arrives, so a queued task may wait for none).
    pub fetch_wait_us: u64,
    /// CPU time its thread spent on it, in µs (0 where the platform does not say): beside the
    /// wall time, it tells a slow task from one that waited for a core.
    pub cpu_us: u64,
    /// Chunks fetched from other workers.
    pub transfers: Vec<Transfer>,
    /// The outcome.
    pub result: std::result::Result<TaskDone, EngineError>,
}

/// Where workers send their reports: the scheduler's event queue, or (in a worker process,
/// which has no scheduler) a callback that sends the report back to the driver.
#[derive(Clone)]
pub struct ReportSink {
    target: SinkTarget,
}

#[derive(Clone)]
enum SinkTarget {
    Scheduler {
        events: Sender<Event>,
        peers: PeerDirectory,
    },
    Callback(Arc<dyn Fn(TaskReport) + Send + Sync>),
}

impl ReportSink {
    pub(crate) fn new(events: Sender<Event>, peers: PeerDirectory) -> Self {
        ReportSink {
            target: SinkTarget::Scheduler { events, peers },
        }
    }

    /// A sink that hands each report to `f`.
    pub fn from_fn(f: impl Fn(TaskReport) + Send + Sync + 'static) -> Self {
        ReportSink {
            target: SinkTarget::Callback(Arc::new(f)),
        }
    }

    /// Delivers a report. Reports after shutdown are dropped.
    pub fn report(&self, report: TaskReport) {
        match &self.target {
            SinkTarget::Scheduler { events, .. } => {
                let _ = events.send(Event::Finished(Box::new(report)));
            }
            SinkTarget::Callback(f) => f(report),
        }
    }

    /// Declares `worker` lost (a remote worker that stopped answering, or one the caller
    /// removes): the scheduler fails its running tasks, marks its chunks lost and places nothing
    /// more on it. A no-op for a callback sink, and for a worker already gone.
    pub fn worker_lost(&self, worker: WorkerId, reason: String) -> Result<()> {
        if let SinkTarget::Scheduler { events, peers } = &self.target {
            if peers.get(worker).is_ok() {
                peers.remove(worker);
                events
                    .send(Event::WorkerLost { worker, reason })
                    .map_err(|_| EngineError::Shutdown)?;
            }
        }
        Ok(())
    }
}

/// A worker's state, as it reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The worker.
    pub id: WorkerId,
    /// Chunks held.
    pub chunks: usize,
    /// Bytes held.
    pub bytes: u64,
    /// Tasks running now.
    pub running: usize,
    /// Tasks finished since start.
    pub finished: u64,
    /// Its memory budget and what spilled.
    #[serde(default)]
    pub memory: MemoryStatus,
}

/// A worker's memory budget as it reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStatus {
    /// The budget, in bytes (`None`: no limit).
    pub limit: Option<u64>,
    /// Bytes its resident chunks and running operators hold now.
    pub used: u64,
    /// Bytes of spill files of chunks on disk now.
    pub disk_bytes: u64,
    /// Bytes of chunks written to disk since it started.
    pub spilled_total: u64,
    /// Bytes of chunks read back since it started.
    pub reloaded_total: u64,
    /// The chunks on disk now, with the bytes of each one's spill file.
    pub spilled_chunks: Vec<(ChunkId, u64)>,
}

/// What the scheduler needs from a worker.
pub trait Worker: Send + Sync {
    /// Its id.
    fn id(&self) -> WorkerId;
    /// Its processors: kind and how many tasks each runs at once.
    fn processors(&self) -> Vec<(ProcessorKind, usize)>;
    /// Starts a task; the report goes to `sink` when it ends. Returns at once.
    fn run_task(&self, assignment: TaskAssignment, sink: ReportSink);
    /// Asks a running task to stop.
    fn cancel_task(&self, task: TaskId);
    /// Serves a chunk it holds.
    fn fetch_chunk(&self, id: ChunkId) -> Result<Arc<Chunk>>;
    /// Starts fetching a chunk it holds for a task that another worker has queued, so the
    /// transfer overlaps the tasks running before it there. `None` (the default): fetching
    /// costs nothing worth overlapping, and the task calls [`Worker::fetch_chunk`] when it runs.
    fn start_fetch(&self, _id: ChunkId) -> Option<PendingChunk> {
        None
    }
    /// Receives a chunk: under `id` when given (a chunk moving here), else under a fresh id.
    fn store_chunk(&self, id: Option<ChunkId>, chunk: Arc<Chunk>) -> Result<ChunkMeta>;
    /// Drops chunks.
    fn free_chunks(&self, ids: &[ChunkId]);
    /// Its state.
    fn status(&self) -> WorkerStatus;
    /// Called once when the worker joins a context, with the sink through which it may declare
    /// itself lost (a remote worker's heartbeat does).
    fn attached(&self, _sink: ReportSink) {}
}

/// A chunk on its way from another worker (see [`Worker::start_fetch`]).
pub struct PendingChunk(Box<dyn FnOnce() -> Result<Arc<Chunk>> + Send>);

impl PendingChunk {
    /// A fetch under way; `wait` blocks until it ends.
    pub fn new(wait: impl FnOnce() -> Result<Arc<Chunk>> + Send + 'static) -> Self {
        PendingChunk(Box::new(wait))
    }

    /// Blocks until the chunk is here, or the fetch failed.
    pub fn wait(self) -> Result<Arc<Chunk>> {
        (self.0)()
    }
}

/// Shared worker handle.
pub type WorkerRef = Arc<dyn Worker>;

/// How workers find each other to fetch chunks.
#[derive(Clone, Default)]
pub struct PeerDirectory {
    peers: Arc<RwLock<HashMap<WorkerId, WorkerRef>>>,
}

impl PeerDirectory {
    /// Adds a worker.
    pub fn add(&self, worker: WorkerRef) {
        self.peers.write().insert(worker.id(), worker);
    }

    /// Removes a worker.
    pub fn remove(&self, id: WorkerId) {
        self.peers.write().remove(&id);
    }

    /// Looks a worker up.
    pub fn get(&self, id: WorkerId) -> Result<WorkerRef> {
        self.peers
            .read()
            .get(&id)
            .cloned()
            .ok_or(EngineError::NoSuchWorker { worker: id })
    }

    /// All workers, by id.
    pub fn all(&self) -> Vec<WorkerRef> {
        let mut v: Vec<WorkerRef> = self.peers.read().values().cloned().collect();
        v.sort_by_key(|w| w.id());
        v
    }

    /// Drops every worker (breaks the worker ↔ directory reference cycle at shutdown).
    pub fn clear(&self) {
        self.peers.write().clear();
    }
}

struct WorkerCore {
    id: WorkerId,
    env: WorkerEnvRef,
    store: ChunkStore,
    registry: Arc<KernelRegistry>,
    peers: PeerDirectory,
    running: AtomicUsize,
    finished: AtomicU64,
    cancels: Arc<CancelSet>,
}

/// Tasks asked to stop. Kept apart from the per-task path: a kernel pays one relaxed load to
/// learn nothing was cancelled.
#[derive(Default)]
pub(crate) struct CancelSet {
    any: AtomicBool,
    tasks: Mutex<HashSet<TaskId>>,
}

impl CancelSet {
    fn cancel(&self, task: TaskId) {
        self.tasks.lock().insert(task);
        self.any.store(true, Ordering::Release);
    }

    pub(crate) fn is_cancelled(&self, task: TaskId) -> bool {
        self.any.load(Ordering::Acquire) && self.tasks.lock().contains(&task)
    }

    fn forget(&self, task: TaskId) {
        if self.any.load(Ordering::Acquire) {
            let mut t = self.tasks.lock();
            t.remove(&task);
            if t.is_empty() {
                self.any.store(false, Ordering::Release);
            }
        }
    }
}

/// A worker in the driver's process: its own chunk store and processors (a CPU thread pool, and
/// fake processors for tests). Chunks move between in-process workers as `Arc`s.
pub struct InProcessWorker {
    core: Arc<WorkerCore>,
    processors: Vec<ProcessorRef>,
}

impl InProcessWorker {
    /// A worker with `threads` CPU threads and `fakes` fake processors.
    pub fn new(
        id: WorkerId,
        threads: usize,
        fakes: u32,
        registry: Arc<KernelRegistry>,
        peers: PeerDirectory,
    ) -> Self {
        let mut processors: Vec<ProcessorRef> = vec![Arc::new(CpuProcessor::new(
            threads,
            &format!("dirk-w{}", id.0),
        ))];
        for f in 0..fakes {
            processors.push(Arc::new(FakeProcessor::new(f)));
        }
        Self::with_processors(id, processors, registry, peers)
    }

    /// A worker running its tasks on `processors`, which it may share with other workers (a
    /// worker process keeps one CPU pool for all the drivers attached to it).
    pub fn with_processors(
        id: WorkerId,
        processors: Vec<ProcessorRef>,
        registry: Arc<KernelRegistry>,
        peers: PeerDirectory,
    ) -> Self {
        InProcessWorker {
            core: Arc::new(WorkerCore {
                id,
                env: WorkerEnv::builder().build(),
                store: ChunkStore::new(id),
                registry,
                peers,
                running: AtomicUsize::new(0),
                finished: AtomicU64::new(0),
                cancels: Arc::default(),
            }),
            processors,
        }
    }

    /// Gives the worker `env`, the environment every kernel it runs sees (default: no memory
    /// limit, spill files under the system's temporary directory). Workers may share one.
    pub fn with_env(mut self, env: WorkerEnvRef) -> Self {
        let core =
            Arc::get_mut(&mut self.core).expect("a worker's core is shared only once it runs");
        core.store = ChunkStore::with_budget(
            core.id,
            Arc::clone(env.budget()),
            env.spill_dir().to_path_buf(),
        );
        core.env = env;
        self
    }

    /// The processors, for tests that count what each ran.
    pub fn processor_handles(&self) -> &[ProcessorRef] {
        &self.processors
    }
}

impl Worker for InProcessWorker {
    fn id(&self) -> WorkerId {
        self.core.id
    }

    fn processors(&self) -> Vec<(ProcessorKind, usize)> {
        self.processors
            .iter()
            .map(|p| (p.kind(), p.slots()))
            .collect()
    }

    fn run_task(&self, assignment: TaskAssignment, sink: ReportSink) {
        let Some(proc) = self
            .processors
            .iter()
            .find(|p| p.kind() == assignment.processor)
        else {
            let now = now_us();
            sink.report(TaskReport {
                task: assignment.task,
                worker: self.core.id,
                processor: assignment.processor,
                started_us: now,
                finished_us: now,
                rows_in: 0,
                bytes_in: 0,
                fetch_wait_us: 0,
                cpu_us: 0,
                transfers: Vec::new(),
                result: Err(EngineError::internal(format!(
                    "{} has no {} processor",
                    self.core.id, assignment.processor
                ))),
            });
            return;
        };
        self.core.running.fetch_add(1, Ordering::Relaxed);
        // Remote inputs start moving now, while the tasks queued before this one run.
        let remote = assignment.inputs.iter().any(|s| s.owner != self.core.id);
        let pending = assignment
            .inputs
            .iter()
            .filter(|_| remote)
            .map(|spec| {
                if spec.owner == self.core.id {
                    return None;
                }
                self.core
                    .peers
                    .get(spec.owner)
                    .ok()?
                    .start_fetch(spec.chunk)
            })
            .collect();
        let core = self.core.clone();
        proc.run(Box::new(move || {
            let report = core.execute(&assignment, pending);
            core.cancels.forget(assignment.task);
            core.running.fetch_sub(1, Ordering::Relaxed);
            core.finished.fetch_add(1, Ordering::Relaxed);
            sink.report(report);
        }));
    }

    fn cancel_task(&self, task: TaskId) {
        self.core.cancels.cancel(task);
    }

    fn fetch_chunk(&self, id: ChunkId) -> Result<Arc<Chunk>> {
        self.core.store.get(id)
    }

    fn store_chunk(&self, id: Option<ChunkId>, chunk: Arc<Chunk>) -> Result<ChunkMeta> {
        Ok(match id {
            Some(id) => self.core.store.insert_with_id(id, chunk),
            None => {
                let id = self.core.store.mint();
                self.core.store.insert_with_id(id, chunk)
            }
        })
    }

    fn free_chunks(&self, ids: &[ChunkId]) {
        self.core.store.remove(ids);
    }

    fn status(&self) -> WorkerStatus {
        let budget = self.core.store.budget();
        WorkerStatus {
            id: self.core.id,
            chunks: self.core.store.len(),
            bytes: self.core.store.bytes(),
            memory: MemoryStatus {
                limit: budget.limit().map(|l| l as u64),
                used: budget.used() as u64,
                disk_bytes: self.core.store.disk_bytes(),
                spilled_total: budget.spilled_total(),
                reloaded_total: budget.reloaded_total(),
                spilled_chunks: self
                    .core
                    .store
                    .spaces()
                    .into_iter()
                    .filter(|p| p.space == crate::chunk::MemorySpace::Spilled)
                    .map(|p| (p.id, p.disk_bytes))
                    .collect(),
            },
            running: self.core.running.load(Ordering::Relaxed),
            finished: self.core.finished.load(Ordering::Relaxed),
        }
    }
}

/// What a task's inputs came to, for its report: filled in while they are gathered, and kept
/// when the task fails part way.
#[derive(Default)]
struct InputsRead {
    rows: u64,
    bytes: u64,
    fetch_wait_us: u64,
    transfers: Vec<Transfer>,
}

impl WorkerCore {
    /// Gathers inputs (fetching remote ones from their owners), runs the kernel, keeps outputs
    /// and written inputs in this worker's store.
    /// `pending` holds, per input, the fetch [`Worker::start_fetch`] began when the task came.
    fn execute(&self, a: &TaskAssignment, pending: Vec<Option<PendingChunk>>) -> TaskReport {
        let clock = crate::cputime::TaskClock::start();
        let started_us = clock.started_us();
        let mut read = InputsRead::default();
        let result = self.execute_inner(a, pending, &mut read);
        // The task's inputs are free to spill again: bring the worker back under its budget.
        self.store.budget().make_room(0, None);
        let finished_us = now_us();
        let cpu_us = clock.cpu_us(finished_us);
        TaskReport {
            task: a.task,
            worker: self.id,
            processor: a.processor,
            started_us,
            finished_us,
            rows_in: read.rows,
            bytes_in: read.bytes,
            fetch_wait_us: read.fetch_wait_us,
            cpu_us,
            transfers: read.transfers,
            result,
        }
    }

    fn execute_inner(
        &self,
        a: &TaskAssignment,
        pending: Vec<Option<PendingChunk>>,
        read: &mut InputsRead,
    ) -> Result<TaskDone> {
        let kernel = self.registry.get(&a.kernel)?;
        let spill_before = crate::memory::thread_spill();
        let mut inputs = Vec::with_capacity(a.inputs.len());
        let mut pending = pending.into_iter();
        for spec in &a.inputs {
            let started = pending.next().flatten();
            let chunk = if spec.owner == self.id {
                // A local chunk written in place leaves the store while the kernel runs, so the
                // kernel may hold the only reference and mutate its buffers without copying.
                if spec.access.writes() {
                    self.store.take(spec.chunk)
                } else {
                    self.store.get(spec.chunk)
                }
            } else {
                let waiting = now_us();
                let fetched = match started {
                    Some(fetch) => fetch.wait(),
                    None => self
                        .peers
                        .get(spec.owner)
                        .and_then(|peer| peer.fetch_chunk(spec.chunk)),
                };
                read.fetch_wait_us += now_us().saturating_sub(waiting);
                if let Ok(c) = &fetched {
                    read.transfers.push(Transfer {
                        chunk: spec.chunk,
                        from: spec.owner,
                        to: self.id,
                        bytes: c.data_bytes(),
                    });
                }
                fetched
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    self.restore_taken(a, inputs.iter().map(|i: &KernelInput| i.chunk.clone()));
                    return Err(e);
                }
            };
            read.rows += chunk.rows();
            read.bytes += chunk.bytes();
            inputs.push(KernelInput {
                access: spec.access,
                chunk,
            });
        }
        let mut call = KernelCall::new(
            a.task,
            self.id,
            a.processor,
            &a.params,
            inputs,
            &self.cancels,
            &self.env,
        );
        let outcome = crate::panics::catch(|| kernel.run(&mut call)).unwrap_or_else(|panic| {
            Err(EngineError::internal(format!("kernel panicked: {panic}")))
        });
        let storage = call.storage_read();
        let operator_spill = call.operator_spill();
        let inputs = call.into_inputs();
        match outcome {
            Ok(outs) => {
                let outputs = outs.into_iter().map(|c| self.store.insert(c)).collect();
                let mut written = Vec::new();
                for (spec, input) in a.inputs.iter().zip(inputs) {
                    if spec.access.writes() {
                        // A chunk fetched to be written moves here with its new contents; the
                        // scheduler frees the stale copy once it accepts this report.
                        written.push(self.store.insert_with_id(spec.chunk, input.chunk));
                    }
                }
                Ok(TaskDone {
                    outputs,
                    written,
                    storage,
                    spill: SpillIo {
                        operators: operator_spill,
                        ..crate::memory::thread_spill().since(spill_before)
                    },
                })
            }
            Err(e) => {
                self.restore_taken(a, inputs.into_iter().map(|i| i.chunk));
                Err(e)
            }
        }
    }

    /// Puts back local chunks taken out for writing, when the task fails: the store holds
    /// them again, unchanged unless the kernel mutated them before failing.
    fn restore_taken(&self, a: &TaskAssignment, chunks: impl IntoIterator<Item = Arc<Chunk>>) {
        for (spec, chunk) in a.inputs.iter().zip(chunks) {
            if spec.owner == self.id && spec.access.writes() {
                self.store.insert_with_id(spec.chunk, chunk);
            }
        }
    }
}
