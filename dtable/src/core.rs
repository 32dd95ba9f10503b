//! What every handle of a session shares: the engine, the planner, the catalog, the executor
//! and the statistics of table chunks. The modules that act on a session (the statement router,
//! DML lowering, the TPC-H loader) take a `&SessionCore`; [`crate::Session`] is the public
//! front over it.

use crate::catalog::Catalog;
use crate::error::{DirkError, Result};
use crate::executor::Executor;
use crate::prune::ChunkStatistics;
use crate::table::DTable;
use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use datafusion::execution::context::SessionContext;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use dirk_engine::{Chunk, ChunkRef, Context, Notice, Worker, WorkerId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Planner options Dirk keeps off: each assumes the partitions of a plan share memory in one
/// process (see `SessionBuilder::build`). `SET` cannot turn them on.
pub(crate) const PINNED_OFF: [&str; 6] = [
    "datafusion.execution.enable_file_stream_work_stealing",
    "datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery",
    "datafusion.optimizer.enable_dynamic_filter_pushdown",
    "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
    "datafusion.optimizer.enable_topk_dynamic_filter_pushdown",
    "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown",
];

pub(crate) struct SessionCore {
    pub(crate) engine: Arc<Context>,
    pub(crate) planner: SessionContext,
    /// The tables; the planner's default schema.
    pub(crate) catalog: Arc<Catalog>,
    /// Runs plans as stages of tasks.
    pub(crate) executor: Executor,
    /// Partitions per table and per exchange.
    pub(crate) partitions: usize,
    /// Held by every statement that changes the catalog or a table's data, so they run one at
    /// a time (see `dml/`).
    pub(crate) mutation_lock: tokio::sync::Mutex<()>,
    /// Min/max statistics of table chunks, for pruning `UPDATE` and `DELETE` and for the
    /// planner (see `prune.rs`).
    pub(crate) chunk_stats: Arc<ChunkStatistics>,
    /// The worker processes of a session on a cluster; `None` when it is embedded.
    pub(crate) cluster: Option<Cluster>,
    /// The most bytes `collect()` brings to the caller.
    pub(crate) result_limit: u64,
}

/// A session's worker processes (lost ones too: their ids are never given again) and how to
/// reach more.
pub(crate) struct Cluster {
    pub(crate) options: dirk_flight::ClientOptions,
    pub(crate) workers: tokio::sync::Mutex<Vec<Arc<dirk_flight::RemoteWorker>>>,
}

/// How long a lost worker process is watched for, and how often: one that answers again (it
/// hung, or the network was cut) joins again as a new worker, with nothing of its old
/// attachment (the process drops that after a minute without the driver's heartbeat).
const REJOIN_WINDOW: Duration = Duration::from_secs(600);
const REJOIN_POLL: Duration = Duration::from_secs(2);

/// Watches the worker processes of `core`'s cluster while the session lives (see
/// [`REJOIN_WINDOW`]).
pub(crate) fn watch_lost_workers(core: &Arc<SessionCore>) {
    if core.cluster.is_none() {
        return;
    }
    let weak = Arc::downgrade(core);
    let watch = move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let mut lost_since: HashMap<String, Instant> = HashMap::new();
        loop {
            std::thread::sleep(REJOIN_POLL);
            let Some(core) = weak.upgrade() else {
                return;
            };
            let Some(cluster) = &core.cluster else {
                return;
            };
            let live = core.engine.workers();
            let (gone, here): (Vec<_>, Vec<_>) = rt
                .block_on(cluster.workers.lock())
                .iter()
                .map(|w| (w.id(), w.address().to_string()))
                .partition(|(id, _)| !live.contains(id));
            for (was, address) in gone {
                let since = *lost_since
                    .entry(address.clone())
                    .or_insert_with(Instant::now);
                if here.iter().any(|(_, a)| *a == address) || since.elapsed() > REJOIN_WINDOW {
                    continue;
                }
                if let Ok(worker) = rt.block_on(core.add_worker(&address)) {
                    lost_since.remove(&address);
                    core.engine.post_notice(Notice::Rejoined {
                        worker,
                        was,
                        address,
                    });
                }
            }
        }
    };
    let _ = std::thread::Builder::new()
        .name("dirk-rejoin".into())
        .spawn(watch);
}

impl SessionCore {
    pub(crate) fn engine(&self) -> &Context {
        &self.engine
    }

    /// Adds the `dirk worker` at `address`: the live workers and it learn of each other, and the
    /// scheduler may place work there from now on. Its id follows every id given before.
    pub(crate) async fn add_worker(&self, address: &str) -> Result<WorkerId> {
        let Some(cluster) = &self.cluster else {
            return Err(DirkError::Unsupported {
                what: "adding a worker process to an embedded session (start the session on \
                       worker processes to add more)"
                    .into(),
            });
        };
        let mut workers = cluster.workers.lock().await;
        let id = WorkerId(workers.iter().map(|w| w.id().0 + 1).max().unwrap_or(0));
        let live = self.engine.workers();
        let peers: Vec<_> = workers
            .iter()
            .filter(|w| live.contains(&w.id()))
            .cloned()
            .collect();
        let joined = dirk_flight::join_worker(address, id, &peers, &cluster.options).await?;
        self.engine.add_worker(joined.clone())?;
        workers.push(joined);
        Ok(id)
    }

    pub(crate) fn planner(&self) -> &SessionContext {
        &self.planner
    }

    pub(crate) fn planner_state(&self) -> SessionState {
        self.planner.state()
    }

    pub(crate) fn chunk_stats(&self) -> &ChunkStatistics {
        &self.chunk_stats
    }

    pub(crate) fn mutation_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.mutation_lock
    }

    /// Runs `f` while no query can take its table snapshot and submit its tasks: what `f`
    /// submits is ordered entirely before or entirely after each query's tasks.
    pub(crate) fn with_catalog_locked<T>(&self, f: impl FnOnce() -> T) -> T {
        let _catalog = self.catalog.lock();
        f()
    }

    /// A snapshot of a table.
    pub(crate) fn table(&self, name: &str) -> Result<DTable> {
        self.catalog.get(name)
    }

    /// `batches` split by rows into the session's partition count, spread over the workers.
    pub(crate) fn put_batches(
        &self,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<DTable> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let n = self.partitions;
        let mut partitions = Vec::with_capacity(n);
        for p in 0..n {
            let (start, end) = (rows * p / n, rows * (p + 1) / n);
            // The slices of the input that fall in [start, end), plus an empty batch so that
            // `concat` always copies: each partition owns its buffers, and an in-place update
            // of one partition never finds them shared with another.
            let mut pieces = vec![RecordBatch::new_empty(schema.clone())];
            let mut offset = 0;
            for b in &batches {
                let (lo, hi) = (offset.max(start), (offset + b.num_rows()).min(end));
                if lo < hi {
                    pieces.push(b.slice(lo - offset, hi - lo));
                }
                offset += b.num_rows();
            }
            let part = concat_batches(&schema, &pieces)
                .map_err(datafusion::error::DataFusionError::from)?;
            let chunk = Chunk::new(schema.clone(), vec![part]);
            partitions.push(vec![self.engine.put(chunk)?]);
        }
        Ok(DTable::new(schema, partitions))
    }

    /// Registers `table` as `name`; an existing table of that name is an error unless
    /// `replace`.
    pub(crate) fn register(&self, name: &str, table: DTable, replace: bool) -> Result<()> {
        self.catalog.register_with(name, table, replace, || ())
    }

    /// Registers `table` as `name`, replacing any table of that name.
    pub(crate) fn register_replacing(&self, name: &str, table: DTable) -> Result<()> {
        self.register(name, table, true)
    }

    /// Replaces table `name`, running `alongside` under the catalog's lock (no query sees the
    /// new table without what `alongside` submits, or the other way round), and returns the old
    /// version with its chunks held: the change is kept with
    /// [`release_replaced`](Self::release_replaced), or undone with
    /// [`register_replacing`](Self::register_replacing) of the old version.
    pub(crate) fn replace_holding<T>(
        &self,
        name: &str,
        table: DTable,
        alongside: impl FnOnce() -> T,
    ) -> (T, Option<DTable>) {
        self.catalog.replace_holding(name, table, alongside)
    }

    /// See [`replace_holding`](Self::replace_holding).
    pub(crate) fn release_replaced(&self, name: &str, old: &DTable) -> Result<()> {
        self.catalog.release_replaced(name, old)
    }

    /// Registers a table a statement needs while it runs, under a fresh name with `what` in it
    /// (hidden from the table names users see); [`drop_temp`](Self::drop_temp) removes it.
    pub(crate) fn register_temp(&self, what: &str, table: DTable) -> Result<String> {
        self.catalog.register_temp(what, table)
    }

    /// Drops a table [`register_temp`](Self::register_temp) made and frees its chunks.
    pub(crate) fn drop_temp(&self, name: &str) -> Result<()> {
        self.catalog.remove(name).map(|_| ())
    }

    /// Moves a table to a new name (`ALTER TABLE ... RENAME TO`); its chunks stay.
    pub(crate) fn register_moved(&self, from: &str, to: &str, table: DTable) -> Result<()> {
        self.catalog.rename(from, to, table)
    }

    /// Plans and runs a logical plan; the result stays on the workers as a DTable.
    pub(crate) async fn run_plan(&self, plan: LogicalPlan) -> Result<DTable> {
        self.executor.run_plan(plan).await
    }

    /// [`crate::steps::each_chunk`] on the session's engine.
    pub(crate) async fn each_chunk(
        &self,
        table: &DTable,
        label: &str,
        params: impl FnMut(&ChunkRef) -> Vec<u8>,
    ) -> Result<Vec<(ChunkRef, Vec<ChunkRef>)>> {
        crate::steps::each_chunk(self.engine(), table, label, params).await
    }

    /// An error unless `name` is free.
    pub(crate) fn check_free(&self, name: &str) -> Result<()> {
        if self.catalog.contains(name) {
            return Err(DirkError::TableExists { name: name.into() });
        }
        Ok(())
    }
}
