//! Task arguments, options, handles and results.

use crate::chunk::{Chunk, ChunkRef};
use crate::context::Shared;
use crate::error::{EngineError, Result};
use crate::ids::{ChunkId, TaskId};
use crate::scope::Scope;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as PollContext, Poll, Waker};

/// How a task uses an argument (Dagger's `In`, `Out`, `InOut`). The scheduler derives
/// read-after-write, write-after-read and write-after-write edges from these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Reads the chunk.
    Read,
    /// Overwrites the chunk without reading it.
    Write,
    /// Reads and updates the chunk in place.
    ReadWrite,
}

impl Access {
    /// Whether this access changes the chunk.
    pub fn writes(self) -> bool {
        !matches!(self, Access::Read)
    }
}

/// Where an argument's data comes from.
#[derive(Clone)]
pub(crate) enum ArgSource {
    /// An existing chunk.
    Chunk(ChunkId),
    /// Output `index` of another task (which may not have run yet).
    Output {
        task: TaskId,
        index: u32,
        slot: Arc<TaskSlot>,
    },
}

/// One task argument: a chunk, or an output of another task, with an access mode.
#[derive(Clone)]
pub struct Arg {
    pub(crate) source: ArgSource,
    pub(crate) access: Access,
}

impl Arg {
    /// Reads `chunk`.
    pub fn read(chunk: &ChunkRef) -> Self {
        Arg {
            source: ArgSource::Chunk(chunk.id),
            access: Access::Read,
        }
    }

    /// Overwrites `chunk`.
    pub fn write(chunk: &ChunkRef) -> Self {
        Arg {
            source: ArgSource::Chunk(chunk.id),
            access: Access::Write,
        }
    }

    /// Updates `chunk` in place.
    pub fn read_write(chunk: &ChunkRef) -> Self {
        Arg {
            source: ArgSource::Chunk(chunk.id),
            access: Access::ReadWrite,
        }
    }

    /// Reads output `index` of `task`.
    pub fn output(task: &TaskHandle, index: u32) -> Self {
        Arg::output_with(task, index, Access::Read)
    }

    /// Uses output `index` of `task` with the given access.
    pub fn output_with(task: &TaskHandle, index: u32, access: Access) -> Self {
        Arg {
            source: ArgSource::Output {
                task: task.id,
                index,
                slot: task.slot.clone(),
            },
            access,
        }
    }

    /// Uses a chunk by id with the given access.
    pub fn chunk(id: ChunkId, access: Access) -> Self {
        Arg {
            source: ArgSource::Chunk(id),
            access,
        }
    }

    /// The access mode.
    pub fn access(&self) -> Access {
        self.access
    }
}

/// Options of one task.
#[derive(Clone, Default)]
pub struct TaskOptions {
    pub(crate) params: Vec<u8>,
    pub(crate) scope: Scope,
    pub(crate) after: Vec<(TaskId, Arc<TaskSlot>)>,
    pub(crate) label: Option<String>,
    pub(crate) cost_class: Option<u64>,
    pub(crate) once: bool,
}

impl TaskOptions {
    /// No parameters, any scope, no extra ordering.
    pub fn new() -> Self {
        TaskOptions::default()
    }

    /// Raw parameter bytes for the kernel.
    pub fn params(mut self, params: Vec<u8>) -> Self {
        self.params = params;
        self
    }

    /// Parameters encoded as JSON; the kernel reads them with `KernelCall::params_json`.
    pub fn params_json<T: Serialize>(self, params: &T) -> Result<Self> {
        let bytes = serde_json::to_vec(params).map_err(|e| EngineError::Params {
            kernel: String::new(),
            message: e.to_string(),
        })?;
        Ok(self.params(bytes))
    }

    /// Where the task may run. Intersected with the scopes of pinned inputs.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Runs only after `task` has finished (an ordering edge with no data). If `task` fails, so
    /// does this one.
    pub fn after(mut self, task: &TaskHandle) -> Self {
        self.after.push((task.id, task.slot.clone()));
        self
    }

    /// A label shown in traces and graphs instead of the kernel name.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Tasks of one kernel given the same class are expected to take alike per input byte: the
    /// scheduler learns their run time apart from the kernel's other tasks, and estimates a
    /// task by its class once the class has run. For a kernel whose tasks differ widely (one
    /// kernel runs every stage of every query), this is what lets placement tell a task that
    /// reads a few columns of a big chunk from one that reads all of them.
    pub fn cost_class(mut self, class: u64) -> Self {
        self.cost_class = Some(class);
        self
    }

    /// The task has effects beyond its outputs (it writes files): it is sent to a worker at
    /// most once, never retried nor rerun to rebuild what it made.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }
}

/// What a finished task produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutput {
    /// The task.
    pub task: TaskId,
    /// Its output chunks, in the order the kernel returned them. They stay on the worker that
    /// ran the task until fetched, used by another task, or freed.
    pub chunks: Vec<ChunkRef>,
}

#[derive(Default)]
struct SlotState {
    result: Option<Result<TaskOutput>>,
    wakers: Vec<Waker>,
}

/// Where the scheduler puts a task's result and where handles wait for it.
#[derive(Default)]
pub(crate) struct TaskSlot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

impl TaskSlot {
    pub(crate) fn complete(&self, result: Result<TaskOutput>) {
        let wakers = {
            let mut st = self.state.lock();
            if st.result.is_some() {
                return;
            }
            st.result = Some(result);
            std::mem::take(&mut st.wakers)
        };
        self.ready.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    pub(crate) fn get(&self) -> Option<Result<TaskOutput>> {
        self.state.lock().result.clone()
    }

    pub(crate) fn output_chunk(&self, index: u32) -> Option<Result<ChunkId>> {
        let st = self.state.lock();
        let result = st.result.as_ref()?;
        Some(match result {
            Ok(out) => out.chunks.get(index as usize).map(|c| c.id).ok_or_else(|| {
                EngineError::InvalidArgument {
                    task: out.task,
                    detail: format!("it has no output {index}"),
                }
            }),
            Err(e) => Err(e.clone()),
        })
    }

    fn wait(&self) -> Result<TaskOutput> {
        let mut st = self.state.lock();
        loop {
            if let Some(r) = &st.result {
                return r.clone();
            }
            self.ready.wait(&mut st);
        }
    }
}

/// A handle on a spawned task (Dagger's `DTask`).
#[derive(Clone)]
pub struct TaskHandle {
    pub(crate) id: TaskId,
    pub(crate) slot: Arc<TaskSlot>,
    pub(crate) shared: Arc<Shared>,
}

impl TaskHandle {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Blocks until the task has finished; returns its output chunk references or its error.
    pub fn wait(&self) -> Result<TaskOutput> {
        self.slot.wait()
    }

    /// Blocks until the task has finished and brings its output data to the caller.
    pub fn fetch(&self) -> Result<Vec<Chunk>> {
        let out = self.wait()?;
        out.chunks
            .iter()
            .map(|c| self.shared.fetch_chunk(c.id).map(|c| (*c).clone()))
            .collect()
    }

    /// The result, if the task has finished.
    pub fn try_result(&self) -> Option<Result<TaskOutput>> {
        self.slot.get()
    }

    /// Whether the task has finished (successfully or not).
    pub fn is_finished(&self) -> bool {
        self.slot.get().is_some()
    }

    /// Cancels the task and everything that depends on it. A task already running is asked to
    /// stop (`KernelCall::is_cancelled`) and its result is discarded.
    pub fn cancel(&self) {
        self.shared.cancel(self.id);
    }

    /// A future that resolves when the task has finished, for async callers.
    pub fn join(&self) -> TaskJoin {
        TaskJoin {
            slot: self.slot.clone(),
        }
    }
}

/// Future returned by [`TaskHandle::join`].
pub struct TaskJoin {
    slot: Arc<TaskSlot>,
}

impl Future for TaskJoin {
    type Output = Result<TaskOutput>;
    fn poll(self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Self::Output> {
        let mut st = self.slot.state.lock();
        if let Some(r) = &st.result {
            return Poll::Ready(r.clone());
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
