//! Cutting a physical plan into stages at its exchanges, and routing each task's inputs.
//!
//! - Under a `RepartitionExec`, the subtree becomes a stage whose tasks split their output by the
//!   exchange's partitioning; the exchange itself becomes a [`StageInputExec`] whose partition `p`
//!   reads split `p` of every upstream task.
//! - Under a `CoalescePartitionsExec` or `SortPreservingMergeExec`, the subtree becomes a stage
//!   whose tasks keep their whole output; the exchange stays, over a [`StageInputExec`] whose
//!   partition `p` reads upstream task `p`. A scan of whole chunks (every column) there is not
//!   cut off: the task above reads every partition of the table.
//! - What remains at the top is the final stage. Every stage runs one task per output partition
//!   of its fragment.

use crate::exec::{DTableScanExec, LeafId, StageInputExec};
use datafusion::common::JoinType;
use datafusion::common::Result;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    displayable, ExecutionPlan, ExecutionPlanProperties, Partitioning,
};
use std::fmt::Write as _;
use std::sync::Arc;

/// How a stage's tasks write their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOutput {
    /// One chunk per task.
    Whole,
    /// `n` chunks per task, split by the fragment's root `RepartitionExec`.
    Split(usize),
}

/// How a reader partition maps onto an upstream stage's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Partition `p` reads output `p` of every upstream task.
    SplitOfEveryTask,
    /// Partition `p` reads the single output of upstream task `p`.
    WholeOfTask,
}

/// One stage: a fragment and how many tasks run it.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Its index; upstream stages have lower indexes.
    pub id: usize,
    /// The plan its tasks run. For `StageOutput::Split`, the root is the `RepartitionExec`
    /// whose child the tasks execute.
    pub fragment: Arc<dyn ExecutionPlan>,
    /// How tasks write output.
    pub output: StageOutput,
    /// Number of tasks.
    pub tasks: usize,
    /// Readers in this fragment: (leaf, upstream stage, mode).
    pub inputs: Vec<(LeafId, usize, ReadMode)>,
}

impl Stage {
    /// The plan a task of this stage executes (below a splitting exchange).
    pub fn executed(&self) -> &Arc<dyn ExecutionPlan> {
        match self.output {
            StageOutput::Whole => &self.fragment,
            StageOutput::Split(_) => self.fragment.children()[0],
        }
    }
}

/// A query cut into stages, the last one final.
#[derive(Debug, Clone)]
pub struct StagedPlan {
    /// Stages in dependency order.
    pub stages: Vec<Stage>,
}

impl StagedPlan {
    /// The final stage.
    pub fn last(&self) -> &Stage {
        self.stages.last().expect("a staged plan has a final stage")
    }

    /// Stages and their fragments as text, for `EXPLAIN`.
    pub fn display(&self) -> String {
        self.display_annotated(&[])
    }

    /// As [`display`](Self::display), with `notes[i]` (if any) under stage `i`'s heading: what
    /// `EXPLAIN ANALYZE` measured.
    pub fn display_annotated(&self, notes: &[String]) -> String {
        let mut s = String::new();
        for st in &self.stages {
            let out = match st.output {
                StageOutput::Whole => "whole output".to_string(),
                StageOutput::Split(n) => format!("split into {n}"),
            };
            let _ = writeln!(
                s,
                "Stage {} ({} task{}, {out}){}",
                st.id,
                st.tasks,
                if st.tasks == 1 { "" } else { "s" },
                if st.id + 1 == self.stages.len() {
                    " [final]"
                } else {
                    ""
                }
            );
            if let Some(note) = notes.get(st.id) {
                let _ = writeln!(s, "  -- {note}");
            }
            for line in displayable(st.fragment.as_ref())
                .indent(true)
                .to_string()
                .lines()
            {
                let _ = writeln!(s, "  {line}");
            }
        }
        s
    }
}

/// `plan` with `children` in place of its own (unchanged when it has none). The one place that
/// calls DataFusion's deprecated `with_new_children`: `replace_children` wants options this
/// crate cannot know.
pub(crate) fn with_children(
    plan: Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if children.is_empty() {
        return Ok(plan);
    }
    #[expect(deprecated, reason = "replace_children needs options we do not have")]
    plan.with_new_children(children)
}

/// Cuts `plan` into stages. Scans get fresh leaf ids.
pub fn cut(plan: Arc<dyn ExecutionPlan>) -> Result<StagedPlan> {
    let plan = drop_idle_repartitions(split_build_row_joins(plan)?)?;
    let mut cutter = Cutter {
        stages: Vec::new(),
        next_leaf: 0,
    };
    let root = cutter.visit(plan)?;
    let tasks = root.output_partitioning().partition_count();
    cutter.push(root, StageOutput::Whole, tasks);
    let mut staged = StagedPlan {
        stages: cutter.stages,
    };
    fix_read_modes(&mut staged);
    Ok(staged)
}

/// Joins that emit unmatched build rows at the end (LEFT, FULL, LEFT SEMI/ANTI/MARK) with a
/// collected build side keep a bitmap of matched build rows that DataFusion shares between the
/// probe partitions of one process, and only the last partition emits. Dirk runs probe
/// partitions as separate tasks, each with its own join: each would emit the unmatched rows.
///
/// So such a hash join becomes a partitioned one: both sides hash-split on the join keys into as
/// many partitions as the probe side had, so every build row meets all its probe rows in one
/// task. That moves no more data than gathering the probe side into one task would (the build
/// side was gathered anyway) and keeps every worker busy. A null-aware anti join (`NOT IN`)
/// must see every probe row to know whether one is NULL, and a nested-loop join has no keys to
/// split on: those get their probe side gathered into one partition and run as a single task.
fn split_build_row_joins(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    rewrite_up(plan, &split_build_row_join)
}

/// Whether a join of this type emits build rows no probe row matched (or, for semi and anti
/// joins, build rows at all): with the build side broadcast, every probe task would emit them.
pub(crate) fn emits_build_rows(t: &JoinType) -> bool {
    matches!(
        t,
        JoinType::Left
            | JoinType::LeftAnti
            | JoinType::LeftSemi
            | JoinType::LeftMark
            | JoinType::Full
    )
}

/// [`split_build_row_joins`] for one node whose children are done.
fn split_build_row_join(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let probe_partitions = match plan.children().get(1) {
        Some(probe) => probe.output_partitioning().partition_count(),
        None => return Ok(plan),
    };
    if probe_partitions <= 1 {
        return Ok(plan);
    }
    if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
        if *j.partition_mode() != PartitionMode::CollectLeft || !emits_build_rows(j.join_type()) {
            return Ok(plan);
        }
        if !j.null_aware {
            return partitioned(j, probe_partitions);
        }
    } else if let Some(j) = plan.downcast_ref::<NestedLoopJoinExec>() {
        if !emits_build_rows(j.join_type()) {
            return Ok(plan);
        }
    } else {
        return Ok(plan);
    }
    let children = plan.children();
    let left = Arc::clone(children[0]);
    let right: Arc<dyn ExecutionPlan> =
        Arc::new(CoalescePartitionsExec::new(Arc::clone(children[1])));
    with_children(plan, vec![left, right])
}

/// `join` (collected build side) as a partitioned join over `n` hash partitions of each side.
fn partitioned(join: &HashJoinExec, n: usize) -> Result<Arc<dyn ExecutionPlan>> {
    // The collected side arrives through the coalesce that gathered it; split its input instead.
    let build = match join.left().downcast_ref::<CoalescePartitionsExec>() {
        Some(gather) if gather.fetch().is_none() => Arc::clone(gather.input()),
        _ => Arc::clone(join.left()),
    };
    let (build_keys, probe_keys) = join
        .on()
        .iter()
        .map(|(b, p)| (Arc::clone(b), Arc::clone(p)))
        .unzip();
    let build = hash_split(build, build_keys, n)?;
    let probe = hash_split(Arc::clone(join.right()), probe_keys, n)?;
    join.builder()
        .with_partition_mode(PartitionMode::Partitioned)
        .with_new_children(vec![build, probe])?
        .reset_state()
        .build_exec()
}

/// `plan` hash-split on `keys` into `n` partitions, or `plan` itself where it is split that way
/// already (the output of a join below, split on the same keys).
fn hash_split(
    plan: Arc<dyn ExecutionPlan>,
    keys: Vec<Arc<dyn datafusion::physical_plan::PhysicalExpr>>,
    n: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let wanted = Partitioning::Hash(keys, n);
    if *plan.output_partitioning() == wanted {
        return Ok(plan);
    }
    Ok(Arc::new(RepartitionExec::try_new(plan, wanted)?))
}

/// Removes hash exchanges whose input is already split that way. DataFusion planned the
/// exchange above a join whose output partitioning it did not know; once that join is split by
/// its keys (see [`split_build_row_joins`]), the exchange would move every row to where it is.
fn drop_idle_repartitions(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    rewrite_up(plan, &|plan| {
        if let Some(r) = plan.downcast_ref::<RepartitionExec>() {
            if matches!(r.partitioning(), Partitioning::Hash(..))
                && r.input().output_partitioning() == r.partitioning()
            {
                return Ok(Arc::clone(r.input()));
            }
        }
        Ok(plan)
    })
}

/// Rewrites `plan` bottom-up: `f` gets each node with its children already rewritten.
fn rewrite_up(
    plan: Arc<dyn ExecutionPlan>,
    f: &dyn Fn(Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let children = plan
        .children()
        .into_iter()
        .map(|c| rewrite_up(Arc::clone(c), f))
        .collect::<Result<Vec<_>>>()?;
    f(with_children(plan, children)?)
}

struct Cutter {
    stages: Vec<Stage>,
    next_leaf: LeafId,
}

impl Cutter {
    fn leaf(&mut self) -> LeafId {
        self.next_leaf += 1;
        self.next_leaf
    }

    fn push(
        &mut self,
        fragment: Arc<dyn ExecutionPlan>,
        output: StageOutput,
        tasks: usize,
    ) -> usize {
        let id = self.stages.len();
        let mut inputs = Vec::new();
        collect_inputs(&fragment, &mut inputs);
        self.stages.push(Stage {
            id,
            fragment,
            output,
            tasks,
            inputs,
        });
        id
    }

    fn visit(&mut self, node: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(scan) = node.downcast_ref::<DTableScanExec>() {
            return Ok(Arc::new(scan.with_leaf(self.leaf())));
        }
        let children = node
            .children()
            .into_iter()
            .map(|c| self.visit(Arc::clone(c)))
            .collect::<Result<Vec<_>>>()?;
        let node = with_children(node, children)?;
        if node.is::<RepartitionExec>() {
            let n = node.output_partitioning().partition_count();
            let tasks = node.children()[0].output_partitioning().partition_count();
            let schema = node.schema();
            let stage = self.push(node, StageOutput::Split(n), tasks);
            return Ok(Arc::new(StageInputExec::new(self.leaf(), stage, schema, n)));
        }
        if node.is::<CoalescePartitionsExec>() || node.is::<SortPreservingMergeExec>() {
            let child = Arc::clone(node.children()[0]);
            if child
                .downcast_ref::<DTableScanExec>()
                .is_some_and(DTableScanExec::reads_whole_chunks)
            {
                // A stage of whole-chunk scans would only hand its chunks on: the gathering task
                // reads every partition of the table itself, a stage sooner. (A scan that drops
                // columns stays a stage: it moves only the columns read.)
                return Ok(node);
            }
            let tasks = child.output_partitioning().partition_count();
            let schema = child.schema();
            let stage = self.push(child, StageOutput::Whole, tasks);
            let reader: Arc<dyn ExecutionPlan> =
                Arc::new(StageInputExec::new(self.leaf(), stage, schema, tasks));
            return with_children(node, vec![reader]);
        }
        Ok(node)
    }
}

fn collect_inputs(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<(LeafId, usize, ReadMode)>) {
    if let Some(r) = plan.downcast_ref::<StageInputExec>() {
        out.push((r.leaf(), r.stage(), ReadMode::SplitOfEveryTask));
        return;
    }
    for c in plan.children() {
        collect_inputs(c, out);
    }
}

/// Which partitions of which leaves executing `partition` of `plan` reads. A child with as many
/// partitions as its parent is read partition by partition; a union reads one partition of one
/// child; otherwise (a parent that gathers its child) every child partition is read.
pub fn leaf_partitions(
    plan: &Arc<dyn ExecutionPlan>,
    partition: usize,
    out: &mut Vec<(LeafId, usize)>,
) {
    if let Some(s) = plan.downcast_ref::<DTableScanExec>() {
        out.push((s.leaf(), partition));
        return;
    }
    if let Some(r) = plan.downcast_ref::<StageInputExec>() {
        out.push((r.leaf(), partition));
        return;
    }
    if plan.is::<UnionExec>() {
        let mut p = partition;
        for c in plan.children() {
            let n = c.output_partitioning().partition_count();
            if p < n {
                leaf_partitions(c, p, out);
                return;
            }
            p -= n;
        }
        return;
    }
    let parts = plan.output_partitioning().partition_count();
    for c in plan.children() {
        let n = c.output_partitioning().partition_count();
        if n == parts {
            leaf_partitions(c, partition, out);
        } else {
            for cp in 0..n {
                leaf_partitions(c, cp, out);
            }
        }
    }
}

/// The mode each reader of a stage uses, fixed up after cutting: readers under a gathering
/// exchange read whole task outputs.
fn fix_read_modes(staged: &mut StagedPlan) {
    let modes: Vec<StageOutput> = staged.stages.iter().map(|s| s.output).collect();
    for st in &mut staged.stages {
        for input in &mut st.inputs {
            input.2 = match modes[input.1] {
                StageOutput::Split(_) => ReadMode::SplitOfEveryTask,
                StageOutput::Whole => ReadMode::WholeOfTask,
            };
        }
    }
}
