//! Dirk's own physical plan leaves and their codec.
//!
//! A stage's fragment reads data through two leaves: [`DTableScanExec`] (partitions of a DTable)
//! and [`StageInputExec`] (outputs of an upstream stage). Neither names chunks: the task that
//! runs a fragment puts the batches each leaf partition needs into a [`TaskInputs`] extension of
//! its `TaskContext`, so one serialized fragment serves every task of its stage.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, ColumnStatistics, DataFusionError, Result, Statistics};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Identifies a leaf within one query's staged plan.
pub type LeafId = u32;

/// The batches each (leaf, partition) of a fragment reads, for one task.
#[derive(Debug, Default)]
pub struct TaskInputs {
    batches: HashMap<(LeafId, usize), Vec<RecordBatch>>,
    /// The task's cancellation, checked by the leaves before each batch: a fragment whose
    /// operators hold their output to the end (a join under an aggregate) still stops soon.
    cancellation: Option<dirk_engine::Cancellation>,
}

impl TaskInputs {
    /// Inputs of a task whose leaves stop with an error once `cancellation` says so.
    pub fn cancelled_by(cancellation: dirk_engine::Cancellation) -> Self {
        TaskInputs {
            batches: HashMap::new(),
            cancellation: Some(cancellation),
        }
    }

    /// Adds batches for partition `partition` of leaf `leaf`.
    pub fn add(&mut self, leaf: LeafId, partition: usize, batches: Vec<RecordBatch>) {
        self.batches
            .entry((leaf, partition))
            .or_default()
            .extend(batches);
    }

    fn take(&self, leaf: LeafId, partition: usize) -> Vec<RecordBatch> {
        self.batches
            .get(&(leaf, partition))
            .cloned()
            .unwrap_or_default()
    }
}

fn leaf_stream(
    leaf: LeafId,
    schema: &SchemaRef,
    projection: Option<&[usize]>,
    partition: usize,
    ctx: &TaskContext,
    what: &str,
) -> Result<SendableRecordBatchStream> {
    let Some(inputs) = ctx.session_config().get_extension::<TaskInputs>() else {
        return internal_err!("{what} {leaf} executed outside a Dirk task");
    };
    // Chunks may carry other field names or metadata than the plan expects (a table made by a
    // query keeps its output's names); columns are matched by position.
    let batches = inputs
        .take(leaf, partition)
        .into_iter()
        .map(|b| {
            let b = match projection {
                Some(p) => b.project(p)?,
                None => b,
            };
            Ok(with_schema(&b, schema)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let memory = MemoryStream::try_new(batches, schema.clone(), None)?;
    let Some(cancellation) = inputs.cancellation.clone() else {
        return Ok(Box::pin(memory));
    };
    let checked = memory.map(move |batch| {
        if cancellation.is_cancelled() {
            return Err(DataFusionError::Execution("the task was cancelled".into()));
        }
        batch
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema.clone(),
        checked,
    )))
}

fn leaf_properties(schema: &SchemaRef, partitions: usize) -> Arc<PlanProperties> {
    leaf_properties_with(schema, Partitioning::UnknownPartitioning(partitions.max(1)))
}

fn leaf_properties_with(schema: &SchemaRef, partitioning: Partitioning) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema.clone()),
        partitioning,
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// The `ExecutionPlan` methods every Dirk leaf shares: no children, no expressions, properties
/// computed once.
macro_rules! leaf_plan_methods {
    () => {
        fn properties(&self) -> &Arc<PlanProperties> {
            &self.props
        }
        fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
            vec![]
        }
        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
        ) -> Result<TreeNodeRecursion> {
            Ok(TreeNodeRecursion::Continue)
        }
        fn with_new_children(
            self: Arc<Self>,
            _children: Vec<Arc<dyn ExecutionPlan>>,
        ) -> Result<Arc<dyn ExecutionPlan>> {
            Ok(self)
        }
    };
}

/// Scans a DTable: partition `p` yields the batches of the DTable's partition `p`.
#[derive(Debug, Clone)]
pub struct DTableScanExec {
    leaf: LeafId,
    table: String,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    partitions: usize,
    rows: Option<u64>,
    /// The table's column bounds, for the planner only: a fragment decoded on a worker has
    /// none, and needs none.
    columns: Option<Arc<Vec<ColumnStatistics>>>,
    /// The output columns (indexes into `schema`) the table is hash-partitioned by, if it is.
    hash_columns: Option<Vec<usize>>,
    props: Arc<PlanProperties>,
}

impl DTableScanExec {
    /// A scan of `table` with `partitions` partitions, projected by `projection` to `schema`.
    pub fn new(
        leaf: LeafId,
        table: String,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
        partitions: usize,
        rows: Option<u64>,
    ) -> Self {
        let props = leaf_properties(&schema, partitions);
        DTableScanExec {
            leaf,
            table,
            schema,
            projection,
            partitions,
            rows,
            columns: None,
            hash_columns: None,
            props,
        }
    }

    /// The scan declaring its output hash-partitioned by `columns` (indexes into its schema),
    /// as DataFusion's hash repartitioning into its partition count would leave it; `None`:
    /// partitioning unknown.
    pub fn with_hash_columns(self, columns: Option<Vec<usize>>) -> Self {
        let columns =
            columns.filter(|c| !c.is_empty() && c.iter().all(|&i| i < self.schema.fields().len()));
        let partitioning = match &columns {
            Some(cols) => Partitioning::Hash(
                cols.iter()
                    .map(|&i| {
                        Arc::new(Column::new(self.schema.field(i).name(), i))
                            as Arc<dyn PhysicalExpr>
                    })
                    .collect(),
                self.partitions.max(1),
            ),
            None => Partitioning::UnknownPartitioning(self.partitions.max(1)),
        };
        DTableScanExec {
            props: leaf_properties_with(&self.schema, partitioning),
            hash_columns: columns,
            ..self
        }
    }

    /// The scan with the whole table's column statistics, in the projected schema's order.
    pub fn with_column_statistics(self, columns: Vec<ColumnStatistics>) -> Self {
        DTableScanExec {
            columns: Some(Arc::new(columns)),
            ..self
        }
    }

    /// The leaf id.
    pub fn leaf(&self) -> LeafId {
        self.leaf
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The partitions it reads.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// The columns it declares its output hash-partitioned by (names), if any.
    pub fn hash_keys(&self) -> Option<Vec<String>> {
        self.hash_columns.as_ref().map(|cols| {
            cols.iter()
                .map(|&i| self.schema.field(i).name().clone())
                .collect()
        })
    }

    /// Whether it reads its table's chunks whole, every column (no projection).
    pub fn reads_whole_chunks(&self) -> bool {
        self.projection.is_none()
    }

    /// Gives the leaf a new id (each scan in a query gets its own).
    pub fn with_leaf(&self, leaf: LeafId) -> Self {
        DTableScanExec {
            leaf,
            ..self.clone()
        }
    }
}

impl DisplayAs for DTableScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DTableScanExec: table={}, partitions={}",
            self.table, self.partitions
        )?;
        if let Some(keys) = self.hash_keys() {
            write!(f, ", hash partitioned by [{}]", keys.join(", "))?;
        }
        write!(f, ", leaf={}", self.leaf)
    }
}

impl ExecutionPlan for DTableScanExec {
    fn name(&self) -> &str {
        "DTableScanExec"
    }
    leaf_plan_methods!();
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        leaf_stream(
            self.leaf,
            &self.schema,
            self.projection.as_deref(),
            partition,
            &context,
            "DTableScanExec",
        )
    }
    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        let mut stats = Statistics::new_unknown(&self.schema);
        if partition.is_none() {
            if let Some(rows) = self.rows {
                stats.num_rows = Precision::Exact(rows as usize);
            }
            if let Some(columns) = &self.columns {
                stats.column_statistics = columns.as_ref().clone();
            }
        }
        Ok(Arc::new(stats))
    }
}

/// Reads the outputs of an upstream stage. Partition `p` yields what the planner routed to it:
/// hash partition `p` of every upstream task, or the whole output of upstream task `p`.
#[derive(Debug, Clone)]
pub struct StageInputExec {
    leaf: LeafId,
    stage: usize,
    schema: SchemaRef,
    partitions: usize,
    props: Arc<PlanProperties>,
}

impl StageInputExec {
    /// A reader of stage `stage` with `partitions` partitions.
    pub fn new(leaf: LeafId, stage: usize, schema: SchemaRef, partitions: usize) -> Self {
        let props = leaf_properties(&schema, partitions);
        StageInputExec {
            leaf,
            stage,
            schema,
            partitions,
            props,
        }
    }

    /// The leaf id.
    pub fn leaf(&self) -> LeafId {
        self.leaf
    }

    /// The stage it reads.
    pub fn stage(&self) -> usize {
        self.stage
    }
}

impl DisplayAs for StageInputExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StageInputExec: stage={}, partitions={}",
            self.stage, self.partitions
        )
    }
}

impl ExecutionPlan for StageInputExec {
    fn name(&self) -> &str {
        "StageInputExec"
    }
    leaf_plan_methods!();
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        leaf_stream(
            self.leaf,
            &self.schema,
            None,
            partition,
            &context,
            "StageInputExec",
        )
    }
}

#[derive(Serialize, Deserialize)]
enum LeafNode {
    Scan {
        leaf: LeafId,
        table: String,
        schema: arrow::datatypes::Schema,
        projection: Option<Vec<usize>>,
        partitions: usize,
        rows: Option<u64>,
        #[serde(default)]
        hash_columns: Option<Vec<usize>>,
    },
    Input {
        leaf: LeafId,
        stage: usize,
        schema: arrow::datatypes::Schema,
        partitions: usize,
    },
}

/// Serializes Dirk's plan nodes inside datafusion-proto plans.
#[derive(Debug, Default)]
pub struct DirkCodec;

impl PhysicalExtensionCodec for DirkCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node: LeafNode = serde_json::from_slice(buf)
            .map_err(|e| datafusion::error::DataFusionError::Internal(e.to_string()))?;
        Ok(match node {
            LeafNode::Scan {
                leaf,
                table,
                schema,
                projection,
                partitions,
                rows,
                hash_columns,
            } => Arc::new(
                DTableScanExec::new(leaf, table, Arc::new(schema), projection, partitions, rows)
                    .with_hash_columns(hash_columns),
            ),
            LeafNode::Input {
                leaf,
                stage,
                schema,
                partitions,
            } => Arc::new(StageInputExec::new(
                leaf,
                stage,
                Arc::new(schema),
                partitions,
            )),
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let leaf = if let Some(s) = node.downcast_ref::<DTableScanExec>() {
            LeafNode::Scan {
                leaf: s.leaf,
                table: s.table.clone(),
                schema: s.schema.as_ref().clone(),
                projection: s.projection.clone(),
                partitions: s.partitions,
                rows: s.rows,
                hash_columns: s.hash_columns.clone(),
            }
        } else if let Some(s) = node.downcast_ref::<StageInputExec>() {
            LeafNode::Input {
                leaf: s.leaf,
                stage: s.stage,
                schema: s.schema.as_ref().clone(),
                partitions: s.partitions,
            }
        } else {
            return internal_err!("DirkCodec cannot encode {}", node.name());
        };
        serde_json::to_writer(buf, &leaf)
            .map_err(|e| datafusion::error::DataFusionError::Internal(e.to_string()))
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        _ctx: &datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx<
            '_,
        >,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        crate::proto::decode_expr(buf, inputs)
    }
}

/// `batch` presented with `schema` (same column types; names and metadata may differ). The row
/// count is kept explicitly: a batch of no columns (what `count(*)` scans) still has rows.
pub(crate) fn with_schema(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), batch.columns().to_vec(), &options)
}
