//! Tables that are DataFusion providers in the planner's catalog (`planner_state`). A provider
//! that cannot be serialized into a task (a stream table, a catalog view) is read on the driver
//! and its rows put on the workers; the plan above it was optimized for the provider's own
//! partitioning, so partition `p` of the provider must stay partition `p`.

use super::compare::{assert_same, run_dirk};
use arrow::array::{ArrayRef, Int32Array, RecordBatch};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::{ScalarValue, SplitPoint};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{Partitioning, PhysicalSortExpr, RangePartitioning};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use std::sync::Arc;

/// One partition of a stream table: the same batch each time it is read.
#[derive(Debug)]
struct Rows(RecordBatch);

impl PartitionStream for Rows {
    fn schema(&self) -> &SchemaRef {
        self.0.schema_ref()
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = self.0.clone();
        Box::pin(RecordBatchStreamAdapter::new(
            batch.schema(),
            futures::stream::iter([Ok(batch)]),
        ))
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, false),
        Field::new("v", DataType::Int32, false),
    ]))
}

fn batch(keys: &[i32]) -> RecordBatch {
    let v: Vec<i32> = keys.iter().map(|k| k * 10).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int32Array::from(keys.to_vec())) as ArrayRef,
            Arc::new(Int32Array::from(v)) as ArrayRef,
        ],
    )
    .unwrap()
}

/// An unbounded stream table of keys 0..40 range-partitioned at 10, 20 and 30 (four partitions,
/// uneven on purpose), and a one-partition table of keys 0..25 in no order.
fn catalog() -> SessionContext {
    let ctx = SessionContext::new();
    let schema = schema();
    let split = |at: i32| SplitPoint::new(vec![ScalarValue::Int32(Some(at))]);
    let range = RangePartitioning::try_new(
        [PhysicalSortExpr {
            expr: col("k", &schema).unwrap(),
            options: SortOptions::default(),
        }]
        .into(),
        vec![split(10), split(20), split(30)],
    )
    .unwrap();
    let parts: Vec<Vec<i32>> = vec![
        (0..3).collect(),
        (10..20).collect(),
        vec![25],
        (30..40).rev().collect(),
    ];
    let parts = parts
        .iter()
        .map(|keys| Arc::new(Rows(batch(keys))) as Arc<dyn PartitionStream>)
        .collect();
    let ranged = StreamingTable::try_new(schema.clone(), parts)
        .unwrap()
        .with_infinite_table(true)
        .with_output_partitioning(Partitioning::Range(range));
    ctx.register_table("ranged", Arc::new(ranged)).unwrap();
    let keys: Vec<i32> = (0..25).map(|i| (i * 7) % 25).collect();
    let single = StreamingTable::try_new(schema, vec![Arc::new(Rows(batch(&keys))) as _]).unwrap();
    ctx.register_table("single", Arc::new(single)).unwrap();
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_read_on_the_driver_keeps_its_partitions() {
    let ctx = catalog();
    let queries = [
        // Planned as a partitioned join with no exchange: partition p of each side is paired.
        (
            "SELECT l.k, l.v, r.v FROM ranged l FULL JOIN ranged r ON l.k = r.k",
            false,
        ),
        // One partition, sorted with no merge above it: every row must be in that partition.
        ("SELECT k, v FROM single ORDER BY k DESC", true),
    ];
    for (workers, partitions) in [(1, 1), (2, 3), (3, 5)] {
        let s = super::harness::builder(workers)
            .partitions(partitions)
            .planner_state(ctx.state())
            .build()
            .unwrap();
        for (sql, ordered) in queries {
            let want = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            // The rows a wrong layout pairs up differently every run.
            for run in 0..10 {
                let what = format!("{workers} workers, {partitions} partitions, run {run}: {sql}");
                assert_same(&run_dirk(&s, sql, &what).await, &want, ordered, &what);
            }
        }
        super::harness::assert_workers_hold(&s, 0, "after the queries").await;
    }
}
