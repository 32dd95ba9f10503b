//! The session: the catalog of DTables, the planner, and the engine underneath.

use crate::builder::{SessionBuilder, PINNED_OFF};
use crate::catalog::{Catalog, ExternalSource};
use crate::dataframe::DataFrame;
use crate::error::{DirkError, Result};
use crate::executor::Executor;
use crate::stream::RecordBatchStream;
use crate::table::DTable;
use arrow::array::{RecordBatch, UInt64Array};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::dataframe::DataFrame as DfDataFrame;
use datafusion::execution::context::SessionContext;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, Statement, WriteOp};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions};
use dirk_engine::{Chunk, Context, WorkerId};
use std::collections::HashMap;
use std::sync::Arc;

/// A Dirk session: owns the engine (workers and scheduler) and the catalog of DTables. SQL and
/// DataFrame calls both become DataFusion plans, which Dirk cuts into stages and runs as tasks.
///
/// A `Session` is a handle: cloning it is cheap and every clone is the same session, so a
/// server can hold one and hand it to each request (`Send + Sync + 'static`). The engine and
/// its workers stop when the last handle, and the last [`DataFrame`] made from it, is dropped.
#[derive(Clone)]
pub struct Session {
    core: Arc<SessionCore>,
}

/// What every handle of a session shares.
struct SessionCore {
    engine: Arc<Context>,
    planner: SessionContext,
    /// The tables; the planner's default schema.
    catalog: Arc<Catalog>,
    /// Runs plans as stages of tasks.
    executor: Executor,
    partitions: usize,
    /// Held by every statement that changes the catalog or a table's data, so they run one at
    /// a time (see `mutate.rs`).
    mutation_lock: tokio::sync::Mutex<()>,
    /// Min/max statistics of table chunks, for pruning `UPDATE` and `DELETE` and for the
    /// planner (see `prune.rs`).
    chunk_stats: Arc<crate::prune::ChunkStatistics>,
}

impl Session {
    /// The session the builder made from its parts.
    pub(crate) fn assemble(
        engine: Arc<Context>,
        planner: SessionContext,
        catalog: Arc<Catalog>,
        executor: Executor,
        chunk_stats: Arc<crate::prune::ChunkStatistics>,
        partitions: usize,
    ) -> Session {
        let core = SessionCore {
            chunk_stats,
            engine,
            planner,
            catalog,
            executor,
            partitions,
            mutation_lock: tokio::sync::Mutex::new(()),
        };
        Session {
            core: Arc::new(core),
        }
    }

    /// A builder with the defaults.
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Context {
        &self.core.engine
    }

    /// True when `other` is a handle of this same session.
    pub fn same_as(&self, other: &Session) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }

    /// Partitions per table and per exchange.
    pub fn partitions(&self) -> usize {
        self.core.partitions
    }

    pub(crate) fn planner(&self) -> &SessionContext {
        &self.core.planner
    }

    pub(crate) fn planner_state(&self) -> SessionState {
        self.core.planner.state()
    }

    pub(crate) fn chunk_stats(&self) -> &crate::prune::ChunkStatistics {
        &self.core.chunk_stats
    }

    pub(crate) fn mutation_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.core.mutation_lock
    }

    /// Runs `f` while no query can take its table snapshot and submit its tasks: what `f`
    /// submits is ordered entirely before or entirely after each query's tasks.
    pub(crate) fn with_catalog_locked<T>(&self, f: impl FnOnce() -> T) -> T {
        let _catalog = self.core.catalog.lock();
        f()
    }

    /// Names of the tables, sorted.
    pub fn table_names(&self) -> Vec<String> {
        self.core.catalog.names()
    }

    /// A snapshot of a table.
    pub fn table(&self, name: &str) -> Result<DTable> {
        self.core.catalog.get(name)
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
        let n = self.core.partitions;
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
            partitions.push(vec![self.core.engine.put(chunk)?]);
        }
        Ok(DTable::new(schema, partitions))
    }

    fn register(&self, name: &str, table: DTable, replace: bool) -> Result<()> {
        self.core.catalog.register_with(name, table, replace, || ())
    }

    /// [`Session::register_replacing`], running `alongside` under the catalog's lock: no
    /// query sees the new table without what `alongside` submits, or the other way round.
    pub(crate) fn register_replacing_with<T>(
        &self,
        name: &str,
        table: DTable,
        alongside: impl FnOnce() -> T,
    ) -> Result<T> {
        self.core
            .catalog
            .register_with(name, table, true, alongside)
    }

    /// Registers a table a statement needs while it runs, under a fresh name with `what` in it
    /// (hidden from [`Session::table_names`]); [`Session::drop_temp`] removes it.
    pub(crate) fn register_temp(&self, what: &str, table: DTable) -> Result<String> {
        self.core.catalog.register_temp(what, table)
    }

    /// Drops a table [`Session::register_temp`] made and frees its chunks.
    pub(crate) fn drop_temp(&self, name: &str) -> Result<()> {
        self.core.catalog.remove(name).map(|_| ())
    }

    /// Registers `table` as `name`, replacing any table of that name.
    pub fn register_replacing(&self, name: &str, table: DTable) -> Result<()> {
        self.register(name, table, true)
    }

    /// Moves a table to a new name (`ALTER TABLE ... RENAME TO`); its chunks stay.
    pub(crate) fn register_moved(&self, from: &str, to: &str, table: DTable) -> Result<()> {
        self.core.catalog.rename(from, to, table)
    }

    /// Runs a SQL statement. Queries return a [`DataFrame`] to collect; DDL and DML run at once
    /// and return their result (for `INSERT`, the row count).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        let state = self.core.planner.state();
        // Tables a statement makes go to the planner's default schema as of now (`SET
        // datafusion.catalog.default_schema` moves it).
        self.core.catalog.follow(&state)?;
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        self.refresh_external(&state, &statement).await?;
        if let datafusion::sql::parser::Statement::Statement(s) = &statement {
            use crate::dml::rowchange::ChangeStatement;
            use datafusion::sql::sqlparser::ast::Statement as Ast;
            let change = match s.as_ref() {
                Ast::AlterTable(alter) => {
                    let rows = self.alter_table(alter).await?;
                    return self.count(rows);
                }
                s if !crate::dml::rowchange::reads_other_tables(s) => None,
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
                    let plan = state.statement_to_plan(statement.clone()).await?;
                    state.optimize(&plan)?;
                }
                let rows = self.change_rows(change).await?;
                return self.count(rows);
            }
        }
        let plan = state.statement_to_plan(statement.clone()).await?;
        self.execute_logical(plan).await
    }

    async fn execute_logical(&self, plan: LogicalPlan) -> Result<DataFrame> {
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => {
                let _one_at_a_time = self.core.mutation_lock.lock().await;
                let name = c.name.table().to_string();
                if self.core.catalog.contains(&name) && c.if_not_exists {
                    return self.empty();
                }
                let table = self.run_plan((*c.input).clone()).await?;
                self.register(&name, table, c.or_replace)?;
                self.empty()
            }
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(c)) => {
                let _one_at_a_time = self.core.mutation_lock.lock().await;
                let name = c.name.table().to_string();
                if self.core.catalog.contains(&name) {
                    if c.if_not_exists {
                        return self.empty();
                    }
                    if !c.or_replace {
                        return Err(DirkError::TableExists { name });
                    }
                }
                let files = crate::ingest::external_files(&self.core.planner.state(), &c).await?;
                let stamps =
                    crate::ingest::list_files(&self.core.planner.state(), files.as_ref()).await?;
                let table =
                    crate::ingest::read_files(&self.core.executor, &c.name, Arc::clone(&files))
                        .await?;
                self.register(&name, table, c.or_replace)?;
                if let Some(stamps) = stamps {
                    self.core
                        .catalog
                        .external()
                        .insert(name, ExternalSource { files, stamps });
                }
                self.empty()
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(d)) => {
                let _one_at_a_time = self.core.mutation_lock.lock().await;
                let name = d.name.table().to_string();
                if self.core.catalog.remove(&name)? {
                    return self.empty();
                }
                if self.core.planner.table_exist(d.name.clone())? {
                    // Not a DTable: a provider registered with DataFusion directly.
                    self.core
                        .planner
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
                self.core
                    .planner
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
                let df = DfDataFrame::new(self.core.planner.state(), (*e.plan).clone());
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
                let df = DfDataFrame::new(self.core.planner.state(), (*a.input).clone());
                let physical = df.create_physical_plan().await?;
                let text = self.core.executor.explain_analyze(physical).await?;
                self.plan_rows(vec![("Plan with Metrics".to_string(), text)])
            }
            plan => Ok(DataFrame::new(
                self.clone(),
                DfDataFrame::new(self.core.planner.state(), plan),
            )),
        }
    }

    /// `SET`, `RESET`, `PREPARE`, `EXECUTE`, transactions: DataFusion's handling, except that
    /// the options Dirk keeps off stay off, and an `EXECUTE` runs through Dirk's tasks.
    async fn statement(&self, statement: Statement) -> Result<DataFrame> {
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
            .core
            .planner
            .execute_logical_plan(LogicalPlan::Statement(statement))
            .await?;
        let state = self.core.planner.state_ref();
        let mut state = state.write();
        for key in PINNED_OFF {
            state.config_mut().options_mut().set(key, "false")?;
        }
        drop(state);
        match df.logical_plan() {
            LogicalPlan::EmptyRelation(_) => self.empty(),
            _ => Ok(DataFrame::new(self.clone(), df)),
        }
    }

    /// Reads again each external table `statement` names whose files changed since it was
    /// last read (see [`ExternalSource`]).
    async fn refresh_external(
        &self,
        state: &SessionState,
        statement: &datafusion::sql::parser::Statement,
    ) -> Result<()> {
        if self.core.catalog.external().is_empty() {
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
                .core
                .catalog
                .external()
                .get(&name)
                .map(|s| Arc::clone(&s.files))
            else {
                continue;
            };
            let stamps = crate::ingest::list_files(state, files.as_ref()).await?;
            let unchanged = |external: &HashMap<String, ExternalSource>| {
                external.get(&name).is_none_or(|s| {
                    !Arc::ptr_eq(&s.files, &files) || Some(&s.stamps) == stamps.as_ref()
                })
            };
            if unchanged(&self.core.catalog.external()) {
                continue;
            }
            let _one_at_a_time = self.core.mutation_lock.lock().await;
            // Another statement may have read it again, changed it or dropped it meanwhile.
            if unchanged(&self.core.catalog.external()) {
                continue;
            }
            let table = crate::ingest::read_files(
                &self.core.executor,
                &datafusion::common::TableReference::bare(name.as_str()),
                Arc::clone(&files),
            )
            .await?;
            self.register(&name, table, true)?;
            if let Some(stamps) = stamps {
                self.core
                    .catalog
                    .external()
                    .insert(name, ExternalSource { files, stamps });
            }
        }
        Ok(())
    }

    /// Reads CSV files (a file, a directory, or a glob) into a DTable registered as `name`, as
    /// `CREATE EXTERNAL TABLE name STORED AS CSV LOCATION path` does.
    pub async fn register_csv(
        &self,
        name: &str,
        path: &str,
        options: CsvReadOptions<'_>,
    ) -> Result<DTable> {
        let plan = self.core.planner.read_csv(path, options).await?;
        self.register_ingested(name, plan).await
    }

    /// Reads Parquet files into a DTable registered as `name`.
    pub async fn register_parquet(
        &self,
        name: &str,
        path: &str,
        options: ParquetReadOptions<'_>,
    ) -> Result<DTable> {
        let plan = self.core.planner.read_parquet(path, options).await?;
        self.register_ingested(name, plan).await
    }

    async fn register_ingested(&self, name: &str, files: DfDataFrame) -> Result<DTable> {
        if self.core.catalog.contains(name) {
            return Err(DirkError::TableExists { name: name.into() });
        }
        let table =
            crate::ingest::read_plan(&self.core.executor, files.into_unoptimized_plan()).await?;
        self.register(name, table.clone(), false)?;
        Ok(table)
    }

    /// A DataFrame over CSV files, read afresh by the tasks of each query that runs it.
    pub async fn read_csv(&self, path: &str, options: CsvReadOptions<'_>) -> Result<DataFrame> {
        Ok(DataFrame::new(
            self.clone(),
            self.core.planner.read_csv(path, options).await?,
        ))
    }

    /// A DataFrame over Parquet files, read afresh by the tasks of each query that runs it.
    pub async fn read_parquet(
        &self,
        path: &str,
        options: ParquetReadOptions<'_>,
    ) -> Result<DataFrame> {
        Ok(DataFrame::new(
            self.clone(),
            self.core.planner.read_parquet(path, options).await?,
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
        let homes = self.core.engine.workers();
        self.core.executor.run_physical(exchange, &homes).await
    }

    /// Moves every chunk of table `name` to `worker` and pins it there: tasks that read the
    /// table run on that worker, and the scheduler never moves its chunks.
    pub fn pin_table(&self, name: &str, worker: WorkerId) -> Result<DTable> {
        let table = self.table(name)?;
        if !self.core.engine.workers().contains(&worker) {
            return Err(DirkError::Unsupported {
                what: format!("pinning to worker {}: no such worker", worker.0),
            });
        }
        let mut partitions = Vec::with_capacity(table.num_partitions());
        for part in table.partitions() {
            let mut moved = Vec::with_capacity(part.len());
            for c in part {
                let data = self.core.engine.fetch(c)?;
                let chunk = Chunk::new(c.schema.clone(), data.batches().to_vec());
                moved.push(self.core.engine.put_on(worker, chunk, true)?);
            }
            partitions.push(moved);
        }
        let pinned = DTable::new(table.schema().clone(), partitions);
        self.register(name, pinned.clone(), true)?;
        Ok(pinned)
    }

    /// A DataFrame over a registered table.
    pub async fn table_df(&self, name: &str) -> Result<DataFrame> {
        Ok(DataFrame::new(
            self.clone(),
            self.core.planner.table(name).await?,
        ))
    }

    /// No rows and no columns: what a statement returns.
    fn empty(&self) -> Result<DataFrame> {
        let plan = datafusion::logical_expr::LogicalPlanBuilder::empty(false).build()?;
        Ok(DataFrame::new(
            self.clone(),
            DfDataFrame::new(self.core.planner.state(), plan),
        ))
    }

    fn count(&self, rows: u64) -> Result<DataFrame> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "count",
            DataType::UInt64,
            false,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![rows]))])
            .map_err(datafusion::error::DataFusionError::from)?;
        Ok(DataFrame::new(
            self.clone(),
            self.core.planner.read_batch(batch)?,
        ))
    }

    /// A two-column result (`plan_type`, `plan`), as DataFusion's `EXPLAIN` gives.
    fn plan_rows(&self, rows: Vec<(String, String)>) -> Result<DataFrame> {
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
        Ok(DataFrame::new(
            self.clone(),
            self.core.planner.read_batch(batch)?,
        ))
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
        self.core.executor.explain_plan(df).await
    }

    /// Plans and runs a logical plan; the result stays on the workers as a DTable.
    pub async fn run_plan(&self, plan: LogicalPlan) -> Result<DTable> {
        self.core.executor.run_plan(plan).await
    }

    /// Cuts a physical plan into stages and runs one task per stage partition through the
    /// engine; returns the final stage's outputs as a DTable and frees the intermediates.
    pub async fn run_physical(&self, physical: Arc<dyn ExecutionPlan>) -> Result<DTable> {
        self.core.executor.run_physical(physical, &[]).await
    }

    /// Plans and runs a logical plan, streaming its result to the caller.
    pub(crate) async fn execute_stream(&self, plan: LogicalPlan) -> Result<RecordBatchStream> {
        self.core.executor.execute_stream(plan).await
    }
}
