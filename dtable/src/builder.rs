//! Building a session: where its workers are, how its planner is set up, and its catalog
//! installed as the planner's default schema.

use crate::broadcast::BroadcastJoinSelection;
use crate::catalog::Catalog;
use crate::core::{Cluster, SessionCore, PINNED_OFF};
use crate::error::{DirkError, Result};
use crate::executor::Executor;
use crate::kernels::register_kernels;
use crate::session::Session;
use crate::stores::StoreRegistry;
use datafusion::execution::context::SessionContext;
use datafusion::execution::object_store::DefaultObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::prelude::SessionConfig;
use dirk_engine::Context;
use std::sync::Arc;

/// Where a session's workers are: threads of this process, or `dirk worker` processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workers {
    /// This many in-process workers.
    InProcess(usize),
    /// `dirk worker` processes at these `HOST:PORT` addresses.
    Remote(Vec<String>),
}

impl From<usize> for Workers {
    fn from(n: usize) -> Self {
        Workers::InProcess(n.max(1))
    }
}

impl From<Vec<String>> for Workers {
    fn from(addresses: Vec<String>) -> Self {
        Workers::Remote(addresses)
    }
}

impl From<&[&str]> for Workers {
    fn from(addresses: &[&str]) -> Self {
        Workers::Remote(addresses.iter().map(|a| a.to_string()).collect())
    }
}

impl<const N: usize> From<[&str; N]> for Workers {
    fn from(addresses: [&str; N]) -> Self {
        Workers::Remote(addresses.iter().map(|a| a.to_string()).collect())
    }
}

/// Builds a [`Session`].
#[derive(Debug, Clone, Default)]
pub struct SessionBuilder {
    workers: Option<Workers>,
    cluster: dirk_flight::ClientOptions,
    partitions: Option<usize>,
    memory: Option<usize>,
    spill_dir: Option<std::path::PathBuf>,
    result_limit: Option<u64>,
    task_attempts: Option<u32>,
    planner_state: Option<SessionState>,
}

impl SessionBuilder {
    /// The workers: a number of in-process workers (default: one per core), or the addresses of
    /// `dirk worker` processes (`["host1:7070", "host2:7070"]`) to attach to.
    pub fn workers(mut self, workers: impl Into<Workers>) -> Self {
        self.workers = Some(workers.into());
        self
    }

    /// The token remote workers require (`dirk worker --token`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.cluster.token = Some(token.into());
        self
    }

    /// TLS to remote workers: the certificate authority (PEM) that signed their certificates,
    /// and optionally the name to verify them by (default: the host of each address).
    pub fn tls(mut self, ca_pem: Vec<u8>, domain: Option<String>) -> Self {
        self.cluster.tls_ca = Some(ca_pem);
        self.cluster.tls_domain = domain;
        self
    }

    /// All the options for talking to remote workers (token, TLS, timeouts, heartbeat).
    pub fn cluster_options(mut self, options: dirk_flight::ClientOptions) -> Self {
        self.cluster = options;
        self
    }

    /// Partitions per table and per exchange (default: one per task slot of the workers: one
    /// per in-process worker, or each worker process's thread count).
    pub fn partitions(mut self, n: usize) -> Self {
        self.partitions = Some(n.max(1));
        self
    }

    /// Memory the session's in-process workers may use, in bytes, split equally between them:
    /// each worker's resident chunks and running operators share its part. Beyond it the least
    /// recently used chunks spill to disk (read back when a task needs them) and sorts and
    /// aggregations spill their state; what cannot spill fails with "Resources exhausted". A
    /// task also holds at most an equal share of it per task slot. Default: three quarters of
    /// the machine's memory. A worker process's budget is its own (`dirk worker
    /// --memory-limit`).
    pub fn memory(mut self, bytes: usize) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// The most bytes of Arrow memory [`DataFrame::collect`](crate::DataFrame::collect) brings
    /// into this process; a larger result fails with a clear error instead (stream it with
    /// `execute_stream`, or write it with `COPY`/`write_parquet`). Default: a quarter of the
    /// machine's memory.
    pub fn result_limit(mut self, bytes: u64) -> Self {
        self.result_limit = Some(bytes);
        self
    }

    /// How many times a task is sent to a worker before its query fails, when its worker is
    /// lost or one of its inputs cannot be fetched (default 4; 1 never retries). A task that
    /// fails on its data (a bad cast, a missing file) is never retried.
    pub fn task_attempts(mut self, n: u32) -> Self {
        self.task_attempts = Some(n.max(1));
        self
    }

    /// Where in-process workers write spill files (default: `dirk-spill` under the system's
    /// temporary directory).
    pub fn spill_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.spill_dir = Some(dir.into());
        self
    }

    /// Plans with `state`'s catalog, functions and settings instead of DataFusion's defaults
    /// (Dirk still sets the partition count and keeps the options it needs). Tables already in
    /// that catalog are DataFusion providers: a query reads them in its tasks.
    pub fn planner_state(mut self, state: SessionState) -> Self {
        self.planner_state = Some(state);
        self
    }

    /// The engine's settings that apply wherever its workers are.
    fn engine(&self) -> dirk_engine::ContextBuilder {
        let mut b = Context::builder();
        if let Some(attempts) = self.task_attempts {
            b = b.retry(dirk_engine::RetryPolicy {
                attempts,
                ..Default::default()
            });
        }
        b
    }

    fn in_process(&self) -> dirk_engine::ContextBuilder {
        let mut b = self.engine().memory_limit(self.memory);
        if let Some(dir) = &self.spill_dir {
            b = b.spill_dir(dir);
        }
        b
    }

    /// Starts the engine and an empty catalog.
    pub fn build(self) -> Result<Session> {
        let mut cluster = None;
        let engine = match &self.workers {
            Some(Workers::Remote(addresses)) => {
                if addresses.is_empty() {
                    return Err(DirkError::Unsupported {
                        what: "a cluster with no worker addresses".into(),
                    });
                }
                let remote = dirk_flight::connect_cluster_blocking(addresses, &self.cluster)?;
                // Worker processes can be lost: what the driver puts into them is kept twice.
                let engine = self.engine().workers(0).replicate_puts(true).build()?;
                for w in &remote {
                    engine.add_worker(w.clone())?;
                }
                cluster = Some(Cluster {
                    options: self.cluster.clone(),
                    workers: tokio::sync::Mutex::new(remote),
                });
                engine
            }
            Some(Workers::InProcess(n)) => self.in_process().workers(*n).build()?,
            None => self.in_process().build()?,
        };
        register_kernels(&engine.kernels());
        let slots = engine.cpu_slots().max(1);
        let partitions = self.partitions.unwrap_or(slots);
        let task_memory = self.memory.map(|m| (m / slots).max(1 << 20));
        let base = match &self.planner_state {
            Some(state) => state.config().clone(),
            None => SessionConfig::new(),
        };
        let mut config = base
            .with_target_partitions(partitions)
            .with_information_schema(true);
        // DataFusion 55 can run uncorrelated scalar subqueries in a `ScalarSubqueryExec` whose
        // results reach expressions deep in its input through shared memory; a fragment cut out
        // below it could not see them. Planned as joins instead, they distribute like any join.
        //
        // Dynamic filters are shared in memory between the partitions of one plan instance
        // (a partitioned hash join even waits at a barrier for every partition's build side).
        // Dirk runs partitions as separate tasks with separate plan instances: a barrier would
        // never fill. Off until Dirk ships filters between tasks itself.
        for key in PINNED_OFF {
            config.options_mut().set(key, "false")?;
        }
        // An external table is listed afresh by each query that reads it: a cached listing
        // would hide files added since (by another program, or by an `INSERT`). Remote stores are
        // made on first use (see `stores`), over the stores registered explicitly.
        let registered = match &self.planner_state {
            Some(state) => Arc::clone(&state.runtime_env().object_store_registry),
            None => Arc::new(DefaultObjectStoreRegistry::new()),
        };
        let stores = Arc::new(StoreRegistry::over(registered));
        let runtime = |mut env: RuntimeEnvBuilder| {
            env.cache_manager.list_files_cache = None;
            env.cache_manager.list_files_cache_limit = 0;
            env.with_object_store_registry(Arc::clone(&stores) as _)
                .build_arc()
        };
        let mut state = match self.planner_state {
            // The state has its default catalog already; making a new one would replace it,
            // and the tables in it with it.
            Some(state) => SessionStateBuilder::new_from_existing(state.clone())
                .with_config(config.with_create_default_catalog_and_schema(false))
                .with_runtime_env(runtime(RuntimeEnvBuilder::from_runtime_env(
                    state.runtime_env(),
                ))?),
            None => SessionStateBuilder::new()
                .with_config(config)
                .with_runtime_env(runtime(RuntimeEnvBuilder::new())?)
                .with_default_features(),
        };
        // DataFusion's rules (or the given state's), with Dirk's join selection among them.
        let rules = state.physical_optimizers().take().unwrap_or_default().rules;
        let planner = SessionContext::new_with_state(
            state
                .with_physical_optimizer_rules(BroadcastJoinSelection::insert_into(rules))
                .build(),
        );
        let engine = Arc::new(engine);
        let chunk_stats = Arc::new(crate::prune::ChunkStatistics::new(Arc::clone(&engine)));
        let catalog = Arc::new(Catalog::new(Arc::clone(&engine), Arc::clone(&chunk_stats)));
        catalog.follow(&planner.state())?;
        catalog.read_locations_with(planner.state_weak_ref());
        let executor = Executor::new(
            Arc::clone(&engine),
            Arc::clone(&catalog),
            planner.clone(),
            task_memory,
            Arc::clone(&stores),
        );
        Ok(Session::assemble(SessionCore {
            engine,
            planner,
            catalog,
            executor,
            partitions,
            mutation_lock: tokio::sync::Mutex::new(()),
            chunk_stats,
            cluster,
            result_limit: self.result_limit.unwrap_or_else(|| {
                dirk_engine::physical_memory().map_or(u64::MAX, |m| m as u64 / 4)
            }),
        }))
    }
}
