//! Retries: a task whose worker is lost, or whose input cannot be fetched, runs again on
//! another worker; a task that fails on its own does not.

use super::common::{register, value_chunk, value_of};
use dirk_engine::{
    Access, Arg, Chunk, ChunkId, ChunkMeta, Context, EngineError, FnKernel, InProcessWorker,
    PendingChunk, ProcessorKind, ReportSink, Result, RetryPolicy, Scope, TaskAssignment, TaskId,
    TaskOptions, TaskStatus, Worker, WorkerId, WorkerStatus,
};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A context of `workers` in-process workers whose kernels include `slow_copy` (params
/// `[ms]`: output = input 0 after `ms` milliseconds) and `slow_double` (params `[ms]`: input
/// 0 := 2 * input 0 after `ms`), each noting the worker it started on.
fn context(workers: usize, retry: RetryPolicy) -> (Context, Arc<Mutex<Vec<WorkerId>>>) {
    let ctx = Context::builder()
        .workers(workers)
        .retry(retry)
        .build()
        .unwrap();
    register(&ctx);
    let started = Arc::new(Mutex::new(Vec::new()));
    let s = started.clone();
    ctx.register_kernel(FnKernel::new("slow_copy", move |call| {
        s.lock().push(call.worker);
        let [ms]: [u64; 1] = call.params_json()?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(vec![value_chunk(value_of(call.input(0)))])
    }));
    let s = started.clone();
    ctx.register_kernel(FnKernel::new("slow_double", move |call| {
        s.lock().push(call.worker);
        let [ms]: [u64; 1] = call.params_json()?;
        std::thread::sleep(Duration::from_millis(ms));
        let doubled = 2 * value_of(call.input(0));
        *call.input_mut(0)? = Arc::new(value_chunk(doubled));
        Ok(vec![])
    }));
    (ctx, started)
}

/// Waits until a kernel has started and returns its worker.
fn first_start(started: &Mutex<Vec<WorkerId>>) -> WorkerId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(w) = started.lock().first() {
            return *w;
        }
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn on_workers_1_or_2(params: &impl serde::Serialize) -> TaskOptions {
    TaskOptions::new()
        .params_json(params)
        .unwrap()
        .scope(Scope::workers([WorkerId(1), WorkerId(2)]))
}

/// The task runs again on the other worker its scope allows; the lost worker's own attempt,
/// which still finishes (an in-process worker is not really dead), is refused: the output is
/// the second attempt's, held where that ran.
#[test]
fn a_task_whose_worker_is_lost_runs_again_elsewhere_and_the_lost_attempt_is_refused() {
    let (ctx, started) = context(3, RetryPolicy::default());
    let input = ctx.put_on(WorkerId(0), value_chunk(7), false).unwrap();
    let h = ctx.spawn(
        "slow_copy",
        vec![Arg::read(&input)],
        on_workers_1_or_2(&[300]),
    );
    let lost = first_start(&started);
    ctx.remove_worker(lost, "killed by test").unwrap();
    let out = h.wait().expect("the task runs again").chunks[0].clone();
    let survivor = if lost == WorkerId(1) {
        WorkerId(2)
    } else {
        WorkerId(1)
    };
    assert_eq!(*started.lock(), vec![lost, survivor]);
    assert_eq!(ctx.locate(&out).unwrap().meta.owner, survivor);
    assert_eq!(value_of(&ctx.fetch(&out).unwrap()), 7);
    // Wait out the lost attempt's late report, then read the log.
    std::thread::sleep(Duration::from_millis(400));
    let log = ctx.event_log();
    let mine: Vec<_> = log.records.iter().filter(|r| r.task == h.id()).collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(mine[0].worker, Some(lost));
    assert!(
        matches!(&mine[0].status, TaskStatus::Retried(m) if m.contains("killed by test")),
        "{:?}",
        mine[0].status
    );
    assert_eq!(mine[1].worker, Some(survivor));
    assert_eq!(mine[1].status, TaskStatus::Ok);
}

/// A task that writes a chunk in place runs again too, over the chunk as it was: the write
/// is applied once. The lost attempt had fetched the chunk from its owner, which keeps it
/// until a write is accepted.
#[test]
fn a_task_that_writes_in_place_runs_again_over_the_chunk_as_it_was() {
    let (ctx, started) = context(3, RetryPolicy::default());
    let c = ctx.put_on(WorkerId(0), value_chunk(5), false).unwrap();
    let h = ctx.spawn(
        "slow_double",
        vec![Arg::read_write(&c)],
        on_workers_1_or_2(&[300]),
    );
    let lost = first_start(&started);
    ctx.remove_worker(lost, "killed by test").unwrap();
    h.wait().expect("the write runs again");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(started.lock().len(), 2);
    assert_eq!(value_of(&ctx.fetch(&c).unwrap()), 10, "doubled once");
    assert_ne!(ctx.locate(&c).unwrap().meta.owner, lost);
}

/// With one attempt allowed, or for a task that runs at most once, a lost worker fails the
/// task it ran.
#[test]
fn one_attempt_never_retries() {
    let one = RetryPolicy {
        attempts: 1,
        ..Default::default()
    };
    for (policy, once) in [(one, false), (RetryPolicy::default(), true)] {
        let (ctx, started) = context(3, policy);
        let input = ctx.put_on(WorkerId(0), value_chunk(7), false).unwrap();
        let mut options = on_workers_1_or_2(&[300]);
        if once {
            options = options.once();
        }
        let h = ctx.spawn("slow_copy", vec![Arg::read(&input)], options);
        let lost = first_start(&started);
        ctx.remove_worker(lost, "killed by test").unwrap();
        assert!(
            matches!(h.wait(), Err(EngineError::WorkerLost { .. })),
            "once: {once}"
        );
    }
}

/// A kernel's own failures are the caller's to judge: one attempt, whatever their kind.
#[test]
fn a_kernel_failure_is_not_retried() {
    let (ctx, _) = context(2, RetryPolicy::default());
    ctx.register_kernel(FnKernel::new("short", |_call| {
        Err(EngineError::retryable("memory is short for now"))
    }));
    for kernel in ["fail", "short"] {
        let h = ctx.spawn(kernel, vec![], TaskOptions::new());
        assert!(h.wait().is_err());
        let log = ctx.event_log();
        let mine: Vec<_> = log.records.iter().filter(|r| r.task == h.id()).collect();
        assert_eq!(mine.len(), 1, "{kernel}: {mine:?}");
        assert!(matches!(mine[0].status, TaskStatus::Failed(_)));
    }
}

/// Worker 1: holds chunks, and fails the first `failures` fetches from it as a network would.
struct FlakyOwner {
    inner: InProcessWorker,
    failures: AtomicUsize,
}

impl FlakyOwner {
    fn fetch(&self, id: ChunkId) -> Result<Arc<Chunk>> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(EngineError::Remote {
                peer: "worker 1 at 127.0.0.1:9".into(),
                message: "fetching: connection reset".into(),
            });
        }
        self.inner.fetch_chunk(id)
    }
}

impl Worker for FlakyOwner {
    fn id(&self) -> WorkerId {
        self.inner.id()
    }
    fn processors(&self) -> Vec<(ProcessorKind, usize)> {
        self.inner.processors()
    }
    fn run_task(&self, assignment: TaskAssignment, sink: ReportSink) {
        self.inner.run_task(assignment, sink)
    }
    fn cancel_task(&self, task: TaskId) {
        self.inner.cancel_task(task)
    }
    fn fetch_chunk(&self, id: ChunkId) -> Result<Arc<Chunk>> {
        self.fetch(id)
    }
    fn start_fetch(&self, id: ChunkId) -> Option<PendingChunk> {
        let fetched = self.fetch(id);
        Some(PendingChunk::new(move || fetched))
    }
    fn store_chunk(&self, id: Option<ChunkId>, chunk: Arc<Chunk>) -> Result<ChunkMeta> {
        self.inner.store_chunk(id, chunk)
    }
    fn free_chunks(&self, ids: &[ChunkId]) {
        self.inner.free_chunks(ids)
    }
    fn status(&self) -> WorkerStatus {
        self.inner.status()
    }
}

/// Runs `copy` on worker 0 over a chunk of the flaky worker 1.
fn copy_from_flaky(attempts: u32, failures: usize) -> (Result<i64>, Vec<TaskStatus>, Duration) {
    let backoff = Duration::from_millis(20);
    let ctx = Context::builder()
        .workers(1)
        .retry(RetryPolicy { attempts, backoff })
        .build()
        .unwrap();
    register(&ctx);
    let owner = Arc::new(FlakyOwner {
        inner: InProcessWorker::new(WorkerId(1), 1, 0, ctx.kernels(), Default::default()),
        failures: AtomicUsize::new(failures),
    });
    ctx.add_worker(owner).unwrap();
    let c = ctx.put_on(WorkerId(1), value_chunk(3), false).unwrap();
    let started = Instant::now();
    let h = ctx.spawn(
        "copy",
        vec![Arg::chunk(c.id, Access::Read)],
        TaskOptions::new().scope(Scope::worker(WorkerId(0))),
    );
    let value = h.fetch().map(|out| value_of(&out[0]));
    let took = started.elapsed();
    let log = ctx.event_log();
    let statuses = log
        .records
        .iter()
        .filter(|r| r.task == h.id())
        .map(|r| r.status.clone())
        .collect();
    (value, statuses, took)
}

/// A fetch that fails is retried after a backoff that doubles (20, then 40 ms here), and the
/// task succeeds once the fetch does; with too few attempts, the last failure is the error.
#[test]
fn a_failed_fetch_is_retried_after_a_growing_backoff_up_to_the_attempts_allowed() {
    let (value, statuses, took) = copy_from_flaky(4, 2);
    assert_eq!(value.unwrap(), 3);
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    assert!(statuses[..2]
        .iter()
        .all(|s| matches!(s, TaskStatus::Retried(m) if m.contains("connection reset"))));
    assert_eq!(statuses[2], TaskStatus::Ok);
    assert!(took >= Duration::from_millis(60), "{took:?}");

    let (value, statuses, _) = copy_from_flaky(2, 5);
    let e = value.expect_err("two attempts, both failed");
    assert!(e.to_string().contains("connection reset"), "{e}");
    assert_eq!(e.kind(), dirk_engine::ErrorKind::Retryable);
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(matches!(statuses[1], TaskStatus::Failed(_)));
}
