//! In-place mutation of DTables: `UPDATE`, `DELETE`, `TRUNCATE`, column changes.
//!
//! Every mutation runs as tasks on the workers that own the chunks, through the engine's
//! datadeps, in two phases:
//! 1. **Prepare** (read-only): per chunk, a task evaluates the statement (the rows a `WHERE`
//!    picks, the new values; or the rows a `DELETE` keeps; or a table's new columns). A cast
//!    error or an overflow anywhere fails here, before anything has changed: the statement's
//!    outputs are freed and the table is as it was.
//! 2. **Commit**: an `UPDATE` spawns, per chunk with matching rows, a task with `ReadWrite`
//!    access on the chunk that writes the prepared values into it. The engine orders it after
//!    every earlier reader (write-after-read), so a query submitted before sees the old values;
//!    a fixed-width column whose buffer the chunk holds alone is written in place, one that is
//!    shared (a reader still holds it) is copied first. Other mutations swap the catalog entry
//!    to the prepared chunks; the old ones are freed once their readers are done.
//!
//! Statements that change tables take the session's mutation lock, so they run one at a time;
//! queries take their table snapshot and submit their tasks under the catalog lock, so each
//! query sees the state between two statements (serializable).

use crate::error::{DirkError, Result};
use crate::exec::with_schema;
use crate::fragment::{decode_plan, decode_with_header, encode_plan, encode_with_header};
use crate::rowchange;
use crate::session::Session;
use crate::table::DTable;
use arrow::array::{
    downcast_primitive, new_empty_array, Array, ArrayRef, ArrowPrimitiveType, AsArray,
    PrimitiveArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use arrow::compute::kernels::boolean::not;
use arrow::compute::{filter_record_batch, interleave, prep_null_mask_filter};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use arrow::util::bit_util;
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast;
use dirk_engine::{Arg, Chunk, ChunkRef, Context, EngineError, Kernel, KernelCall, TaskOptions};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// The kernel's registered name.
pub const MUTATE_KERNEL: &str = "dirk.mutate";

/// What one mutation task does. The expressions travel as a small physical plan
/// (`ProjectionExec` over `FilterExec` over an `EmptyExec` of the table's schema), serialized
/// with datafusion-proto like any fragment, so the task runs unchanged on a remote worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Step {
    /// The positions of the rows the filter picks and the projection's values for them; no
    /// output when no row matches.
    UpdatePrepare { columns: Vec<usize> },
    /// Writes prepared values (inputs 1..) into the chunk (input 0, read-write): value
    /// column `k` goes to table column `columns[k]`.
    UpdateApply { columns: Vec<usize> },
    /// The chunk with columns naming each row appended (`rowchange::tag`); `chunk` is its
    /// position in the table.
    Tag { chunk: u32 },
    /// A change query's answer split by target chunk (`rowchange::route`).
    Route {
        targets: usize,
        target: Schema,
        columns: Vec<usize>,
        updated: Vec<usize>,
    },
    /// Min, max and null count of `columns` (`prune::column_stats`).
    Stats { columns: Vec<usize> },
    /// Checks that pending updates (inputs) name no row twice (`rowchange::verify`).
    Verify { updates: usize },
    /// A chunk that loses rows, rewritten (`rowchange::rewrite`).
    Rewrite {
        columns: Vec<usize>,
        updates: usize,
        dedupe_deletes: bool,
    },
    /// The rows the filter does not pick, as a new chunk; no output when every row stays.
    Delete,
    /// The projection of every row, as a new chunk (columns passed through share buffers);
    /// output column `k` is nullable when `nullable[k]` is (or its expression is).
    Project { nullable: Vec<bool> },
    /// The chunk cut into consecutive pieces at row offsets `cuts`: `cuts.len() + 1` outputs.
    Slice { cuts: Vec<u64> },
}

/// Runs mutation steps; see the module docs.
pub struct MutateKernel;

impl Kernel for MutateKernel {
    fn name(&self) -> &str {
        MUTATE_KERNEL
    }

    fn run(&self, call: &mut KernelCall<'_>) -> dirk_engine::Result<Vec<Chunk>> {
        let (step, plan): (Step, &[u8]) = decode_with_header(call.params())?;
        match &step {
            Step::UpdateApply { columns } => {
                return apply_update(call, columns).map_err(kernel_err)
            }
            Step::Slice { cuts } => return Ok(slice(call.input(0), cuts)),
            Step::Tag { chunk } => {
                return rowchange::tag(call.input(0), *chunk).map_err(kernel_err)
            }
            Step::Route {
                targets,
                target,
                columns,
                updated,
            } => {
                return rowchange::route(call.input(0), *targets, target, columns, updated)
                    .map_err(kernel_err)
            }
            Step::Stats { columns } => {
                return crate::prune::column_stats(call.input(0), columns).map_err(kernel_err)
            }
            Step::Verify { updates } => {
                return rowchange::verify(call, 0, *updates, false).map_err(kernel_err)
            }
            Step::Rewrite {
                columns,
                updates,
                dedupe_deletes,
            } => {
                return rowchange::rewrite(call, columns, *updates, *dedupe_deletes)
                    .map_err(kernel_err)
            }
            _ => {}
        }
        let plan = decode_plan(plan)?;
        let parts = PlanParts::of(&plan);
        let chunk = call.input(0);
        let batches = chunk
            .batches()
            .iter()
            .map(|b| with_schema(b, &parts.input_schema))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(kernel_err)?;
        let out = match step {
            Step::UpdatePrepare { columns } => prepare_update(&parts, &columns, &batches),
            Step::Delete => delete_rows(&parts, chunk.schema(), &batches),
            Step::Project { nullable } => project(&parts, &nullable, &batches),
            Step::UpdateApply { .. }
            | Step::Slice { .. }
            | Step::Tag { .. }
            | Step::Route { .. }
            | Step::Verify { .. }
            | Step::Stats { .. }
            | Step::Rewrite { .. } => unreachable!("handled above"),
        };
        out.map_err(kernel_err)
    }
}

fn kernel_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::kernel(e.to_string())
}

type KResult<T> = std::result::Result<T, datafusion::error::DataFusionError>;

/// The expressions of a mutation plan.
struct PlanParts {
    input_schema: SchemaRef,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    exprs: Vec<(Arc<dyn PhysicalExpr>, String)>,
}

impl PlanParts {
    fn of(plan: &Arc<dyn ExecutionPlan>) -> Self {
        let mut parts = PlanParts {
            input_schema: plan.schema(),
            predicate: None,
            exprs: Vec::new(),
        };
        let mut node = Arc::clone(plan);
        loop {
            if let Some(p) = node.downcast_ref::<ProjectionExec>() {
                parts.exprs = p
                    .expr()
                    .iter()
                    .map(|e| (Arc::clone(&e.expr), e.alias.clone()))
                    .collect();
            } else if let Some(f) = node.downcast_ref::<FilterExec>() {
                parts.predicate = Some(Arc::clone(f.predicate()));
            }
            let Some(child) = node.children().first().map(|c| Arc::clone(c)) else {
                break;
            };
            node = child;
        }
        parts.input_schema = node.schema();
        parts
    }

    /// Positions of the rows the predicate picks (all rows without one).
    fn picked(&self, batch: &RecordBatch) -> KResult<UInt32Array> {
        let n = batch.num_rows();
        let Some(p) = &self.predicate else {
            return Ok(UInt32Array::from_iter_values(0..n as u32));
        };
        let mask = p.evaluate(batch)?.into_array(n)?;
        let mask = true_only(mask.as_boolean());
        Ok(UInt32Array::from_iter_values(
            mask.values().set_indices().map(|i| i as u32),
        ))
    }

    fn output_schema(&self) -> KResult<Schema> {
        let fields = self
            .exprs
            .iter()
            .map(|(e, name)| {
                Ok(Field::new(
                    name,
                    e.data_type(&self.input_schema)?,
                    e.nullable(&self.input_schema)?,
                ))
            })
            .collect::<KResult<Vec<_>>>()?;
        Ok(Schema::new(fields))
    }

    fn evaluate(&self, batch: &RecordBatch) -> KResult<Vec<ArrayRef>> {
        self.exprs
            .iter()
            .map(|(e, _)| e.evaluate(batch)?.into_array(batch.num_rows()))
            .collect()
    }
}

/// Rows evaluated at a time: expression temporaries stay this small however large a chunk's
/// batches are.
const PIECE_ROWS: usize = 64 * 1024;

/// Each batch cut into pieces of at most [`PIECE_ROWS`] rows (zero-copy slices): (batch index,
/// piece, the piece's first row in the batch).
fn pieces(batches: &[RecordBatch]) -> impl Iterator<Item = (usize, RecordBatch, usize)> + '_ {
    batches.iter().enumerate().flat_map(|(bi, b)| {
        (0..b.num_rows()).step_by(PIECE_ROWS).map(move |start| {
            (
                bi,
                b.slice(start, PIECE_ROWS.min(b.num_rows() - start)),
                start,
            )
        })
    })
}

/// Rows where `mask` is true (null counts as not true).
fn true_only(mask: &arrow::array::BooleanArray) -> arrow::array::BooleanArray {
    match mask.nulls() {
        Some(_) => prep_null_mask_filter(mask),
        None => mask.clone(),
    }
}

/// Prepared values: per input batch with matches, one batch of (batch index, row, values...).
fn prepare_update(
    parts: &PlanParts,
    columns: &[usize],
    batches: &[RecordBatch],
) -> KResult<Vec<Chunk>> {
    let values = parts.output_schema()?;
    let mut fields = position_fields();
    // Values may be null even where the column is not (the apply step keeps the table's
    // nullability; DataFusion checks NOT NULL at planning).
    fields.extend(
        values
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true)),
    );
    let schema = Arc::new(Schema::new(fields));
    // Only the columns the new values read are gathered for the picked rows; the others are
    // stood in for by nulls (under a schema where every column may be null).
    let read: std::collections::HashSet<usize> = parts
        .exprs
        .iter()
        .flat_map(|(e, _)| datafusion::physical_expr::utils::collect_columns(e))
        .map(|c| c.index())
        .collect();
    let relaxed = Arc::new(Schema::new(
        parts
            .input_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let mut out = Vec::new();
    for (bi, piece, offset) in pieces(batches) {
        let rows = parts.picked(&piece)?;
        if rows.is_empty() {
            continue;
        }
        let picked = if rows.len() == piece.num_rows() {
            piece
        } else {
            let columns = piece
                .columns()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if read.contains(&i) {
                        Ok(arrow::compute::take(c, &rows, None)?)
                    } else {
                        Ok(arrow::array::new_null_array(c.data_type(), rows.len()))
                    }
                })
                .collect::<KResult<Vec<_>>>()?;
            let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
            RecordBatch::try_new_with_options(Arc::clone(&relaxed), columns, &options)?
        };
        let positions = rows.values().iter().map(|r| r + offset as u32);
        let mut out_columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(vec![bi as u32; rows.len()])),
            Arc::new(UInt32Array::from_iter_values(positions)),
        ];
        let values = parts.evaluate(&picked)?;
        for (k, v) in values.iter().enumerate() {
            let field = parts.input_schema.field(columns[k]);
            if v.null_count() > 0 && !field.is_nullable() {
                return Err(datafusion::error::DataFusionError::Execution(format!(
                    "column `{}` is NOT NULL; the update would set it to null",
                    field.name()
                )));
            }
        }
        out_columns.extend(values);
        out.push(RecordBatch::try_new(Arc::clone(&schema), out_columns)?);
    }
    Ok(if out.is_empty() {
        Vec::new()
    } else {
        vec![Chunk::new(schema, out)]
    })
}

fn delete_rows(
    parts: &PlanParts,
    chunk_schema: &SchemaRef,
    batches: &[RecordBatch],
) -> KResult<Vec<Chunk>> {
    let Some(p) = &parts.predicate else {
        return Ok(vec![Chunk::new(Arc::clone(chunk_schema), Vec::new())]);
    };
    let mut kept = Vec::with_capacity(batches.len());
    let mut deleted = 0;
    for (_, piece, _) in pieces(batches) {
        let mask = p.evaluate(&piece)?.into_array(piece.num_rows())?;
        let gone = true_only(mask.as_boolean());
        deleted += gone.true_count();
        let keep = filter_record_batch(&piece, &not(&gone)?)?;
        if keep.num_rows() > 0 {
            kept.push(with_schema(&keep, chunk_schema)?);
        }
    }
    Ok(if deleted == 0 {
        Vec::new()
    } else {
        vec![Chunk::new(Arc::clone(chunk_schema), kept)]
    })
}

fn project(parts: &PlanParts, nullable: &[bool], batches: &[RecordBatch]) -> KResult<Vec<Chunk>> {
    let computed = parts.output_schema()?;
    let fields: Vec<Field> = computed
        .fields()
        .iter()
        .enumerate()
        .map(|(k, f)| {
            let n = f.is_nullable() || nullable.get(k).copied().unwrap_or(false);
            f.as_ref().clone().with_nullable(n)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let out = batches
        .iter()
        .map(|b| {
            let options = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
            Ok(RecordBatch::try_new_with_options(
                Arc::clone(&schema),
                parts.evaluate(b)?,
                &options,
            )?)
        })
        .collect::<KResult<Vec<_>>>()?;
    Ok(vec![Chunk::new(schema, out)])
}

fn slice(chunk: &Chunk, cuts: &[u64]) -> Vec<Chunk> {
    let mut pieces = vec![Vec::new(); cuts.len() + 1];
    let mut offset = 0u64;
    for batch in chunk.batches() {
        let mut start = 0usize;
        while start < batch.num_rows() {
            let at = offset + start as u64;
            let piece = cuts.iter().filter(|c| **c <= at).count();
            let end = cuts
                .get(piece)
                .map(|c| (*c - offset) as usize)
                .unwrap_or(batch.num_rows())
                .min(batch.num_rows());
            pieces[piece].push(batch.slice(start, end - start));
            start = end;
        }
        offset += batch.num_rows() as u64;
    }
    pieces
        .into_iter()
        .map(|b| Chunk::new(chunk.schema().clone(), b))
        .collect()
}

fn apply_update(call: &mut KernelCall<'_>, columns: &[usize]) -> KResult<Vec<Chunk>> {
    let pending: Vec<RecordBatch> = (1..call.num_inputs())
        .flat_map(|i| call.input(i).batches().to_vec())
        .collect();
    let target = call
        .input_mut(0)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    // A reader that holds the chunk keeps its version: the chunk is cloned (cheaply: its
    // arrays are shared, so each written column is then copied rather than written in place).
    let chunk = Arc::make_mut(target);
    let batches = chunk.batches_mut();
    for p in &pending {
        let b = p.column(0).as_primitive::<UInt32Type>().value(0) as usize;
        let rows = p.column(1).as_primitive::<UInt32Type>();
        let Some(slot) = batches.get_mut(b) else {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "prepared values name batch {b}, which the chunk does not have"
            )));
        };
        let placeholder = RecordBatch::new_empty(slot.schema());
        let (schema, mut cols, n) = std::mem::replace(slot, placeholder).into_parts();
        for (k, &c) in columns.iter().enumerate() {
            let old = std::mem::replace(&mut cols[c], new_empty_array(&DataType::Null));
            cols[c] = scatter(old, rows, p.column(2 + k))?;
        }
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        *slot = RecordBatch::try_new_with_options(schema, cols, &options)?;
    }
    Ok(Vec::new())
}

/// `old` with `rows` set to `new`'s values. A fixed-width column whose buffers `old` holds alone
/// is written in place; any other is copied.
fn scatter(old: ArrayRef, rows: &UInt32Array, new: &ArrayRef) -> KResult<ArrayRef> {
    let new = if new.data_type() == old.data_type() {
        Arc::clone(new)
    } else {
        arrow::compute::cast(new, old.data_type())?
    };
    macro_rules! typed {
        ($t:ty, $old:expr, $rows:expr, $new:expr) => {
            scatter_primitive::<$t>($old, $rows, $new)
        };
    }
    let dt = old.data_type().clone();
    let new = &new;
    downcast_primitive! {
        dt => (typed, old, rows, new),
        _ => scatter_copy(old, rows, new),
    }
}

fn scatter_primitive<T: ArrowPrimitiveType>(
    old: ArrayRef,
    rows: &UInt32Array,
    new: &ArrayRef,
) -> KResult<ArrayRef> {
    let typed: PrimitiveArray<T> = old.as_primitive::<T>().clone();
    drop(old);
    let values = new.as_primitive::<T>();
    match typed.into_builder() {
        Ok(mut builder) => {
            if values.null_count() > 0 && builder.validity_slice_mut().is_none() {
                // Nulls into a column that has no validity bitmap yet: build one by copying.
                return scatter_copy(Arc::new(builder.finish()), rows, new);
            }
            let slots = builder.values_slice_mut();
            for (k, &r) in rows.values().iter().enumerate() {
                slots[r as usize] = values.value(k);
            }
            if let Some(validity) = builder.validity_slice_mut() {
                for (k, &r) in rows.values().iter().enumerate() {
                    if values.is_valid(k) {
                        bit_util::set_bit(validity, r as usize);
                    } else {
                        bit_util::unset_bit(validity, r as usize);
                    }
                }
            }
            Ok(Arc::new(builder.finish()))
        }
        Err(shared) => scatter_copy(Arc::new(shared), rows, new),
    }
}

/// Copy-on-write: a new array, `old` with `rows` taken from `new`.
pub(crate) fn scatter_copy(old: ArrayRef, rows: &UInt32Array, new: &ArrayRef) -> KResult<ArrayRef> {
    let mut from: Vec<(usize, usize)> = (0..old.len()).map(|i| (0, i)).collect();
    for (k, &r) in rows.values().iter().enumerate() {
        from[r as usize] = (1, k);
    }
    Ok(interleave(&[old.as_ref(), new.as_ref()], &from)?)
}

/// A mutation plan over `schema`: projection `exprs` (if any) over a filter (if any).
fn mutation_plan(
    session: &Session,
    schema: &DFSchema,
    predicate: Option<Expr>,
    exprs: Vec<(Expr, String)>,
) -> Result<Vec<u8>> {
    let state = session.planner_state();
    let mut plan: Arc<dyn ExecutionPlan> =
        Arc::new(EmptyExec::new(Arc::new(schema.as_arrow().clone())));
    if let Some(p) = predicate {
        plan = Arc::new(FilterExec::try_new(
            state.create_physical_expr(p, schema)?,
            plan,
        )?);
    }
    if !exprs.is_empty() {
        let physical = exprs
            .into_iter()
            .map(|(e, name)| Ok((state.create_physical_expr(e, schema)?, name)))
            .collect::<Result<Vec<_>>>()?;
        plan = Arc::new(ProjectionExec::try_new(physical, plan)?);
    }
    Ok(encode_plan(&plan)?)
}

impl Session {
    /// Runs `step` once per chunk of `table` (each task reads its chunk, on the chunk's worker)
    /// and waits for all. On any failure the outputs are freed and the first error returned.
    async fn per_chunk(
        &self,
        table: &DTable,
        step: &Step,
        plan: &[u8],
    ) -> Result<Vec<(ChunkRef, Option<ChunkRef>)>> {
        let params = encode_with_header(step, plan);
        let label = format!("{step:?}");
        let done = self.each_chunk(table, &label, |_| params.clone()).await?;
        Ok(done
            .into_iter()
            .map(|(c, outs)| (c, outs.into_iter().next()))
            .collect())
    }

    /// [`each_chunk`] on this session's engine.
    pub(crate) async fn each_chunk(
        &self,
        table: &DTable,
        label: &str,
        params: impl FnMut(&ChunkRef) -> Vec<u8>,
    ) -> Result<Vec<(ChunkRef, Vec<ChunkRef>)>> {
        each_chunk(self.engine(), table, label, params).await
    }

    /// The chunks of `table` a statement with `predicate` must visit, as one partition: all of
    /// them, less those their statistics rule out.
    async fn candidates(
        &self,
        table: &DTable,
        schema: &DFSchema,
        predicate: Option<&Expr>,
    ) -> Result<DTable> {
        let chunks = match predicate {
            Some(p) => self.chunks_maybe_matching(table, schema, p).await?,
            None => table.chunks().cloned().collect(),
        };
        Ok(DTable::new(table.schema().clone(), vec![chunks]))
    }

    /// `UPDATE name SET columns[k] = exprs[k] WHERE predicate`: the expressions are over
    /// `schema` (the table's columns, qualified as the statement names them). Returns the
    /// number of rows updated.
    pub(crate) async fn update_rows(
        &self,
        name: &str,
        schema: &DFSchema,
        predicate: Option<Expr>,
        assignments: Vec<(usize, Expr)>,
    ) -> Result<u64> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let table = self.table(name)?;
        if assignments.is_empty() {
            return Ok(0);
        }
        let columns: Vec<usize> = assignments.iter().map(|(c, _)| *c).collect();
        let table = match table.hash_keys() {
            // New key values would hash elsewhere; the rows stay where they are, so the table's
            // partitioning is no longer known. Dropped before any row changes.
            Some(keys)
                if columns
                    .iter()
                    .any(|&c| keys.contains(table.schema().field(c).name())) =>
            {
                let plain = table.without_hash_keys();
                self.register_replacing(name, plain.clone())?;
                plain
            }
            _ => table,
        };
        let exprs = assignments
            .into_iter()
            .map(|(c, e)| (e, table.schema().field(c).name().clone()))
            .collect();
        let candidates = self.candidates(&table, schema, predicate.as_ref()).await?;
        let plan = mutation_plan(self, schema, predicate, exprs)?;
        let step = Step::UpdatePrepare {
            columns: columns.clone(),
        };
        let prepared = self.per_chunk(&candidates, &step, &plan).await?;
        let pending: Vec<(ChunkRef, ChunkRef)> = prepared
            .into_iter()
            .filter_map(|(c, p)| Some((c, p?)))
            .collect();
        let rows = pending.iter().map(|(_, p)| p.rows).sum();
        let apply = Step::UpdateApply {
            columns: columns.clone(),
        };
        let params = encode_with_header(&apply, &[]);
        let handles: Vec<_> = self.with_catalog_locked(|| {
            pending
                .iter()
                .map(|(target, values)| {
                    self.engine().spawn(
                        MUTATE_KERNEL,
                        vec![Arg::read_write(target), Arg::read(values)],
                        TaskOptions::new()
                            .params(params.clone())
                            .label("UpdateApply"),
                    )
                })
                .collect()
        });
        let mut failure = None;
        for h in handles {
            if let Err(e) = h.join().await {
                failure.get_or_insert(e);
            }
        }
        self.forget_stats(pending.iter().map(|(t, _)| t.id), &columns);
        let values: Vec<ChunkRef> = pending.into_iter().map(|(_, v)| v).collect();
        self.engine().free(&values)?;
        match failure {
            // The prepared values were checked (types, overflow) in the first phase; an apply
            // task fails only when the engine does (a lost worker).
            Some(e) => Err(e.into()),
            None => Ok(rows),
        }
    }

    /// `DELETE FROM name WHERE predicate` (over `schema`); without a predicate, every row.
    /// Returns the number of rows deleted.
    pub(crate) async fn delete_rows(
        &self,
        name: &str,
        schema: &DFSchema,
        predicate: Option<Expr>,
    ) -> Result<u64> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let table = self.table(name)?;
        let Some(predicate) = predicate else {
            return self.truncate_locked(name, table);
        };
        let candidates = self.candidates(&table, schema, Some(&predicate)).await?;
        let plan = mutation_plan(self, schema, Some(predicate), Vec::new())?;
        let kept = self.per_chunk(&candidates, &Step::Delete, &plan).await?;
        let mut deleted = 0;
        let mut empty = Vec::new();
        let replaced: HashMap<_, _> = kept
            .into_iter()
            .filter_map(|(old, new)| {
                let new = new?;
                deleted += old.rows - new.rows;
                if new.rows == 0 {
                    empty.push(new);
                    return Some((old.id, None));
                }
                self.inherit_stats(old.id, new.id, &[]);
                Some((old.id, Some(new)))
            })
            .collect();
        self.engine().free(&empty)?;
        if deleted == 0 {
            return Ok(0);
        }
        let partitions = table
            .partitions()
            .iter()
            .map(|p| {
                p.iter()
                    .filter_map(|c| match replaced.get(&c.id) {
                        Some(new) => new.clone(),
                        None => Some(c.clone()),
                    })
                    .collect()
            })
            .collect();
        self.register_replacing(name, table.with_subsets(partitions))?;
        Ok(deleted)
    }

    /// `TRUNCATE name`: every row goes; the table keeps its schema and partition count.
    pub(crate) async fn truncate_rows(&self, name: &str) -> Result<u64> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let table = self.table(name)?;
        self.truncate_locked(name, table)
    }

    fn truncate_locked(&self, name: &str, table: DTable) -> Result<u64> {
        let rows = table.num_rows();
        let partitions = vec![Vec::new(); table.num_partitions()];
        self.register_replacing(name, table.with_subsets(partitions))?;
        Ok(rows)
    }

    /// Replaces the table's columns by `exprs` (over `schema`), evaluated chunk by chunk where
    /// the chunks live: what `ADD COLUMN` and `DROP COLUMN` do. Columns passed through as they
    /// are share their buffers with the old chunks: nothing is copied.
    pub(crate) async fn project_columns(
        &self,
        name: &str,
        schema: &DFSchema,
        exprs: Vec<(Expr, String)>,
        nullable: Vec<bool>,
    ) -> Result<()> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let table = self.table(name)?;
        let plan = mutation_plan(self, schema, None, exprs)?;
        let computed = decode_plan(&plan)?.schema();
        let fields: Vec<Field> = computed
            .fields()
            .iter()
            .zip(&nullable)
            .map(|(f, n)| f.as_ref().clone().with_nullable(f.is_nullable() || *n))
            .collect();
        let new_schema = Arc::new(Schema::new(fields));
        let step = Step::Project { nullable };
        let projected = self.per_chunk(&table, &step, &plan).await?;
        let replaced: HashMap<_, _> = projected
            .into_iter()
            .filter_map(|(old, new)| Some((old.id, new?)))
            .collect();
        let partitions = table
            .partitions()
            .iter()
            .map(|p| {
                p.iter()
                    .filter_map(|c| replaced.get(&c.id).cloned())
                    .collect()
            })
            .collect();
        self.register_replacing(name, DTable::new(new_schema, partitions))?;
        Ok(())
    }

    /// Adds column `column` = `value` (over `schema`); the existing columns keep their buffers.
    /// `nullable` makes the new column nullable even where `value` is not (a literal default).
    async fn add_column(
        &self,
        table: &str,
        schema: &DFSchema,
        value: Expr,
        column: String,
        nullable: bool,
    ) -> Result<()> {
        let mut exprs = as_they_are(schema);
        exprs.push((value, column));
        let mut flags = vec![false; exprs.len()];
        *flags.last_mut().expect("the new column") = nullable;
        self.project_columns(table, schema, exprs, flags).await
    }

    /// Renames a column: only the catalog changes (chunks are read by position).
    pub(crate) async fn rename_column_in(&self, name: &str, from: &str, to: &str) -> Result<()> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let table = self.table(name)?;
        let schema = table.schema();
        let i = schema.index_of(from)?;
        if schema.index_of(to).is_ok() {
            return Err(DirkError::SchemaMismatch {
                detail: format!("table `{name}` already has a column `{to}`"),
            });
        }
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(j, f)| {
                let f = f.as_ref().clone();
                if j == i {
                    f.with_name(to)
                } else {
                    f
                }
            })
            .collect();
        let new_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        let partitions = table.partitions().to_vec();
        self.register_replacing(name, DTable::new(new_schema, partitions))
    }

    /// Renames a table: only the catalog changes.
    pub(crate) async fn rename_table_to(&self, from: &str, to: &str) -> Result<()> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let table = self.table(from)?;
        if self.table(to).is_ok() {
            return Err(DirkError::TableExists { name: to.into() });
        }
        self.register_moved(from, to, table)
    }
}

/// Every column of `schema` as it is, under its own name: the start of a projection that adds
/// or drops columns (pass-through columns share their buffers).
fn as_they_are(schema: &DFSchema) -> Vec<(Expr, String)> {
    schema
        .columns()
        .into_iter()
        .map(|c| {
            let n = c.name.clone();
            (Expr::Column(c), n)
        })
        .collect()
}

/// True when `e` holds a subquery (which a per-chunk expression cannot evaluate).
fn has_subquery(e: &Expr) -> bool {
    use datafusion::common::tree_node::TreeNode;
    e.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
        ))
    })
    .unwrap_or(true)
}

/// The target table's own scan in a DML input (possibly under its alias); `None` when the
/// input reads more than the target (a join with `FROM` tables).
fn target_scan(plan: &LogicalPlan) -> Option<&LogicalPlan> {
    match plan {
        LogicalPlan::TableScan(_) => Some(plan),
        LogicalPlan::SubqueryAlias(a) if matches!(a.input.as_ref(), LogicalPlan::TableScan(_)) => {
            Some(plan)
        }
        _ => None,
    }
}

/// An identifier as DataFusion names it: unquoted ones are lower-cased.
fn ident_name(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

pub(crate) fn object_name(n: &ast::ObjectName) -> Result<String> {
    n.0.last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .ok_or_else(|| DirkError::Unsupported {
            what: format!("table name {n}"),
        })
}

fn unsupported(what: impl Into<String>) -> DirkError {
    DirkError::Unsupported { what: what.into() }
}

impl Session {
    /// `INSERT INTO name <plan>`: the new rows become new chunks of the table.
    pub(crate) async fn insert_plan(&self, name: &str, input: LogicalPlan) -> Result<u64> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let mut table = self.table(name)?;
        let new = self.run_plan(input).await?;
        let rows = new.num_rows();
        table.append(new)?;
        self.register_replacing(name, table)?;
        Ok(rows)
    }

    /// `UPDATE`, from DataFusion's plan: a projection of every column (assigned ones replaced
    /// by their new value, cast to the column's type) over the `WHERE` filter over the scan.
    pub(crate) async fn update_from_plan(&self, name: &str, input: &LogicalPlan) -> Result<u64> {
        let LogicalPlan::Projection(p) = input else {
            return Err(unsupported(format!(
                "UPDATE planned as {}",
                input.display()
            )));
        };
        let (predicate, source) = match p.input.as_ref() {
            LogicalPlan::Filter(f) => (Some(f.predicate.clone()), f.input.as_ref()),
            other => (None, other),
        };
        let Some(source) = target_scan(source) else {
            return Err(unsupported(
                "UPDATE ... FROM another table (a join): only the target table's own columns \
                 may be read",
            ));
        };
        let schema = source.schema();
        let mut assignments = Vec::new();
        for (i, e) in p.expr.iter().enumerate() {
            let e = e.clone().unalias();
            if let Expr::Column(c) = &e {
                if schema.index_of_column(c).ok() == Some(i) {
                    continue;
                }
            }
            assignments.push((i, e));
        }
        if predicate
            .iter()
            .chain(assignments.iter().map(|(_, e)| e))
            .any(has_subquery)
        {
            return Err(unsupported("UPDATE with a subquery"));
        }
        self.update_rows(name, schema, predicate, assignments).await
    }

    /// `DELETE`, from DataFusion's plan: the `WHERE` filter over the scan.
    pub(crate) async fn delete_from_plan(&self, name: &str, input: &LogicalPlan) -> Result<u64> {
        let (predicate, source) = match input {
            LogicalPlan::Filter(f) => (Some(f.predicate.clone()), f.input.as_ref()),
            other => (None, other),
        };
        let Some(source) = target_scan(source) else {
            return Err(unsupported(format!(
                "DELETE planned as {}",
                input.display()
            )));
        };
        if predicate.as_ref().is_some_and(has_subquery) {
            return Err(unsupported("DELETE with a subquery"));
        }
        self.delete_rows(name, source.schema(), predicate).await
    }

    /// `ALTER TABLE`: `ADD [COLUMN]`, `DROP [COLUMN]`, `RENAME [COLUMN]`, `RENAME TO`. Returns
    /// the rows whose shape changed (every row for `ADD`/`DROP`; none for renames).
    pub(crate) async fn alter_table(&self, alter: &ast::AlterTable) -> Result<u64> {
        let mut name = object_name(&alter.name)?;
        if self.table(&name).is_err() {
            if alter.if_exists {
                return Ok(0);
            }
            return Err(DirkError::TableNotFound { name });
        }
        let mut rows = 0;
        for op in &alter.operations {
            match op {
                ast::AlterTableOperation::AddColumn {
                    if_not_exists,
                    column_def,
                    ..
                } => {
                    let column = ident_name(&column_def.name);
                    let table = self.table(&name)?;
                    if table.schema().index_of(&column).is_ok() {
                        if *if_not_exists {
                            continue;
                        }
                        return Err(DirkError::SchemaMismatch {
                            detail: format!("table `{name}` already has a column `{column}`"),
                        });
                    }
                    let mut default = None;
                    let mut not_null = false;
                    for o in &column_def.options {
                        match &o.option {
                            ast::ColumnOption::Default(e) => default = Some(e.to_string()),
                            ast::ColumnOption::NotNull => not_null = true,
                            ast::ColumnOption::Null => {}
                            other => {
                                return Err(unsupported(format!("ADD COLUMN ... {other}")));
                            }
                        }
                    }
                    if not_null && default.is_none() && table.num_rows() > 0 {
                        return Err(DirkError::SchemaMismatch {
                            detail: format!(
                                "column `{column}` is NOT NULL and has no DEFAULT for the \
                                 table's {} rows",
                                table.num_rows()
                            ),
                        });
                    }
                    // DataFusion turns the SQL type and the default into an expression.
                    let sql = format!(
                        "SELECT CAST({} AS {})",
                        default.as_deref().unwrap_or("NULL"),
                        column_def.data_type
                    );
                    let plan = self.planner_state().create_logical_plan(&sql).await?;
                    let LogicalPlan::Projection(p) = plan else {
                        return Err(unsupported(format!("default {sql}")));
                    };
                    let value = p.expr[0].clone().unalias();
                    let schema =
                        DFSchema::try_from_qualified_schema(name.as_str(), table.schema())?;
                    self.add_column(&name, &schema, value, column, !not_null)
                        .await?;
                    rows = rows.max(table.num_rows());
                }
                ast::AlterTableOperation::DropColumn {
                    column_names,
                    if_exists,
                    ..
                } => {
                    let table = self.table(&name)?;
                    let mut gone = Vec::new();
                    for c in column_names {
                        let c = ident_name(c);
                        if table.schema().index_of(&c).is_err() {
                            if *if_exists {
                                continue;
                            }
                            return Err(DirkError::SchemaMismatch {
                                detail: format!("table `{name}` has no column `{c}`"),
                            });
                        }
                        gone.push(c);
                    }
                    let refs: Vec<&str> = gone.iter().map(String::as_str).collect();
                    rows = rows.max(self.drop_columns(&name, &refs).await?);
                }
                ast::AlterTableOperation::RenameColumn {
                    old_column_name,
                    new_column_name,
                } => {
                    self.rename_column(
                        &name,
                        &ident_name(old_column_name),
                        &ident_name(new_column_name),
                    )
                    .await?;
                }
                ast::AlterTableOperation::RenameTable { table_name } => {
                    let to = match table_name {
                        ast::RenameTableNameKind::As(n) | ast::RenameTableNameKind::To(n) => {
                            object_name(n)?
                        }
                    };
                    self.rename_table_to(&name, &to).await?;
                    name = to;
                }
                other => return Err(unsupported(format!("ALTER TABLE ... {other}"))),
            }
        }
        Ok(rows)
    }

    // The DataFrames.jl-style in-place operators. Each runs as tasks on the workers that own
    // the table's chunks, like the SQL statements, and returns the number of rows it changed.

    fn df_schema_of(&self, name: &str) -> Result<(DTable, DFSchema)> {
        let table = self.table(name)?;
        let schema = DFSchema::try_from_qualified_schema(name, table.schema())?;
        Ok((table, schema))
    }

    /// Sets `assignments` (column, new value) on the rows where `predicate` is true, in place.
    /// Returns the number of rows updated.
    pub async fn update(
        &self,
        table: &str,
        predicate: Expr,
        assignments: Vec<(&str, Expr)>,
    ) -> Result<u64> {
        let (t, schema) = self.df_schema_of(table)?;
        let mut typed = Vec::with_capacity(assignments.len());
        for (column, value) in assignments {
            let i = t.schema().index_of(column)?;
            typed.push((i, value.cast_to(t.schema().field(i).data_type(), &schema)?));
        }
        self.update_rows(table, &schema, Some(predicate), typed)
            .await
    }

    /// Deletes the rows where `predicate` is true. Returns the number of rows deleted.
    pub async fn delete_where(&self, table: &str, predicate: Expr) -> Result<u64> {
        let (_, schema) = self.df_schema_of(table)?;
        self.delete_rows(table, &schema, Some(predicate)).await
    }

    /// Appends `batches` (of the table's column types) as new chunks. Returns the rows added.
    pub async fn append(&self, table: &str, batches: Vec<RecordBatch>) -> Result<u64> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let mut t = self.table(table)?;
        let Some(first) = batches.first() else {
            return Ok(0);
        };
        let schema = first.schema();
        let types = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect::<Vec<_>>()
        };
        if types(&schema) != types(t.schema()) {
            return Err(DirkError::SchemaMismatch {
                detail: format!(
                    "table `{table}` has columns {}; the batches have {}",
                    t.schema(),
                    schema
                ),
            });
        }
        let new = self.put_batches(schema, batches)?;
        let rows = new.num_rows();
        t.append(new)?;
        self.register_replacing(table, t)?;
        Ok(rows)
    }

    /// Appends the result of a DataFrame (run as tasks; its chunks join the table where they
    /// were made). Returns the rows added.
    pub async fn append_df(&self, table: &str, df: crate::DataFrame<'_>) -> Result<u64> {
        self.insert_plan(table, df.inner().logical_plan().clone())
            .await
    }

    /// Sets column `name` to `value` on every row: in place when the column exists, as a new
    /// column (existing columns untouched) when it does not. Returns the rows changed.
    pub async fn with_column_inplace(&self, table: &str, name: &str, value: Expr) -> Result<u64> {
        let (t, schema) = self.df_schema_of(table)?;
        if t.schema().index_of(name).is_ok() {
            return self
                .update(table, datafusion::prelude::lit(true), vec![(name, value)])
                .await;
        }
        self.add_column(table, &schema, value, name.to_string(), false)
            .await?;
        Ok(t.num_rows())
    }

    /// Replaces nulls in `column` by `value`, in place. Returns the rows changed.
    pub async fn fill_null(&self, table: &str, column: &str, value: Expr) -> Result<u64> {
        let predicate = datafusion::prelude::col(column).is_null();
        self.update(table, predicate, vec![(column, value)]).await
    }

    /// Renames a column (the catalog changes; no data moves). Returns 0: no row changes.
    pub async fn rename_column(&self, table: &str, from: &str, to: &str) -> Result<u64> {
        self.rename_column_in(table, from, to).await?;
        Ok(0)
    }

    /// Drops columns; the others keep their buffers. Returns the table's rows.
    pub async fn drop_columns(&self, table: &str, columns: &[&str]) -> Result<u64> {
        let (t, schema) = self.df_schema_of(table)?;
        for c in columns {
            t.schema().index_of(c)?;
        }
        let exprs: Vec<(Expr, String)> = as_they_are(&schema)
            .into_iter()
            .filter(|(_, n)| !columns.contains(&n.as_str()))
            .collect();
        if exprs.is_empty() {
            return Err(DirkError::SchemaMismatch {
                detail: format!("dropping every column of `{table}`"),
            });
        }
        let nullable = vec![false; exprs.len()];
        self.project_columns(table, &schema, exprs, nullable)
            .await?;
        Ok(t.num_rows())
    }

    /// Sorts the table by `by`: the table's rows are replaced by the sorted result, kept in
    /// the session's partition count, each partition a consecutive range. Returns the rows.
    pub async fn sort_inplace(
        &self,
        table: &str,
        by: Vec<datafusion::logical_expr::SortExpr>,
    ) -> Result<u64> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let t = self.table(table)?;
        let plan = self
            .planner()
            .table(table)
            .await?
            .sort(by)?
            .into_unoptimized_plan();
        let sorted = self.run_plan(plan).await?;
        let ranges = self.split_ranges(sorted, t.num_partitions().max(1)).await?;
        self.register_replacing(table, ranges)?;
        Ok(t.num_rows())
    }

    /// `table`'s rows in order, cut into `n` partitions of consecutive rows. Each chunk is cut
    /// by a task on its own worker; the pieces stay there.
    async fn split_ranges(&self, table: DTable, n: usize) -> Result<DTable> {
        let total = table.num_rows();
        let bounds: Vec<u64> = (1..n as u64).map(|p| total * p / n as u64).collect();
        let mut offset = 0;
        let sliced = self
            .each_chunk(&table, "Slice", |c| {
                let cuts: Vec<u64> = bounds
                    .iter()
                    .filter(|b| **b > offset && **b < offset + c.rows)
                    .map(|b| b - offset)
                    .collect();
                offset += c.rows;
                encode_with_header(&Step::Slice { cuts }, &[])
            })
            .await?;
        // A chunk's first piece belongs to the partition whose range holds its first row.
        let mut partitions: Vec<Vec<ChunkRef>> = vec![Vec::new(); n];
        let mut offset = 0;
        for (c, pieces) in sliced {
            let first = bounds.iter().filter(|b| **b <= offset).count();
            for (k, piece) in pieces.into_iter().enumerate() {
                partitions[(first + k).min(n - 1)].push(piece);
            }
            offset += c.rows;
        }
        self.engine()
            .free(&table.chunks().cloned().collect::<Vec<_>>())?;
        Ok(DTable::new(table.schema().clone(), partitions))
    }

    /// Removes every row. Returns the number removed.
    pub async fn truncate(&self, table: &str) -> Result<u64> {
        self.truncate_rows(table).await
    }
}

/// The leading columns of the values an update writes into a chunk: each value's batch and row.
pub(crate) fn position_fields() -> Vec<Field> {
    vec![
        Field::new("__dirk_batch", DataType::UInt32, false),
        Field::new("__dirk_row", DataType::UInt32, false),
    ]
}

/// One `dirk.mutate` task per chunk, in order, with the parameters `params` gives it;
/// returns each chunk with its task's outputs. On any failure every output is freed and
/// the first error returned.
pub(crate) async fn each_chunk(
    engine: &Context,
    table: &DTable,
    label: &str,
    mut params: impl FnMut(&ChunkRef) -> Vec<u8>,
) -> Result<Vec<(ChunkRef, Vec<ChunkRef>)>> {
    let handles: Vec<_> = table
        .chunks()
        .map(|c| {
            let opts = TaskOptions::new().params(params(c)).label(label);
            (
                c.clone(),
                engine.spawn(MUTATE_KERNEL, vec![Arg::read(c)], opts),
            )
        })
        .collect();
    let mut done = Vec::with_capacity(handles.len());
    let mut failure = None;
    for (chunk, h) in handles {
        match h.join().await {
            Ok(out) => done.push((chunk, out.chunks)),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        let made: Vec<ChunkRef> = done.into_iter().flat_map(|(_, o)| o).collect();
        engine.free(&made)?;
        return Err(e.into());
    }
    Ok(done)
}
