//! The session: the catalog of DTables, the planner, and the engine underneath.

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
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use dirk_engine::{Arg, Chunk, Context, TaskHandle, TaskOptions};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Builds a [`Session`].
#[derive(Debug, Clone, Default)]
pub struct SessionBuilder {
    workers: Option<usize>,
    partitions: Option<usize>,
}

impl SessionBuilder {
    /// In-process workers (default: one per core).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n.max(1));
        self
    }

    /// Partitions per table and per exchange (default: one per worker).
    pub fn partitions(mut self, n: usize) -> Self {
        self.partitions = Some(n.max(1));
        self
    }

    /// Starts the engine and an empty catalog.
    pub fn build(self) -> Result<Session> {
        let mut engine = Context::builder();
        if let Some(w) = self.workers {
            engine = engine.workers(w);
        }
        let engine = engine.build()?;
        engine.register_kernel(Arc::new(FragmentKernel));
        engine.register_kernel(Arc::new(crate::tpch::TpchGenKernel));
        let partitions = self.partitions.unwrap_or(engine.workers().len());
        let mut config = SessionConfig::new()
            .with_target_partitions(partitions)
            .with_information_schema(true);
        // DataFusion 55 can run uncorrelated scalar subqueries in a `ScalarSubqueryExec` whose
        // results reach expressions deep in its input through shared memory; a fragment cut out
        // below it could not see them. Planned as joins instead, they distribute like any join.
        let optimizer = &mut config.options_mut().optimizer;
        optimizer.enable_physical_uncorrelated_scalar_subquery = false;
        // Dynamic filters are shared in memory between the partitions of one plan instance
        // (a partitioned hash join even waits at a barrier for every partition's build side).
        // Dirk runs partitions as separate tasks with separate plan instances: a barrier would
        // never fill. Off until Dirk ships filters between tasks itself.
        optimizer.enable_dynamic_filter_pushdown = false;
        optimizer.enable_join_dynamic_filter_pushdown = false;
        optimizer.enable_topk_dynamic_filter_pushdown = false;
        optimizer.enable_aggregate_dynamic_filter_pushdown = false;
        Ok(Session {
            engine: Arc::new(engine),
            planner: SessionContext::new_with_config(config),
            tables: Mutex::new(BTreeMap::new()),
            partitions,
            temp_counter: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

/// A Dirk session: owns the engine (workers and scheduler) and the catalog of DTables. SQL and
/// DataFrame calls both become DataFusion plans, which Dirk cuts into stages and runs as tasks.
pub struct Session {
    engine: Arc<Context>,
    planner: SessionContext,
    tables: Mutex<BTreeMap<String, DTable>>,
    partitions: usize,
    temp_counter: std::sync::atomic::AtomicU64,
}

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

    /// Names of the tables, sorted.
    pub fn table_names(&self) -> Vec<String> {
        self.tables
            .lock()
            .keys()
            .filter(|n| !n.starts_with("__driver_source_"))
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

    fn put_batches(&self, schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<DTable> {
        let all =
            concat_batches(&schema, &batches).map_err(datafusion::error::DataFusionError::from)?;
        let rows = all.num_rows();
        let n = self.partitions;
        let mut partitions = Vec::with_capacity(n);
        for p in 0..n {
            let start = rows * p / n;
            let end = rows * (p + 1) / n;
            let chunk = Chunk::new(schema.clone(), vec![all.slice(start, end - start)]);
            partitions.push(vec![self.engine.put(chunk)?]);
        }
        Ok(DTable::new(schema, partitions))
    }

    fn register(&self, name: &str, table: DTable, replace: bool) -> Result<()> {
        let mut tables = self.tables.lock();
        if tables.contains_key(name) && !replace {
            return Err(DirkError::TableExists { name: name.into() });
        }
        let provider = DTableProvider {
            name: name.to_string(),
            table: table.clone(),
        };
        self.planner.deregister_table(name)?;
        self.planner.register_table(name, Arc::new(provider))?;
        let kept: std::collections::HashSet<_> = table.chunks().map(|c| c.id).collect();
        if let Some(old) = tables.insert(name.to_string(), table) {
            drop(tables);
            // A new version (an INSERT) shares its old chunks; free only what it dropped.
            let gone: Vec<_> = old
                .chunks()
                .filter(|c| !kept.contains(&c.id))
                .cloned()
                .collect();
            self.engine.free(&gone)?;
        }
        Ok(())
    }

    /// Registers `table` as `name`, replacing any table of that name.
    pub fn register_replacing(&self, name: &str, table: DTable) -> Result<()> {
        self.register(name, table, true)
    }

    fn drop_table(&self, name: &str) -> Result<bool> {
        let Some(old) = self.tables.lock().remove(name) else {
            return Ok(false);
        };
        self.planner.deregister_table(name)?;
        self.engine
            .free(&old.chunks().cloned().collect::<Vec<_>>())?;
        Ok(true)
    }

    /// Runs a SQL statement. Queries return a [`DataFrame`] to collect; DDL and DML run at once
    /// and return their result (for `INSERT`, the row count).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame<'_>> {
        let plan = self.planner.state().create_logical_plan(sql).await?;
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => {
                let name = c.name.table().to_string();
                if self.tables.lock().contains_key(&name) && c.if_not_exists {
                    return self.empty();
                }
                let table = self.run_plan((*c.input).clone()).await?;
                self.register(&name, table, c.or_replace)?;
                self.empty()
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(d)) => {
                let name = d.name.table().to_string();
                if !self.drop_table(&name)? && !d.if_exists {
                    return Err(DirkError::TableNotFound { name });
                }
                self.empty()
            }
            LogicalPlan::Dml(DmlStatement {
                table_name,
                op: WriteOp::Insert(_),
                input,
                ..
            }) => {
                let name = table_name.table().to_string();
                let mut table = self.table(&name)?;
                let new = self.run_plan((*input).clone()).await?;
                let rows = new.num_rows();
                table.append(new)?;
                self.register(&name, table, true)?;
                self.count(rows)
            }
            LogicalPlan::Ddl(other) => Err(DirkError::Unsupported {
                what: other.name().to_string(),
            }),
            LogicalPlan::Dml(d) => Err(DirkError::Unsupported {
                what: format!("{} (in-place mutation comes in its own issue)", d.op),
            }),
            LogicalPlan::Explain(e) if !e.verbose => {
                let df = DfDataFrame::new(self.planner.state(), (*e.plan).clone());
                let text = self.explain_plan(df).await?;
                self.text_result("plan", text)
            }
            plan => Ok(DataFrame {
                session: self,
                df: DfDataFrame::new(self.planner.state(), plan),
            }),
        }
    }

    /// A DataFrame over a registered table.
    pub async fn table_df(&self, name: &str) -> Result<DataFrame<'_>> {
        Ok(DataFrame {
            session: self,
            df: self.planner.table(name).await?,
        })
    }

    fn empty(&self) -> Result<DataFrame<'_>> {
        Ok(DataFrame {
            session: self,
            df: self.planner.read_empty()?,
        })
    }

    fn count(&self, rows: u64) -> Result<DataFrame<'_>> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "count",
            DataType::UInt64,
            false,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![rows]))])
            .map_err(datafusion::error::DataFusionError::from)?;
        Ok(DataFrame {
            session: self,
            df: self.planner.read_batch(batch)?,
        })
    }

    fn text_result(&self, column: &str, text: String) -> Result<DataFrame<'_>> {
        let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(arrow::array::StringArray::from(vec![text]))],
        )
        .map_err(datafusion::error::DataFusionError::from)?;
        Ok(DataFrame {
            session: self,
            df: self.planner.read_batch(batch)?,
        })
    }

    async fn explain_plan(&self, df: DfDataFrame) -> Result<String> {
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
        let schema = physical.schema();
        let mut driver_tables = Vec::new();
        let physical = self
            .materialize_driver_leaves(physical, &mut driver_tables)
            .await?;
        let result = self.run_staged(physical, schema).await;
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
            let batches =
                datafusion::physical_plan::collect(Arc::clone(&plan), self.planner.task_ctx())
                    .await?;
            let schema = plan.schema();
            let name = format!("__driver_source_{}", self.next_temp());
            let table = if batches.iter().all(|b| b.num_rows() == 0) {
                DTable::new(schema.clone(), vec![])
            } else {
                self.put_batches(schema.clone(), batches)?
            };
            self.register(&name, table.clone(), false)?;
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
    ) -> Result<DTable> {
        let staged = cut(physical)?;
        let handles = self.spawn_stages(&staged)?;
        let last = handles.last().expect("final stage");
        let mut partitions = Vec::with_capacity(last.len());
        let mut failure = None;
        for h in last {
            match h.join().await {
                Ok(out) => partitions.push(out.chunks),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        // Intermediate outputs are not needed once the final stage has run.
        let mut intermediates = Vec::new();
        for stage in &handles[..handles.len() - 1] {
            for h in stage {
                if let Ok(out) = h.join().await {
                    intermediates.extend(out.chunks);
                }
            }
        }
        self.engine.free(&intermediates)?;
        if let Some(e) = failure {
            self.engine
                .free(&partitions.into_iter().flatten().collect::<Vec<_>>())?;
            return Err(e.into());
        }
        Ok(DTable::new(schema, partitions))
    }

    /// Spawns every task of every stage; returns the handles per stage.
    fn spawn_stages(&self, staged: &StagedPlan) -> Result<Vec<Vec<TaskHandle>>> {
        let snapshots = self.scan_snapshots(staged)?;
        let mut handles: Vec<Vec<TaskHandle>> = Vec::with_capacity(staged.stages.len());
        for stage in &staged.stages {
            let plan = encode_plan(&stage.fragment)?;
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
                };
                let opts = TaskOptions::new()
                    .params(encode_params(&header, &plan))
                    .label(format!("stage {} task {t}", stage.id));
                stage_handles.push(self.engine.spawn(FRAGMENT_KERNEL, args, opts));
            }
            handles.push(stage_handles);
        }
        Ok(handles)
    }

    /// The tables each scan leaf reads, as they are now (a consistent snapshot for the query).
    fn scan_snapshots(&self, staged: &StagedPlan) -> Result<HashMap<u32, DTable>> {
        fn walk(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<(u32, String)>) {
            if let Some(s) = plan.downcast_ref::<DTableScanExec>() {
                out.push((s.leaf(), s.table().to_string()));
            }
            for c in plan.children() {
                walk(c, out);
            }
        }
        let mut leaves = Vec::new();
        for st in &staged.stages {
            walk(&st.fragment, &mut leaves);
        }
        let tables = self.tables.lock();
        leaves
            .into_iter()
            .map(|(leaf, name)| {
                let t = tables
                    .get(&name)
                    .cloned()
                    .ok_or(DirkError::TableNotFound { name })?;
                Ok((leaf, t))
            })
            .collect()
    }
}

/// A query, planned lazily. Method chains build on DataFusion's `DataFrame`; `collect` runs the
/// plan through Dirk's stages and tasks.
pub struct DataFrame<'a> {
    session: &'a Session,
    df: DfDataFrame,
}

impl<'a> DataFrame<'a> {
    /// The DataFusion DataFrame underneath, for method chains.
    pub fn inner(&self) -> &DfDataFrame {
        &self.df
    }

    /// Replaces the plan with the result of a DataFusion DataFrame method chain.
    pub fn map(
        self,
        f: impl FnOnce(DfDataFrame) -> datafusion::error::Result<DfDataFrame>,
    ) -> Result<Self> {
        Ok(DataFrame {
            session: self.session,
            df: f(self.df)?,
        })
    }

    /// The output schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.df.schema().as_arrow().clone())
    }

    /// Runs the query; the result stays on the workers.
    pub async fn persist(self) -> Result<DTable> {
        self.session.run_plan(self.df.logical_plan().clone()).await
    }

    /// Runs the query and brings the result to the caller.
    pub async fn collect(self) -> Result<Vec<RecordBatch>> {
        let session = self.session;
        let table = self.persist().await?;
        let batches = table.collect(session.engine());
        session
            .engine()
            .free(&table.chunks().cloned().collect::<Vec<_>>())?;
        batches
    }

    /// The staged plan, as `EXPLAIN` shows it.
    pub async fn explain(self) -> Result<String> {
        self.session.explain_plan(self.df).await
    }
}
