//! The session: the catalog of DTables, the planner, and the engine underneath.

use crate::broadcast::BroadcastJoinSelection;
use crate::dataframe::DataFrame;
use crate::error::{DirkError, Result};
use crate::exec::DTableScanExec;
use crate::fragment::{
    encode_params, encode_plan, FragmentHeader, FragmentKernel, LeafFeed, FRAGMENT_KERNEL,
};
use crate::stages::{cut, leaf_partitions, ReadMode, StageOutput, StagedPlan};
use crate::table::{DTable, DTableProvider};
use arrow::array::{RecordBatch, UInt64Array};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::dataframe::DataFrame as DfDataFrame;
use datafusion::execution::context::SessionContext;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{
    CreateExternalTable, DdlStatement, DmlStatement, LogicalPlan, Statement, WriteOp,
};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig};
use dirk_engine::{Arg, Chunk, Context, Scope, TaskHandle, TaskId, TaskOptions, WorkerId};
use futures::{StreamExt as _, TryStreamExt as _};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
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

    /// Memory for running queries, in bytes, shared equally by the tasks that run at once (one
    /// per worker). A task's sorts, aggregations and joins spill to disk beyond its share, or
    /// fail with "Resources exhausted" where they cannot. Default: no limit. Resident DTables are
    /// not counted.
    pub fn memory(mut self, bytes: usize) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// Plans with `state`'s catalog, functions and settings instead of DataFusion's defaults
    /// (Dirk still sets the partition count and keeps the options it needs). Tables already in
    /// that catalog are DataFusion providers: a query reads them in its tasks.
    pub fn planner_state(mut self, state: SessionState) -> Self {
        self.planner_state = Some(state);
        self
    }

    /// Starts the engine and an empty catalog.
    pub fn build(self) -> Result<Session> {
        let engine = match &self.workers {
            Some(Workers::Remote(addresses)) => {
                if addresses.is_empty() {
                    return Err(DirkError::Unsupported {
                        what: "a cluster with no worker addresses".into(),
                    });
                }
                let remote = dirk_flight::connect_cluster_blocking(addresses, &self.cluster)?;
                let engine = Context::builder().workers(0).build()?;
                for w in remote {
                    engine.add_worker(w)?;
                }
                engine
            }
            Some(Workers::InProcess(n)) => Context::builder().workers(*n).build()?,
            None => Context::builder().build()?,
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
        // Files are listed only to ingest them, and an external table follows its files (see
        // `refresh_external`): a cached listing would hide files added since.
        let runtime = |mut env: RuntimeEnvBuilder| {
            env.cache_manager.list_files_cache = None;
            env.cache_manager.list_files_cache_limit = 0;
            env.build_arc()
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
        Ok(Session {
            chunk_stats: Arc::new(crate::prune::ChunkStatistics::new(Arc::clone(&engine))),
            engine,
            planner,
            tables: Mutex::new(BTreeMap::new()),
            partitions,
            task_memory,
            temp_counter: std::sync::atomic::AtomicU64::new(0),
            catalog_version: std::sync::atomic::AtomicU64::new(0),
            mutation_lock: tokio::sync::Mutex::new(()),
            external: Mutex::new(HashMap::new()),
        })
    }
}

/// Names of the tables a statement makes for itself while it runs.
const TEMP_PREFIX: &str = "__dirk_temp_";

/// Registers Dirk's kernels (plan fragments, TPC-H generation, mutation steps): on the session's
/// in-process workers, and by `dirk worker` on its own.
pub fn register_kernels(registry: &dirk_engine::KernelRegistry) {
    registry.register(Arc::new(FragmentKernel));
    registry.register(Arc::new(crate::tpch::TpchGenKernel));
    registry.register(Arc::new(crate::mutate::MutateKernel));
}

/// Planner options Dirk keeps off: each assumes the partitions of a plan share memory in one
/// process (see [`SessionBuilder::build`]). `SET` cannot turn them on.
const PINNED_OFF: [&str; 6] = [
    "datafusion.execution.enable_file_stream_work_stealing",
    "datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery",
    "datafusion.optimizer.enable_dynamic_filter_pushdown",
    "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
    "datafusion.optimizer.enable_topk_dynamic_filter_pushdown",
    "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown",
];

/// A Dirk session: owns the engine (workers and scheduler) and the catalog of DTables. SQL and
/// DataFrame calls both become DataFusion plans, which Dirk cuts into stages and runs as tasks.
pub struct Session {
    engine: Arc<Context>,
    planner: SessionContext,
    tables: Mutex<BTreeMap<String, DTable>>,
    partitions: usize,
    task_memory: Option<usize>,
    temp_counter: std::sync::atomic::AtomicU64,
    /// Bumped before and after a table is re-registered with the planner (see `sql`).
    catalog_version: std::sync::atomic::AtomicU64,
    /// Held by every statement that changes the catalog or a table's data, so they run one at
    /// a time (see `mutate.rs`).
    mutation_lock: tokio::sync::Mutex<()>,
    /// Min/max statistics of table chunks, for pruning `UPDATE` and `DELETE` and for the
    /// planner (see `prune.rs`).
    chunk_stats: Arc<crate::prune::ChunkStatistics>,
    /// The files of each external table that follows them (see `refresh_external`).
    external: Mutex<HashMap<String, ExternalSource>>,
}

/// Where an external table's rows come from. The table is resident; before a statement reads
/// it, its files are listed again, and if they changed (added, removed, rewritten) it is read
/// again, as DataFusion would read the files afresh. A statement that changes the table through
/// Dirk (`INSERT`, `UPDATE`, ...) ends this: the table then holds rows its files do not.
struct ExternalSource {
    /// The file listing made at `CREATE EXTERNAL TABLE`: its schema and options stay fixed.
    files: Arc<dyn datafusion::catalog::TableProvider>,
    /// What the last read found.
    stamps: Vec<FileStamp>,
}

/// A file's location, size and version, as its object store reports them.
type FileStamp = (String, u64, i64, Option<String>);

impl Session {
    /// A builder with the defaults.
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Context {
        &self.engine
    }

    /// Partitions per table and per exchange.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    pub(crate) fn planner(&self) -> &SessionContext {
        &self.planner
    }

    pub(crate) fn planner_state(&self) -> SessionState {
        self.planner.state()
    }

    pub(crate) fn chunk_stats(&self) -> &crate::prune::ChunkStatistics {
        &self.chunk_stats
    }

    pub(crate) fn mutation_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.mutation_lock
    }

    /// Runs `f` while no query can take its table snapshot and submit its tasks: what `f`
    /// submits is ordered entirely before or entirely after each query's tasks.
    pub(crate) fn with_catalog_locked<T>(&self, f: impl FnOnce() -> T) -> T {
        let _catalog = self.tables.lock();
        f()
    }

    /// Names of the tables, sorted.
    pub fn table_names(&self) -> Vec<String> {
        self.tables
            .lock()
            .keys()
            .filter(|n| !n.starts_with(TEMP_PREFIX))
            .cloned()
            .collect()
    }

    /// A snapshot of a table.
    pub fn table(&self, name: &str) -> Result<DTable> {
        self.tables
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| DirkError::TableNotFound { name: name.into() })
    }

    /// Makes a DTable of `batches`, split by rows into the session's partition count and spread
    /// over the workers, and registers it as `name`.
    pub fn create_table(&self, name: &str, batches: Vec<RecordBatch>) -> Result<DTable> {
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => {
                return Err(DirkError::SchemaMismatch {
                    detail: "no batches to take a schema from".into(),
                })
            }
        };
        let table = self.put_batches(schema, batches)?;
        self.register(name, table.clone(), false)?;
        Ok(table)
    }

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

    fn register(&self, name: &str, table: DTable, replace: bool) -> Result<()> {
        self.register_with(name, table, replace, || ())
    }

    /// Registers `table` as `name` and runs `alongside` under the same catalog lock: no query
    /// sees the new entry without what `alongside` submits, or the other way round.
    fn register_with<T>(
        &self,
        name: &str,
        table: DTable,
        replace: bool,
        alongside: impl FnOnce() -> T,
    ) -> Result<T> {
        let mut tables = self.tables.lock();
        if tables.contains_key(name) && !replace {
            return Err(DirkError::TableExists { name: name.into() });
        }
        let provider = DTableProvider {
            name: name.to_string(),
            table: table.clone(),
            stats: Arc::clone(&self.chunk_stats),
        };
        let done = alongside();
        self.catalog_version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.planner.deregister_table(name)?;
        self.planner.register_table(name, Arc::new(provider))?;
        self.catalog_version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.external.lock().remove(name);
        let kept: std::collections::HashSet<_> = table.chunks().map(|c| c.id).collect();
        let replaced = tables.insert(name.to_string(), table);
        if replaced.is_some() {
            // Statistics of chunks no table holds any more go with them.
            let live: std::collections::HashSet<_> = tables
                .values()
                .flat_map(|t| t.chunks().map(|c| c.id))
                .collect();
            self.chunk_stats
                .cache()
                .lock()
                .retain(|(id, _), _| live.contains(id));
        }
        if let Some(old) = replaced {
            drop(tables);
            // A new version (an INSERT) shares its old chunks; free only what it dropped.
            let gone: Vec<_> = old
                .chunks()
                .filter(|c| !kept.contains(&c.id))
                .cloned()
                .collect();
            self.engine.free(&gone)?;
        }
        Ok(done)
    }

    /// [`Session::register_replacing`], running `alongside` under the same catalog lock.
    pub(crate) fn register_replacing_with<T>(
        &self,
        name: &str,
        table: DTable,
        alongside: impl FnOnce() -> T,
    ) -> Result<T> {
        self.register_with(name, table, true, alongside)
    }

    /// Registers a table a statement needs while it runs, under a fresh name with `what` in it
    /// (hidden from [`Session::table_names`]); [`Session::drop_temp`] removes it.
    pub(crate) fn register_temp(&self, what: &str, table: DTable) -> Result<String> {
        let name = format!("{TEMP_PREFIX}{what}_{}", self.next_temp());
        self.register(&name, table, false)?;
        Ok(name)
    }

    /// Drops a table [`Session::register_temp`] made and frees its chunks.
    pub(crate) fn drop_temp(&self, name: &str) -> Result<()> {
        self.drop_table(name).map(|_| ())
    }

    /// Registers `table` as `name`, replacing any table of that name.
    pub fn register_replacing(&self, name: &str, table: DTable) -> Result<()> {
        self.register(name, table, true)
    }

    /// Moves a table to a new name (`ALTER TABLE ... RENAME TO`); its chunks stay.
    pub(crate) fn register_moved(&self, from: &str, to: &str, table: DTable) -> Result<()> {
        let mut tables = self.tables.lock();
        if tables.contains_key(to) {
            return Err(DirkError::TableExists { name: to.into() });
        }
        tables.remove(from);
        let mut external = self.external.lock();
        if let Some(source) = external.remove(from) {
            external.insert(to.to_string(), source);
        }
        drop(external);
        self.planner.deregister_table(from)?;
        let provider = DTableProvider {
            name: to.to_string(),
            table: table.clone(),
            stats: Arc::clone(&self.chunk_stats),
        };
        self.planner.register_table(to, Arc::new(provider))?;
        tables.insert(to.to_string(), table);
        Ok(())
    }

    fn drop_table(&self, name: &str) -> Result<bool> {
        let Some(old) = self.tables.lock().remove(name) else {
            return Ok(false);
        };
        self.external.lock().remove(name);
        self.planner.deregister_table(name)?;
        self.engine
            .free(&old.chunks().cloned().collect::<Vec<_>>())?;
        Ok(true)
    }

    /// Runs a SQL statement. Queries return a [`DataFrame`] to collect; DDL and DML run at once
    /// and return their result (for `INSERT`, the row count).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame<'_>> {
        let state = self.planner.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        self.refresh_external(&state, &statement).await?;
        if let datafusion::sql::parser::Statement::Statement(s) = &statement {
            use crate::rowchange::ChangeStatement;
            use datafusion::sql::sqlparser::ast::Statement as Ast;
            let change = match s.as_ref() {
                Ast::AlterTable(alter) => {
                    let rows = self.alter_table(alter).await?;
                    return self.count(rows);
                }
                s if !crate::rowchange::reads_other_tables(s) => None,
                Ast::Merge(m) => Some(ChangeStatement::Merge(m)),
                Ast::Update(u) => Some(ChangeStatement::Update(u)),
                Ast::Delete(d) => Some(ChangeStatement::Delete(d)),
                _ => None,
            };
            if let Some(change) = change {
                if change.datafusion_plans_it() {
                    // DataFusion's planner and analyzer check the statement (columns, clause
                    // structure, condition types), so a statement DataFusion rejects fails with
                    // DataFusion's error; Dirk then runs it from the parsed statement.
                    let plan = self.plan_statement(&state, &statement).await?;
                    state.optimize(&plan)?;
                }
                let rows = self.change_rows(change).await?;
                return self.count(rows);
            }
        }
        let plan = self.plan_statement(&state, &statement).await?;
        self.execute_logical(plan).await
    }

    /// Plans `statement`. A table being replaced is briefly absent from DataFusion's catalog
    /// (deregistered, then registered again, with `catalog_version` odd in between): planning
    /// that failed while a replacement was under way, or that raced with one, is planned again.
    async fn plan_statement(
        &self,
        state: &datafusion::execution::SessionState,
        statement: &datafusion::sql::parser::Statement,
    ) -> Result<LogicalPlan> {
        use std::sync::atomic::Ordering::Acquire;
        let mut attempts = 0;
        loop {
            let before = self.catalog_version.load(Acquire);
            match state.statement_to_plan(statement.clone()).await {
                Ok(plan) => return Ok(plan),
                Err(e) => {
                    let raced = before % 2 == 1 || self.catalog_version.load(Acquire) != before;
                    if !raced || attempts == 1100 {
                        return Err(e.into());
                    }
                    attempts += 1;
                    // The replacement takes microseconds, unless its thread was preempted.
                    if attempts < 100 {
                        tokio::task::yield_now().await;
                    } else {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
        }
    }

    async fn execute_logical(&self, plan: LogicalPlan) -> Result<DataFrame<'_>> {
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => {
                let _one_at_a_time = self.mutation_lock.lock().await;
                let name = c.name.table().to_string();
                if self.tables.lock().contains_key(&name) && c.if_not_exists {
                    return self.empty();
                }
                let table = self.run_plan((*c.input).clone()).await?;
                self.register(&name, table, c.or_replace)?;
                self.empty()
            }
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(c)) => {
                let _one_at_a_time = self.mutation_lock.lock().await;
                let name = c.name.table().to_string();
                if self.tables.lock().contains_key(&name) {
                    if c.if_not_exists {
                        return self.empty();
                    }
                    if !c.or_replace {
                        return Err(DirkError::TableExists { name });
                    }
                }
                let files = self.external_files(&c).await?;
                let stamps = list_files(&self.planner.state(), files.as_ref()).await?;
                let table = self.ingest_files(&c.name, Arc::clone(&files)).await?;
                self.register(&name, table, c.or_replace)?;
                if let Some(stamps) = stamps {
                    self.external
                        .lock()
                        .insert(name, ExternalSource { files, stamps });
                }
                self.empty()
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(d)) => {
                let _one_at_a_time = self.mutation_lock.lock().await;
                let name = d.name.table().to_string();
                if self.drop_table(&name)? {
                    return self.empty();
                }
                if self.planner.table_exist(d.name.clone())? {
                    // Not a DTable: a provider registered with DataFusion directly.
                    self.planner
                        .execute_logical_plan(LogicalPlan::Ddl(DdlStatement::DropTable(d)))
                        .await?;
                    return self.empty();
                }
                if !d.if_exists {
                    return Err(DirkError::TableNotFound { name });
                }
                self.empty()
            }
            // Views, schemas, catalogs and functions change only the driver's catalog: no data
            // is read or written, so DataFusion's own handling is the right one.
            LogicalPlan::Ddl(other) => {
                self.planner
                    .execute_logical_plan(LogicalPlan::Ddl(other))
                    .await?;
                self.empty()
            }
            LogicalPlan::Dml(DmlStatement {
                table_name,
                op: WriteOp::Insert(_),
                input,
                ..
            }) => {
                let name = table_name.table().to_string();
                let rows = self.insert_plan(&name, (*input).clone()).await?;
                self.count(rows)
            }
            LogicalPlan::Dml(DmlStatement {
                table_name,
                op: WriteOp::Update,
                input,
                ..
            }) => {
                let rows = self
                    .update_from_plan(table_name.table(), input.as_ref())
                    .await?;
                self.count(rows)
            }
            LogicalPlan::Dml(DmlStatement {
                table_name,
                op: WriteOp::Delete,
                input,
                ..
            }) => {
                let rows = self
                    .delete_from_plan(table_name.table(), input.as_ref())
                    .await?;
                self.count(rows)
            }
            LogicalPlan::Dml(DmlStatement {
                table_name,
                op: WriteOp::Truncate,
                ..
            }) => {
                let rows = self.truncate_rows(table_name.table()).await?;
                self.count(rows)
            }
            LogicalPlan::Dml(d) => Err(DirkError::Unsupported {
                what: format!("{} on a DTable", d.op),
            }),
            LogicalPlan::Statement(s) => self.statement(s).await,
            LogicalPlan::Explain(e) => {
                let df = DfDataFrame::new(self.planner.state(), (*e.plan).clone());
                let mut rows = Vec::new();
                if e.verbose {
                    rows.extend(self.datafusion_plans(df.clone()).await?);
                } else {
                    let optimized = df.clone().into_optimized_plan()?;
                    rows.push((
                        "logical_plan".to_string(),
                        optimized.display_indent().to_string(),
                    ));
                }
                rows.push(("dirk_stages".to_string(), self.explain_plan(df).await?));
                self.plan_rows(rows)
            }
            LogicalPlan::Analyze(a) => {
                let df = DfDataFrame::new(self.planner.state(), (*a.input).clone());
                let physical = df.create_physical_plan().await?;
                let text = self.explain_analyze(physical).await?;
                self.plan_rows(vec![("Plan with Metrics".to_string(), text)])
            }
            plan => Ok(DataFrame::new(
                self,
                DfDataFrame::new(self.planner.state(), plan),
            )),
        }
    }

    /// `SET`, `RESET`, `PREPARE`, `EXECUTE`, transactions: DataFusion's handling, except that
    /// the options Dirk keeps off stay off, and an `EXECUTE` runs through Dirk's tasks.
    async fn statement(&self, statement: Statement) -> Result<DataFrame<'_>> {
        if let Statement::SetVariable(set) = &statement {
            let key = set.variable.to_lowercase();
            if PINNED_OFF.contains(&key.as_str()) && !set.value.eq_ignore_ascii_case("false") {
                return Err(DirkError::Unsupported {
                    what: format!(
                        "setting {key}: Dirk runs each partition as its own task, and this \
                         option assumes the partitions of a plan share memory"
                    ),
                });
            }
        }
        let df = self
            .planner
            .execute_logical_plan(LogicalPlan::Statement(statement))
            .await?;
        let state = self.planner.state_ref();
        let mut state = state.write();
        for key in PINNED_OFF {
            state.config_mut().options_mut().set(key, "false")?;
        }
        drop(state);
        match df.logical_plan() {
            LogicalPlan::EmptyRelation(_) => self.empty(),
            _ => Ok(DataFrame::new(self, df)),
        }
    }

    /// The file listing a `CREATE EXTERNAL TABLE` describes (schema inferred where not given).
    async fn external_files(
        &self,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
        let state = self.planner.state();
        let file_type = cmd.file_type.to_uppercase();
        let factory = state
            .table_factories()
            .get(file_type.as_str())
            .cloned()
            .ok_or_else(|| DirkError::Unsupported {
                what: format!("external tables stored as {}", cmd.file_type),
            })?;
        Ok(factory.create(&state, cmd).await?)
    }

    /// Reads the files of `files` into a DTable.
    async fn ingest_files(
        &self,
        name: &datafusion::common::TableReference,
        files: Arc<dyn datafusion::catalog::TableProvider>,
    ) -> Result<DTable> {
        let scan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            name.clone(),
            datafusion::datasource::provider_as_source(files),
            None,
        )?
        .build()?;
        self.ingest(scan).await
    }

    /// Reads again each external table `statement` names whose files changed since it was
    /// last read (see [`ExternalSource`]).
    async fn refresh_external(
        &self,
        state: &SessionState,
        statement: &datafusion::sql::parser::Statement,
    ) -> Result<()> {
        if self.external.lock().is_empty() {
            return Ok(());
        }
        let mut names: Vec<String> = state
            .resolve_table_references(statement)?
            .iter()
            .map(|r| r.table().to_string())
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let Some(files) = self
                .external
                .lock()
                .get(&name)
                .map(|s| Arc::clone(&s.files))
            else {
                continue;
            };
            let stamps = list_files(state, files.as_ref()).await?;
            let unchanged = |external: &HashMap<String, ExternalSource>| {
                external.get(&name).is_none_or(|s| {
                    !Arc::ptr_eq(&s.files, &files) || Some(&s.stamps) == stamps.as_ref()
                })
            };
            if unchanged(&self.external.lock()) {
                continue;
            }
            let _one_at_a_time = self.mutation_lock.lock().await;
            // Another statement may have read it again, changed it or dropped it meanwhile.
            if unchanged(&self.external.lock()) {
                continue;
            }
            let table = self
                .ingest_files(
                    &datafusion::common::TableReference::bare(name.as_str()),
                    Arc::clone(&files),
                )
                .await?;
            self.register(&name, table, true)?;
            if let Some(stamps) = stamps {
                self.external
                    .lock()
                    .insert(name, ExternalSource { files, stamps });
            }
        }
        Ok(())
    }

    /// Runs a plan that reads files into a DTable. DataFusion lists the files and splits them
    /// into byte ranges, one group per partition; each group is read by one task, on the worker
    /// that then owns the partition (Dagger's `File`): the data never passes through the driver.
    async fn ingest(&self, plan: LogicalPlan) -> Result<DTable> {
        let mut state = self.planner.state();
        // Split files of any size, so every partition gets a share of the reading.
        state
            .config_mut()
            .options_mut()
            .optimizer
            .repartition_file_min_size = 0;
        let physical = DfDataFrame::new(state, plan).create_physical_plan().await?;
        self.run_physical(physical).await
    }

    /// Reads CSV files (a file, a directory, or a glob) into a DTable registered as `name`, as
    /// `CREATE EXTERNAL TABLE name STORED AS CSV LOCATION path` does.
    pub async fn register_csv(
        &self,
        name: &str,
        path: &str,
        options: CsvReadOptions<'_>,
    ) -> Result<DTable> {
        let plan = self.planner.read_csv(path, options).await?;
        self.register_ingested(name, plan).await
    }

    /// Reads Parquet files into a DTable registered as `name`.
    pub async fn register_parquet(
        &self,
        name: &str,
        path: &str,
        options: ParquetReadOptions<'_>,
    ) -> Result<DTable> {
        let plan = self.planner.read_parquet(path, options).await?;
        self.register_ingested(name, plan).await
    }

    async fn register_ingested(&self, name: &str, files: DfDataFrame) -> Result<DTable> {
        if self.tables.lock().contains_key(name) {
            return Err(DirkError::TableExists { name: name.into() });
        }
        let table = self.ingest(files.into_unoptimized_plan()).await?;
        self.register(name, table.clone(), false)?;
        Ok(table)
    }

    /// A DataFrame over CSV files, read afresh by the tasks of each query that runs it.
    pub async fn read_csv(&self, path: &str, options: CsvReadOptions<'_>) -> Result<DataFrame<'_>> {
        Ok(DataFrame::new(
            self,
            self.planner.read_csv(path, options).await?,
        ))
    }

    /// A DataFrame over Parquet files, read afresh by the tasks of each query that runs it.
    pub async fn read_parquet(
        &self,
        path: &str,
        options: ParquetReadOptions<'_>,
    ) -> Result<DataFrame<'_>> {
        Ok(DataFrame::new(
            self,
            self.planner.read_parquet(path, options).await?,
        ))
    }

    /// Redistributes table `name` over `n` partitions, batch by batch, spread over the
    /// workers; the new layout replaces the old.
    pub async fn repartition(&self, name: &str, n: usize) -> Result<DTable> {
        let table = self
            .relayout(name, |_| Ok(Partitioning::RoundRobinBatch(n.max(1))))
            .await?;
        self.register(name, table.clone(), true)?;
        Ok(table)
    }

    /// Redistributes table `name` over `n` partitions so that rows with equal `columns` share a
    /// partition, and remembers it: queries that group or join on `columns` then read the
    /// table where it is instead of exchanging it (a join needs its other side split the same
    /// way, by a query's exchange or by `repartition_by` with the same `n`). Partition `p` is
    /// made on worker `p mod w` of the session's `w` workers, so tables repartitioned with the
    /// same `n` are joined partition by partition without moving. An `INSERT`, or an `UPDATE`
    /// of one of `columns`, makes the partitioning unknown again (the rows stay).
    pub async fn repartition_by(&self, name: &str, columns: &[&str], n: usize) -> Result<DTable> {
        let mut keys = Vec::with_capacity(columns.len());
        let table = self
            .relayout(name, |schema| {
                let exprs = columns
                    .iter()
                    .map(|c| {
                        let column =
                            datafusion::physical_expr::expressions::Column::new_with_schema(
                                c, schema,
                            )?;
                        keys.push(column.name().to_string());
                        Ok(Arc::new(column) as Arc<dyn datafusion::physical_expr::PhysicalExpr>)
                    })
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                Ok(Partitioning::Hash(exprs, n.max(1)))
            })
            .await?;
        let table = table.with_hash_keys(keys);
        self.register(name, table.clone(), true)?;
        Ok(table)
    }

    /// Runs a scan of `name` under an exchange to `partitioning` (placed on the physical plan,
    /// where DataFusion's optimizer cannot drop it); the caller registers the result. Partition
    /// `p` is made on worker `p mod w`, as the TPC-H loader places its partitions.
    async fn relayout(
        &self,
        name: &str,
        partitioning: impl FnOnce(&Schema) -> datafusion::error::Result<Partitioning>,
    ) -> Result<DTable> {
        let scan = self.table_df(name).await?.inner().clone();
        let scan = scan.create_physical_plan().await?;
        let partitioning = partitioning(&scan.schema())?;
        let exchange: Arc<dyn ExecutionPlan> =
            Arc::new(RepartitionExec::try_new(scan, partitioning)?);
        let homes = self.engine.workers();
        self.run_physical_placed(exchange, &homes).await
    }

    /// Moves every chunk of table `name` to `worker` and pins it there: tasks that read the
    /// table run on that worker, and the scheduler never moves its chunks.
    pub fn pin_table(&self, name: &str, worker: WorkerId) -> Result<DTable> {
        let table = self.table(name)?;
        if !self.engine.workers().contains(&worker) {
            return Err(DirkError::Unsupported {
                what: format!("pinning to worker {}: no such worker", worker.0),
            });
        }
        let mut partitions = Vec::with_capacity(table.num_partitions());
        for part in table.partitions() {
            let mut moved = Vec::with_capacity(part.len());
            for c in part {
                let data = self.engine.fetch(c)?;
                let chunk = Chunk::new(c.schema.clone(), data.batches().to_vec());
                moved.push(self.engine.put_on(worker, chunk, true)?);
            }
            partitions.push(moved);
        }
        let pinned = DTable::new(table.schema().clone(), partitions);
        self.register(name, pinned.clone(), true)?;
        Ok(pinned)
    }

    /// A DataFrame over a registered table.
    pub async fn table_df(&self, name: &str) -> Result<DataFrame<'_>> {
        Ok(DataFrame::new(self, self.planner.table(name).await?))
    }

    /// No rows and no columns: what a statement returns.
    fn empty(&self) -> Result<DataFrame<'_>> {
        let plan = datafusion::logical_expr::LogicalPlanBuilder::empty(false).build()?;
        Ok(DataFrame::new(
            self,
            DfDataFrame::new(self.planner.state(), plan),
        ))
    }

    fn count(&self, rows: u64) -> Result<DataFrame<'_>> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "count",
            DataType::UInt64,
            false,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![rows]))])
            .map_err(datafusion::error::DataFusionError::from)?;
        Ok(DataFrame::new(self, self.planner.read_batch(batch)?))
    }

    /// A two-column result (`plan_type`, `plan`), as DataFusion's `EXPLAIN` gives.
    fn plan_rows(&self, rows: Vec<(String, String)>) -> Result<DataFrame<'_>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("plan_type", DataType::Utf8, false),
            Field::new("plan", DataType::Utf8, false),
        ]));
        let (types, plans): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::StringArray::from(types)),
                Arc::new(arrow::array::StringArray::from(plans)),
            ],
        )
        .map_err(datafusion::error::DataFusionError::from)?;
        Ok(DataFrame::new(self, self.planner.read_batch(batch)?))
    }

    /// DataFusion's own plans for `EXPLAIN VERBOSE`: every logical and physical rewrite. They
    /// are text the physical planner records while planning; nothing runs.
    async fn datafusion_plans(&self, df: DfDataFrame) -> Result<Vec<(String, String)>> {
        let physical = df.explain(true, false)?.create_physical_plan().await?;
        let explain = physical
            .downcast_ref::<datafusion::physical_plan::explain::ExplainExec>()
            .ok_or_else(|| DirkError::Unsupported {
                what: "EXPLAIN VERBOSE of this statement".into(),
            })?;
        Ok(explain
            .stringified_plans()
            .iter()
            .map(|p| (p.plan_type.to_string(), p.plan.to_string()))
            .collect())
    }

    pub(crate) async fn explain_plan(&self, df: DfDataFrame) -> Result<String> {
        let physical = df.create_physical_plan().await?;
        Ok(cut(physical)?.display())
    }

    /// Plans and runs a logical plan; the result stays on the workers as a DTable.
    pub async fn run_plan(&self, plan: LogicalPlan) -> Result<DTable> {
        let df = DfDataFrame::new(self.planner.state(), plan);
        let physical = df.create_physical_plan().await?;
        self.run_physical(physical).await
    }

    /// Cuts a physical plan into stages and runs one task per stage partition through the
    /// engine; returns the final stage's outputs as a DTable and frees the intermediates.
    pub async fn run_physical(&self, physical: Arc<dyn ExecutionPlan>) -> Result<DTable> {
        self.run_physical_placed(physical, &[]).await
    }

    /// As [`run_physical`](Self::run_physical), with partition `p` of the result made on worker
    /// `homes[p % homes.len()]` (anywhere when `homes` is empty).
    async fn run_physical_placed(
        &self,
        physical: Arc<dyn ExecutionPlan>,
        homes: &[WorkerId],
    ) -> Result<DTable> {
        let schema = physical.schema();
        let mut driver_tables = Vec::new();
        let physical = self
            .materialize_driver_leaves(physical, &mut driver_tables)
            .await?;
        let result = self.run_staged(physical, schema, homes).await;
        for name in driver_tables {
            self.drop_table(&name)?;
        }
        result
    }

    /// Some sources exist only on the driver: DataFusion's catalog views (`SHOW TABLES`,
    /// `information_schema`) read the driver's catalog and cannot be serialized. They are
    /// evaluated here, put on the workers as a temporary DTable, and scanned from there; the rest
    /// of the query runs as tasks.
    async fn materialize_driver_leaves(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        made: &mut Vec<String>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let children = plan.children();
        if children.is_empty() {
            if plan.is::<DTableScanExec>() || encode_plan(&plan).is_ok() {
                return Ok(plan);
            }
            // Partition `p` of the leaf becomes partition `p` of the table: the plan above was
            // optimized for the leaf's partitioning (a partitioned join pairs partition `p` of
            // both sides), so the rows must stay where the leaf put them.
            let parts = datafusion::physical_plan::collect_partitioned(
                Arc::clone(&plan),
                self.planner.task_ctx(),
            )
            .await?;
            let schema = plan.schema();
            let mut partitions = Vec::with_capacity(parts.len());
            for batches in parts {
                let batches: Vec<_> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
                partitions.push(if batches.is_empty() {
                    vec![]
                } else {
                    vec![self.engine.put(Chunk::new(schema.clone(), batches))?]
                });
            }
            let table = DTable::new(schema.clone(), partitions);
            let name = self.register_temp("driver_source", table.clone())?;
            made.push(name.clone());
            return Ok(Arc::new(DTableScanExec::new(
                0,
                name,
                schema,
                None,
                table.num_partitions(),
                Some(table.num_rows()),
            )));
        }
        let mut new_children = Vec::with_capacity(children.len());
        for c in children {
            new_children.push(Box::pin(self.materialize_driver_leaves(Arc::clone(c), made)).await?);
        }
        Ok(crate::stages::with_children(plan, new_children)?)
    }

    fn next_temp(&self) -> u64 {
        self.temp_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    async fn run_staged(
        &self,
        physical: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
        homes: &[WorkerId],
    ) -> Result<DTable> {
        let staged = cut(physical)?;
        Ok(self.run_stages(&staged, schema, homes).await?.0)
    }

    /// Runs every stage's tasks; returns the final stage's outputs as a DTable, and the tasks of
    /// each stage (for `EXPLAIN ANALYZE`). Intermediate outputs are freed. Final task `p` runs
    /// on `homes[p % homes.len()]` (anywhere when `homes` is empty).
    async fn run_stages(
        &self,
        staged: &StagedPlan,
        schema: SchemaRef,
        homes: &[WorkerId],
    ) -> Result<(DTable, Vec<Vec<TaskId>>)> {
        let handles = self.spawn_stages(staged, homes)?;
        let last = handles.last().expect("final stage");
        let mut partitions = vec![Vec::new(); last.len()];
        let mut failure = None;
        let mut finishing: futures::stream::FuturesUnordered<_> = last
            .iter()
            .enumerate()
            .map(|(i, h)| async move { (i, h.join().await) })
            .collect();
        while let Some((i, result)) = finishing.next().await {
            match result {
                Ok(out) => partitions[i] = out.chunks,
                Err(e) => {
                    if failure.is_none() {
                        // The query has failed: its other tasks need not run on.
                        handles.iter().flatten().for_each(TaskHandle::cancel);
                    }
                    failure.get_or_insert(e);
                }
            }
        }
        drop(finishing);
        // Intermediate outputs are not needed once the final stage has run.
        let mut intermediates = Vec::new();
        let mut still_running = Vec::new();
        for h in handles[..handles.len() - 1].iter().flatten() {
            match h.try_result() {
                Some(Ok(out)) => intermediates.extend(out.chunks),
                Some(Err(_)) => {}
                None => still_running.push(h.clone()),
            }
        }
        self.engine.free(&intermediates)?;
        // Only a failed query leaves tasks running: a cancelled task stops when its kernel next
        // checks (an aggregate's does at its end). The error is returned now, and their outputs
        // are freed when they end.
        if !still_running.is_empty() {
            let engine = Arc::clone(&self.engine);
            std::thread::spawn(move || {
                for h in still_running {
                    if let Ok(out) = h.wait() {
                        let _ = engine.free(&out.chunks);
                    }
                }
            });
        }
        if let Some(e) = failure {
            self.engine
                .free(&partitions.into_iter().flatten().collect::<Vec<_>>())?;
            return Err(e.into());
        }
        let ids = handles
            .iter()
            .map(|stage| stage.iter().map(TaskHandle::id).collect())
            .collect();
        Ok((DTable::new(schema, partitions), ids))
    }

    /// `EXPLAIN ANALYZE`: runs the plan, then prints each stage with what its tasks did, from
    /// the engine's event log: tasks, workers, wall time, task time, rows, and bytes moved
    /// between workers to feed them.
    async fn explain_analyze(&self, physical: Arc<dyn ExecutionPlan>) -> Result<String> {
        let schema = physical.schema();
        let mut driver_tables = Vec::new();
        let physical = self
            .materialize_driver_leaves(physical, &mut driver_tables)
            .await?;
        let staged = cut(physical)?;
        let started = std::time::Instant::now();
        let run = self.run_stages(&staged, schema, &[]).await;
        let wall = started.elapsed();
        for name in driver_tables {
            self.drop_table(&name)?;
        }
        let (table, ids) = run?;
        self.engine
            .free(&table.chunks().cloned().collect::<Vec<_>>())?;
        let log = self.engine.event_log();
        let by_task: HashMap<TaskId, &dirk_engine::TaskRecord> =
            log.records.iter().map(|r| (r.task, r)).collect();
        let mut moved_total = 0;
        let notes: Vec<String> = ids
            .iter()
            .map(|tasks| {
                let records: Vec<_> = tasks.iter().filter_map(|t| by_task.get(t)).collect();
                let workers: std::collections::BTreeSet<_> = records
                    .iter()
                    .filter_map(|r| r.worker)
                    .map(|w| w.0)
                    .collect();
                let first = records.iter().map(|r| r.started_us).min().unwrap_or(0);
                let last = records.iter().map(|r| r.finished_us).max().unwrap_or(0);
                let busy: u64 = records
                    .iter()
                    .map(|r| r.finished_us.saturating_sub(r.started_us))
                    .sum();
                let rows_in: u64 = records.iter().map(|r| r.rows_in).sum();
                let rows_out: u64 = records.iter().map(|r| r.rows_out).sum();
                let bytes_out: u64 = records.iter().map(|r| r.bytes_out).sum();
                let moved: u64 = records.iter().map(|r| r.bytes_moved).sum();
                let fetch_wait: u64 = records.iter().map(|r| r.fetch_wait_us).sum();
                let cpu: u64 = records.iter().map(|r| r.cpu_us).sum();
                moved_total += moved;
                format!(
                    "workers={workers:?}, wall={:.3} ms, task_time={:.3} ms, task_cpu={:.3} ms, \
                     rows_in={rows_in}, rows_out={rows_out}, bytes_out={bytes_out}, \
                     bytes_moved={moved}, fetch_wait={:.3} ms{}",
                    last.saturating_sub(first) as f64 / 1000.0,
                    busy as f64 / 1000.0,
                    cpu as f64 / 1000.0,
                    fetch_wait as f64 / 1000.0,
                    if records.len() < tasks.len() {
                        " (event log full: some tasks not counted)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let mut text = staged.display_annotated(&notes);
        text.push_str(&format!(
            "Total: {} tasks in {} stages, {:.3} ms, {} rows out, {moved_total} bytes moved \
             between workers\n",
            ids.iter().map(Vec::len).sum::<usize>(),
            ids.len(),
            wall.as_secs_f64() * 1000.0,
            table.num_rows(),
        ));
        Ok(text)
    }

    /// Options the workers must see as the planner does (time zone, formats, batch size, file
    /// reading): every `datafusion.execution`, `datafusion.format` and `datafusion.sql_parser`
    /// option that differs from DataFusion's default.
    fn execution_settings(&self) -> Vec<(String, String)> {
        let defaults: HashMap<String, Option<String>> = SessionConfig::new()
            .options()
            .entries()
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        self.planner
            .state()
            .config()
            .options()
            .entries()
            .into_iter()
            .filter(|e| {
                [
                    "datafusion.execution.",
                    "datafusion.format.",
                    "datafusion.sql_parser.",
                ]
                .iter()
                .any(|p| e.key.starts_with(p))
            })
            .filter(|e| defaults.get(&e.key) != Some(&e.value))
            .filter_map(|e| Some((e.key, e.value?)))
            .collect()
    }

    /// Spawns every task of every stage; returns the handles per stage. Final task `p` is
    /// scoped to worker `homes[p % homes.len()]` when `homes` is not empty.
    fn spawn_stages(
        &self,
        staged: &StagedPlan,
        homes: &[WorkerId],
    ) -> Result<Vec<Vec<TaskHandle>>> {
        let final_stage = staged.last().id;
        let settings = self.execution_settings();
        // The snapshot and the submission happen under the catalog lock: a mutation commits
        // (or submits its writes) entirely before or entirely after this query's tasks.
        let catalog = self.tables.lock();
        let snapshots = scan_snapshots(&catalog, staged)?;
        let mut handles: Vec<Vec<TaskHandle>> = Vec::with_capacity(staged.stages.len());
        for stage in &staged.stages {
            let plan = encode_plan(&stage.fragment)?;
            let cost_class = cost_class_of(&plan);
            let modes: HashMap<_, _> = stage
                .inputs
                .iter()
                .map(|(l, s, m)| (*l, (*s, *m)))
                .collect();
            let split = match stage.output {
                StageOutput::Whole => None,
                StageOutput::Split(n) => Some(n),
            };
            let mut stage_handles = Vec::with_capacity(stage.tasks);
            for t in 0..stage.tasks {
                let mut needed = Vec::new();
                leaf_partitions(stage.executed(), t, &mut needed);
                let mut args = Vec::new();
                let mut feeds = Vec::new();
                for (leaf, lp) in needed {
                    let start = args.len();
                    if let Some(table) = snapshots.get(&leaf) {
                        if let Some(part) = table.partitions().get(lp) {
                            args.extend(part.iter().map(Arg::read));
                        }
                    } else if let Some(&(up, mode)) = modes.get(&leaf) {
                        match mode {
                            ReadMode::SplitOfEveryTask => {
                                args.extend(handles[up].iter().map(|h| Arg::output(h, lp as u32)))
                            }
                            ReadMode::WholeOfTask => args.push(Arg::output(&handles[up][lp], 0)),
                        }
                    }
                    feeds.push(LeafFeed {
                        leaf,
                        partition: lp,
                        start,
                        end: args.len(),
                    });
                }
                let header = FragmentHeader {
                    partition: t,
                    split,
                    feeds,
                    settings: settings.clone(),
                    memory_limit: self.task_memory,
                };
                let mut opts = TaskOptions::new()
                    .params(encode_params(&header, &plan))
                    .label(format!("stage {} task {t}", stage.id))
                    .cost_class(cost_class);
                if stage.id == final_stage && !homes.is_empty() {
                    opts = opts.scope(Scope::worker(homes[t % homes.len()]));
                }
                stage_handles.push(self.engine.spawn(FRAGMENT_KERNEL, args, opts));
            }
            handles.push(stage_handles);
        }
        Ok(handles)
    }
}

/// The scheduler learns the run time of a stage's tasks under the stage's fragment: the same
/// fragment, in this query or when the query runs again, costs alike per input byte, where
/// fragments at large do not (one reads two columns of a table's chunks, another all of them).
fn cost_class_of(plan: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    plan.hash(&mut h);
    h.finish()
}

/// The tables each scan leaf reads, as they are now (a consistent snapshot for the query).
fn scan_snapshots(
    tables: &BTreeMap<String, DTable>,
    staged: &StagedPlan,
) -> Result<HashMap<u32, DTable>> {
    fn walk<'a>(plan: &'a Arc<dyn ExecutionPlan>, out: &mut Vec<&'a DTableScanExec>) {
        if let Some(s) = plan.downcast_ref::<DTableScanExec>() {
            out.push(s);
        }
        for c in plan.children() {
            walk(c, out);
        }
    }
    let mut scans = Vec::new();
    for st in &staged.stages {
        walk(&st.fragment, &mut scans);
    }
    scans
        .into_iter()
        .map(|scan| {
            let name = scan.table().to_string();
            let t = tables
                .get(&name)
                .cloned()
                .ok_or(DirkError::TableNotFound { name })?;
            // A plan made for a hash-partitioned table pairs and groups its partitions as they
            // are; a table re-laid out since (an INSERT between planning and now) would give
            // wrong answers read that way.
            if let Some(keys) = scan.hash_keys() {
                if t.hash_keys() != Some(&keys[..]) || t.num_partitions() != scan.partitions() {
                    return Err(DirkError::TableChanged {
                        name: scan.table().to_string(),
                    });
                }
            }
            Ok((scan.leaf(), t))
        })
        .collect()
}

/// The files a file listing reads now, sorted; `None` for a table that is not a file listing.
async fn list_files(
    state: &SessionState,
    files: &dyn datafusion::catalog::TableProvider,
) -> Result<Option<Vec<FileStamp>>> {
    use datafusion::datasource::listing::ListingTable;
    let Some(listing) = files.downcast_ref::<ListingTable>() else {
        return Ok(None);
    };
    let extension = &listing.options().file_extension;
    let mut stamps = Vec::new();
    for url in listing.table_paths() {
        let store = state.runtime_env().object_store(url)?;
        let mut found = url.list_all_files(state, store.as_ref(), extension).await?;
        while let Some(meta) = found.try_next().await? {
            stamps.push((
                meta.location.to_string(),
                meta.size,
                meta.last_modified.timestamp_nanos_opt().unwrap_or_default(),
                meta.e_tag,
            ));
        }
    }
    stamps.sort();
    Ok(Some(stamps))
}
