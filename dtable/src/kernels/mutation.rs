//! The `dirk.mutate` kernel: one step of a mutation on one chunk, run on the worker that owns
//! it (evaluate an `UPDATE`'s `WHERE` and new values, write them, keep the rows a `DELETE`
//! leaves, project new columns, slice; and the steps of row-targeted changes and statistics).
//! The driver's side, which lowers statements to these steps, is `crate::dml`.

use crate::exec::with_schema;
use crate::kernels::fragment::{decode_plan, decode_with_header};
use crate::kernels::rowchange;
use arrow::array::{
    downcast_primitive, new_empty_array, Array, ArrayRef, ArrowPrimitiveType, AsArray,
    PrimitiveArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use arrow::compute::kernels::boolean::not;
use arrow::compute::{filter_record_batch, interleave, prep_null_mask_filter};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use arrow::util::bit_util;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use dirk_engine::{Chunk, EngineError, Kernel, KernelCall};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The kernel's registered name.
pub(crate) const MUTATE_KERNEL: &str = "dirk.mutate";

/// What one mutation task does. The expressions travel as a small physical plan
/// (`ProjectionExec` over `FilterExec` over an `EmptyExec` of the table's schema), serialized
/// with datafusion-proto like any fragment, so the task runs unchanged on a remote worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Step {
    /// The positions of the rows the filter picks and the projection's values for them; no
    /// output when no row matches.
    UpdatePrepare { columns: Vec<usize> },
    /// Writes prepared values (inputs 1..) into the chunk (input 0, read-write): value
    /// column `k` goes to table column `columns[k]`. Its output holds the values it
    /// overwrote, in the same form: applying that output (`undo`) undoes the write.
    UpdateApply { columns: Vec<usize>, undo: bool },
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
pub(crate) struct MutateKernel;

impl Kernel for MutateKernel {
    fn name(&self) -> &str {
        MUTATE_KERNEL
    }

    fn run(&self, call: &mut KernelCall<'_>) -> dirk_engine::Result<Vec<Chunk>> {
        let (step, plan): (Step, &[u8]) = decode_with_header(call.params())?;
        match &step {
            Step::UpdateApply { columns, undo } => {
                let name = if *undo {
                    "dirk-update-undo"
                } else {
                    "dirk-update-apply"
                };
                failpoint(name, call.input(0)).map_err(kernel_err)?;
                return apply_update(call, columns).map_err(kernel_err);
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
                return crate::kernels::statistics::column_stats(call.input(0), columns)
                    .map_err(kernel_err)
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
        let plan = decode_plan(call.env(), plan)?;
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

fn kernel_err(e: impl Into<datafusion::error::DataFusionError>) -> EngineError {
    crate::error::kernel_error(e.into())
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
    // Everything that can fail happens before the chunk changes: a statement undoes the
    // chunks it already wrote when a write fails, so a failed write must leave its chunk as
    // it was. The old values of the rows written come back as the output (the undo).
    let mut staged = Vec::with_capacity(pending.len());
    let mut fields = position_fields();
    fields.extend(
        columns
            .iter()
            .map(|&c| target.schema().field(c).clone().with_nullable(true)),
    );
    let undo_schema = Arc::new(Schema::new(fields));
    let mut undo = Vec::with_capacity(pending.len());
    for p in &pending {
        let b = p.column(0).as_primitive::<UInt32Type>().value(0) as usize;
        let rows = p.column(1).as_primitive::<UInt32Type>().clone();
        let Some(batch) = target.batches().get(b) else {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "prepared values name batch {b}, which the chunk does not have"
            )));
        };
        if rows
            .values()
            .iter()
            .any(|&r| r as usize >= batch.num_rows())
        {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "prepared values name a row past the end of batch {b}"
            )));
        }
        let mut old_values: Vec<ArrayRef> = vec![p.column(0).clone(), p.column(1).clone()];
        let mut new_values = Vec::with_capacity(columns.len());
        for (k, &c) in columns.iter().enumerate() {
            let old = batch.column(c);
            let new = p.column(2 + k);
            new_values.push(if new.data_type() == old.data_type() {
                Arc::clone(new)
            } else {
                arrow::compute::cast(new, old.data_type())?
            });
            old_values.push(arrow::compute::take(old, &rows, None)?);
        }
        undo.push(RecordBatch::try_new(Arc::clone(&undo_schema), old_values)?);
        staged.push((b, rows, new_values));
    }
    // A reader that holds the chunk keeps its version: the chunk is cloned (cheaply: its
    // arrays are shared, so each written column is then copied rather than written in place).
    let chunk = Arc::make_mut(target);
    let batches = chunk.batches_mut();
    for (b, rows, new_values) in staged {
        let slot = &mut batches[b];
        let placeholder = RecordBatch::new_empty(slot.schema());
        let (schema, mut cols, n) = std::mem::replace(slot, placeholder).into_parts();
        for (&c, new) in columns.iter().zip(&new_values) {
            let old = std::mem::replace(&mut cols[c], new_empty_array(&DataType::Null));
            cols[c] = scatter(old, &rows, new)?;
        }
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        *slot = RecordBatch::try_new_with_options(schema, cols, &options)?;
    }
    Ok(vec![Chunk::new(undo_schema, undo)])
}

/// Fails when failpoint `name` is set (`fail::cfg`, or `FAILPOINTS` in a worker process's
/// environment) and names no column, or a column `chunk` has: tests of one table then leave
/// other tables' statements in the same process alone.
fn failpoint(name: &str, chunk: &Chunk) -> KResult<()> {
    match fail::eval(name, |column| column) {
        Some(column)
            if column
                .as_deref()
                .is_none_or(|c| chunk.schema().index_of(c).is_ok()) =>
        {
            Err(datafusion::error::DataFusionError::Execution(format!(
                "failpoint {name}"
            )))
        }
        _ => Ok(()),
    }
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

/// The leading columns of the values an update writes into a chunk: each value's batch and row.
pub(crate) fn position_fields() -> Vec<Field> {
    vec![
        Field::new("__dirk_batch", DataType::UInt32, false),
        Field::new("__dirk_row", DataType::UInt32, false),
    ]
}
