//! Choosing, per hash join, between broadcasting the build side and shuffling both sides.
//!
//! DataFusion broadcasts a join's build side (`CollectLeft`) only under a fixed size (128 Ki rows
//! by default), a rule tuned for one process whose partitions share one hash table. In Dirk each
//! probe task is its own plan instance and builds its own table from the whole build side, so a
//! broadcast costs about `tasks × build` rows of work, while a shuffle costs `build + probe` rows
//! hashed, copied into chunks and, on a cluster, sent between workers. Where the probe side is
//! that much larger, the broadcast is cheaper: TPC-H q03 at SF 1 shuffles 3 million `lineitem`
//! rows to meet 150 thousand `customer ⋈ orders` rows otherwise.
//!
//! [`BroadcastJoinSelection`] runs right after DataFusion's own join selection, before the
//! exchanges are placed, so the plan above a join that changes mode still gets the distribution
//! it requires.

use crate::stages::emits_build_rows;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};
use std::sync::Arc;

/// Never broadcast more rows than this: every probe task holds a hash table of them.
pub(crate) const MAX_BROADCAST_ROWS: usize = 2 << 20;

/// Turns a partitioned hash join into a broadcast one when `tasks × build ≤ probe` by the
/// planner's row estimates; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct BroadcastJoinSelection;

impl BroadcastJoinSelection {
    /// DataFusion's physical optimizer rules with this one right after its join selection.
    pub(crate) fn insert_into(
        mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
    ) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
        let after = rules
            .iter()
            .position(|r| r.name() == "join_selection")
            .map_or(0, |i| i + 1);
        rules.insert(after, Arc::new(BroadcastJoinSelection));
        rules
    }
}

impl PhysicalOptimizerRule for BroadcastJoinSelection {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let tasks = config.execution.target_partitions.max(1);
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            // A broadcast join that emits unmatched build rows is split back into a partitioned
            // one before cutting (each probe task would emit them), so leave those alone.
            if *join.partition_mode() != PartitionMode::Partitioned
                || join.null_aware
                || emits_build_rows(join.join_type())
            {
                return Ok(Transformed::no(node));
            }
            let (Some(build), Some(probe)) =
                (estimated_rows(join.left()), estimated_rows(join.right()))
            else {
                return Ok(Transformed::no(node));
            };
            if build > MAX_BROADCAST_ROWS || build.saturating_mul(tasks) > probe {
                return Ok(Transformed::no(node));
            }
            let broadcast = join
                .builder()
                .with_partition_mode(PartitionMode::CollectLeft)
                .build_exec()?;
            Ok(Transformed::yes(broadcast))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "dirk_broadcast_join_selection"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The planner's estimate of a plan's output rows, exact or not.
fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let stats = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()?;
    stats.num_rows.get_value().copied()
}
