//! A worker's memory budget: one count of the bytes its resident chunks and its running
//! operators hold, against one limit (Dagger's disk caching, with DataFusion's memory pool as the
//! operators' side). When the two together would pass the limit, the worker's chunk stores write
//! their least recently used chunks to its spill directory; operators ask before they grow and
//! spill themselves (or fail) when the answer is no.

pub use crate::eventlog::SpillIo;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// Something that can free memory by writing chunks to disk: a worker's chunk store.
pub(crate) trait Spill: Send + Sync {
    /// Writes chunks out until about `want` bytes are freed, least recently used first, skipping
    /// `keep`; returns the bytes freed (0 when nothing more can go).
    fn spill(&self, want: usize, keep: Option<crate::ids::ChunkId>) -> usize;
    /// Bytes of resident chunks that something besides the store holds (a running task, a
    /// transfer): writing them out would free nothing.
    fn held(&self) -> usize;
}

/// Shared handle to a worker's budget.
pub type MemoryBudgetRef = Arc<MemoryBudget>;

/// A worker's memory budget; see the module docs.
pub struct MemoryBudget {
    limit: Option<usize>,
    chunks: AtomicUsize,
    operators: AtomicUsize,
    spilled_bytes: AtomicU64,
    reloaded_bytes: AtomicU64,
    spillers: Mutex<Vec<Weak<dyn Spill>>>,
    spill_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit)
            .field("chunks", &self.chunk_bytes())
            .field("operators", &self.operator_bytes())
            .finish_non_exhaustive()
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes (`None`: no limit, nothing spills).
    pub fn new(limit: Option<usize>) -> Self {
        MemoryBudget {
            limit,
            chunks: AtomicUsize::new(0),
            operators: AtomicUsize::new(0),
            spilled_bytes: AtomicU64::new(0),
            reloaded_bytes: AtomicU64::new(0),
            spillers: Mutex::new(Vec::new()),
            spill_error: Mutex::new(None),
        }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Bytes held now by resident chunks and running operators together.
    pub fn used(&self) -> usize {
        self.chunk_bytes() + self.operator_bytes()
    }

    /// Bytes of chunks resident in memory.
    pub fn chunk_bytes(&self) -> usize {
        self.chunks.load(Ordering::Relaxed)
    }

    /// Bytes reserved by running operators.
    pub fn operator_bytes(&self) -> usize {
        self.operators.load(Ordering::Relaxed)
    }

    /// Bytes of chunks written to disk since the worker started.
    pub fn spilled_total(&self) -> u64 {
        self.spilled_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of chunks read back from disk since the worker started.
    pub fn reloaded_total(&self) -> u64 {
        self.reloaded_bytes.load(Ordering::Relaxed)
    }

    /// The last failure to write a spill file, if the latest attempt failed.
    pub fn spill_error(&self) -> Option<String> {
        self.spill_error.lock().clone()
    }

    /// Reserves `bytes` for an operator, spilling chunks first when they would not fit; `false`
    /// (nothing reserved) when even then they do not.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        if !self.make_room(bytes, None) {
            return false;
        }
        self.operators.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    /// Reserves `bytes` for an operator whether or not they fit.
    pub fn reserve(&self, bytes: usize) {
        self.operators.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Returns `bytes` an operator reserved.
    pub fn release(&self, bytes: usize) {
        sub(&self.operators, bytes);
    }

    /// Spills chunks (other than `keep`) until `bytes` more fit under the limit; whether they do.
    /// With 0, brings the worker back under its limit where it can.
    pub fn make_room(&self, bytes: usize, keep: Option<crate::ids::ChunkId>) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        loop {
            let over = (self.used() + bytes).saturating_sub(limit);
            if over == 0 {
                return true;
            }
            let spillers: Vec<Arc<dyn Spill>> = {
                let mut s = self.spillers.lock();
                s.retain(|w| w.strong_count() > 0);
                s.iter().filter_map(Weak::upgrade).collect()
            };
            let mut freed = 0;
            for s in spillers {
                if freed >= over {
                    break;
                }
                freed += s.spill(over - freed, keep);
            }
            if freed == 0 {
                return false;
            }
        }
    }

    /// Bytes of resident chunks that running tasks or transfers hold, so cannot spill now.
    pub fn held_chunk_bytes(&self) -> usize {
        let spillers: Vec<Arc<dyn Spill>> = self
            .spillers
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        spillers.iter().map(|s| s.held()).sum()
    }

    pub(crate) fn add_spiller(&self, spiller: Weak<dyn Spill>) {
        self.spillers.lock().push(spiller);
    }

    pub(crate) fn add_chunk(&self, bytes: usize) {
        self.chunks.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn remove_chunk(&self, bytes: usize) {
        sub(&self.chunks, bytes);
    }

    pub(crate) fn spilled(&self, bytes: u64) {
        count_thread(bytes, 0);
        self.spilled_bytes.fetch_add(bytes, Ordering::Relaxed);
        *self.spill_error.lock() = None;
    }

    pub(crate) fn reloaded(&self, bytes: u64) {
        count_thread(0, bytes);
        self.reloaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn spill_failed(&self, message: String) {
        *self.spill_error.lock() = Some(message);
    }
}

thread_local! {
    /// Chunk bytes this thread wrote to and read back from spill files: a task's kernel, its
    /// inputs' reloads and its outputs' inserts all run on the task's thread, so the difference
    /// across a task is what the task caused.
    static THREAD_SPILL: std::cell::Cell<SpillIo> = const { std::cell::Cell::new(SpillIo { spilled: 0, reloaded: 0, operators: 0 }) };
}

/// What this thread has spilled and reloaded so far.
pub(crate) fn thread_spill() -> SpillIo {
    THREAD_SPILL.with(|c| c.get())
}

fn count_thread(spilled: u64, reloaded: u64) {
    THREAD_SPILL.with(|c| {
        let mut v = c.get();
        v.spilled += spilled;
        v.reloaded += reloaded;
        c.set(v);
    });
}

fn sub(counter: &AtomicUsize, bytes: usize) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(bytes))
    });
}

/// Physical memory of this machine in bytes, where the OS says (Linux `/proc/meminfo`).
pub fn physical_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The default budget of one of `workers` workers sharing this machine: three quarters of its
/// physical memory, split equally (the rest is for the process's own structures, batches in
/// flight between workers, and the OS). `None` where the machine's memory is unknown.
pub fn default_budget(workers: usize) -> Option<usize> {
    physical_memory().map(|m| m / 4 * 3 / workers.max(1))
}
