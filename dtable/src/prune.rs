//! Per-chunk min/max statistics: for pruning `UPDATE` and `DELETE`, and for the planner.
//!
//! A statement's `WHERE` is checked against each chunk's min, max and null count of the
//! columns it reads (DataFusion's `PruningPredicate`): a chunk it rules out gets no task at
//! all. Statistics are computed where the chunk lives (one small task per chunk, reading only
//! those columns) the first time they are needed, kept by the session per (chunk, column), and
//! dropped when an in-place write changes that column of that chunk; other changes make new
//! chunks, which start without statistics.
//!
//! The planner gets a table's bounds of its range-typed columns (integers, dates, timestamps,
//! decimals, floats) from [`ChunkStatistics::for_planning`]: DataFusion estimates filter
//! selectivity and join sizes from them, so it neither broadcasts a join side it believes has
//! 10,000 rows when it has millions, nor hashes both sides of a small one. They are reported
//! as inexact: DataFusion answers `MIN`/`MAX`/`COUNT` from exact statistics alone, and bounds
//! inherited by a `DELETE` are loose.

use crate::error::Result;
use crate::kernels::mutation::Step;
use crate::steps::each_chunk;
use crate::table::DTable;
use arrow::array::{ArrayRef, AsArray, BooleanArray, UInt64Array};
use arrow::datatypes::{DataType, Schema, UInt64Type};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, ColumnStatistics, DFSchema, ScalarValue};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use dirk_engine::{ChunkId, ChunkRef, Context};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One column's statistics in one chunk.
#[derive(Debug, Clone)]
pub(crate) struct ColumnStats {
    min: ScalarValue,
    max: ScalarValue,
    /// Unknown for a chunk that inherited its bounds (see [`ChunkStatistics::inherit_stats`]).
    nulls: Option<u64>,
}

/// The session's statistics, per (chunk, column position).
pub(crate) type StatsCache = parking_lot::Mutex<HashMap<(ChunkId, usize), ColumnStats>>;

/// The statistics cache and the engine that computes what it lacks; shared by the session and
/// its table providers.
pub(crate) struct ChunkStatistics {
    engine: Arc<Context>,
    cache: StatsCache,
}

impl std::fmt::Debug for ChunkStatistics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStatistics")
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

/// The statistics of the chunks of one table, as DataFusion's pruning reads them.
struct TableStats<'a> {
    chunks: &'a [ChunkRef],
    schema: &'a Schema,
    cache: &'a HashMap<(ChunkId, usize), ColumnStats>,
}

impl TableStats<'_> {
    fn column(
        &self,
        column: &Column,
        pick: impl Fn(&ColumnStats) -> ScalarValue,
    ) -> Option<ArrayRef> {
        let c = self.schema.index_of(&column.name).ok()?;
        let values: Option<Vec<ScalarValue>> = self
            .chunks
            .iter()
            .map(|chunk| self.cache.get(&(chunk.id, c)).map(&pick))
            .collect();
        ScalarValue::iter_to_array(values?).ok()
    }
}

impl PruningStatistics for TableStats<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.column(column, |s| s.min.clone())
    }
    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.column(column, |s| s.max.clone())
    }
    fn num_containers(&self) -> usize {
        self.chunks.len()
    }
    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.column(column, |s| ScalarValue::UInt64(s.nulls))
    }
    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(
            self.chunks.iter().map(|c| c.rows),
        )))
    }
    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

impl ChunkStatistics {
    pub(crate) fn new(engine: Arc<Context>) -> Self {
        ChunkStatistics {
            engine,
            cache: Default::default(),
        }
    }

    pub(crate) fn cache(&self) -> &StatsCache {
        &self.cache
    }

    /// Computes the statistics of `columns` that `chunks` lack, each on the chunk's worker.
    async fn compute(&self, table: &DTable, chunks: &[ChunkRef], columns: &[usize]) -> Result<()> {
        let missing: Vec<ChunkRef> = {
            let cache = self.cache.lock();
            chunks
                .iter()
                .filter(|c| columns.iter().any(|&i| !cache.contains_key(&(c.id, i))))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        // A chunk's task computes the planner's columns too, so that pruning and planning
        // together cost one pass per chunk.
        let mut columns = columns.to_vec();
        columns.extend(Self::planned_columns(table.schema()));
        columns.sort_unstable();
        columns.dedup();
        let step = Step::Stats {
            columns: columns.clone(),
        };
        let params = crate::kernels::fragment::encode_with_header(&step, &[]);
        let of_missing = DTable::new(table.schema().clone(), vec![missing]);
        let done = each_chunk(&self.engine, &of_missing, "Stats", |_| params.clone()).await?;

        let outputs: Vec<ChunkRef> = done.iter().flat_map(|(_, o)| o.iter().cloned()).collect();
        let mut found = Vec::new();
        for (chunk, outs) in &done {
            let Some(out) = outs.first() else { continue };
            let row = self.engine.fetch(out)?;
            let Some(b) = row.batches().first() else {
                continue;
            };
            for (k, &c) in columns.iter().enumerate() {
                let stats = ColumnStats {
                    min: ScalarValue::try_from_array(b.column(3 * k), 0)?,
                    max: ScalarValue::try_from_array(b.column(3 * k + 1), 0)?,
                    nulls: Some(b.column(3 * k + 2).as_primitive::<UInt64Type>().value(0)),
                };
                found.push(((chunk.id, c), stats));
            }
        }
        self.engine.free(&outputs)?;
        self.cache.lock().extend(found);
        Ok(())
    }

    /// The columns the planner gets bounds of: those of types DataFusion can count values
    /// between (see `Interval::cardinality`) and estimate range filters over.
    fn planned_columns(schema: &Schema) -> Vec<usize> {
        (0..schema.fields().len())
            .filter(|&c| Self::planned_type(schema.field(c).data_type()))
            .collect()
    }

    fn planned_type(dt: &DataType) -> bool {
        dt.is_integer()
            || dt.is_floating()
            || matches!(
                dt,
                DataType::Date32
                    | DataType::Date64
                    | DataType::Timestamp(_, _)
                    | DataType::Decimal128(_, _)
                    | DataType::Decimal256(_, _)
            )
    }

    /// Column statistics of `table`'s columns `projection` (all when `None`), in that order:
    /// inexact min, max and null count of the range-typed ones, computed first where missing.
    /// Planning goes on without them if they cannot be computed: whatever failed (a lost
    /// worker) fails the query's own tasks too, with its own error.
    pub(crate) async fn for_planning(
        &self,
        table: &DTable,
        projection: Option<&[usize]>,
    ) -> Vec<ColumnStatistics> {
        let schema = table.schema();
        let projected: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..schema.fields().len()).collect(),
        };
        let mut unknown = vec![ColumnStatistics::new_unknown(); projected.len()];
        let columns = Self::planned_columns(schema);
        let chunks: Vec<ChunkRef> = table.chunks().cloned().collect();
        if columns.is_empty() || chunks.is_empty() {
            return unknown;
        }
        if self.compute(table, &chunks, &columns).await.is_err() {
            return unknown;
        }
        let cache = self.cache.lock();
        for (out, &c) in unknown.iter_mut().zip(&projected) {
            if columns.binary_search(&c).is_ok() {
                *out = Self::merged(&cache, &chunks, c);
            }
        }
        unknown
    }

    /// One column's statistics over `chunks`, from each chunk's; unknown if one lacks them.
    fn merged(
        cache: &HashMap<(ChunkId, usize), ColumnStats>,
        chunks: &[ChunkRef],
        column: usize,
    ) -> ColumnStatistics {
        let mut out = ColumnStatistics::new_unknown();
        let (mut min, mut max): (Option<ScalarValue>, Option<ScalarValue>) = (None, None);
        let mut nulls = Some(0u64);
        for chunk in chunks {
            let Some(s) = cache.get(&(chunk.id, column)) else {
                return out;
            };
            nulls = nulls.zip(s.nulls).map(|(a, b)| a + b);
            // An empty or all-NULL chunk has NULL bounds: it widens nothing.
            if !s.min.is_null() && min.as_ref().is_none_or(|m| s.min < *m) {
                min = Some(s.min.clone());
            }
            if !s.max.is_null() && max.as_ref().is_none_or(|m| s.max > *m) {
                max = Some(s.max.clone());
            }
        }
        if let (Some(min), Some(max)) = (min, max) {
            out.min_value = Precision::Inexact(min);
            out.max_value = Precision::Inexact(max);
        }
        if let Some(n) = nulls {
            out.null_count = Precision::Inexact(n as usize);
        }
        out
    }
}

impl ChunkStatistics {
    /// The chunks of `table` whose rows `predicate` (over `schema`) may pick: the others are
    /// ruled out by their statistics. Any doubt (a column without statistics, a predicate
    /// pruning cannot read) keeps the chunk.
    pub(crate) async fn chunks_maybe_matching(
        &self,
        state: &SessionState,
        table: &DTable,
        schema: &DFSchema,
        predicate: &Expr,
    ) -> Result<Vec<ChunkRef>> {
        let chunks: Vec<ChunkRef> = table.chunks().cloned().collect();
        let mut columns: Vec<usize> = Vec::new();
        for c in predicate.column_refs() {
            match schema.index_of_column(c) {
                Ok(i) => columns.push(i),
                Err(_) => return Ok(chunks),
            }
        }
        columns.sort_unstable();
        columns.dedup();
        if columns.is_empty() || chunks.len() < 2 {
            return Ok(chunks);
        }
        let arrow_schema = Arc::new(schema.as_arrow().clone());
        let Ok(physical) = state.create_physical_expr(predicate.clone(), schema) else {
            return Ok(chunks);
        };
        let Ok(pruning) = PruningPredicateBuilder::new()
            .with_file_schema(Arc::clone(&arrow_schema))
            .try_build(physical)
        else {
            return Ok(chunks);
        };
        if pruning.always_true() {
            // Statistics cannot decide this predicate (`id % 10 = 0`): none are computed.
            return Ok(chunks);
        }
        self.compute(table, &chunks, &columns).await?;
        let cache = self.cache.lock();
        let stats = TableStats {
            chunks: &chunks,
            schema: &arrow_schema,
            cache: &cache,
        };
        let Ok(keep) = pruning.prune(&stats) else {
            return Ok(chunks);
        };
        drop(cache);
        Ok(chunks
            .into_iter()
            .zip(keep)
            .filter_map(|(c, k)| k.then_some(c))
            .collect())
    }

    /// Gives `to`, a chunk holding a subset of `from`'s rows (what a `DELETE` leaves), `from`'s
    /// bounds for every column except `except`: still bounds, though perhaps loose. Null counts
    /// are not inherited (a loose null count could rule out an `IS NOT NULL` wrongly).
    pub(crate) fn inherit_stats(&self, from: ChunkId, to: ChunkId, except: &[usize]) {
        let mut cache = self.cache.lock();
        let inherited: Vec<_> = cache
            .iter()
            .filter(|((id, c), _)| *id == from && !except.contains(c))
            .map(|((_, c), s)| {
                let bounds = ColumnStats {
                    nulls: None,
                    ..s.clone()
                };
                ((to, *c), bounds)
            })
            .collect();
        cache.extend(inherited);
    }

    /// Forgets the statistics of `columns` of `chunks` (their values were written in place).
    pub(crate) fn forget_stats(
        &self,
        chunks: impl IntoIterator<Item = ChunkId>,
        columns: &[usize],
    ) {
        let mut cache = self.cache.lock();
        for id in chunks {
            for &c in columns {
                cache.remove(&(id, c));
            }
        }
    }
}
