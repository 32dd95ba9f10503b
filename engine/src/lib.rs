//! # dirk-engine
//!
//! Dirk's runtime, after Dagger.jl, for Arrow data. A [`Context`] owns a scheduler (one event loop
//! thread) and workers (each a [`ChunkStore`] plus [`Processor`]s). Callers [`Context::spawn`]
//! tasks: a registered [`Kernel`] name, serialized parameters and arguments that name chunks or
//! other tasks' outputs with an [`Access`] mode. From access modes the scheduler derives
//! datadeps edges so results equal serial execution; from [`Scope`]s, chunk owners, learned run
//! times and queued work it places each ready task (see [`placement`]). Every task is recorded in
//! the [`EventLog`], exported as a Chrome trace or a Graphviz graph.
//!
//! This crate knows Arrow record batches and opaque kernels; it knows nothing of SQL.
//!
//! ```
//! use dirk_engine::{Arg, Chunk, Context, FnKernel, TaskOptions};
//! use arrow::array::{Int64Array, RecordBatch};
//! use std::sync::Arc;
//!
//! let ctx = Context::builder().workers(2).build().unwrap();
//! ctx.register_kernel(FnKernel::new("double", |call| {
//!     let col = call.input(0).batches()[0].column(0).clone();
//!     let col = col.as_any().downcast_ref::<Int64Array>().unwrap();
//!     let out: Int64Array = col.iter().map(|v| v.map(|v| v * 2)).collect();
//!     Ok(vec![Chunk::from_batch(RecordBatch::try_from_iter([("x", Arc::new(out) as _)]).unwrap())])
//! }));
//! let input: Int64Array = vec![1, 2, 3].into();
//! let chunk = ctx.put(Chunk::from_batch(
//!     RecordBatch::try_from_iter([("x", Arc::new(input) as _)]).unwrap())).unwrap();
//! let t = ctx.spawn("double", vec![Arg::read(&chunk)], TaskOptions::new());
//! let out = t.fetch().unwrap();
//! assert_eq!(out[0].rows(), 3);
//! ```

pub mod chunk;
pub mod context;
mod cputime;
mod datadeps;
pub mod env;
pub mod error;
pub mod eventlog;
pub mod ids;
pub mod kernel;
pub mod memory;
pub mod panics;
pub mod placement;
pub mod processor;
pub mod scheduler;
pub mod scope;
pub mod store;
pub mod task;
mod wait;
pub mod worker;

pub use chunk::{
    compact_view_columns, split_for_transfer, Chunk, ChunkMeta, ChunkRef, MemorySpace,
};
pub use context::{Context, ContextBuilder, SequentialQueue, TaskCounts};
pub use env::{WorkerEnv, WorkerEnvBuilder, WorkerEnvRef};
pub use error::{EngineError, ErrorKind, Result};
pub use eventlog::{
    EventLog, EventLogSnapshot, SpillIo, StorageRead, TaskRecord, TaskStatus, Transfer,
};
pub use ids::{ChunkId, TaskId, WorkerId};
pub use kernel::{
    Cancellation, FnKernel, Kernel, KernelCall, KernelInput, KernelRef, KernelRegistry,
};
pub use memory::{default_budget, physical_memory, MemoryBudget, MemoryBudgetRef};
pub use processor::{CpuProcessor, FakeProcessor, Processor, ProcessorRef, PROCESSOR_STACK};
pub use scheduler::{ChunkEntry, Lineage, Notice, RetryPolicy, RECOMPUTE_PREFIX};
pub use scope::{ProcessorId, ProcessorKind, Scope};
pub use store::{ChunkPlace, ChunkStore};
pub use task::{Access, Arg, TaskHandle, TaskJoin, TaskOptions, TaskOutput};
pub use worker::{
    InProcessWorker, InputSpec, MemoryStatus, PeerDirectory, PendingChunk, ReportSink,
    TaskAssignment, TaskDone, TaskReport, Worker, WorkerRef, WorkerStatus,
};
