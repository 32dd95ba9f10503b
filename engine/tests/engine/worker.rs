//! One worker on its own: how it gathers a task's inputs from its peers.

use super::common::{value_chunk, value_of};
use dirk_engine::{
    Access, Chunk, ChunkId, ChunkMeta, FnKernel, InProcessWorker, InputSpec, KernelRegistry,
    PeerDirectory, PendingChunk, ProcessorKind, ReportSink, Result, TaskAssignment, TaskId,
    TaskReport, Worker, WorkerId, WorkerStatus,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A peer that fetches ahead, as a remote worker does: it counts the fetches started and can
/// make them fail.
struct FetchingAhead {
    inner: InProcessWorker,
    started: AtomicUsize,
    fail: bool,
}

impl Worker for FetchingAhead {
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
        self.inner.fetch_chunk(id)
    }
    fn start_fetch(&self, id: ChunkId) -> Option<PendingChunk> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let fetched = self.inner.fetch_chunk(id);
        let fail = self.fail;
        Some(PendingChunk::new(move || {
            if fail {
                Err(dirk_engine::EngineError::kernel("the link broke"))
            } else {
                fetched
            }
        }))
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

/// Worker 0, whose kernel `add` adds input 1 to input 0 in place, and (unless `peer` is
/// `None`) a peer worker 1 holding a chunk of value 5.
fn pair(peer: Option<bool>) -> (InProcessWorker, Option<Arc<FetchingAhead>>, ChunkId) {
    let registry = Arc::new(KernelRegistry::default());
    registry.register(FnKernel::new("add", |call| {
        let sum = value_of(call.input(0)) + value_of(call.input(1));
        *call.input_mut(0)? = Arc::new(value_chunk(sum));
        Ok(vec![])
    }));
    let peers = PeerDirectory::default();
    let w0 = InProcessWorker::new(WorkerId(0), 1, 0, registry.clone(), peers.clone());
    let peer = peer.map(|fail| {
        Arc::new(FetchingAhead {
            inner: InProcessWorker::new(WorkerId(1), 1, 0, registry, peers.clone()),
            started: AtomicUsize::new(0),
            fail,
        })
    });
    let remote = match &peer {
        Some(p) => {
            peers.add(p.clone());
            p.store_chunk(None, Arc::new(value_chunk(5))).unwrap().id
        }
        None => ChunkId::new(WorkerId(1), 1),
    };
    (w0, peer, remote)
}

/// Runs `add` on worker 0: its own chunk (value 1, written in place) plus `remote` of worker 1.
fn add(w0: &InProcessWorker, remote: ChunkId) -> (TaskReport, ChunkId) {
    let local = w0.store_chunk(None, Arc::new(value_chunk(1))).unwrap().id;
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    w0.run_task(
        TaskAssignment {
            task: TaskId(1),
            kernel: "add".into(),
            params: Arc::from([]),
            processor: ProcessorKind::Cpu,
            inputs: vec![
                InputSpec {
                    chunk: local,
                    owner: WorkerId(0),
                    access: Access::ReadWrite,
                },
                InputSpec {
                    chunk: remote,
                    owner: WorkerId(1),
                    access: Access::Read,
                },
            ],
        },
        ReportSink::from_fn(move |r| {
            let _ = tx.lock().unwrap().send(r);
        }),
    );
    let report = rx.recv_timeout(Duration::from_secs(10)).expect("a report");
    (report, local)
}

#[test]
fn a_remote_input_fetched_ahead_reaches_the_kernel() {
    let (w0, peer, remote) = pair(Some(false));
    let (report, local) = add(&w0, remote);
    report.result.unwrap();
    assert_eq!(peer.unwrap().started.load(Ordering::SeqCst), 1);
    assert_eq!(value_of(&w0.fetch_chunk(local).unwrap()), 6);
    assert_eq!(report.transfers.len(), 1);
}

/// A local chunk taken out of the store to be written goes back when another input cannot be
/// fetched, whether the fetch started ahead or when the task ran: a failed task loses no data.
#[test]
fn a_failed_fetch_puts_back_the_chunk_the_task_would_have_written() {
    for peer in [None, Some(true)] {
        let (w0, _peer, remote) = pair(peer);
        let (report, local) = add(&w0, remote);
        assert!(report.result.is_err(), "{peer:?}: the fetch should fail");
        let kept = w0
            .fetch_chunk(local)
            .unwrap_or_else(|e| panic!("{peer:?}: the written chunk is gone: {e}"));
        assert_eq!(value_of(&kept), 1);
        assert!(report.transfers.is_empty());
    }
}
