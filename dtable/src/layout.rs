//! Where a table's rows live: redistributing a table over partitions (round robin or by key)
//! and pinning it to one worker. Each replaces the catalog entry; the old chunks are freed once
//! their readers are done.

use crate::core::SessionCore;
use crate::error::{DirkError, Result};
use crate::table::DTable;
use arrow::datatypes::Schema;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use dirk_engine::{Chunk, WorkerId};
use std::sync::Arc;

/// Redistributes table `name` over `n` partitions, batch by batch.
pub(crate) async fn repartition(core: &SessionCore, name: &str, n: usize) -> Result<DTable> {
    let table = relayout(core, name, |_| Ok(Partitioning::RoundRobinBatch(n.max(1)))).await?;
    core.register_replacing(name, table.clone())?;
    Ok(table)
}

/// Redistributes table `name` over `n` partitions by the hash of `columns`, and records the
/// keys on the table (see `Session::repartition_by`).
pub(crate) async fn repartition_by(
    core: &SessionCore,
    name: &str,
    columns: &[&str],
    n: usize,
) -> Result<DTable> {
    let mut keys = Vec::with_capacity(columns.len());
    let table = relayout(core, name, |schema| {
        let exprs = columns
            .iter()
            .map(|c| {
                let column = Column::new_with_schema(c, schema)?;
                keys.push(column.name().to_string());
                Ok(Arc::new(column) as Arc<dyn PhysicalExpr>)
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok(Partitioning::Hash(exprs, n.max(1)))
    })
    .await?;
    let table = table.with_hash_keys(keys);
    core.register_replacing(name, table.clone())?;
    Ok(table)
}

/// Runs a scan of `name` under an exchange to `partitioning` (placed on the physical plan,
/// where DataFusion's optimizer cannot drop it); the caller registers the result. Partition
/// `p` is made on worker `p mod w`, as the TPC-H loader places its partitions.
async fn relayout(
    core: &SessionCore,
    name: &str,
    partitioning: impl FnOnce(&Schema) -> datafusion::error::Result<Partitioning>,
) -> Result<DTable> {
    let scan = core
        .planner
        .table(name)
        .await?
        .create_physical_plan()
        .await?;
    let partitioning = partitioning(&scan.schema())?;
    let exchange: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(scan, partitioning)?);
    let homes = core.engine.workers();
    core.executor.run_physical(exchange, &homes).await
}

/// Moves every chunk of table `name` to `worker` and pins it there.
pub(crate) fn pin(core: &SessionCore, name: &str, worker: WorkerId) -> Result<DTable> {
    let table = core.table(name)?;
    if !core.engine.workers().contains(&worker) {
        return Err(DirkError::Unsupported {
            what: format!("pinning to worker {}: no such worker", worker.0),
        });
    }
    let mut partitions = Vec::with_capacity(table.num_partitions());
    for part in table.partitions() {
        let mut moved = Vec::with_capacity(part.len());
        for c in part {
            let data = core.engine.fetch(c)?;
            let chunk = Chunk::new(c.schema.clone(), data.batches().to_vec());
            moved.push(core.engine.put_on(worker, chunk, true)?);
        }
        partitions.push(moved);
    }
    let pinned = DTable::new(table.schema().clone(), partitions);
    core.register_replacing(name, pinned.clone())?;
    Ok(pinned)
}
