//! The session: the public front of a catalog of DTables, the planner, and the engine
//! underneath. Each method hands its work to the module that does it (the statement router,
//! DML, layout, ingestion, the executor); they share a [`SessionCore`].

use crate::builder::SessionBuilder;
use crate::core::SessionCore;
use crate::dataframe::DataFrame;
use crate::dml::inplace;
use crate::error::{unless_panicked, DirkError, Result};
use crate::stream::RecordBatchStream;
use crate::table::DTable;
use crate::tpch::TpchLayout;
use arrow::array::RecordBatch;
use datafusion::dataframe::DataFrame as DfDataFrame;
use datafusion::logical_expr::dml::CopyTo;
use datafusion::logical_expr::{Expr, LogicalPlan, SortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions};
use dirk_engine::{Context, WorkerId};
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

impl Session {
    /// The session the builder made.
    pub(crate) fn core(&self) -> &SessionCore {
        &self.core
    }

    pub(crate) fn assemble(core: SessionCore) -> Session {
        let core = Arc::new(core);
        crate::core::watch_lost_workers(&core);
        Session { core }
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

    /// Names of the tables, sorted.
    pub fn table_names(&self) -> Vec<String> {
        self.core.catalog.names()
    }

    /// Where each resident table's chunks are: per table and worker, chunks and rows, and the
    /// bytes in memory and on disk (chunks spilled by the worker's memory budget). Sorted by
    /// table and worker; tables that stay in their files are not listed.
    pub fn table_storage(&self) -> Vec<TableStorage> {
        let spilled: std::collections::HashMap<dirk_engine::ChunkId, u64> = self
            .engine()
            .worker_status()
            .into_iter()
            .flat_map(|w| w.memory.spilled_chunks)
            .collect();
        let mut rows = Vec::new();
        for name in self.table_names() {
            let Ok(table) = self.table(&name) else {
                continue;
            };
            let mut per_worker: std::collections::BTreeMap<WorkerId, TableStorage> =
                Default::default();
            for c in table.chunks() {
                let e = per_worker.entry(c.owner).or_insert_with(|| TableStorage {
                    table: name.clone(),
                    worker: c.owner,
                    chunks: 0,
                    rows: 0,
                    spilled_chunks: 0,
                    memory_bytes: 0,
                    disk_bytes: 0,
                });
                e.chunks += 1;
                e.rows += c.rows;
                match spilled.get(&c.id) {
                    Some(disk) => {
                        e.spilled_chunks += 1;
                        e.disk_bytes += disk;
                    }
                    None => e.memory_bytes += c.bytes,
                }
            }
            rows.extend(per_worker.into_values());
        }
        rows
    }

    /// A snapshot of a table.
    pub fn table(&self, name: &str) -> Result<DTable> {
        self.core.table(name)
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
        let table = self.core.put_batches(schema, batches)?;
        self.core.register(name, table.clone(), false)?;
        Ok(table)
    }

    /// Registers `table` as `name`, replacing any table of that name.
    pub fn register_replacing(&self, name: &str, table: DTable) -> Result<()> {
        self.core.register_replacing(name, table)
    }

    /// Runs a SQL statement. Queries return a [`DataFrame`] to collect; DDL and DML run at once
    /// and return their result (for DML, the row count). See `router.rs` for where each kind of
    /// statement goes.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        let df = unless_panicked(
            "planning the statement",
            crate::router::run_sql(&self.core, sql),
        )
        .await?;
        Ok(self.frame(df))
    }

    fn frame(&self, df: DfDataFrame) -> DataFrame {
        DataFrame::new(self.clone(), df)
    }

    /// Reads CSV files (a file, a directory, or a glob) into a resident DTable registered as
    /// `name`. (`CREATE EXTERNAL TABLE name STORED AS CSV LOCATION path` leaves the rows in
    /// the files instead, read by each query.)
    pub async fn register_csv(
        &self,
        name: &str,
        path: &str,
        options: CsvReadOptions<'_>,
    ) -> Result<DTable> {
        let files = self.core.planner.read_csv(path, options).await?;
        self.register_ingested(name, files).await
    }

    /// Reads Parquet files into a resident DTable registered as `name`.
    pub async fn register_parquet(
        &self,
        name: &str,
        path: &str,
        options: ParquetReadOptions<'_>,
    ) -> Result<DTable> {
        let files = self.core.planner.read_parquet(path, options).await?;
        self.register_ingested(name, files).await
    }

    async fn register_ingested(&self, name: &str, files: DfDataFrame) -> Result<DTable> {
        self.core.check_free(name)?;
        let table =
            crate::ingest::read_plan(&self.core.executor, files.into_unoptimized_plan()).await?;
        self.core.register(name, table.clone(), false)?;
        Ok(table)
    }

    /// A DataFrame over CSV files, read afresh by the tasks of each query that runs it.
    pub async fn read_csv(&self, path: &str, options: CsvReadOptions<'_>) -> Result<DataFrame> {
        Ok(self.frame(self.core.planner.read_csv(path, options).await?))
    }

    /// A DataFrame over Parquet files, read afresh by the tasks of each query that runs it.
    pub async fn read_parquet(
        &self,
        path: &str,
        options: ParquetReadOptions<'_>,
    ) -> Result<DataFrame> {
        Ok(self.frame(self.core.planner.read_parquet(path, options).await?))
    }

    /// A DataFrame over a registered table.
    pub async fn table_df(&self, name: &str) -> Result<DataFrame> {
        Ok(self.frame(self.core.planner.table(name).await?))
    }

    /// Redistributes table `name` over `n` partitions, batch by batch, spread over the
    /// workers; the new layout replaces the old.
    pub async fn repartition(&self, name: &str, n: usize) -> Result<DTable> {
        crate::layout::repartition(&self.core, name, n).await
    }

    /// Redistributes table `name` over `n` partitions so that rows with equal `columns` share a
    /// partition, and remembers it: queries that group or join on `columns` then read the
    /// table where it is instead of exchanging it (a join needs its other side split the same
    /// way, by a query's exchange or by `repartition_by` with the same `n`). Partition `p` is
    /// made on worker `p mod w` of the session's `w` workers, so tables repartitioned with the
    /// same `n` are joined partition by partition without moving. An `INSERT`, or an `UPDATE`
    /// of one of `columns`, makes the partitioning unknown again (the rows stay).
    pub async fn repartition_by(&self, name: &str, columns: &[&str], n: usize) -> Result<DTable> {
        crate::layout::repartition_by(&self.core, name, columns, n).await
    }

    /// Adds the `dirk worker` at `address` to a session on worker processes: new work, and the
    /// partitions of tables made from now on, may go there. Returns the worker's id. An embedded
    /// session has no worker processes to add to, and says so.
    pub async fn add_worker(&self, address: &str) -> Result<WorkerId> {
        self.core.add_worker(address).await
    }

    /// Moves every chunk of table `name` to `worker` and pins it there: tasks that read the
    /// table run on that worker, and the scheduler never moves its chunks.
    pub fn pin_table(&self, name: &str, worker: WorkerId) -> Result<DTable> {
        crate::layout::pin(&self.core, name, worker)
    }

    /// Generates TPC-H at scale factor `scale` on the workers and registers its eight tables
    /// (replacing tables of the same names). The small `nation` and `region` tables have one
    /// partition; the others have the session's partition count. `orders` and `lineitem` are
    /// then hash-partitioned by order key ([`TpchLayout::ByOrderKey`]).
    pub async fn load_tpch(&self, scale: f64) -> Result<Vec<(String, DTable)>> {
        self.load_tpch_with(scale, TpchLayout::ByOrderKey).await
    }

    /// [`load_tpch`](Self::load_tpch) with the layout of `orders` and `lineitem` chosen.
    pub async fn load_tpch_with(
        &self,
        scale: f64,
        layout: TpchLayout,
    ) -> Result<Vec<(String, DTable)>> {
        crate::tpch::load(&self.core, scale, layout).await
    }

    /// Sets `assignments` (column, new value) on the rows where `predicate` is true, in place.
    /// Returns the number of rows updated.
    pub async fn update(
        &self,
        table: &str,
        predicate: Expr,
        assignments: Vec<(&str, Expr)>,
    ) -> Result<u64> {
        inplace::update(&self.core, table, predicate, assignments).await
    }

    /// Deletes the rows where `predicate` is true. Returns the number of rows deleted.
    pub async fn delete_where(&self, table: &str, predicate: Expr) -> Result<u64> {
        inplace::delete_where(&self.core, table, predicate).await
    }

    /// Appends `batches` (of the table's column types) as new chunks. Returns the rows added.
    pub async fn append(&self, table: &str, batches: Vec<RecordBatch>) -> Result<u64> {
        inplace::append(&self.core, table, batches).await
    }

    /// Appends the result of a DataFrame (run as tasks; its chunks join the table where they
    /// were made). Returns the rows added.
    pub async fn append_df(&self, table: &str, df: DataFrame) -> Result<u64> {
        let plan = df.inner().logical_plan().clone();
        crate::dml::insert_plan(
            &self.core,
            table,
            plan,
            datafusion::logical_expr::dml::InsertOp::Append,
        )
        .await
    }

    /// Sets column `name` to `value` on every row: in place when the column exists, as a new
    /// column (existing columns untouched) when it does not. Returns the rows changed.
    pub async fn with_column_inplace(&self, table: &str, name: &str, value: Expr) -> Result<u64> {
        inplace::with_column_inplace(&self.core, table, name, value).await
    }

    /// Replaces nulls in `column` by `value`, in place. Returns the rows changed.
    pub async fn fill_null(&self, table: &str, column: &str, value: Expr) -> Result<u64> {
        let predicate = datafusion::prelude::col(column).is_null();
        self.update(table, predicate, vec![(column, value)]).await
    }

    /// Renames a column (the catalog changes; no data moves). Returns 0: no row changes.
    pub async fn rename_column(&self, table: &str, from: &str, to: &str) -> Result<u64> {
        crate::dml::rename_column_in(&self.core, table, from, to).await?;
        Ok(0)
    }

    /// Drops columns; the others keep their buffers. Returns the table's rows.
    pub async fn drop_columns(&self, table: &str, columns: &[&str]) -> Result<u64> {
        inplace::drop_columns(&self.core, table, columns).await
    }

    /// Sorts the table by `by`: the table's rows are replaced by the sorted result, kept in
    /// the session's partition count, each partition a consecutive range. Returns the rows.
    pub async fn sort_inplace(&self, table: &str, by: Vec<SortExpr>) -> Result<u64> {
        inplace::sort_inplace(&self.core, table, by).await
    }

    /// Removes every row. Returns the number removed.
    pub async fn truncate(&self, table: &str) -> Result<u64> {
        crate::dml::truncate_rows(&self.core, table).await
    }

    /// Runs a `COPY` (see `export`); the number of rows written.
    pub(crate) async fn copy(&self, copy: CopyTo) -> Result<u64> {
        crate::export::copy_to(&self.core.executor, copy).await
    }

    /// Plans and runs a logical plan; the result stays on the workers as a DTable.
    pub async fn run_plan(&self, plan: LogicalPlan) -> Result<DTable> {
        self.core.run_plan(plan).await
    }

    /// Cuts a physical plan into stages and runs one task per stage partition through the
    /// engine; returns the final stage's outputs as a DTable and frees the intermediates.
    pub async fn run_physical(&self, physical: Arc<dyn ExecutionPlan>) -> Result<DTable> {
        self.core.executor.run_physical(physical, &[]).await
    }

    /// Plans and runs a logical plan, streaming its result to the caller.
    pub(crate) async fn execute_stream(&self, plan: LogicalPlan) -> Result<RecordBatchStream> {
        unless_panicked(
            "planning the query",
            self.core.executor.execute_stream(plan),
        )
        .await
    }

    /// The staged plan of `df`, as `EXPLAIN` shows it.
    pub(crate) async fn explain_plan(&self, df: DfDataFrame) -> Result<String> {
        self.core.executor.explain_plan(df).await
    }
}

/// One resident table's chunks on one worker ([`Session::table_storage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStorage {
    /// The table.
    pub table: String,
    /// The worker.
    pub worker: WorkerId,
    /// Its chunks there.
    pub chunks: usize,
    /// Rows in them.
    pub rows: u64,
    /// How many are spilled to disk.
    pub spilled_chunks: usize,
    /// Bytes of the chunks in memory (their values).
    pub memory_bytes: u64,
    /// Bytes of the spill files of the chunks on disk (compressed).
    pub disk_bytes: u64,
}
