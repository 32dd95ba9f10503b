//! The driver's side of running a staged plan: spawning one task per stage partition, waiting
//! for the final stage, and releasing everything a query made, whether it ends, fails, or its
//! result stream is dropped half-read.

use crate::catalog::Catalog;
use crate::error::{DirkError, Result};
use crate::exec::DTableScanExec;
use crate::kernels::fragment::{
    encode_params, encode_plan, FragmentHeader, LeafFeed, FRAGMENT_KERNEL,
};
use crate::stages::{cut, leaf_partitions, ReadMode, StageOutput, StagedPlan};
use crate::stores::{store_keys, StoreRegistry};
use crate::stream::RecordBatchStream;
use crate::table::DTable;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame as DfDataFrame;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use dirk_engine::{
    Arg, Chunk, ChunkRef, Context, ErrorKind, Scope, TaskHandle, TaskId, TaskOptions, WorkerId,
};
use futures::StreamExt as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Runs plans as stages of tasks: the only way Dirk executes a plan. It holds what running needs
/// and nothing of the session's statements: the engine, the catalog (a query's table snapshot,
/// temporary tables for driver-side leaves) and the planner (physical planning, settings).
#[derive(Clone)]
pub(crate) struct Executor {
    engine: Arc<Context>,
    catalog: Arc<Catalog>,
    planner: SessionContext,
    /// Memory one task may use, in bytes (`SessionBuilder::memory`).
    task_memory: Option<usize>,
    /// The planner's object stores: a task that reads a store configured by a table's options
    /// carries them to its worker.
    stores: Arc<StoreRegistry>,
}

impl Executor {
    pub(crate) fn new(
        engine: Arc<Context>,
        catalog: Arc<Catalog>,
        planner: SessionContext,
        task_memory: Option<usize>,
        stores: Arc<StoreRegistry>,
    ) -> Self {
        Executor {
            engine,
            catalog,
            planner,
            task_memory,
            stores,
        }
    }

    /// The planner's object stores.
    pub(crate) fn stores(&self) -> &StoreRegistry {
        &self.stores
    }

    /// The planner the executor plans physical plans with.
    pub(crate) fn planner(&self) -> &SessionContext {
        &self.planner
    }

    pub(crate) async fn explain_plan(&self, df: DfDataFrame) -> Result<String> {
        let physical = df.create_physical_plan().await?;
        Ok(cut(physical)?.display())
    }

    /// Plans and runs a logical plan; the result stays on the workers as a DTable.
    pub(crate) async fn run_plan(&self, plan: LogicalPlan) -> Result<DTable> {
        let df = DfDataFrame::new(self.planner.state(), plan);
        let physical = df.create_physical_plan().await?;
        self.run_physical(physical, &[]).await
    }

    /// Cuts a physical plan into stages and runs one task per stage partition through the
    /// engine; returns the final stage's outputs as a DTable (partition `p` made on worker
    /// `homes[p % homes.len()]`, anywhere when `homes` is empty) and frees the intermediates.
    pub(crate) async fn run_physical(
        &self,
        physical: Arc<dyn ExecutionPlan>,
        homes: &[WorkerId],
    ) -> Result<DTable> {
        let schema = physical.schema();
        let (mut run, _) = self.start(physical, homes).await?;
        Ok(DTable::new(schema, run.finish().await?))
    }

    /// Plans and runs a logical plan, streaming its result to the caller.
    ///
    /// A hash join's build side cannot spill: when one fails for want of memory before the
    /// result has begun, the query runs again with sort-merge joins, whose sorts and buffers
    /// spill (queries only read, so running one again changes nothing).
    pub(crate) async fn execute_stream(&self, plan: LogicalPlan) -> Result<RecordBatchStream> {
        let df = DfDataFrame::new(self.planner.state(), plan.clone());
        let physical = df.create_physical_plan().await?;
        let schema = physical.schema();
        let hash_join = contains_hash_join(physical.as_ref());
        let (run, _) = self.start(physical, &[]).await?;
        let stream = run.into_stream(SchemaRef::clone(&schema));
        if !hash_join {
            return Ok(stream);
        }
        // Fused: a result with no batches has ended at the first poll, and ends again after.
        let mut stream = stream.fuse();
        let first = stream.next().await;
        if let Some(Err(e)) = &first {
            if e.kind() == ErrorKind::Retryable && e.to_string().contains("Resources exhausted") {
                return self.execute_merge_joined(plan).await;
            }
        }
        Ok(RecordBatchStream::new(
            schema,
            futures::stream::iter(first).chain(stream).boxed(),
        ))
    }

    /// Runs `plan` with sort-merge joins in place of hash joins.
    async fn execute_merge_joined(&self, plan: LogicalPlan) -> Result<RecordBatchStream> {
        let mut state = self.planner.state();
        state.config_mut().options_mut().optimizer.prefer_hash_join = false;
        let physical = DfDataFrame::new(state, plan).create_physical_plan().await?;
        let schema = physical.schema();
        let (run, _) = self.start(physical, &[]).await?;
        Ok(run.into_stream(schema))
    }

    /// Puts the plan's driver-side leaves on the workers, cuts the plan into stages and spawns
    /// their tasks.
    async fn start(
        &self,
        physical: Arc<dyn ExecutionPlan>,
        homes: &[WorkerId],
    ) -> Result<(QueryRun, StagedPlan)> {
        let mut driver_tables = Vec::new();
        let materialized = self
            .materialize_driver_leaves(physical, &mut driver_tables)
            .await;
        let staged = materialized.and_then(|physical| Ok(cut(physical)?));
        let staged = match staged {
            Ok(staged) => staged,
            Err(e) => {
                for name in driver_tables {
                    self.catalog.remove(&name)?;
                }
                return Err(e);
            }
        };
        let settings = self.execution_settings();
        // The snapshot and the submission happen under the catalog lock: a mutation commits
        // (or submits its writes) entirely before or entirely after this query's tasks.
        let tables = self.catalog.lock();
        let inputs = StageInputs {
            tables: &tables,
            settings,
            task_memory: self.task_memory,
            stores: &self.stores,
            homes,
        };
        // A run that fails to spawn is dropped here, under the lock: it is given the temporary
        // tables (which its drop would drop, taking the lock) only after.
        let spawned = QueryRun::spawn(self.clone(), &staged, inputs);
        drop(tables);
        match spawned {
            Ok(mut run) => {
                run.driver_tables = driver_tables;
                Ok((run, staged))
            }
            Err(e) => {
                for name in driver_tables {
                    self.catalog.remove(&name)?;
                }
                Err(e)
            }
        }
    }

    /// `EXPLAIN ANALYZE`: runs the plan, then prints each stage with what its tasks did.
    pub(crate) async fn explain_analyze(&self, physical: Arc<dyn ExecutionPlan>) -> Result<String> {
        let started = std::time::Instant::now();
        let schema = physical.schema();
        let (mut run, staged) = self.start(physical, &[]).await?;
        let table = DTable::new(schema, run.finish().await?);
        let wall = started.elapsed();
        let ids = run.task_ids();
        drop(run);
        self.engine
            .free(&table.chunks().cloned().collect::<Vec<_>>())?;
        Ok(explain_analyze_text(
            &self.engine,
            &staged,
            &ids,
            wall,
            table.num_rows() as usize,
        ))
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
            let plan = unproject_lazy_memory(plan)?;
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
            let name = self.catalog.register_temp("driver_source", table.clone())?;
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
}

/// What the tasks of one query need besides the plan.
pub(crate) struct StageInputs<'a> {
    /// The tables the plan's scans read, as they are at submission.
    pub(crate) tables: &'a BTreeMap<String, DTable>,
    /// Session options the workers must see as the planner does.
    pub(crate) settings: Vec<(String, String)>,
    /// Memory one task may use, in bytes, out of its worker's pool.
    pub(crate) task_memory: Option<usize>,
    /// The object stores the scans read.
    pub(crate) stores: &'a StoreRegistry,
    /// Final task `p` runs on `homes[p % homes.len()]`; anywhere when empty.
    pub(crate) homes: &'a [WorkerId],
}

/// The tasks of a query while it runs. Dropped, it cancels what still runs, frees every output
/// nobody took (intermediate chunks, final partitions not handed out) and drops the temporary
/// tables the query put on the workers.
pub(crate) struct QueryRun {
    executor: Executor,
    handles: Vec<Vec<TaskHandle>>,
    /// Final partitions before this one have been handed out.
    next: usize,
    /// Temporary tables holding driver-side leaves (see `Executor::materialize_driver_leaves`).
    driver_tables: Vec<String>,
}

impl QueryRun {
    /// Spawns every task of every stage of `staged`.
    fn spawn(executor: Executor, staged: &StagedPlan, inputs: StageInputs<'_>) -> Result<Self> {
        let mut run = QueryRun {
            executor,
            handles: Vec::with_capacity(staged.stages.len()),
            next: 0,
            driver_tables: Vec::new(),
        };
        spawn_stages(&run.executor.engine, staged, inputs, &mut run.handles)?;
        Ok(run)
    }

    /// The final stage's tasks.
    fn finals(&self) -> &[TaskHandle] {
        self.handles.last().map(Vec::as_slice).unwrap_or_default()
    }

    /// The task ids of each stage (for `EXPLAIN ANALYZE`).
    pub(crate) fn task_ids(&self) -> Vec<Vec<TaskId>> {
        self.handles
            .iter()
            .map(|stage| stage.iter().map(TaskHandle::id).collect())
            .collect()
    }

    /// Waits for every final task; returns the output chunks of each final partition. At the
    /// first failure the query's other tasks are cancelled.
    pub(crate) async fn finish(&mut self) -> Result<Vec<Vec<ChunkRef>>> {
        let finals = self.finals().to_vec();
        let mut partitions = vec![Vec::new(); finals.len()];
        let mut failure = None;
        let mut finishing: futures::stream::FuturesUnordered<_> = finals
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
                        self.cancel();
                    }
                    failure.get_or_insert(e);
                }
            }
        }
        drop(finishing);
        self.next = finals.len();
        if let Some(e) = failure {
            self.executor
                .engine
                .free(&partitions.into_iter().flatten().collect::<Vec<_>>())?;
            return Err(e.into());
        }
        Ok(partitions)
    }

    /// The chunks of the next final partition, once its task has finished; `None` after the
    /// last.
    async fn next_partition(&mut self) -> Option<Result<Vec<ChunkRef>>> {
        let handle = self.finals().get(self.next)?.clone();
        self.next += 1;
        match handle.join().await {
            Ok(out) => Some(Ok(out.chunks)),
            Err(e) => {
                // The stream ends here; dropping the run frees what the rest made.
                self.cancel();
                Some(Err(e.into()))
            }
        }
    }

    /// Turns the run into a stream of the final stage's batches, partition by partition; each
    /// chunk is freed on its worker once fetched.
    pub(crate) fn into_stream(self, schema: SchemaRef) -> RecordBatchStream {
        let engine = Arc::clone(&self.executor.engine);
        let table_schema = Arc::clone(&schema);
        let batches = futures::stream::unfold(Some(self), move |run| {
            let engine = Arc::clone(&engine);
            let schema = Arc::clone(&table_schema);
            async move {
                let mut run = run?;
                match run.next_partition().await? {
                    Ok(chunks) => {
                        let fetched = fetch_and_free(&engine, &chunks, &schema);
                        let ended = fetched.is_err();
                        Some((fetched, (!ended).then_some(run)))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        })
        .map(|fetched| futures::stream::iter(into_items(fetched)))
        .flatten();
        RecordBatchStream::new(schema, batches.boxed())
    }

    /// Cancels every task of the query that has not finished.
    fn cancel(&self) {
        self.handles.iter().flatten().for_each(TaskHandle::cancel);
    }
}

fn into_items(fetched: Result<Vec<RecordBatch>>) -> Vec<Result<RecordBatch>> {
    match fetched {
        Ok(batches) => batches.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e)],
    }
}

/// Brings `chunks` to the driver, presented with `schema`, and frees them on their workers.
fn fetch_and_free(
    engine: &Context,
    chunks: &[ChunkRef],
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let part = DTable::new(Arc::clone(schema), vec![chunks.to_vec()]);
    let batches = part.collect(engine);
    let freed = engine.free(chunks);
    let batches = batches?;
    freed?;
    Ok(batches)
}

impl Drop for QueryRun {
    fn drop(&mut self) {
        let finals = self.finals().len();
        if self.next < finals {
            // Dropped before its end: nobody will read the rest.
            self.cancel();
        }
        let engine = Arc::clone(&self.executor.engine);
        let mut done = Vec::new();
        let mut still_running = Vec::new();
        let stages = self.handles.len();
        for (s, stage) in self.handles.iter().enumerate() {
            // Final partitions handed out are the taker's to free.
            let skip = if s + 1 == stages { self.next } else { 0 };
            for h in stage.iter().skip(skip) {
                match h.try_result() {
                    Some(Ok(out)) => done.extend(out.chunks),
                    Some(Err(_)) => {}
                    None => still_running.push(h.clone()),
                }
            }
        }
        let _ = engine.free(&done);
        // Only a failed or abandoned query leaves tasks running: a cancelled task stops when its
        // kernel next checks. Their outputs are freed when they end.
        if !still_running.is_empty() {
            std::thread::spawn(move || {
                for h in still_running {
                    if let Ok(out) = h.wait() {
                        let _ = engine.free(&out.chunks);
                    }
                }
            });
        }
        for name in std::mem::take(&mut self.driver_tables) {
            let _ = self.executor.catalog.remove(&name);
        }
    }
}

/// Spawns every task of every stage into `handles`, one `Vec` per stage. The tables' snapshot
/// was taken by the caller, under the catalog lock that also covers this submission.
fn spawn_stages(
    engine: &Context,
    staged: &StagedPlan,
    inputs: StageInputs<'_>,
    handles: &mut Vec<Vec<TaskHandle>>,
) -> Result<()> {
    let final_stage = staged.last().id;
    let snapshots = scan_snapshots(inputs.tables, staged)?;
    let homes = inputs.homes;
    for stage in &staged.stages {
        let plan = encode_plan(&stage.fragment)?;
        let cost_class = cost_class_of(&plan);
        let keys = store_keys(&stage.fragment);
        let stores = inputs.stores.specs_for(keys.iter().map(String::as_str));
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
                settings: inputs.settings.clone(),
                memory_limit: inputs.task_memory,
                stores: stores.clone(),
                uses_storage: !keys.is_empty(),
            };
            let mut opts = TaskOptions::new()
                .params(encode_params(&header, &plan))
                .label(format!("stage {} task {t}", stage.id))
                .cost_class(cost_class);
            if stage.id == final_stage && !homes.is_empty() {
                opts = opts.scope(Scope::worker(homes[t % homes.len()]));
            }
            if writes_files(&stage.fragment) {
                opts = opts.once();
            }
            stage_handles.push(engine.spawn(FRAGMENT_KERNEL, args, opts));
        }
        handles.push(stage_handles);
    }
    Ok(())
}

/// A `LazyMemoryExec` (`generate_series`, `range`) that projects its generator's columns, as a
/// projection over one that does not. DataFusion's plan codec keeps the projected schema but
/// not the projection, so a worker would decode a source whose batches do not match its schema
/// (`SELECT count(*) FROM generate_series(1, 10)` projects no column at all). The full schema
/// is read off a first batch of a fresh copy of the generator.
fn unproject_lazy_memory(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::memory::LazyMemoryExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    let Some(lazy) = plan.downcast_ref::<LazyMemoryExec>() else {
        return Ok(plan);
    };
    let Some(first) = lazy.generators().first() else {
        return Ok(plan);
    };
    let probe = first.read().reset_state();
    let Some(batch) = probe.write().generate_next_batch()? else {
        return Ok(plan);
    };
    let full = batch.schema();
    if full == plan.schema() {
        return Ok(plan);
    }
    let fresh = lazy
        .generators()
        .iter()
        .map(|g| g.read().reset_state())
        .collect();
    let unprojected = Arc::new(LazyMemoryExec::try_new(Arc::clone(&full), fresh)?);
    let mut exprs = Vec::new();
    for field in plan.schema().fields() {
        let column = Column::new_with_schema(field.name(), &full)?;
        exprs.push((
            Arc::new(column) as Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            field.name().to_string(),
        ));
    }
    Ok(Arc::new(ProjectionExec::try_new(exprs, unprojected)?))
}

/// Whether a fragment writes files (`COPY`, `INSERT` into an external table): its tasks run at
/// most once, since a second run would stage its files again beside the first run's.
fn writes_files(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.name() == "DataSinkExec" || plan.children().into_iter().any(writes_files)
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

/// `EXPLAIN ANALYZE`'s text: each stage of `staged` with what its tasks (`ids`, per stage) did,
/// from the engine's event log: tasks, workers, wall time, task time, rows, and bytes moved
/// between workers to feed them.
pub(crate) fn explain_analyze_text(
    engine: &Context,
    staged: &StagedPlan,
    ids: &[Vec<TaskId>],
    wall: std::time::Duration,
    rows_out: usize,
) -> String {
    let log = engine.event_log();
    // A task's last record is its last attempt; the earlier ones failed with a lost worker.
    let by_task: HashMap<TaskId, &dirk_engine::TaskRecord> =
        log.records.iter().map(|r| (r.task, r)).collect();
    let mut retried: HashMap<TaskId, usize> = HashMap::new();
    for r in &log.records {
        if matches!(r.status, dirk_engine::TaskStatus::Retried(_)) {
            *retried.entry(r.task).or_default() += 1;
        }
    }
    let mut retried_total = 0;
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
            let mut storage = dirk_engine::StorageRead::default();
            for r in &records {
                storage += r.storage;
            }
            let mut spill = dirk_engine::SpillIo::default();
            for r in &records {
                spill += r.spill;
            }
            let mut storage = if storage == Default::default() {
                String::new()
            } else {
                format!(
                    ", storage_bytes={}, storage_requests={}",
                    storage.bytes, storage.requests
                )
            };
            if spill != Default::default() {
                storage.push_str(&format!(
                    ", chunks_spilled_bytes={}, chunks_reloaded_bytes={}, operators_spilled_bytes={}",
                    spill.spilled, spill.reloaded, spill.operators
                ));
            }
            let again: usize = tasks.iter().filter_map(|t| retried.get(t)).sum();
            if again > 0 {
                storage.push_str(&format!(", attempts_retried={again}"));
                retried_total += again;
            }
            moved_total += moved;
            format!(
                "workers={workers:?}, wall={:.3} ms, task_time={:.3} ms, task_cpu={:.3} ms, \
                 rows_in={rows_in}, rows_out={rows_out}, bytes_out={bytes_out}, \
                 bytes_moved={moved}, fetch_wait={:.3} ms{storage}{}",
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
    // Chunks lost with a worker while the query ran were rebuilt by tasks of their own.
    let since = ids
        .iter()
        .flatten()
        .filter_map(|t| by_task.get(t))
        .map(|r| r.queued_us)
        .min()
        .unwrap_or(u64::MAX);
    let recomputed = log
        .records
        .iter()
        .filter(|r| r.queued_us >= since && r.name.starts_with(dirk_engine::RECOMPUTE_PREFIX))
        .count();
    let mut text = staged.display_annotated(&notes);
    text.push_str(&format!(
        "Total: {} tasks in {} stages, {:.3} ms, {rows_out} rows out, {moved_total} bytes moved \
         between workers",
        ids.iter().map(Vec::len).sum::<usize>(),
        ids.len(),
        wall.as_secs_f64() * 1000.0,
    ));
    if retried_total + recomputed > 0 {
        text.push_str(&format!(
            "; a worker was lost: {retried_total} attempts retried, {recomputed} tasks recomputed \
             lost chunks"
        ));
    }
    text.push('\n');
    text
}

/// Whether `plan` joins by hashing anywhere.
fn contains_hash_join(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<datafusion::physical_plan::joins::HashJoinExec>()
        || plan
            .children()
            .into_iter()
            .any(|c| contains_hash_join(c.as_ref()))
}
