//! A worker's environment: what every kernel a worker runs shares, built once when the worker
//! starts (Dagger's per-worker state, and DataFusion's `RuntimeEnv` one level up). It holds the
//! worker's memory budget, its spill directory and its settings, and lets the layers above keep
//! one object per worker of their own (a DataFusion runtime with one memory pool and the
//! object-store registry) through [`WorkerEnv::extension`].

use crate::memory::{MemoryBudget, MemoryBudgetRef};
use parking_lot::Mutex;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Shared handle to a worker's environment.
pub type WorkerEnvRef = Arc<WorkerEnv>;

/// A worker's environment; see the module docs.
pub struct WorkerEnv {
    name: String,
    budget: MemoryBudgetRef,
    spill_dir: PathBuf,
    settings: BTreeMap<String, String>,
    extensions: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for WorkerEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerEnv")
            .field("budget", &self.budget)
            .field("spill_dir", &self.spill_dir)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerEnv {
    fn default() -> Self {
        WorkerEnvBuilder::default().build_env()
    }
}

impl WorkerEnv {
    /// A builder with the defaults: no memory limit, spill files under the system's temporary
    /// directory, no settings.
    pub fn builder() -> WorkerEnvBuilder {
        WorkerEnvBuilder::default()
    }

    /// How errors name the worker (`worker 0`, `the worker at 10.0.0.5:7001`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Memory the worker's tasks may use together, in bytes; `None` for no limit.
    pub fn memory_limit(&self) -> Option<usize> {
        self.budget.limit()
    }

    /// The worker's memory budget: its resident chunks and its running operators count against
    /// it together.
    pub fn budget(&self) -> &MemoryBudgetRef {
        &self.budget
    }

    /// Where the worker's tasks write spill files.
    pub fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    /// A setting given to the worker (`key = value`), if any.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// All settings, sorted by key.
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }

    /// The worker's one `T`, made by `make` the first time any kernel asks for it and shared by
    /// every task after. `make` must not ask for another extension.
    pub fn extension<T: Any + Send + Sync>(&self, make: impl FnOnce(&WorkerEnv) -> T) -> Arc<T> {
        let mut extensions = self.extensions.lock();
        let entry = extensions
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(make(self)));
        Arc::clone(entry)
            .downcast::<T>()
            .expect("extensions are keyed by their type")
    }
}

/// Builds a [`WorkerEnv`].
#[derive(Debug, Clone, Default)]
pub struct WorkerEnvBuilder {
    name: Option<String>,
    memory_limit: Option<usize>,
    spill_dir: Option<PathBuf>,
    settings: BTreeMap<String, String>,
}

impl WorkerEnvBuilder {
    /// Memory the worker's tasks may use together, in bytes.
    pub fn memory_limit(mut self, bytes: Option<usize>) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Where spill files go (default: `dirk-spill` under the system's temporary directory).
    pub fn spill_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.spill_dir = dir;
        self
    }

    /// How errors name the worker (default: "the worker").
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A setting kernels may read.
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(key.into(), value.into());
        self
    }

    /// The environment, shared.
    pub fn build(self) -> WorkerEnvRef {
        Arc::new(self.build_env())
    }

    fn build_env(self) -> WorkerEnv {
        WorkerEnv {
            name: self.name.unwrap_or_else(|| "the worker".to_string()),
            budget: Arc::new(MemoryBudget::new(self.memory_limit)),
            spill_dir: self
                .spill_dir
                .unwrap_or_else(|| std::env::temp_dir().join("dirk-spill")),
            settings: self.settings,
            extensions: Mutex::new(HashMap::new()),
        }
    }
}
