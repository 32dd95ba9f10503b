//! The context: the caller's entry point. It owns the scheduler thread and the workers, and is
//! where tasks are spawned and data is put and fetched.

use crate::chunk::{Chunk, ChunkRef};
use crate::error::{EngineError, Result};
use crate::eventlog::{now_us, EventLog, EventLogSnapshot, Transfer};
use crate::ids::{ChunkId, TaskId, WorkerId};
use crate::kernel::{KernelRef, KernelRegistry};
use crate::placement::CostModel;
use crate::scheduler::RetryPolicy;
use crate::scheduler::{Admission, ChunkEntry, Event, Scheduler, SchedulerLinks, Submission};
use crate::scope::ProcessorKind;
use crate::task::{Arg, TaskHandle, TaskOptions, TaskSlot};
use crate::worker::{InProcessWorker, PeerDirectory, ReportSink, WorkerRef, WorkerStatus};
use crossbeam_channel::{bounded, unbounded, Sender};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// State shared by the context and its task handles.
pub(crate) struct Shared {
    events: Sender<Event>,
    next_task: Arc<AtomicU64>,
    next_put: AtomicUsize,
    replicate_puts: bool,
    notices: Arc<Mutex<Vec<crate::scheduler::Notice>>>,
    registry: Arc<KernelRegistry>,
    peers: PeerDirectory,
    log: Arc<EventLog>,
    admission: Arc<Admission>,
    sink: ReportSink,
}

impl Shared {
    fn send(&self, ev: Event) -> Result<()> {
        self.events.send(ev).map_err(|_| EngineError::Shutdown)
    }

    pub(crate) fn cancel(&self, task: TaskId) {
        let _ = self.send(Event::Cancel(task));
    }

    fn locate(&self, chunk: ChunkId) -> Result<ChunkEntry> {
        let (tx, rx) = bounded(1);
        self.send(Event::Locate(chunk, tx))?;
        rx.recv().map_err(|_| EngineError::Shutdown)?
    }

    /// Brings a chunk's data to the caller, counting the move.
    pub(crate) fn fetch_chunk(&self, chunk: ChunkId) -> Result<Arc<Chunk>> {
        let entry = self.locate(chunk)?;
        if entry.lost {
            return Err(EngineError::ChunkLost {
                chunk,
                worker: entry.meta.owner,
            });
        }
        let data = self
            .peers
            .get(entry.meta.owner)?
            .fetch_chunk(entry.stored)?;
        self.log.transfer(Transfer {
            chunk,
            from: entry.meta.owner,
            to: WorkerId::DRIVER,
            bytes: data.data_bytes(),
        });
        Ok(data)
    }
}

/// Task totals since a context started; see [`Context::task_counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskCounts {
    /// Tasks submitted.
    pub submitted: u64,
    /// Tasks finished, however they ended.
    pub finished: u64,
}

/// Builds a [`Context`].
#[derive(Debug, Clone)]
pub struct ContextBuilder {
    workers: usize,
    threads_per_worker: usize,
    fake_processors: u32,
    log_capacity: usize,
    max_outstanding: usize,
    cost_model: CostModel,
    memory_limit: Option<usize>,
    spill_dir: Option<std::path::PathBuf>,
    retry: RetryPolicy,
    replicate_puts: bool,
}

impl Default for ContextBuilder {
    fn default() -> Self {
        ContextBuilder {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            threads_per_worker: 1,
            fake_processors: 0,
            log_capacity: 100_000,
            max_outstanding: 100_000,
            cost_model: CostModel::default(),
            memory_limit: None,
            spill_dir: None,
            retry: RetryPolicy::default(),
            replicate_puts: false,
        }
    }
}

impl ContextBuilder {
    /// Number of in-process workers (default: one per core). With 0, the context starts with
    /// none and the caller adds its own (remote ones) with [`Context::add_worker`].
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Memory the in-process workers may use, in bytes, split equally between them: each
    /// worker's environment ([`crate::WorkerEnv`]) gets its share as its budget, which its
    /// resident chunks and its tasks' operators share (default: three quarters of the machine's
    /// memory, [`crate::default_budget`]).
    pub fn memory_limit(mut self, bytes: Option<usize>) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Where the in-process workers' tasks write spill files (default: `dirk-spill` under the
    /// system's temporary directory).
    pub fn spill_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.spill_dir = Some(dir.into());
        self
    }

    /// CPU threads per in-process worker (default 1).
    pub fn threads_per_worker(mut self, n: usize) -> Self {
        self.threads_per_worker = n.max(1);
        self
    }

    /// Gives every in-process worker `n` fake processors (`ProcessorKind::Fake(0..n)`), for
    /// placement tests.
    pub fn fake_processors(mut self, n: u32) -> Self {
        self.fake_processors = n;
        self
    }

    /// How many task records the event log keeps (the most recent ones; 0 keeps none).
    pub fn event_log_capacity(mut self, n: usize) -> Self {
        self.log_capacity = n;
        self
    }

    /// How many submitted tasks may be unfinished at once before `spawn` waits (default 100,000).
    pub fn max_outstanding_tasks(mut self, n: usize) -> Self {
        self.max_outstanding = n.max(1);
        self
    }

    /// How tasks whose worker was lost, or whose input could not be fetched, run again
    /// (default: 4 attempts in all; see [`RetryPolicy`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = RetryPolicy {
            attempts: policy.attempts.max(1),
            ..policy
        };
        self
    }

    /// Keeps a copy of every chunk the caller puts on a second worker (default: no). Chunks
    /// made by tasks are rebuilt from their lineage when their worker is lost; what the caller
    /// put has none, and without a copy it is lost with its worker. The copy costs its size
    /// again in the second worker's memory (it spills like any chunk).
    pub fn replicate_puts(mut self, on: bool) -> Self {
        self.replicate_puts = on;
        self
    }

    /// The placement cost model.
    pub fn cost_model(mut self, model: CostModel) -> Self {
        self.cost_model = model;
        self
    }

    /// Starts the scheduler and the workers.
    pub fn build(self) -> Result<Context> {
        let (tx, rx) = unbounded();
        let log = Arc::new(EventLog::new(self.log_capacity));
        let registry = Arc::new(KernelRegistry::with_builtins());
        let peers = PeerDirectory::default();
        let admission = Arc::new(Admission::new(self.max_outstanding));
        let next_task = Arc::new(AtomicU64::new(0));
        let notices = Arc::new(Mutex::new(Vec::new()));
        let links = SchedulerLinks {
            log: log.clone(),
            admission: admission.clone(),
            next_task: next_task.clone(),
            notices: notices.clone(),
        };
        let sched = Scheduler::new(
            rx,
            ReportSink::new(tx.clone(), peers.clone()),
            links,
            self.cost_model,
            self.retry,
        );
        let thread = std::thread::Builder::new()
            .name("dirk-scheduler".into())
            // Rebuilding a chunk written in place N times recurses N deep.
            .stack_size(64 << 20)
            .spawn(move || sched.run())
            .map_err(|e| EngineError::Io {
                path: "scheduler thread".into(),
                message: e.to_string(),
            })?;
        let ctx = Context {
            shared: Arc::new(Shared {
                events: tx.clone(),
                next_task,
                next_put: AtomicUsize::new(0),
                replicate_puts: self.replicate_puts,
                notices,
                registry,
                peers: peers.clone(),
                log,
                admission,
                sink: ReportSink::new(tx, peers),
            }),
            scheduler: Mutex::new(Some(thread)),
        };
        let share = match self.memory_limit {
            Some(m) => Some(m / self.workers.max(1)),
            None => crate::memory::default_budget(self.workers),
        };
        for i in 0..self.workers {
            let env = crate::WorkerEnv::builder()
                .name(WorkerId(i as u32).to_string())
                .memory_limit(share)
                .spill_dir(self.spill_dir.clone())
                .build();
            let w = InProcessWorker::new(
                WorkerId(i as u32),
                self.threads_per_worker,
                self.fake_processors,
                ctx.shared.registry.clone(),
                ctx.shared.peers.clone(),
            )
            .with_env(env);
            ctx.add_worker(Arc::new(w))?;
        }
        Ok(ctx)
    }
}

/// The engine as a caller sees it: spawn tasks, put and fetch chunks, read the event log.
pub struct Context {
    shared: Arc<Shared>,
    scheduler: Mutex<Option<JoinHandle<()>>>,
}

impl Context {
    /// A builder with the defaults (one in-process worker per core).
    pub fn builder() -> ContextBuilder {
        ContextBuilder::default()
    }

    /// Registers a kernel on every in-process worker.
    pub fn register_kernel(&self, kernel: KernelRef) {
        self.shared.registry.register(kernel);
    }

    /// The kernel registry shared by in-process workers.
    pub fn kernels(&self) -> Arc<KernelRegistry> {
        self.shared.registry.clone()
    }

    /// Adds a worker (in-process or remote).
    pub fn add_worker(&self, worker: WorkerRef) -> Result<()> {
        self.shared.peers.add(worker.clone());
        self.shared.send(Event::WorkerAdded(worker.clone()))?;
        worker.attached(self.shared.sink.clone());
        Ok(())
    }

    /// Declares a worker lost: its chunks are marked lost, its running tasks fail, its queued
    /// tasks go elsewhere.
    pub fn remove_worker(&self, worker: WorkerId, reason: &str) -> Result<()> {
        self.shared.peers.get(worker)?;
        self.shared.sink.worker_lost(worker, reason.to_string())
    }

    /// The workers, by id.
    pub fn workers(&self) -> Vec<WorkerId> {
        self.shared.peers.all().iter().map(|w| w.id()).collect()
    }

    /// How many tasks the workers' CPU processors run at once, in all.
    pub fn cpu_slots(&self) -> usize {
        self.shared
            .peers
            .all()
            .iter()
            .flat_map(|w| w.processors())
            .filter(|(kind, _)| *kind == ProcessorKind::Cpu)
            .map(|(_, slots)| slots)
            .sum()
    }

    /// Each worker's status.
    pub fn worker_status(&self) -> Vec<WorkerStatus> {
        self.shared.peers.all().iter().map(|w| w.status()).collect()
    }

    /// Spawns a task: `kernel` (a registered name) applied to `args`. Returns at once, unless
    /// the bound on unfinished tasks is reached (see [`ContextBuilder::max_outstanding_tasks`]).
    pub fn spawn(&self, kernel: &str, args: Vec<Arg>, options: TaskOptions) -> TaskHandle {
        self.shared.admission.acquire();
        let id = TaskId(self.shared.next_task.fetch_add(1, Ordering::Relaxed));
        let slot = Arc::new(TaskSlot::default());
        let sub = Submission {
            id,
            kernel: Arc::from(kernel),
            params: options.params.into(),
            args,
            after: options.after,
            scope: options.scope,
            label: options.label.map(Arc::from),
            cost_class: options.cost_class,
            slot: slot.clone(),
            submitted_us: now_us(),
            counted: true,
            once: options.once,
        };
        if self.shared.send(Event::Submit(Box::new(sub))).is_err() {
            slot.complete(Err(EngineError::Shutdown));
            self.shared.admission.release();
        }
        TaskHandle {
            id,
            slot,
            shared: self.shared.clone(),
        }
    }

    /// An ordered queue: each task spawned through it runs after the previous one
    /// (Dagger's `spawn_sequential`).
    #[doc(alias = "spawn_sequential")]
    pub fn sequential(&self) -> SequentialQueue<'_> {
        SequentialQueue {
            ctx: self,
            last: None,
        }
    }

    /// Puts data into a worker's store, chosen round-robin.
    pub fn put(&self, chunk: Chunk) -> Result<ChunkRef> {
        let workers = self.shared.peers.all();
        if workers.is_empty() {
            return Err(EngineError::Shutdown);
        }
        let i = self.shared.next_put.fetch_add(1, Ordering::Relaxed) % workers.len();
        self.put_on(workers[i].id(), chunk, false)
    }

    /// Puts data into `worker`'s store. A pinned chunk never moves: tasks that use it run on
    /// `worker` (Dagger's `@mutable worker=N`).
    pub fn put_on(&self, worker: WorkerId, chunk: Chunk, pinned: bool) -> Result<ChunkRef> {
        let chunk = Arc::new(chunk);
        let meta = self
            .shared
            .peers
            .get(worker)?
            .store_chunk(None, chunk.clone())?;
        // The copy goes to the next worker after the owner.
        let replica = match self.shared.replicate_puts {
            true => {
                let all = self.shared.peers.all();
                let at = all.iter().position(|w| w.id() == worker).unwrap_or(0);
                match all
                    .get((at + 1) % all.len().max(1))
                    .filter(|w| w.id() != worker)
                {
                    Some(w) => Some(w.store_chunk(None, chunk)?),
                    None => None,
                }
            }
            false => None,
        };
        self.shared.send(Event::ChunkAdded {
            meta: meta.clone(),
            pinned,
            replica,
        })?;
        Ok(meta)
    }

    /// Brings a chunk's data to the caller.
    pub fn fetch(&self, chunk: &ChunkRef) -> Result<Arc<Chunk>> {
        self.shared.fetch_chunk(chunk.id)
    }

    /// Where a chunk is now, and what made it.
    pub fn locate(&self, chunk: &ChunkRef) -> Result<ChunkEntry> {
        self.shared.locate(chunk.id)
    }

    /// Drops chunks from their workers.
    pub fn free(&self, chunks: &[ChunkRef]) -> Result<()> {
        self.shared
            .send(Event::FreeChunks(chunks.iter().map(|c| c.id).collect()))
    }

    /// Blocks until every task submitted so far has finished.
    pub fn wait_idle(&self) -> Result<()> {
        let (tx, rx) = bounded(1);
        self.shared.send(Event::Idle(tx))?;
        rx.recv().map_err(|_| EngineError::Shutdown)
    }

    /// How many tasks were submitted and how many have finished (succeeded, failed or were
    /// cancelled) since the context started. Two readings give a caller's progress: the shell's
    /// progress bar is (finished - finished₀) of (submitted - submitted₀).
    pub fn task_counts(&self) -> TaskCounts {
        let (submitted, finished) = self.shared.admission.counts();
        TaskCounts {
            submitted,
            finished,
        }
    }

    /// What happened to the cluster since the last call, oldest first: workers lost, and the
    /// rebuilds of what they held.
    pub fn take_notices(&self) -> Vec<crate::scheduler::Notice> {
        std::mem::take(&mut *self.shared.notices.lock())
    }

    /// Adds a notice for [`Context::take_notices`] (from a layer above the engine that saw
    /// something users should hear of).
    pub fn post_notice(&self, notice: crate::scheduler::Notice) {
        crate::scheduler::push_notice(&self.shared.notices, notice);
    }

    /// A copy of the event log.
    pub fn event_log(&self) -> EventLogSnapshot {
        self.shared.log.snapshot()
    }

    /// Empties the event log.
    pub fn clear_event_log(&self) {
        self.shared.log.clear()
    }

    /// Writes the event log as Chrome trace JSON (open it in Perfetto).
    pub fn write_chrome_trace(&self, path: &std::path::Path) -> Result<()> {
        write_file(path, &self.event_log().chrome_trace())
    }

    /// Writes the task graph as Graphviz DOT.
    pub fn write_graphviz(&self, path: &std::path::Path) -> Result<()> {
        write_file(path, &self.event_log().graphviz())
    }

    /// Stops the scheduler and the workers. Unfinished tasks fail with `Shutdown`. Called on drop.
    pub fn shutdown(&self) {
        let _ = self.shared.send(Event::Shutdown);
        if let Some(t) = self.scheduler.lock().take() {
            let _ = t.join();
        }
        self.shared.peers.clear();
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| EngineError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Tasks spawned through a queue run in submission order (see [`Context::sequential`]).
pub struct SequentialQueue<'a> {
    ctx: &'a Context,
    last: Option<TaskHandle>,
}

impl SequentialQueue<'_> {
    /// Spawns a task that runs after the previously spawned one.
    pub fn spawn(&mut self, kernel: &str, args: Vec<Arg>, options: TaskOptions) -> TaskHandle {
        let options = match &self.last {
            Some(prev) => options.after(prev),
            None => options,
        };
        let h = self.ctx.spawn(kernel, args, options);
        self.last = Some(h.clone());
        h
    }
}
