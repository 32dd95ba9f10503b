//! The `dirk.fragment` kernel: runs one partition of a serialized plan fragment on a worker.
//!
//! Parameters: a small JSON header (partition, output split, which task inputs feed which leaf
//! partitions) followed by the fragment as datafusion-proto bytes (with [`DirkCodec`] for Dirk's
//! own leaves). Nothing in a task refers to driver memory, so the same task runs on any worker.

use crate::exec::{DirkCodec, LeafId, TaskInputs};
use crate::proto::FieldPreservingConverter;
use crate::storage_meter::{MeteredStores, StorageMeter};
use crate::stores::{StoreRegistry, StoreSpec, TaskStores};
use crate::worker_memory::WorkerPool;
use arrow::array::RecordBatch;
use datafusion::execution::context::SessionState;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::{BatchPartitioner, RepartitionExec};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};
use datafusion::prelude::SessionConfig;
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_proto_converter, physical_plan_to_bytes_with_proto_converter,
};
use dirk_engine::{compact_view_columns, Chunk, EngineError, Kernel, KernelCall, WorkerEnv};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The kernel's registered name.
pub(crate) const FRAGMENT_KERNEL: &str = "dirk.fragment";

/// Which task inputs feed one leaf partition: arguments `start..end`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeafFeed {
    /// The leaf.
    pub(crate) leaf: LeafId,
    /// Its partition.
    pub(crate) partition: usize,
    /// First argument.
    pub(crate) start: usize,
    /// One past the last argument.
    pub(crate) end: usize,
}

/// The header of a fragment task's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FragmentHeader {
    /// The partition of the fragment this task runs.
    pub(crate) partition: usize,
    /// `Some(n)`: split the output into `n` chunks by the root `RepartitionExec`.
    pub(crate) split: Option<usize>,
    /// Input routing.
    pub(crate) feeds: Vec<LeafFeed>,
    /// Session options that differ from DataFusion's defaults (time zone, formats, ...).
    #[serde(default)]
    pub(crate) settings: Vec<(String, String)>,
    /// Memory this task may use, in bytes, out of its worker's pool; operators spill to disk
    /// beyond it.
    #[serde(default)]
    pub(crate) memory_limit: Option<usize>,
    /// The stores this task reads that a table's options configured (credentials, endpoint):
    /// the worker makes them once and uses them for this task's reads.
    #[serde(default)]
    pub(crate) stores: Vec<StoreSpec>,
    /// Whether the fragment reads or writes files: its reads are then counted.
    #[serde(default)]
    pub(crate) uses_storage: bool,
}

/// Serializes a fragment once per stage.
pub(crate) fn encode_plan(plan: &Arc<dyn ExecutionPlan>) -> datafusion::common::Result<Vec<u8>> {
    let bytes = physical_plan_to_bytes_with_proto_converter(
        Arc::clone(plan),
        &DirkCodec,
        &FieldPreservingConverter,
    )?;
    Ok(bytes.to_vec())
}

/// Parameters of one task: header length (4 bytes, little endian), JSON header, plan.
pub(crate) fn encode_params(header: &FragmentHeader, plan: &[u8]) -> Vec<u8> {
    encode_with_header(header, plan)
}

/// Parameters made of a JSON header and serialized plan bytes (fragments, mutations).
pub(crate) fn encode_with_header<H: Serialize>(header: &H, plan: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("header serializes");
    let mut out = Vec::with_capacity(4 + h.len() + plan.len());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(plan);
    out
}

/// The inverse of [`encode_with_header`].
pub(crate) fn decode_with_header<H: serde::de::DeserializeOwned>(
    params: &[u8],
) -> Result<(H, &[u8]), EngineError> {
    let bad = |m: &str| EngineError::internal(format!("bad task parameters: {m}"));
    if params.len() < 4 {
        return Err(bad("too short"));
    }
    let n = u32::from_le_bytes(params[..4].try_into().expect("4 bytes")) as usize;
    let header = params
        .get(4..4 + n)
        .ok_or_else(|| bad("truncated header"))?;
    let header = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    Ok((header, &params[4 + n..]))
}

/// Decodes a plan serialized with [`encode_plan`], with the functions of `env`'s worker.
pub(crate) fn decode_plan(
    env: &WorkerEnv,
    bytes: &[u8],
) -> Result<Arc<dyn ExecutionPlan>, EngineError> {
    let worker = WorkerDataFusion::of(env);
    decode_fragment(bytes, &TaskContext::from(worker.state()?)).map_err(df_err)
}

/// Decodes fragment bytes, repairing what datafusion-proto does not carry over.
pub(crate) fn decode_fragment(
    bytes: &[u8],
    ctx: &TaskContext,
) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
    crate::wire::nesting_depth(bytes, crate::wire::MAX_FRAGMENT_DEPTH)
        .map_err(datafusion::error::DataFusionError::ResourcesExhausted)?;
    physical_plan_from_bytes_with_proto_converter(bytes, ctx, &DirkCodec, &FieldPreservingConverter)
        .and_then(restore_empty_grouping_set)
}

/// datafusion-proto stores an aggregate's grouping sets as one flat list of flags, so
/// `GROUPING SETS (())` (one set of zero expressions) comes back as no set at all, and the
/// aggregate would output no rows. A decoded aggregate with grouping sets but none listed can
/// only have been that; it gets its one empty set back.
fn restore_empty_grouping_set(
    plan: Arc<dyn ExecutionPlan>,
) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_plan::aggregates::{AggregateExec, PhysicalGroupBy};
    plan.transform_up(|node| {
        let Some(agg) = node.downcast_ref::<AggregateExec>() else {
            return Ok(Transformed::no(node));
        };
        let g = agg.group_expr();
        if !(g.expr().is_empty() && g.has_grouping_set() && g.groups().is_empty()) {
            return Ok(Transformed::no(node));
        }
        let group_by = PhysicalGroupBy::new(vec![], vec![], vec![vec![]], true);
        let restored = AggregateExec::try_new(
            *agg.mode(),
            group_by,
            agg.aggr_expr().to_vec(),
            agg.filter_expr().to_vec(),
            Arc::clone(agg.input()),
            agg.input_schema(),
        )?
        .with_limit_options(agg.limit_options());
        Ok(Transformed::yes(
            Arc::new(restored) as Arc<dyn ExecutionPlan>
        ))
    })
    .map(|t| t.data)
}

/// The DataFusion side of a worker's environment, made once per worker: the session state
/// fragments are decoded and run with. Its runtime holds the worker's one memory pool (fair
/// between the worker's running tasks, sized by the worker's budget), its spill directory and
/// the object stores (made on first use from the worker's environment, or from the options a
/// task carries).
struct WorkerDataFusion {
    state: std::result::Result<SessionState, String>,
    stores: Arc<StoreRegistry>,
}

impl WorkerDataFusion {
    fn new(env: &WorkerEnv) -> Self {
        let stores = Arc::new(StoreRegistry::new());
        let mut runtime = RuntimeEnvBuilder::new()
            .with_temp_file_path(env.spill_dir())
            .with_object_store_registry(Arc::clone(&stores) as _);
        if let Some(limit) = env.memory_limit() {
            runtime = runtime.with_memory_pool(Arc::new(WorkerPool::new(
                env.name(),
                Arc::clone(env.budget()),
                limit,
            )));
        }
        // A spill directory that cannot be made leaves operators unable to spill (they fail
        // with "Resources exhausted" past the budget) rather than the worker unable to run.
        let runtime = runtime.clone().build_arc().or_else(|_| {
            runtime
                .with_disk_manager_builder(
                    DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
                )
                .build_arc()
        });
        // A sort sets aside this much to merge what it spilled; DataFusion's 10 MiB would be
        // most of a small budget's share, so it is capped at 1/32 of the worker's budget.
        let mut config = SessionConfig::new();
        if let Some(limit) = env.memory_limit() {
            let reserve = &mut config.options_mut().execution.sort_spill_reservation_bytes;
            *reserve = (*reserve).min(limit / 32);
        }
        let state = runtime
            .map(|runtime| {
                SessionStateBuilder::new()
                    .with_default_features()
                    .with_config(config)
                    .with_runtime_env(runtime)
                    .build()
            })
            .map_err(|e| e.to_string());
        WorkerDataFusion { state, stores }
    }

    /// The worker's DataFusion side, made on first use.
    fn of(env: &WorkerEnv) -> Arc<WorkerDataFusion> {
        env.extension(WorkerDataFusion::new)
    }

    /// The session state tasks decode and run fragments with.
    fn state(&self) -> Result<&SessionState, EngineError> {
        self.state
            .as_ref()
            .map_err(|e| EngineError::internal(format!("the worker's DataFusion runtime: {e}")))
    }
}

/// The worker's runtime as one task sees it: the same pool, spill directory, caches and object
/// stores, with the task's memory capped (through [`TaskMemory`]), the stores its options
/// configure in front of the worker's, and every store's reads counted in `meter`.
fn task_runtime(
    worker: &WorkerDataFusion,
    runtime: &Arc<RuntimeEnv>,
    header: &FragmentHeader,
    meter: &Arc<StorageMeter>,
) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::from_runtime_env(runtime);
    if let Some(cap) = header.memory_limit {
        builder = builder.with_memory_pool(Arc::new(TaskMemory {
            pool: Arc::clone(&runtime.memory_pool),
            cap,
            used: AtomicUsize::new(0),
        }));
    }
    let mut stores = Arc::clone(&runtime.object_store_registry);
    if !header.stores.is_empty() {
        stores = Arc::new(TaskStores::new(&worker.stores, stores, &header.stores)?);
    }
    builder =
        builder.with_object_store_registry(Arc::new(MeteredStores::new(stores, Arc::clone(meter))));
    builder.build_arc()
}

/// A task's share of its worker's memory pool: every reservation is made in the worker's pool,
/// so all the worker's tasks count against one budget, and is refused once the task holds
/// `cap` bytes.
#[derive(Debug)]
struct TaskMemory {
    pool: Arc<dyn MemoryPool>,
    cap: usize,
    used: AtomicUsize,
}

impl std::fmt::Display for TaskMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a task's {} bytes of {}", self.cap, self.pool)
    }
}

impl MemoryPool for TaskMemory {
    fn name(&self) -> &str {
        "dirk-task"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.pool.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.pool.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.pool.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.pool.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        let cap = self.cap;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + additional <= cap).then_some(used + additional)
            })
            .map_err(|used| {
                datafusion::error::DataFusionError::ResourcesExhausted(format!(
                    "Failed to allocate additional {additional} bytes for {} with {} bytes \
                     already allocated for this reservation - {} bytes remain of the task's \
                     {cap}",
                    reservation.consumer().name(),
                    reservation.size(),
                    cap.saturating_sub(used),
                ))
            })?;
        if let Err(e) = self.pool.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.cap)
    }
}

thread_local! {
    /// Each worker thread keeps a single-threaded runtime to drive a fragment's streams.
    static LOCAL: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime for fragments");
}

/// Runs plan fragments; see the module docs.
pub(crate) struct FragmentKernel;

impl Kernel for FragmentKernel {
    fn name(&self) -> &str {
        FRAGMENT_KERNEL
    }

    fn run(&self, call: &mut KernelCall<'_>) -> dirk_engine::Result<Vec<Chunk>> {
        let (header, plan_bytes): (FragmentHeader, _) = decode_with_header(call.params())?;
        let mut inputs = TaskInputs::cancelled_by(call.cancellation());
        for f in &header.feeds {
            for i in f.start..f.end {
                if i >= call.num_inputs() {
                    return Err(EngineError::internal(format!(
                        "feed refers to missing input {i}"
                    )));
                }
                inputs.add(f.leaf, f.partition, call.input(i).batches().to_vec());
            }
        }
        let worker = WorkerDataFusion::of(call.env());
        let state = worker.state()?;
        let meter = Arc::new(StorageMeter::default());
        let outputs = LOCAL.with(|runtime| {
            let mut config = state.config().clone().with_extension(Arc::new(inputs));
            for (key, value) in &header.settings {
                config.options_mut().set(key, value).map_err(df_err)?;
            }
            // With work stealing, the partitions of one file scan share a queue of files; a task
            // runs one partition of its own plan instance, so it would drain the whole queue and
            // read every partition's files.
            config
                .options_mut()
                .execution
                .enable_file_stream_work_stealing = false;
            let mut ctx = TaskContext::from(state).with_session_config(config);
            if header.memory_limit.is_some() || !header.stores.is_empty() || header.uses_storage {
                let runtime = task_runtime(&worker, state.runtime_env(), &header, &meter);
                ctx = ctx.with_runtime(runtime.map_err(df_err)?);
            }
            let ctx = Arc::new(ctx);
            let plan = decode_fragment(plan_bytes, &ctx).map_err(df_err)?;
            let cancelled = || call.is_cancelled();
            let outputs =
                runtime.block_on(run_fragment(Arc::clone(&plan), &header, ctx, &cancelled));
            Ok::<_, EngineError>((outputs, operator_spill(plan.as_ref())))
        });
        call.add_storage_read(meter.read());
        let (outputs, spilled) = outputs?;
        call.add_operator_spill(spilled);
        outputs
    }
}

use crate::error::kernel_error as df_err;

/// Bytes the operators of `plan` wrote to spill files (sorts, aggregations, joins), from their
/// metrics.
fn operator_spill(plan: &dyn ExecutionPlan) -> u64 {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64;
    own + plan
        .children()
        .into_iter()
        .map(|c| operator_spill(c.as_ref()))
        .sum::<u64>()
}

/// Runs one partition of `plan`; stops between batches once the task is cancelled (a sibling
/// task of the query failed, or the caller gave up).
async fn run_fragment(
    plan: Arc<dyn ExecutionPlan>,
    header: &FragmentHeader,
    ctx: Arc<TaskContext>,
    cancelled: &dyn Fn() -> bool,
) -> dirk_engine::Result<Vec<Chunk>> {
    let stop = || EngineError::kernel("cancelled");
    let Some(n) = header.split else {
        let schema = plan.schema();
        let mut stream = plan.execute(header.partition, ctx).map_err(df_err)?;
        let mut batches: Vec<RecordBatch> = Vec::new();
        while let Some(batch) = stream.try_next().await.map_err(df_err)? {
            if cancelled() {
                return Err(stop());
            }
            batches.push(compact_view_columns(batch));
        }
        return Ok(vec![Chunk::new(schema, batches)]);
    };
    let Some(rep) = plan.downcast_ref::<RepartitionExec>() else {
        return Err(EngineError::internal(
            "a splitting fragment must end in RepartitionExec",
        ));
    };
    let input = Arc::clone(rep.input());
    let mut partitioner = match rep.partitioning() {
        Partitioning::Hash(exprs, parts) if *parts == n => {
            BatchPartitioner::new_hash_partitioner(exprs.clone(), n, Time::new()).map_err(df_err)?
        }
        Partitioning::RoundRobinBatch(parts) if *parts == n => {
            BatchPartitioner::new_round_robin_partitioner(
                n,
                Time::new(),
                header.partition,
                input.output_partitioning().partition_count(),
            )
        }
        other => {
            return Err(EngineError::internal(format!(
                "cannot split by {other} into {n} partitions"
            )))
        }
    };
    let schema = plan.schema();
    let mut outs: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
    let mut stream = input.execute(header.partition, ctx).map_err(df_err)?;
    while let Some(batch) = stream.try_next().await.map_err(df_err)? {
        if cancelled() {
            return Err(stop());
        }
        partitioner
            .partition(batch, |i, b| {
                outs[i].push(compact_view_columns(b));
                Ok(())
            })
            .map_err(df_err)?;
    }
    Ok(outs
        .into_iter()
        .map(|b| Chunk::new(schema.clone(), b))
        .collect())
}
