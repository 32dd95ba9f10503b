//! The event log: one record per task and per chunk move, exported as a Chrome trace (a Gantt
//! chart in Perfetto) and as a Graphviz DOT task graph.

use crate::ids::{ChunkId, TaskId, WorkerId};
use crate::scope::ProcessorKind;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the clock every record uses, so records from several
/// processes share one timeline.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// It ran and succeeded.
    Ok,
    /// It failed, or was not run because an upstream task failed.
    Failed(String),
    /// It was cancelled.
    Cancelled,
    /// This attempt failed with the machine or the network (the message), and the task ran
    /// again: the record of a later attempt follows.
    Retried(String),
}

/// One finished task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task.
    pub task: TaskId,
    /// Its kernel, or its label.
    pub name: std::sync::Arc<str>,
    /// Where it ran (none if it never ran).
    pub worker: Option<WorkerId>,
    /// On which processor kind.
    pub processor: Option<ProcessorKind>,
    /// When it was submitted.
    pub queued_us: u64,
    /// When the scheduler sent it to its worker (0 if it never was).
    pub dispatched_us: u64,
    /// When it started (0 if it never ran).
    pub started_us: u64,
    /// When it finished.
    pub finished_us: u64,
    /// When the scheduler learned that it finished (after `finished_us` by the time its report
    /// took to arrive; 0 if it never ran).
    pub reported_us: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Rows produced.
    pub rows_out: u64,
    /// Bytes produced.
    pub bytes_out: u64,
    /// Bytes moved from other workers to run it.
    pub bytes_moved: u64,
    /// Microseconds it waited on its processor for those bytes to arrive.
    pub fetch_wait_us: u64,
    /// CPU time its thread spent on it, in µs.
    pub cpu_us: u64,
    /// What it read from storage outside the engine (files, object stores).
    pub storage: StorageRead,
    /// Chunk bytes its worker spilled to disk and read back for it.
    pub spill: SpillIo,
    /// Tasks it waited for.
    pub deps: Vec<TaskId>,
    /// How it ended.
    pub status: TaskStatus,
}

/// Bytes and requests a task read from storage outside the engine (files, object stores), as
/// its kernel counted them: the engine itself reads none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRead {
    /// Bytes received.
    pub bytes: u64,
    /// Requests made (reads, heads, listings).
    pub requests: u64,
}

impl std::ops::AddAssign for StorageRead {
    fn add_assign(&mut self, other: StorageRead) {
        self.bytes += other.bytes;
        self.requests += other.requests;
    }
}

/// Chunk bytes a task made its worker write to spill files (to make room for its outputs or
/// its operators) and read back from them (its inputs), and bytes its operators spilled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpillIo {
    /// Bytes of chunks written out.
    pub spilled: u64,
    /// Bytes of chunks read back.
    pub reloaded: u64,
    /// Bytes the task's own operators wrote to spill files.
    #[serde(default)]
    pub operators: u64,
}

impl std::ops::AddAssign for SpillIo {
    fn add_assign(&mut self, other: SpillIo) {
        self.spilled += other.spilled;
        self.reloaded += other.reloaded;
        self.operators += other.operators;
    }
}

impl SpillIo {
    /// What happened between `before` and `self`.
    pub fn since(self, before: SpillIo) -> SpillIo {
        SpillIo {
            spilled: self.spilled.saturating_sub(before.spilled),
            reloaded: self.reloaded.saturating_sub(before.reloaded),
            operators: self.operators.saturating_sub(before.operators),
        }
    }
}

/// One chunk moved between workers (or to the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The chunk.
    pub chunk: ChunkId,
    /// Where it was.
    pub from: WorkerId,
    /// Where it went ([`WorkerId::DRIVER`] for the caller).
    pub to: WorkerId,
    /// Its size.
    pub bytes: u64,
}

impl WorkerId {
    /// The driver (the program holding the context), as the destination of fetched data.
    pub const DRIVER: WorkerId = WorkerId(u32::MAX);
}

#[derive(Debug, Default)]
struct LogInner {
    records: VecDeque<TaskRecord>,
    transfers: VecDeque<Transfer>,
    dropped_records: u64,
    totals: BTreeMap<(WorkerId, WorkerId), (u64, u64)>,
}

/// The shared log. Keeps the most recent `capacity` task records and transfers; totals of bytes
/// moved are kept for all time.
#[derive(Debug)]
pub struct EventLog {
    capacity: usize,
    inner: Mutex<LogInner>,
}

impl EventLog {
    /// A log keeping at most `capacity` task records (0 disables per-task records).
    pub fn new(capacity: usize) -> Self {
        EventLog {
            capacity,
            inner: Mutex::new(LogInner::default()),
        }
    }

    /// Whether per-task records are kept.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(crate) fn task(&self, record: TaskRecord) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.records.len() == self.capacity {
            inner.records.pop_front();
            inner.dropped_records += 1;
        }
        inner.records.push_back(record);
    }

    pub(crate) fn transfer(&self, t: Transfer) {
        let mut inner = self.inner.lock();
        let e = inner.totals.entry((t.from, t.to)).or_default();
        e.0 += t.bytes;
        e.1 += 1;
        if self.capacity > 0 {
            if inner.transfers.len() == self.capacity {
                inner.transfers.pop_front();
            }
            inner.transfers.push_back(t);
        }
    }

    /// A copy of what the log holds now.
    pub fn snapshot(&self) -> EventLogSnapshot {
        let inner = self.inner.lock();
        EventLogSnapshot {
            records: inner.records.iter().cloned().collect(),
            transfers: inner.transfers.iter().copied().collect(),
            dropped_records: inner.dropped_records,
            moved: inner
                .totals
                .iter()
                .map(|(&(from, to), &(bytes, count))| MoveTotal {
                    from,
                    to,
                    bytes,
                    count,
                })
                .collect(),
        }
    }

    /// Forgets all records and totals.
    pub fn clear(&self) {
        *self.inner.lock() = LogInner::default();
    }
}

/// Bytes moved from one worker to another, in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveTotal {
    /// Source.
    pub from: WorkerId,
    /// Destination.
    pub to: WorkerId,
    /// Bytes.
    pub bytes: u64,
    /// Chunks.
    pub count: u64,
}

/// A copy of the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventLogSnapshot {
    /// Task records, oldest first.
    pub records: Vec<TaskRecord>,
    /// Transfers, oldest first.
    pub transfers: Vec<Transfer>,
    /// Records dropped because the log was full.
    pub dropped_records: u64,
    /// Bytes moved per (from, to), for all time.
    pub moved: Vec<MoveTotal>,
}

impl EventLogSnapshot {
    /// Total bytes moved between workers (not counting fetches by the driver).
    pub fn bytes_moved_between_workers(&self) -> u64 {
        self.moved
            .iter()
            .filter(|m| m.to != WorkerId::DRIVER)
            .map(|m| m.bytes)
            .sum()
    }

    /// The task records as Chrome trace JSON: one process per worker, one thread per
    /// processor, one complete event per task. Opens in Perfetto or `chrome://tracing`.
    pub fn chrome_trace(&self) -> String {
        let mut events = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.records {
            let (Some(worker), Some(proc)) = (r.worker, r.processor) else {
                continue;
            };
            let pid = worker.0;
            let tid = processor_tid(proc);
            if seen.insert((pid, tid)) {
                events.push(
                    serde_json::json!({"ph": "M", "name": "process_name", "pid": pid,
                    "args": {"name": format!("worker {pid}")}}),
                );
                events.push(
                    serde_json::json!({"ph": "M", "name": "thread_name", "pid": pid,
                    "tid": tid, "args": {"name": proc.to_string()}}),
                );
            }
            let status = match &r.status {
                TaskStatus::Ok => "ok".to_string(),
                TaskStatus::Failed(m) => format!("failed: {m}"),
                TaskStatus::Cancelled => "cancelled".to_string(),
                TaskStatus::Retried(m) => format!("retried: {m}"),
            };
            events.push(serde_json::json!({
                "ph": "X", "name": r.name, "cat": "task", "pid": pid, "tid": tid,
                "ts": r.started_us, "dur": r.finished_us.saturating_sub(r.started_us).max(1),
                "args": {"task": r.task.0, "queued_us": r.started_us.saturating_sub(r.queued_us),
                    "dispatch_to_start_us": r.started_us.saturating_sub(r.dispatched_us),
                    "finish_to_report_us": r.reported_us.saturating_sub(r.finished_us),
                    "rows_in": r.rows_in, "bytes_in": r.bytes_in, "rows_out": r.rows_out,
                    "bytes_out": r.bytes_out, "bytes_moved": r.bytes_moved,
                    "fetch_wait_us": r.fetch_wait_us, "cpu_us": r.cpu_us,
                    "storage_bytes": r.storage.bytes, "storage_requests": r.storage.requests,
                    "spilled_bytes": r.spill.spilled, "reloaded_bytes": r.spill.reloaded,
                    "operator_spill_bytes": r.spill.operators,
                    "status": status}
            }));
        }
        serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"}).to_string()
    }

    /// The task graph as Graphviz DOT: a node per task (coloured by worker), an edge per
    /// dependency.
    pub fn graphviz(&self) -> String {
        const COLORS: [&str; 8] = [
            "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
        ];
        let mut out =
            String::from("digraph tasks {\n  rankdir=LR;\n  node [shape=box, style=filled];\n");
        for r in &self.records {
            let color = r
                .worker
                .map(|w| COLORS[w.0 as usize % COLORS.len()])
                .unwrap_or("#dddddd");
            let shape = match r.status {
                TaskStatus::Ok => "box",
                _ => "octagon",
            };
            let where_ = r
                .worker
                .map(|w| format!("w{}", w.0))
                .unwrap_or_else(|| "not run".into());
            let _ = writeln!(
                out,
                "  t{} [label=\"{} #{}\\n{} {}us\", fillcolor=\"{}\", shape={}];",
                r.task.0,
                r.name.replace('"', "'"),
                r.task.0,
                where_,
                r.finished_us.saturating_sub(r.started_us),
                color,
                shape
            );
            for d in &r.deps {
                let _ = writeln!(out, "  t{} -> t{};", d.0, r.task.0);
            }
        }
        out.push_str("}\n");
        out
    }

    /// A few lines summarising the log: tasks per worker, busy time, bytes moved.
    pub fn summary(&self) -> String {
        let mut per_worker: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        let mut failed = 0;
        for r in &self.records {
            if r.status != TaskStatus::Ok {
                failed += 1;
            }
            let key = match (r.worker, r.processor) {
                (Some(w), Some(p)) => format!("worker {} {}", w.0, p),
                _ => "not run".to_string(),
            };
            let e = per_worker.entry(key).or_default();
            e.0 += 1;
            e.1 += r.finished_us.saturating_sub(r.started_us);
            e.2 += r.rows_out;
        }
        let span = match (
            self.records.iter().map(|r| r.queued_us).min(),
            self.records.iter().map(|r| r.finished_us).max(),
        ) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        let mut s = format!(
            "{} tasks ({} failed or cancelled) over {:.3} ms\n",
            self.records.len(),
            failed,
            span as f64 / 1000.0
        );
        for (k, (n, busy, rows)) in per_worker {
            let _ = writeln!(
                s,
                "  {k}: {n} tasks, busy {:.3} ms, {rows} rows out",
                busy as f64 / 1000.0
            );
        }
        for m in &self.moved {
            let to = if m.to == WorkerId::DRIVER {
                "driver".to_string()
            } else {
                format!("worker {}", m.to.0)
            };
            let _ = writeln!(
                s,
                "  moved worker {} -> {to}: {} chunks, {} bytes",
                m.from.0, m.count, m.bytes
            );
        }
        s
    }
}

fn processor_tid(p: ProcessorKind) -> u32 {
    match p {
        ProcessorKind::Cpu => 0,
        ProcessorKind::Gpu(n) => 1000 + n,
        ProcessorKind::Fake(n) => 2000 + n,
    }
}
