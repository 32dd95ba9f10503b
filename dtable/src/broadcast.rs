//! Choosing, per hash join, between broadcasting the build side and shuffling both sides.
//!
//! DataFusion broadcasts a join's build side (`CollectLeft`) only under a fixed size (128 Ki rows
//! by default), a rule tuned for one process whose partitions share one hash table. In Dirk each
//! probe task is its own plan instance and builds its own table from the whole build side. Per
//! task, running in parallel, a broadcast costs `build` rows put into a hash table; a shuffle
//! costs `(build + probe) / tasks` rows hashed, copied into chunks and, on a cluster, sent
//! between workers, plus `build / tasks` rows put into a table. With a row into a hash table
//! costing [`BUILD_COST`] rows through a split, the broadcast is cheaper where
//! `(tasks - 1) × BUILD_COST × build ≤ build + probe`. TPC-H q03 at SF 1 otherwise shuffles 3
//! million `lineitem` rows to meet 150 thousand `customer ⋈ orders` rows.
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
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, Partitioning, StatisticsArgs, StatisticsContext,
};
use std::sync::Arc;

/// Never broadcast more rows than this: every probe task holds a hash table of them.
pub(crate) const MAX_BROADCAST_ROWS: usize = 2 << 20;

/// What putting a row into a hash table costs, in rows through a hash split: set from TPC-H at
/// SF 1 on two tasks, not derived. q03's `(customer ⋈ orders) ⋈ lineitem` is faster broadcast
/// (0.085 → 0.06 s), which holds up to about 22. At 8, q18 broadcasts its 150 thousand customers
/// against 1.5 million orders; that once made it twice as slow, because the join's string view
/// columns kept pointing into the whole build side and the next join copied those buffers once
/// per batch. Task outputs are now compacted ([`dirk_engine::compact_view_columns`]), and q18
/// runs as fast broadcast as shuffled (A/B, `dirk-benches tpch --queries 18 --runs 5`).
pub(crate) const BUILD_COST: usize = 8;

/// Turns a partitioned hash join into a broadcast one when
/// `(tasks - 1) × BUILD_COST × build ≤ build + probe` by the planner's row estimates, counting
/// only the sides a shuffle would move (not one already hash-partitioned on its join keys);
/// see the module docs.
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
            // A side already split on its join keys (a table hash-partitioned by them) stays
            // where it is in a partitioned join: only the other side moves.
            let (build_keys, probe_keys): (Vec<_>, Vec<_>) = join
                .on()
                .iter()
                .map(|(b, p)| (Arc::clone(b), Arc::clone(p)))
                .unzip();
            let moved = |rows: usize, side: &Arc<dyn ExecutionPlan>, keys| {
                if *side.output_partitioning() == Partitioning::Hash(keys, tasks) {
                    0
                } else {
                    rows
                }
            };
            let shuffled = moved(build, join.left(), build_keys).saturating_add(moved(
                probe,
                join.right(),
                probe_keys,
            ));
            let broadcast_cost = (tasks - 1).saturating_mul(BUILD_COST).saturating_mul(build);
            if build > MAX_BROADCAST_ROWS || broadcast_cost > shuffled {
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
