//! Kernels: the named functions tasks run. A task names its kernel and carries serialized
//! parameters, so the same task can run on any worker that has the kernel registered.

use crate::chunk::Chunk;
use crate::env::WorkerEnv;
use crate::error::{EngineError, Result};
use crate::eventlog::StorageRead;
use crate::ids::{TaskId, WorkerId};
use crate::scope::ProcessorKind;
use crate::task::Access;
use crate::worker::CancelSet;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// A partition kernel: reads its input chunks (and may update those passed with write access in
/// place) and returns its output chunks.
pub trait Kernel: Send + Sync + 'static {
    /// The name tasks use to call it.
    fn name(&self) -> &str;
    /// Runs one task.
    fn run(&self, call: &mut KernelCall<'_>) -> Result<Vec<Chunk>>;
}

/// Shared kernel handle.
pub type KernelRef = Arc<dyn Kernel>;

/// A kernel made from a function; handy for user kernels and tests.
pub struct FnKernel<F> {
    name: String,
    f: F,
}

impl<F> FnKernel<F>
where
    F: Fn(&mut KernelCall<'_>) -> Result<Vec<Chunk>> + Send + Sync + 'static,
{
    /// A kernel called `name` that runs `f`.
    pub fn new(name: impl Into<String>, f: F) -> Arc<Self> {
        Arc::new(FnKernel {
            name: name.into(),
            f,
        })
    }
}

impl<F> Kernel for FnKernel<F>
where
    F: Fn(&mut KernelCall<'_>) -> Result<Vec<Chunk>> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn run(&self, call: &mut KernelCall<'_>) -> Result<Vec<Chunk>> {
        (self.f)(call)
    }
}

/// The kernel `noop`: does nothing and returns nothing. Used by the scheduler benchmark and for
/// tasks that only order others.
pub struct NoopKernel;

impl Kernel for NoopKernel {
    fn name(&self) -> &str {
        "noop"
    }
    fn run(&self, _call: &mut KernelCall<'_>) -> Result<Vec<Chunk>> {
        Ok(Vec::new())
    }
}

/// The built-in kernel that copies its one input to its one output: the scheduler's private
/// copy of a chunk it rebuilds another from.
pub const COPY_KERNEL: &str = "dirk.copy";

struct CopyKernel;

impl Kernel for CopyKernel {
    fn name(&self) -> &str {
        COPY_KERNEL
    }
    fn run(&self, call: &mut KernelCall<'_>) -> Result<Vec<Chunk>> {
        let input = call.input(0);
        Ok(vec![Chunk::new(
            input.schema().clone(),
            input.batches().to_vec(),
        )])
    }
}

/// Kernels by name. Each worker looks kernels up here; in-process workers share one registry.
#[derive(Default)]
pub struct KernelRegistry {
    /// Every task looks its kernel up; names are the engine's and its users', not an
    /// adversary's, so the ids' cheap hasher serves.
    kernels: RwLock<HashMap<String, KernelRef, crate::ids::IdBuildHasher>>,
}

impl KernelRegistry {
    /// A registry holding the built-in kernels.
    pub fn with_builtins() -> Self {
        let r = KernelRegistry::default();
        r.register(Arc::new(NoopKernel));
        r.register(Arc::new(CopyKernel));
        r
    }

    /// Adds (or replaces) a kernel.
    pub fn register(&self, kernel: KernelRef) {
        self.kernels
            .write()
            .insert(kernel.name().to_string(), kernel);
    }

    /// Looks a kernel up.
    pub fn get(&self, name: &str) -> Result<KernelRef> {
        self.kernels
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownKernel {
                name: name.to_string(),
            })
    }

    /// Names of the registered kernels, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kernels.read().keys().cloned().collect();
        v.sort();
        v
    }
}

/// One argument as a kernel sees it.
pub struct KernelInput {
    /// How the task declared it.
    pub access: Access,
    /// The data. With `Write`/`ReadWrite` access the kernel may replace it or, when it holds the
    /// only reference, mutate its buffers in place (`Arc::get_mut`).
    pub chunk: Arc<Chunk>,
}

/// Everything a kernel gets for one task.
pub struct KernelCall<'a> {
    /// The task.
    pub task: TaskId,
    /// The worker running it.
    pub worker: WorkerId,
    /// The processor kind running it.
    pub processor: ProcessorKind,
    params: &'a [u8],
    inputs: Vec<KernelInput>,
    cancels: &'a Arc<CancelSet>,
    env: &'a WorkerEnv,
    storage: StorageRead,
    operator_spill: u64,
}

/// Whether one task has been cancelled: see [`KernelCall::cancellation`].
#[derive(Clone)]
pub struct Cancellation {
    cancels: Arc<CancelSet>,
    task: TaskId,
}

impl Cancellation {
    /// True once the task has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancels.is_cancelled(self.task)
    }
}

impl std::fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cancellation({:?})", self.task)
    }
}

impl<'a> KernelCall<'a> {
    /// Assembles a call (workers do this).
    pub(crate) fn new(
        task: TaskId,
        worker: WorkerId,
        processor: ProcessorKind,
        params: &'a [u8],
        inputs: Vec<KernelInput>,
        cancels: &'a Arc<CancelSet>,
        env: &'a WorkerEnv,
    ) -> Self {
        KernelCall {
            task,
            worker,
            processor,
            params,
            inputs,
            cancels,
            env,
            storage: StorageRead::default(),
            operator_spill: 0,
        }
    }

    /// The environment of the worker running the task: its memory budget, spill directory,
    /// settings and per-worker extensions.
    pub fn env(&self) -> &WorkerEnv {
        self.env
    }

    /// The raw parameter bytes.
    pub fn params(&self) -> &[u8] {
        self.params
    }

    /// Decodes parameters written with [`crate::TaskOptions::params_json`].
    pub fn params_json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(self.params).map_err(|e| EngineError::Params {
            kernel: String::new(),
            message: e.to_string(),
        })
    }

    /// Number of inputs.
    pub fn num_inputs(&self) -> usize {
        self.inputs.len()
    }

    /// Input `i`, read-only.
    pub fn input(&self, i: usize) -> &Chunk {
        &self.inputs[i].chunk
    }

    /// All inputs.
    pub fn inputs(&self) -> &[KernelInput] {
        &self.inputs
    }

    /// Input `i` for writing; an error unless the task declared `Write` or `ReadWrite` on it.
    pub fn input_mut(&mut self, i: usize) -> Result<&mut Arc<Chunk>> {
        let input = self
            .inputs
            .get_mut(i)
            .ok_or_else(|| EngineError::kernel(format!("no input {i}")))?;
        if input.access == Access::Read {
            return Err(EngineError::kernel(format!(
                "input {i} was declared read-only"
            )));
        }
        Ok(&mut input.chunk)
    }

    /// A handle that answers [`is_cancelled`](Self::is_cancelled) for this task and may be
    /// kept beyond the call's borrow (by the streams of a plan the kernel runs, say).
    pub fn cancellation(&self) -> Cancellation {
        Cancellation {
            cancels: Arc::clone(self.cancels),
            task: self.task,
        }
    }

    /// True once the task has been cancelled; long kernels should check it and stop early.
    pub fn is_cancelled(&self) -> bool {
        self.cancels.is_cancelled(self.task)
    }

    /// Counts what the kernel read from storage outside the engine (files, object stores): the
    /// task's record, and `EXPLAIN ANALYZE`, show it.
    pub fn add_storage_read(&mut self, read: StorageRead) {
        self.storage += read;
    }

    /// Counts bytes the kernel's own operators wrote to spill files (a sort or an aggregation
    /// past its share of the worker's memory): the task's record shows them with the chunks its
    /// worker spilled.
    pub fn add_operator_spill(&mut self, bytes: u64) {
        self.operator_spill += bytes;
    }

    /// What [`add_operator_spill`](Self::add_operator_spill) counted.
    pub fn operator_spill(&self) -> u64 {
        self.operator_spill
    }

    /// What [`add_storage_read`](Self::add_storage_read) counted.
    pub fn storage_read(&self) -> StorageRead {
        self.storage
    }

    /// Takes the inputs back (workers do this to store written chunks).
    pub fn into_inputs(self) -> Vec<KernelInput> {
        self.inputs
    }
}
