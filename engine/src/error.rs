//! The engine's error type.

use crate::ids::{ChunkId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Result alias used throughout the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Whose failure an error is, which decides whether running the work again can help. Every
/// error says its kind ([`EngineError::kind`]), and the kind travels with it from a worker's
/// kernel to the driver, so the scheduler and the session decide what to retry in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request or its data is at fault (bad SQL, a failing cast, an unknown table, a
    /// cancelled task): running it again gives the same error. Never retried.
    User,
    /// The machine or the network failed (a worker lost, a fetch that failed, a timeout,
    /// resources exhausted for now): the same work may succeed again, elsewhere.
    Retryable,
    /// A broken invariant: a bug in Dirk. Never retried.
    Internal,
}

impl ErrorKind {
    /// True for [`ErrorKind::Retryable`].
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Retryable
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::User => "user error",
            ErrorKind::Retryable => "retryable",
            ErrorKind::Internal => "internal error",
        })
    }
}

/// Everything that can go wrong in the engine. Errors are `Clone` because one failure is reported
/// to every task that depends on it.
#[derive(Debug, Clone, Error, PartialEq, Serialize, Deserialize)]
pub enum EngineError {
    /// What a kernel returns when it fails ([`EngineError::kernel`], [`EngineError::retryable`],
    /// [`EngineError::internal`]); the scheduler turns it into [`EngineError::KernelFailed`],
    /// naming the task, its kernel and its worker.
    #[error("{message}")]
    Failed {
        /// Whose failure it is.
        kind: ErrorKind,
        /// What went wrong.
        message: String,
    },
    /// A kernel returned an error while running a task.
    #[error("{task} ({kernel}) failed: {message}")]
    KernelFailed {
        /// The task that failed.
        task: TaskId,
        /// The kernel it ran.
        kernel: String,
        /// The worker it ran on.
        worker: Option<WorkerId>,
        /// Whose failure it is.
        kind: ErrorKind,
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
        /// The kind of that task's error.
        kind: ErrorKind,
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
    /// A message from another process that does not decode: a peer of another build, or
    /// damage on the way.
    #[error("{peer}: malformed {what}: {message}")]
    Malformed {
        /// Who sent it.
        peer: String,
        /// What the message should have been.
        what: String,
        /// The decoder's message.
        message: String,
    },
    /// The context has shut down.
    #[error("the engine has shut down")]
    Shutdown,
}

impl EngineError {
    /// A kernel's failure on its input, the user's to fix (a value that does not cast, a
    /// missing column): never retried. The scheduler names the task, kernel and worker.
    pub fn kernel(message: impl Into<String>) -> Self {
        EngineError::Failed {
            kind: ErrorKind::User,
            message: message.into(),
        }
    }

    /// A kernel's failure that may not happen again (storage timed out, memory was short).
    pub fn retryable(message: impl Into<String>) -> Self {
        EngineError::Failed {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// A kernel's failure that is a bug (an invariant broke, a panic).
    pub fn internal(message: impl Into<String>) -> Self {
        EngineError::Failed {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }

    /// A kernel's failure of the given kind.
    pub fn failed(kind: ErrorKind, message: impl Into<String>) -> Self {
        EngineError::Failed {
            kind,
            message: message.into(),
        }
    }

    /// Whose failure this is; see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        use EngineError::*;
        match self {
            Failed { kind, .. } | KernelFailed { kind, .. } | UpstreamFailed { kind, .. } => *kind,
            // Lost data and lost or unreachable workers: the work can run again elsewhere, its
            // inputs recomputed.
            ChunkNotFound { .. } | ChunkLost { .. } | WorkerLost { .. } | Remote { .. } => {
                ErrorKind::Retryable
            }
            Cancelled { .. }
            | EmptyScope { .. }
            | UnknownKernel { .. }
            | InvalidArgument { .. }
            | NoSuchWorker { .. }
            | Io { .. }
            | Shutdown => ErrorKind::User,
            UnknownChunk { .. } | Params { .. } | Malformed { .. } => ErrorKind::Internal,
        }
    }

    /// Whether the failure is the machine's or the network's rather than the work's: a worker
    /// lost or unreachable, a chunk that was not where it should be. The same task can run
    /// again elsewhere; the scheduler retries such failures ([`crate::RetryPolicy`]). A kernel's
    /// own failures, retryable ones included (memory short for now), are left to the caller,
    /// which knows what to change before running again.
    pub fn is_lost_work(&self) -> bool {
        use EngineError::*;
        matches!(
            self,
            WorkerLost { .. } | Remote { .. } | ChunkNotFound { .. } | ChunkLost { .. }
        )
    }

    /// The task the failure belongs to, where one is known.
    pub fn task(&self) -> Option<TaskId> {
        use EngineError::*;
        match self {
            KernelFailed { task, .. }
            | UpstreamFailed { task, .. }
            | Cancelled { task }
            | EmptyScope { task, .. }
            | InvalidArgument { task, .. } => Some(*task),
            _ => None,
        }
    }

    /// The worker the failure came from, where one is known.
    pub fn worker(&self) -> Option<WorkerId> {
        use EngineError::*;
        match self {
            KernelFailed { worker, .. } => *worker,
            ChunkNotFound { worker, .. } | ChunkLost { worker, .. } | WorkerLost { worker, .. } => {
                Some(*worker)
            }
            _ => None,
        }
    }
}
