//! Processors: what runs a task's kernel on a worker (Dagger's `ThreadProc`, `CuArrayDeviceProc`).

use crate::scope::ProcessorKind;
use crossbeam_channel::{unbounded, Sender};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A unit of work a worker hands to a processor: fetch inputs, run the kernel, report.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Something that runs jobs of one processor kind on one worker.
pub trait Processor: Send + Sync {
    /// The kind, as scopes name it.
    fn kind(&self) -> ProcessorKind;
    /// How many jobs it runs at once; the scheduler keeps about this many in flight.
    fn slots(&self) -> usize;
    /// Runs `job` on one of its threads (or streams). Returns at once.
    fn run(&self, job: Job);
    /// How many jobs it has started since it was made.
    fn jobs_run(&self) -> u64;
}

/// Shared processor handle.
pub type ProcessorRef = Arc<dyn Processor>;

/// The stack of each processor thread. Kernels decode and run plans by recursion over their
/// nodes (a 64-table join is hundreds of nodes deep); the memory is only reserved, and pages are
/// touched as the stack grows.
pub const PROCESSOR_STACK: usize = 64 << 20;

/// A fixed pool of OS threads that runs jobs in arrival order.
struct ThreadPool {
    sender: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    jobs_run: Arc<AtomicU64>,
}

impl ThreadPool {
    fn new(threads: usize, name: &str) -> Self {
        let (sender, receiver) = unbounded::<Job>();
        let jobs_run = Arc::new(AtomicU64::new(0));
        let threads = (0..threads.max(1))
            .map(|i| {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .stack_size(PROCESSOR_STACK)
                    .spawn(move || {
                        while let Ok(job) = crate::wait::recv(&receiver) {
                            job();
                        }
                    })
                    .expect("spawn processor thread")
            })
            .collect();
        ThreadPool {
            sender: Some(sender),
            threads,
            jobs_run,
        }
    }

    fn run(&self, job: Job) {
        self.jobs_run.fetch_add(1, Ordering::Relaxed);
        if let Some(sender) = &self.sender {
            // The receiver lives as long as the pool, so a send can only fail after drop.
            let _ = sender.send(job);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.sender = None;
        for t in self.threads.drain(..) {
            // A thread that is the current one (a job dropping its own worker) cannot join itself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// The CPU processor: a pool of OS threads.
pub struct CpuProcessor {
    pool: ThreadPool,
    slots: usize,
}

impl CpuProcessor {
    /// A CPU processor with `threads` threads.
    pub fn new(threads: usize, name: &str) -> Self {
        CpuProcessor {
            pool: ThreadPool::new(threads, name),
            slots: threads.max(1),
        }
    }
}

impl Processor for CpuProcessor {
    fn kind(&self) -> ProcessorKind {
        ProcessorKind::Cpu
    }
    fn slots(&self) -> usize {
        self.slots
    }
    fn run(&self, job: Job) {
        self.pool.run(job)
    }
    fn jobs_run(&self) -> u64 {
        self.pool.jobs_run.load(Ordering::Relaxed)
    }
}

/// A fake processor kind for placement tests (Dagger's `FakeProc`): it runs kernels on one CPU
/// thread but scopes see it as `ProcessorKind::Fake(n)`, and it counts what it ran.
pub struct FakeProcessor {
    pool: ThreadPool,
    id: u32,
}

impl FakeProcessor {
    /// Fake processor number `id`.
    pub fn new(id: u32) -> Self {
        FakeProcessor {
            pool: ThreadPool::new(1, &format!("fake{id}")),
            id,
        }
    }
}

impl Processor for FakeProcessor {
    fn kind(&self) -> ProcessorKind {
        ProcessorKind::Fake(self.id)
    }
    fn slots(&self) -> usize {
        1
    }
    fn run(&self, job: Job) {
        self.pool.run(job)
    }
    fn jobs_run(&self) -> u64 {
        self.pool.jobs_run.load(Ordering::Relaxed)
    }
}
