//! The engine's error type.

use crate::ids::{ChunkId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Result alias used throughout the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine. Errors are `Clone` because one failure is reported
/// to every task that depends on it.
#[derive(Debug, Clone, Error, PartialEq, Serialize, Deserialize)]
pub enum EngineError {
    /// A kernel returned an error while running a task.
    #[error("{task} ({kernel}) failed: {message}")]
    KernelFailed {
        /// The task that failed.
        task: TaskId,
        /// The kernel it ran.
        kernel: String,
        /// What the kernel said.
        message: String,
    },
    /// A task could not run because a task it depends on failed first.
    #[error("{task} not run: upstream {failed} failed: {cause}")]
    UpstreamFailed {
        /// The task that was not run.
        task: TaskId,
        /// The task that failed first.
        failed: TaskId,
        /// That task's own error, as text.
        cause: String,
    },
    /// The task (or one it depends on) was cancelled.
    #[error("{task} cancelled")]
    Cancelled {
        /// The cancelled task.
        task: TaskId,
    },
    /// No processor satisfies the task's scope intersected with its pinned inputs' scopes.
    #[error("{task} has an empty scope: {detail}")]
    EmptyScope {
        /// The task.
        task: TaskId,
        /// Which scopes were intersected.
        detail: String,
    },
    /// The kernel name is not registered on the worker.
    #[error("unknown kernel `{name}`")]
    UnknownKernel {
        /// The name asked for.
        name: String,
    },
    /// A chunk is not held where it was expected.
    #[error("{chunk} not found on {worker}")]
    ChunkNotFound {
        /// The chunk.
        chunk: ChunkId,
        /// Where it was looked for.
        worker: WorkerId,
    },
    /// No chunk with this id is known (never made, or freed).
    #[error("unknown {chunk}")]
    UnknownChunk {
        /// The chunk.
        chunk: ChunkId,
    },
    /// A chunk's owner was lost before anyone needed it again.
    #[error("{chunk} was lost with {worker}")]
    ChunkLost {
        /// The chunk.
        chunk: ChunkId,
        /// The worker that held it.
        worker: WorkerId,
    },
    /// A task argument refers to something the scheduler does not know.
    #[error("{task}: invalid argument: {detail}")]
    InvalidArgument {
        /// The task.
        task: TaskId,
        /// What is wrong.
        detail: String,
    },
    /// A worker stopped answering or was removed while it held work.
    #[error("{worker} lost: {reason}")]
    WorkerLost {
        /// The worker.
        worker: WorkerId,
        /// Why it is considered lost.
        reason: String,
    },
    /// A worker id that the context does not know.
    #[error("no such worker: {worker}")]
    NoSuchWorker {
        /// The worker asked for.
        worker: WorkerId,
    },
    /// Kernel parameters could not be encoded or decoded.
    #[error("kernel parameters for `{kernel}`: {message}")]
    Params {
        /// The kernel.
        kernel: String,
        /// The codec's message.
        message: String,
    },
    /// Writing a trace or graph file failed.
    #[error("cannot write {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS message.
        message: String,
    },
    /// A call to another process (a remote worker) failed.
    #[error("{peer}: {message}")]
    Remote {
        /// Who was called: the worker and its address.
        peer: String,
        /// What went wrong.
        message: String,
    },
    /// The context has shut down.
    #[error("the engine has shut down")]
    Shutdown,
}

impl EngineError {
    /// Convenience constructor for kernels: a failure with a message. The scheduler fills in the
    /// task and kernel names.
    pub fn kernel(message: impl Into<String>) -> Self {
        EngineError::KernelFailed {
            task: TaskId(u64::MAX),
            kernel: String::new(),
            message: message.into(),
        }
    }
}
